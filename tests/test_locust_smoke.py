"""The locust scenarios run clean: a few seconds, a few users, every user class, zero failures.

Locust (gevent) never runs in this process: it is a subprocess pointed at the system started in-process.
The feed checks it relies on (loadtest/scenarios/feed.py) are pure and tested here directly.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest.scenarios import SCENARIOS
from loadtest.scenarios.feed import FeedChecker, OwnGifts
from tests.conftest import REPO, SECRET, SystemFactory
from tests.test_web_hardening import PAYMENT_TOKENS, captured_logs, leaked

LOCUST_TIMEOUT_S = 60.0
USER_CLASSES = ("Viewer", "Gifter", "Creator", "Purchaser", "Reconnector")
EXPECTED = {  # (type, name) that must appear with requests > 0
    ("WS", "connect"),
    ("WS", "join"),
    ("WS", "resume"),
    ("WS", "gift -> result"),
    ("WS", "gift -> own animation"),
    ("WS", "fan-out (sampled)"),
    ("WS", "creator fan-out (sampled)"),
    ("POST", "POST /v1/rooms"),
    ("POST", "POST /v1/wallet/purchases"),
    ("POST", "POST /v1/wallet/purchases (replay)"),
    ("GET", "GET /v1/rooms/{room}/earnings"),
    ("GET", "GET /v1/wallet (after gifts)"),
}


# What each user class must have measured in a smoke run (its role's main paths).
EXPECTED_BY_CLASS = {
    "Viewer": {("WS", "connect"), ("WS", "join"), ("WS", "fan-out (sampled)")},
    # Each battle viewer checks its last score against the match's final result, reported at match_ended.
    "BattleViewer": {("WS", "connect"), ("WS", "join"), ("WS", "match score = result")},
    "Gifter": {
        ("WS", "gift -> result"),
        ("WS", "gift -> own animation"),
        ("POST", "POST /v1/wallet/purchases"),
        ("GET", "GET /v1/wallet (after gifts)"),
    },
    "Creator": {("WS", "creator fan-out (sampled)"), ("GET", "GET /v1/rooms/{room}/earnings")},
    "Reconnector": {("WS", "resume")},
    "Purchaser": {("POST", "POST /v1/wallet/purchases"), ("POST", "POST /v1/wallet/purchases (replay)")},
    # The campaign's storm: the brand's report read live, and checked against every settled send at the end.
    "Brand": {("GET", "GET /v1/campaigns/{campaign}"), ("WS", "campaign budget = sends")},
    "SponsoredGifter": {
        ("WS", "sponsored gift -> result"),
        ("WS", "sponsored gift -> own animation"),
        ("WS", "sponsored gift rejected: budget_exhausted"),
    },
}
# Per scenario: users (-u, enough that locust spawns every class once) and extra options. Each run is a few
# seconds; the scenario's own rates apply, except steady's, which drops every second to resume often.
SMOKE = {
    "steady": ("6", "--rooms", "1", "--gift-rate", "5", "--reconnect-every", "1", *USER_CLASSES),
    "gift-storm": ("6",),
    "big-room": ("33",),  # 30:1 viewers to gifters: 32 weighted users hold one gifter
    "reconnect-storm": ("6", "--reconnect-every", "1"),
    "purchase-rush": ("3",),
    "battle": ("8", "--match-duration", "2"),  # the match ends (and every viewer checks it) within the run
    "campaign": ("6",),  # 4 sponsored gifters at 10/s exhaust the 500-coin budget (50 coffees) in about 2 s
}
SMOKE_SECONDS = "4s"
SMOKE_SECONDS_BY_SCENARIO = {"battle": "6s"}  # a 2 s match, the worker's end sweep (1 s) and the last frames


def test_every_documented_scenario_has_a_smoke_run() -> None:
    """The suite runs a smoke of every scenario in loadtest/scenarios (and docs/LOADTEST.md documents them)."""
    assert set(SMOKE) == set(SCENARIOS)
    assert set(EXPECTED) == set().union(*(EXPECTED_BY_CLASS[c] for c in USER_CLASSES)) | {("POST", "POST /v1/rooms")}


@pytest.mark.timeout(LOCUST_TIMEOUT_S + 30)
@pytest.mark.parametrize("scenario", sorted(SMOKE))
async def test_locust_smoke_run_has_no_failures(start_system: SystemFactory, tmp_path: Path, scenario: str) -> None:
    """Each scenario runs every one of its user classes against a live system for a few seconds, 0 failures."""
    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust is not installed: pip install -e '.[dev]'")
    system = await start_system(server={"log_level": "info"})
    report = tmp_path / "smoke"
    # `steady` with -u 6 spawns each of its five classes at least once; naming them makes that explicit.
    assert set(SCENARIOS["steady"].classes) == set(USER_CLASSES)
    users, *extra = SMOKE[scenario]
    command = [
        *(sys.executable, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py")),
        *("--headless", "-u", users, "-r", users, "-t", SMOKE_SECONDS_BY_SCENARIO.get(scenario, SMOKE_SECONDS)),
        *("--stop-timeout", "3"),
        *("--host", system.base_url, "--json-file", str(report), "--only-summary"),
        *("--scenario", scenario, "--fanout-every", "1", *extra),
    ]
    env = {**os.environ, "GIFTING_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
    with captured_logs() as server_lines:
        process = await asyncio.create_subprocess_exec(
            *command, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), LOCUST_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            pytest.fail(f"locust did not finish within {LOCUST_TIMEOUT_S:g} s")
    log = output.decode(errors="replace")
    server_log = "\n".join(server_lines)
    assert "/v1/" in server_log, "no server log captured"  # purchase-rush opens no websocket: any route
    assert not leaked(log + server_log, [SECRET, *PAYMENT_TOKENS]), "a credential reached a log line"
    stats = read_stats(Path(f"{report}.json"))
    assert stats is not None, f"locust wrote no --json-file (exit {process.returncode})\n{log}"
    failures = {(s["method"], s["name"]): s["num_failures"] for s in stats if s["num_failures"]}
    assert not failures, f"{failures}\n{log}"
    requests = {(s["method"], s["name"]): s["num_requests"] for s in stats}
    expected = (
        EXPECTED if scenario == "steady" else set().union(*(EXPECTED_BY_CLASS[c] for c in SCENARIOS[scenario].classes))
    )
    missing = {name for name in expected if not requests.get(name)}
    assert not missing, f"no requests for {sorted(missing)}\n{log}"
    assert process.returncode == 0, log


def read_stats(path: Path) -> list[dict[str, Any]] | None:
    """Locust's --json-file: one entry per (type, name) with num_requests and num_failures."""
    if not path.exists():
        return None
    stats: list[dict[str, Any]] = json.loads(path.read_text())
    return stats


