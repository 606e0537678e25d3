"""The live room: combos, top gifters, levels, goals, viewer counts, the big-room policy, the stream summary."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from gifting import keys
from gifting.ledger import rules
from gifting.ledger.audit import run_audit
from gifting.live import coalesce
from tests.conftest import System, SystemFactory, WsClient, gift_id


async def frames_until(client: WsClient, predicate: Any, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Every events frame until one whose events satisfy `predicate` (the list so far)."""
    frames: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        message = await client.recv(max(0.01, deadline - loop.time()))
        if message.get("type") == "events":
            frames.append(message)
            if predicate([e for f in frames for e in f["events"]]):
                return frames


async def http_gift(system: System, user: str, room: str, gift: str, count: int = 1) -> dict[str, Any]:
    response = await system.http.post(
        f"/v1/rooms/{room}/gifts", headers=system.auth(user), json={"gift": gift, "count": count, "gift_id": gift_id()}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_repeats_form_one_combo_for_viewers_and_every_gift_for_the_creator(start_system: SystemFactory) -> None:
    """Twelve roses in a burst: viewers see one entry with combo count 12, the creator twelve gifts, then combo_end."""
    system = await start_system(tick_ms=200, combo_window_ms=1000)
    await system.grant("v1", 1000)
    room = await system.open_room("c1")
    creator = await system.connect("c1", "creator")
    viewer = await system.connect("v2")
    sender = await system.connect("v1")
    for client in (creator, viewer, sender):
        await client.join(room)
    ids = [await sender.gift(room, "rose") for _ in range(12)]
    for gid in ids:
        assert (await sender.result(gid))["status"] == "settled"
    feed = await frames_until(creator, lambda es: len([e for e in es if e["kind"] == "gift"]) == 12)
    gifts = [e for f in feed for e in f["events"] if e["kind"] == "gift"]
    assert [e["combo"]["count"] for e in gifts] == list(range(1, 13)) and len({e["combo"]["id"] for e in gifts}) == 1
    seen = await frames_until(viewer, lambda es: any(e["kind"] == "combo_end" for e in es))
    entries = [e for f in seen for e in f["events"] if e["kind"] == "gift"]
    assert len(entries) < 12 and entries[-1]["combo"]["count"] == 12
    assert sum(e.get("merged", 1) for e in entries) == 12 and sum(e["coins"] for e in entries) == 12
    assert seen[0]["from"] == 1 and max(f.get("to", 0) for f in seen) == 12  # the frames cover every offset
    end = next(e for f in seen for e in f["events"] if e["kind"] == "combo_end")
    assert end["combo"]["count"] == 12 and end["sender"] == "v1" and "offset" not in end


async def test_combo_continues_across_a_reconnect(start_system: SystemFactory) -> None:
    """A viewer that resumes mid-combo gets the missed gifts, whose combo count carries on."""
    system = await start_system(combo_window_ms=5000, big_gift_coins=1)
    await system.grant("v1", 100)
    room = await system.open_room("c1")
    watcher = await system.connect("v2")
    joined = await watcher.join(room)
    for _ in range(3):
        await http_gift(system, "v1", room, "rose")
    await frames_until(watcher, lambda es: len(es) >= 3)
    await watcher.close()
    for _ in range(2):
        await http_gift(system, "v1", room, "rose")
    again = await system.connect("v2")
    resumed = await again.join(room, since={"epoch": joined["epoch"], "offset": 3})
    assert resumed["recovered"] is True
    frames = await frames_until(again, lambda es: len(es) >= 2)
    assert [e["combo"]["count"] for f in frames for e in f["events"]] == [4, 5]


async def test_expensive_gifts_are_never_merged_under_a_storm(start_system: SystemFactory) -> None:
    """2,000 gifts in a room: frames stay within the entry limit and every big gift arrives on its own."""
    system = await start_system(tick_ms=50, frame_events_max=20, big_gift_coins=500, gift_rate_per_s=10_000.0)
    senders = [f"s{i}" for i in range(8)]
    for user in senders:
        await system.grant(user, 1_000_000)
    room = await system.open_room("c1")
    viewer = await system.connect("watcher")
    await viewer.join(room)
    clients = [await system.connect(user) for user in senders]
    big_ids: set[str] = set()
    pending = []
    for i in range(2000):
        client = clients[i % len(clients)]
        gift = "money_rain" if i % 40 == 0 else ("rose", "heart", "coffee")[i % 3]
        gid = await client.gift(room, gift)
        pending.append((client, gid))
        if gift == "money_rain":
            big_ids.add(gid)
    for client, gid in pending:
        assert (await client.result(gid, timeout_s=30))["status"] == "settled"
    frames = await frames_until(viewer, lambda es: True, timeout_s=1)
    while (frames[-1].get("to") or 0) < 2000:
        frames += await frames_until(viewer, lambda es: True, timeout_s=10)
    assert all(len(f["events"]) <= 20 for f in frames)
    delivered_big = {e["gift_id"] for f in frames for e in f["events"] if e.get("gift") == "money_rain"}
    assert delivered_big == big_ids
    covered = sorted((f["from"], f["to"]) for f in frames if "from" in f)
    gaps = [(a, b) for a, b in itertools.pairwise(covered) if b[0] != a[1] + 1]
    assert covered[0][0] == 1 and not gaps, gaps
    assert covered[-1][1] == 2000
    report = await run_audit(system.redis)
    assert report.clean, report.summary()


def test_policy_caps_entries_and_keeps_priorities() -> None:
    """The pure policy: room events and big gifts first, cheap combos by value, the rest in a tick summary."""
    events = [{"offset": 1, "kind": "goal_progress", "goal": {}}]
    for i in range(30):
        coins = 1000 if i % 10 == 0 else 1
        events.append({"offset": i + 2, "kind": "gift", "gift_id": str(i), "gift": "g", "count": 1, "coins": coins,
                       "diamonds": coins // 2, "sender": f"u{i}", "combo": {"id": str(i), "count": 1}})  # fmt: skip
    shaped = coalesce.for_viewers_frame(events, big_gift_coins=500, frame_events_max=10)
    assert len(shaped) == 10 and shaped[-1]["kind"] == "tick_summary"
    assert shaped[0]["kind"] == "goal_progress"  # kept in offset order; big gifts and room events first in rank
    assert [e["gift_id"] for e in shaped if e.get("coins") == 1000] == ["0", "10", "20"]
    assert all("diamonds" not in e for e in shaped)
    assert shaped[-1]["gifts"] == 30 - 3 - 5 and shaped[-1]["coins"] == 22  # 9 kept: 1 goal, 3 big, 5 combos
    assert coalesce.offsets_covered(events) == (1, 31)
    counters = [{"kind": "viewers", "count": 9}, {"kind": "combo_end", "combo": {"id": "x", "count": 2}}]
    with_counters = coalesce.for_viewers_frame(events[:5], 500, 5, counters)
    assert len(with_counters) == 5 and with_counters[-1]["kind"] == "tick_summary"
    assert not any(e["kind"] in ("viewers", "combo_end") for e in with_counters)  # counters yield first


def test_policy_keeps_only_the_last_match_score_of_a_tick_per_match() -> None:
    """Viewers get the last match_score of each match per tick (a snapshot), also over the entry cap; the
    creator's feed is not shaped by this policy."""
    events = [{"offset": i + 1, "kind": "match_score", "match": "m1", "gift_id": str(i), "side": "a",
               "points_a": i + 1, "points_b": 0} for i in range(30)]  # fmt: skip
    events.append({"offset": 31, "kind": "match_score", "match": "m2", "gift_id": "x", "side": "b",
                   "points_a": 0, "points_b": 5})  # fmt: skip
    shaped = coalesce.for_viewers_frame(events, big_gift_coins=500, frame_events_max=10)
    assert [(e["match"], e["points_a"], e["points_b"]) for e in shaped] == [("m1", 30, 0), ("m2", 0, 5)]
    assert coalesce.offsets_covered(events) == (1, 31)


async def test_top_gifters_stream_and_periods_with_deterministic_ties(system: System) -> None:
    """Top gifters come from settled gifts only; equal totals are ordered by user id."""
    for user in ("bob", "amy", "cat"):
        await system.grant(user, 1000)
    room = await system.open_room("c1")
    await http_gift(system, "bob", room, "coffee", 3)  # 30
    await http_gift(system, "amy", room, "coffee", 3)  # 30
    await http_gift(system, "cat", room, "doughnut", 2)  # 60
    rejected = await system.http.post(
        f"/v1/rooms/{room}/gifts", headers=system.auth("bob"), json={"gift": "castle", "count": 1, "gift_id": gift_id()}
    )
    assert rejected.json()["reason"] == "insufficient_coins"
    for period in ("stream", "day", "week", "all"):
        response = await system.http.get(f"/v1/rooms/{room}/leaderboard", params={"period": period})
        top = response.json()["top"]
        assert [(t["user"], t["coins"]) for t in top] == [("cat", 60), ("amy", 30), ("bob", 30)], period
        assert top[0]["level"] == rules.level_for(60)
    bad = await system.http.get(f"/v1/rooms/{room}/leaderboard", params={"period": "year"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_period"


async def test_leaderboard_and_viewers_are_pushed_to_the_room(start_system: SystemFactory) -> None:
    """The room gets `leaderboard` when the top changes and approximate `viewers` counts, without offsets."""
    system = await start_system(leaderboard_interval_ms=100, viewers_interval_ms=100)
    await system.grant("v1", 1000)
    room = await system.open_room("c1")
    watchers = [await system.connect(f"w{i}") for i in range(3)]
    for watcher in watchers:
        await watcher.join(room)
    await http_gift(system, "v1", room, "coffee")
    pushed = await watchers[0].wait_for(
        lambda m: m.get("type") == "events" and any(e["kind"] == "leaderboard" for e in m["events"])
    )
    board = next(e for e in pushed["events"] if e["kind"] == "leaderboard")
    assert board["top"][0]["user"] == "v1" and "offset" not in board
    counted = await watchers[1].wait_for(
        lambda m: m.get("type") == "events" and any(e["kind"] == "viewers" and e["count"] == 3 for e in m["events"])
    )
    assert counted["type"] == "events"


async def test_gift_events_carry_the_gifter_level(system: System) -> None:
    """A viewer past 1,000 lifetime coins gets level 4 on their gift events."""
    await system.grant("v1", 5000)
    room = await system.open_room("c1")
    watcher = await system.connect("w")
    await watcher.join(room)
    await http_gift(system, "v1", room, "galaxy")  # 1000 coins
    frames = await frames_until(watcher, lambda es: any(e["kind"] == "gift" for e in es))
    gift = next(e for f in frames for e in f["events"] if e["kind"] == "gift")
    assert gift["level"] == 4


async def test_concurrent_gifts_crossing_a_goal_fire_one_completion(system: System) -> None:
    """A goal of 10 roses hit by 30 concurrent roses completes exactly once; progress is pushed as it moves."""
    for i in range(6):
        await system.grant(f"v{i}", 100)
    room = await system.open_room("c1")
    creator = system.auth("c1", "creator")
    response = await system.http.post(f"/v1/rooms/{room}/goals", headers=creator, json={"gift": "rose", "target": 10})
    assert response.status_code == 201
    goal_id = response.json()["goal"]["id"]
    watcher = await system.connect("w")
    joined = await watcher.join(room)
    assert joined["goal"]["target"] == 10 and joined["goal"]["progress"] == 0
    await asyncio.gather(*(http_gift(system, f"v{i % 6}", room, "rose") for i in range(30)))
    history = await system.redis.xrange(keys.room_history(room))
    kinds = [e["e"] for _, e in history]
    assert sum('"goal_completed"' in k for k in kinds) == 1
    second = await system.http.post(f"/v1/rooms/{room}/goals", headers=creator, json={"diamonds": 500})
    assert second.status_code == 201  # the first one completed, so a new one may start
    third = await system.http.post(f"/v1/rooms/{room}/goals", headers=creator, json={"diamonds": 500})
    assert third.status_code == 409 and third.json()["error"]["code"] == "goal_active"
    # The second goal's progress (0) may share a tick's frame with the first one's completion: only the first
    # goal's progress must rise.
    frames = await frames_until(watcher, lambda es: any(e["kind"] == "goal_completed" for e in es))
    progress = [
        e["goal"]["progress"]
        for f in frames
        for e in f["events"]
        if e["kind"] == "goal_progress" and e["goal"]["id"] == goal_id
    ]
    assert progress == sorted(progress) and progress[-1] >= 10


async def test_goal_bad_input(system: System) -> None:
    """Non-positive, absurd or unknown targets, viewers setting goals, and cancelling nothing: clear codes."""
    room = await system.open_room("c1")
    creator = system.auth("c1", "creator")
    cases = [
        ({"gift": "rose", "target": 0}, 400, "bad_target"),
        ({"gift": "rose", "target": -3}, 400, "bad_target"),
        ({"gift": "rose", "target": 10**9}, 400, "bad_target"),
        ({"gift": "rose", "target": 2.5}, 400, "bad_target"),
        ({"diamonds": 0}, 400, "bad_target"),
        ({"gift": "nope", "target": 3}, 400, "unknown_gift"),
        ({"gift": "rose", "diamonds": 5}, 400, "bad_goal"),
        ({}, 400, "bad_goal"),
    ]
    for body, status, code in cases:
        response = await system.http.post(f"/v1/rooms/{room}/goals", headers=creator, json=body)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), body
    viewer = await system.http.post(f"/v1/rooms/{room}/goals", headers=system.auth("v1"), json={"diamonds": 5})
    assert viewer.status_code == 403
    nothing = await system.http.delete(f"/v1/rooms/{room}/goals", headers=creator)
    assert nothing.status_code == 409 and nothing.json()["error"]["code"] == "no_active_goal"


async def test_diamond_goal_and_stream_summary(system: System) -> None:
    """A diamond goal completes; ending the stream pushes and stores a summary with totals and top gifters."""
    await system.grant("v1", 5000)
    room = await system.open_room("c1")
    creator = system.auth("c1", "creator")
    await system.http.post(f"/v1/rooms/{room}/goals", headers=creator, json={"diamonds": 100})
    watcher = await system.connect("w")
    await watcher.join(room)
    await http_gift(system, "v1", room, "money_rain")  # 500 coins -> 250 diamonds
    live = (await system.http.get(f"/v1/rooms/{room}/summary", headers=creator)).json()
    assert (live["gifts"], live["coins"], live["diamonds"], live["goals_met"]) == (1, 500, 250, 1)
    await system.http.post(f"/v1/rooms/{room}/end", headers=creator)
    frames = await frames_until(watcher, lambda es: any(e["kind"] == "stream_summary" for e in es))
    summary = next(e for f in frames for e in f["events"] if e["kind"] == "stream_summary")["summary"]
    assert "diamonds" not in summary and summary["top"][0]["user"] == "v1" and summary["goals_met"] == 1
    stored = (await system.http.get(f"/v1/rooms/{room}/summary", headers=creator)).json()
    assert stored["status"] == "ended" and stored["diamonds"] == 250
