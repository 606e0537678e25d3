"""The archive backlog bound is one rule for every debit: past GIFTING_ARCHIVE_BACKLOG_MAX a pledge is refused
`archive_backlog` like a gift (ledger/rules.archive_backlog_reject), and accepted again once archived."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis

from gifting import keys
from gifting.ledger import rules
from gifting.ledger.store import Ledger, LedgerError
from gifting.wire.reasons import RejectReason
from tests.conftest import SystemFactory, gift_id, make_settings
from tests.test_archive import drain, gifts, purchases
from tests.test_pools import open_pool, pledge


def test_the_backlog_rule() -> None:
    """Refused only past the bound (not at it); 0 means no bound."""
    assert rules.archive_backlog_reject(3, 3) is None
    assert rules.archive_backlog_reject(4, 3) is RejectReason.ARCHIVE_BACKLOG
    assert rules.archive_backlog_reject(10**9, 0) is None


async def test_pledges_refused_past_the_archive_backlog_bound(
    start_system: SystemFactory, history: psycopg.AsyncConnection[Any]
) -> None:
    """Past the bound a pledge is rejected `archive_backlog` (no coin moves, its id stays rejected like a gift's);
    once the journal is archived a new pledge is accepted."""
    system = await start_system(archive_backlog_max=3)
    for _ in range(4):
        await system.grant("v1", 100)
    room = await system.open_room("c1")
    pool = await open_pool(system, room, user="v1")
    pid = gift_id()
    refused = await pledge(system, "v1", pool, 50, pid)
    assert refused.status_code == 422 and refused.json()["reason"] == "archive_backlog", refused.text
    assert await system.redis.hget(keys.coins(keys.part_of_user("v1")), keys.account("v1")) == "400"
    await drain(system.redis, history)
    again = await pledge(system, "v1", pool, 50, pid)  # the same id answers its recorded outcome
    assert again.json()["reason"] == "archive_backlog", again.text
    accepted = await pledge(system, "v1", pool, 50)
    assert accepted.status_code == 200 and accepted.json()["status"] == "accepted", accepted.text
    assert await system.redis.hget(keys.coins(keys.part_of_user("v1")), keys.account("v1")) == "350"


async def test_withdrawals_refused_past_the_archive_backlog_bound(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """A new withdrawal past the bound is refused `archive_backlog` (nothing held); a resend of one requested
    before still answers it; once archived a new one is accepted."""
    # The bound is the creator's partition journal's: the gift's credit there, then the first withdrawal.
    settings = make_settings(tmp_path, withdrawal_diamonds_min=1, diamond_hold_s=0, archive_backlog_max=1)
    ledger = Ledger(redis, settings)
    await purchases(ledger, 1, coins=100)
    await gifts(ledger, settings, 1, coins=100)
    creator = keys.account("creator1")
    diamonds = int(await redis.hget(keys.diamonds(keys.part_of_user("creator1")), creator) or 0)
    first, _ = await ledger.request_withdrawal(
        "creator1", keys.withdrawal_id("creator1", "k0"), 1, "acct_sandbox", "1:acct_sandbox"
    )
    with pytest.raises(LedgerError) as refused:
        await ledger.request_withdrawal(
            "creator1", keys.withdrawal_id("creator1", "k1"), 1, "acct_sandbox", "1:acct_sandbox"
        )
    assert refused.value.code == "archive_backlog"
    assert int(await redis.hget(keys.diamonds(keys.part_of_user("creator1")), creator) or 0) == diamonds - 1
    again, replay = await ledger.request_withdrawal(
        "creator1", keys.withdrawal_id("creator1", "k0"), 1, "acct_sandbox", "1:acct_sandbox"
    )
    assert replay and again["withdrawal_id"] == first["withdrawal_id"]
    await drain(redis, history)
    await ledger.request_withdrawal(
        "creator1", keys.withdrawal_id("creator1", "k1"), 1, "acct_sandbox", "1:acct_sandbox"
    )
    assert int(await redis.hget(keys.diamonds(keys.part_of_user("creator1")), creator) or 0) == diamonds - 2