def test_feed_checker_accepts_tiled_viewer_frames_and_flags_gaps_and_duplicates() -> None:
    """Viewer frames must tile the offsets; a gap, an overlap or a backwards entry is reported."""
    checker = FeedChecker(full_feed=False)
    checker.start("e1", 10)
    merged = {"type": "events", "from": 11, "to": 14, "events": [{"offset": 12}, {"offset": 14}, {"kind": "viewers"}]}
    assert checker.frame(merged) == []
    assert checker.frame({"type": "events", "events": [{"kind": "leaderboard"}]}) == []
    assert any("gap" in p for p in checker.frame({"type": "events", "from": 17, "to": 17, "events": [{"offset": 17}]}))
    assert any("duplicate" in p for p in checker.frame({"type": "events", "from": 16, "to": 18, "events": []}))
    assert any("order" in p for p in checker.frame({"from": 19, "to": 20, "events": [{"offset": 20}, {"offset": 19}]}))


def test_feed_checker_full_feed_needs_every_offset() -> None:
    """The creator's feed may not skip an offset inside a frame."""
    checker = FeedChecker(full_feed=True)
    checker.start("e1", 0)
    assert checker.frame({"from": 1, "to": 2, "events": [{"offset": 1}, {"offset": 2}]}) == []
    assert any("gap" in p for p in checker.frame({"from": 3, "to": 5, "events": [{"offset": 3}, {"offset": 5}]}))


