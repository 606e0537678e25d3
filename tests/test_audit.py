"""The ledger audit: clean on a real history, and a finding for each kind of damage; the `gifting audit` CLI."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gifting import keys
from gifting.ledger import rules
from gifting.ledger.audit import run_audit
from tests.conftest import REPO, System

pytestmark = pytest.mark.cluster  # on a standalone Valkey and on a Valkey Cluster (tests/conftest.py)

CLI_TIMEOUT_S = 30.0


async def settled_gifts(system: System, viewer: str, creator: str, gifts: list[tuple[str, int]]) -> str:
    """Open a room for `creator` and have `viewer` send `gifts` (gift, count), each settled. Returns the room."""
    room = await system.open_room(creator)
    client = await system.connect(viewer)
    for gift, count in gifts:
        gid = await client.gift(room, gift, count)
        result = await client.result(gid)
        assert result["status"] == "settled", result
    return room


VIEWER_PART = keys.part_of_user("viewer1")  # the entries planted by hand are the viewer's partition's
CREATOR_PART = keys.part_of_user("creator1")


async def journal_entry(redis: aioredis.Redis, fields: dict[str, Any]) -> str:
    entry_id: str = await redis.xadd(keys.journal(VIEWER_PART), fields)
    return entry_id


async def move(redis: aioredis.Redis, ledger_key: str, debit: str, credit: str, amount: int) -> None:
    """Change stored balances exactly as a journal leg says, so the balance checks stay quiet."""
    await redis.hincrby(ledger_key, debit, -amount)
    await redis.hincrby(ledger_key, credit, amount)


async def granted(redis: aioredis.Redis, user: str, coins: int) -> None:
    """Coins granted by hand: a purchase entry (a 'grant:' id has no purchase record) in the user's partition."""
    part = keys.part_of_user(user)
    await move(redis, keys.coins(part), keys.SYS_COIN_ISSUANCE, keys.account(user), coins)
    legs = rules.encode_legs(rules.purchase_legs(user, coins))
    await redis.xadd(keys.journal(part), {"kind": "purchase", "id": f"grant:{user}", "legs": legs})


async def planted_gift(redis: aioredis.Redis, gift: str, legs: str, bps: str) -> str:
    """A hand-written gift as the partitions hold it: its legs placed (rules.place_legs), the viewer's in a gift
    entry of the viewer's partition, the creator's in a `credits` entry of the creator's, balances moved to
    match. Returns the gift entry's id."""
    placed = rules.place_legs(rules.parse_legs(legs), VIEWER_PART)
    for part, part_legs in placed.items():
        for leg in part_legs:
            await move(redis, dict(keys.ledgers(part))[leg.ledger], leg.debit, leg.credit, leg.amount)
    entry_id = await journal_entry(
        redis, {"kind": "gift", "id": gift, "legs": rules.encode_legs(placed[VIEWER_PART]), "bps": bps}
    )
    for part, part_legs in placed.items():
        if part != VIEWER_PART:
            row = rules.Credit(id=gift, kind="gift_received", legs=part_legs, ts_ms=0).journal_row()
            await redis.xadd(keys.journal(part), {"kind": "credits", "rows": row, "ts": "0"})
    return entry_id