def test_own_gifts_merged_entry_animates_exactly_the_gifts_it_lists() -> None:
    """A merged own entry stands for the gifts in its `gift_ids`; each is animated once, a second time is flagged."""
    gifts = OwnGifts()
    for i, gift_id in enumerate(("a", "b", "c")):
        gifts.sent(gift_id, "rose", 1, float(i))
    for gift_id in ("a", "b", "c"):
        assert gifts.result({"type": "gift_result", "gift_id": gift_id, "status": "settled"}, 5.0).problems == []
    entry = {"kind": "gift", "gift_id": "c", "merged": 3, "gift_ids": ["a", "b", "c"], "offset": 3}
    out = gifts.frame([entry], [], 6.0)
    assert out.problems == [] and sorted(out.animation_s) == [4.0, 5.0, 6.0]
    assert gifts.unresolved() == 0 and gifts.settled_cost == 3
    assert gifts.frame([{"kind": "gift", "gift_id": "c", "offset": 4}], [], 7.0).problems


def test_own_gifts_merged_out_of_send_order_is_exact() -> None:
    """Settlement may announce a sender's later gift first: a merged entry whose last gift was sent first,
    and a gift sent after it still waiting, are matched by id (the storm's failure, issue #16)."""
    gifts = OwnGifts()
    for i, gift_id in enumerate(("a", "b", "c")):
        gifts.sent(gift_id, "rose", 1, float(i))
    for gift_id in ("a", "b", "c"):
        gifts.result({"type": "gift_result", "gift_id": gift_id, "status": "settled"}, 5.0)
    entry = {"kind": "gift", "gift_id": "a", "merged": 2, "gift_ids": ["b", "a"], "offset": 9}
    assert gifts.frame([entry], [], 6.0).problems == []
    assert [p.gift_id for p in gifts.pending.values()] == ["c"]
    assert gifts.overdue(30.0, 10.0).problems == ["gift c settled but did not appear within 10 s"]
    lying = {"kind": "gift", "gift_id": "x", "merged": 3, "gift_ids": ["x"], "offset": 10}
    assert any("merged=3" in p for p in gifts.frame([lying], [], 31.0).problems)


def test_own_gifts_summarized_are_accounted_by_id_not_by_time() -> None:
    """Own gifts the sender's copy of a tick_summary lists are accounted for once; one it does not list and that
    never showed is a failure, even though a summary arrived after it was sent."""
    gifts = OwnGifts()
    for gift_id in ("a", "b"):
        gifts.sent(gift_id, "rose", 1, 0.0)
        gifts.result({"type": "gift_result", "gift_id": gift_id, "status": "settled"}, 1.0)
    out = gifts.frame([], ["a"], 2.0)
    assert out.problems == [] and out.summarized == 1 and out.animation_s == []
    assert gifts.frame([], ["a"], 3.0).problems == ["own gift a appeared twice (offset None)"]
    assert gifts.overdue(20.0, 10.0).problems == ["gift b settled but did not appear within 10 s"]


def test_own_gifts_flags_missing_results_and_animations_but_retries_rate_limited() -> None:
    """Retriable rejections are not problems; a silent gift or a settled gift never shown is."""
    gifts = OwnGifts()
    gifts.sent("a", "rose", 1, 0.0)
    gifts.sent("b", "rose", 1, 0.0)
    out = gifts.result({"type": "gift_result", "gift_id": "a", "status": "rejected", "reason": "rate_limited"}, 0.1)
    assert out.retry == ["a"] and out.problems == []
    assert gifts.result({"type": "gift_result", "gift_id": "b", "status": "settled"}, 0.2).problems == []
    overdue = gifts.overdue(20.0, 10.0)
    assert len(overdue.problems) == 1 and "did not appear" in overdue.problems[0]
    gifts.sent("a", "rose", 1, 20.0)
    assert gifts.overdue(40.0, 10.0).problems == ["gift a: no gift_result within 10 s"]
    late = gifts.result({"type": "gift_result", "gift_id": "a", "status": "settled"}, 41.0)
    assert late.problems == [] and late.result_s == [] and gifts.settled_cost == 2
    assert gifts.frame([{"kind": "gift", "gift_id": "b", "offset": 1}], [], 42.0).problems == []