async def run_cli_audit(redis_url: str, data_dir: Path) -> tuple[int, str]:
    env = {**os.environ, "REDIS_URL": redis_url, "GIFTING_DATA_DIR": str(data_dir)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gifting.cli",
        "audit",
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout.decode() + stderr.decode()


async def test_audit_is_clean_after_a_purchase_and_gifts(system: System) -> None:
    """A real purchase and settled gifts leave the audit clean, with every entry counted and each ledger at zero."""
    await system.buy("viewer1", "coins_328")
    await settled_gifts(system, "viewer1", "creator1", [("confetti", 2), ("coffee", 3), ("rose", 1)])
    report = await run_audit(system.redis)
    assert report.clean, report.summary()
    # The creator lives in another partition (VIEWER_PART != CREATOR_PART): each gift's diamonds are a credit
    # there (the rose too: 0 diamonds, but its statement row and the boards), in one or more `credits` entries.
    assert VIEWER_PART != CREATOR_PART
    assert dict(report.kinds) == {"purchase": 1, "gift": 3, "credit": 3}
    assert {ledger: sum(b.values()) for ledger, b in report.totals.items()} == {"coins": 0, "diamonds": 0, "rewards": 0}
    assert report.totals["coins"]["u:viewer1"] == 328 - 200 - 30 - 1
    assert report.totals["diamonds"]["u:creator1"] == 100 + 15 + 0
    assert report.summary().endswith("findings: none")


async def test_tampered_balance_is_a_finding_naming_the_account(system: System) -> None:
    """A user's coin balance changed outside the journal is a finding that names the account and both amounts."""
    await system.buy("viewer1", "coins_65")
    await settled_gifts(system, "viewer1", "creator1", [("coffee", 1)])
    await system.redis.hincrby(keys.coins(VIEWER_PART), keys.account("viewer1"), 5)
    report = await run_audit(system.redis)
    assert not report.clean
    assert f"{VIEWER_PART} coins u:viewer1: stored balance 60, journal says 55" in report.findings
    assert f"{VIEWER_PART} coins: stored balances sum to 5, expected 0" in report.findings
    assert f"FINDING {VIEWER_PART} coins u:viewer1" in report.summary()


@pytest.mark.parametrize(
    "legs",
    [
        "coins u:viewer1 sys:platform_revenue",
        "gems u:viewer1 sys:platform_revenue 5",
        "coins u:viewer1 sys:platform_revenue -5",
        "coins u:viewer1 sys:platform_revenue five",
        "coins u:viewer1 sys:platform_revenue 5|",
    ],
    ids=["missing-amount", "unknown-ledger", "negative", "not-a-number", "empty-leg"],
)
async def test_journal_entry_with_broken_legs_is_a_finding(redis: aioredis.Redis, legs: str) -> None:
    """A journal entry whose legs do not parse is a finding naming the entry."""
    entry_id = await journal_entry(redis, {"kind": "gift", "id": "g-broken", "legs": legs, "bps": "5000"})
    report = await run_audit(redis)
    assert len(report.findings) == 1, report.findings
    assert report.findings[0].startswith(f"journal {VIEWER_PART}/{entry_id} (gift g-broken): bad leg"), report.findings


async def test_gift_entry_without_legs_is_a_finding(redis: aioredis.Redis) -> None:
    """A gift journal entry with no coin legs at all is a finding."""
    entry_id = await journal_entry(redis, {"kind": "gift", "id": "g-empty", "legs": "", "bps": "5000"})
    report = await run_audit(redis)
    assert report.findings == [f"journal {VIEWER_PART}/{entry_id} gift g-empty: expected coin legs from one viewer"]


@pytest.mark.parametrize(
    ("diamonds", "bps"),
    [(40, "5000"), (50, "3000"), (50, "20000")],
    ids=["diamonds-off-share", "bps-other-share", "bps-out-of-range"],
)
async def test_gift_whose_diamonds_do_not_match_its_bps_is_a_finding(
    redis: aioredis.Redis, diamonds: int, bps: str
) -> None:
    """A gift entry whose diamonds leg is not its stored creator share of the coins is a finding."""
    await granted(redis, "viewer1", 100)
    legs = (
        "coins u:viewer1 sys:platform_revenue 50|coins u:viewer1 sys:creator_earnings 50|"
        f"diamonds sys:diamond_issuance u:creator1 {diamonds}"
    )
    entry_id = await planted_gift(redis, "g-off", legs, bps)
    report = await run_audit(redis)
    assert len(report.findings) == 1, report.findings
    # The viewer's entry is checked against the gift rules; the creator's diamonds (another partition) against
    # the coins the gift routed to the creator's share.
    own = f"journal {VIEWER_PART}/{entry_id} gift g-off: "
    crossing = f"transfer g-off (in {VIEWER_PART}): owes 50 diamonds to other partitions, its credits "
    assert report.findings[0].startswith(crossing if bps == "5000" else own), report.findings


async def test_consistent_gift_entry_at_its_share_is_not_a_finding(redis: aioredis.Redis) -> None:
    """The same hand-written gift entry with legs matching its bps is clean (the checks above are not noise)."""
    await granted(redis, "viewer1", 100)
    legs = (
        "coins u:viewer1 sys:platform_revenue 70|coins u:viewer1 sys:creator_earnings 30|"
        "diamonds sys:diamond_issuance u:creator1 30"
    )
    await planted_gift(redis, "g-ok", legs, "3000")
    report = await run_audit(redis)
    assert report.clean, report.summary()


async def test_user_balance_below_zero_is_a_finding(redis: aioredis.Redis) -> None:
    """A gift that overdraws a viewer is a finding even when stored balances agree with the journal."""
    await granted(redis, "viewer1", 100)
    legs = (
        "coins u:viewer1 sys:platform_revenue 75|coins u:viewer1 sys:creator_earnings 75|"
        "diamonds sys:diamond_issuance u:creator1 75"
    )
    await planted_gift(redis, "g-over", legs, "5000")
    report = await run_audit(redis)
    assert len(report.findings) == 1, report.findings
    assert report.findings[0].startswith(f"{VIEWER_PART} coins u:viewer1: balance -50 below zero"), report.findings


async def test_cli_audit_exits_0_when_clean_and_1_with_a_finding(
    system: System, valkey_url: str, tmp_path: Path
) -> None:
    """`python -m gifting.cli audit` prints its findings and exits 0 on a clean ledger, 1 after tampering."""
    await system.buy("viewer1", "coins_65")
    await settled_gifts(system, "viewer1", "creator1", [("coffee", 2)])
    code, output = await run_cli_audit(valkey_url, tmp_path)
    assert code == 0, output
    assert "findings: none" in output
    await system.redis.hincrby(keys.coins(VIEWER_PART), keys.account("viewer1"), 5)
    code, output = await run_cli_audit(valkey_url, tmp_path)
    assert code == 1, output
    assert "findings: 2" in output
    assert f"FINDING {VIEWER_PART} coins u:viewer1: stored balance 50, journal says 45" in output


async def test_batch_gift_entry_with_a_row_that_does_not_parse_is_a_finding(redis: aioredis.Redis) -> None:
    """settle.lua writes one `gifts` entry per batch; a row without its five fields is named as a finding."""
    entry_id = await journal_entry(redis, {"kind": "gifts", "rows": "g-short\tcoins u:a u:b 1", "bps": "5000"})
    report = await run_audit(redis)
    assert report.findings == [f"journal {VIEWER_PART}/{entry_id} (gifts): bad gift row 'g-short\\tcoins u:a u:b 1': "
                               "expected 5 tab-separated fields"]  # fmt: skip
