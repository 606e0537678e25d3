"""One rule, every debit: past GIFTING_ARCHIVE_BACKLOG_MAX a sponsored gift, a perk, a ticket and a reward accrual
are refused `archive_backlog` like a gift (ledger/rules.archive_backlog_reject), nothing moves, and once the
journal is archived they are accepted again. Real Valkey, PostgreSQL, app and worker."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from gifting import keys
from gifting.ledger.audit import run_audit
from tests.conftest import System, SystemFactory
from tests.test_archive import drain
from tests.test_perks import buy, premium, ticket
from tests.test_rewards import REWARD_SETTINGS, fund, rewards, watch
from tests.test_sponsor import COFFEE, funded_campaign, send

BACKLOG_MAX = 3


async def fill(system: System, part: str) -> None:
    """Journal entries of partition `part` (the one the refused debit is decided in: the bound is per journal)
    just past GIFTING_ARCHIVE_BACKLOG_MAX (grants to a user of that partition: entries the audit accepts)."""
    filler = next(f"filler{i}" for i in range(10_000) if keys.part_of_user(f"filler{i}") == part)
    while await system.redis.xlen(keys.journal(part)) <= BACKLOG_MAX:
        await system.grant(filler, 1)


async def audit_clean(system: System, history: psycopg.AsyncConnection[Any]) -> None:
    report = await run_audit(system.redis, archive=history)
    assert report.clean, report.summary()


async def test_sponsored_gifts_refused_past_the_archive_backlog_bound(
    start_system: SystemFactory, history: psycopg.AsyncConnection[Any]
) -> None:
    """A sponsored send is rejected `archive_backlog` (the budget keeps every coin); a resend answers the same;
    once archived a new send settles."""
    system = await start_system(archive_backlog_max=BACKLOG_MAX)
    campaign = await funded_campaign(system, 100)
    room = await system.open_room()
    await fill(system, keys.campaign_part(campaign))
    budget = keys.campaign_account(campaign)
    gid = str(uuid.uuid4())
    refused = await send(system, room, campaign, gid=gid)
    assert (refused["status"], refused["reason"]) == ("rejected", "archive_backlog"), refused
    assert await system.redis.hget(keys.coins(keys.campaign_part(campaign)), budget) == "100"
    assert (await send(system, room, campaign, gid=gid))["reason"] == "archive_backlog"
    await drain(system.redis, history)
    settled = await send(system, room, campaign)
    assert settled["status"] == "settled", settled
    assert await system.redis.hget(keys.coins(keys.campaign_part(campaign)), budget) == str(100 - COFFEE)
    await audit_clean(system, history)


@pytest.mark.cluster
async def test_perks_and_tickets_refused_past_the_archive_backlog_bound(
    start_system: SystemFactory, history: psycopg.AsyncConnection[Any]
) -> None:
    """A perk and a ticket are rejected `archive_backlog` (422, no coin moves, the key stays rejected); once
    archived a new purchase settles."""
    system = await start_system(archive_backlog_max=BACKLOG_MAX)
    await system.grant("v1", 100)
    room = await system.open_room()
    await premium(system, room, 40)
    await fill(system, keys.part_of_user("v1"))
    refused = await buy(system, "v1", room, "highlight_small", key="k1")
    assert (refused.status_code, refused.json()["reason"]) == (422, "archive_backlog"), refused.text
    no_ticket = await ticket(system, "v1", room, 40)
    assert (no_ticket.status_code, no_ticket.json()["reason"]) == (422, "archive_backlog"), no_ticket.text
    assert (await system.wallet("v1"))["coins"] == 100
    assert not await system.redis.hget(keys.room_tickets(keys.part_of_user("v1"), room), keys.account("v1"))
    await drain(system.redis, history)
    assert (await buy(system, "v1", room, "highlight_small", key="k1")).json()["reason"] == "archive_backlog"
    assert (await ticket(system, "v1", room, 40)).json()["status"] == "settled"
    await audit_clean(system, history)


async def test_reward_accruals_refused_past_the_archive_backlog_bound(
    start_system: SystemFactory, history: psycopg.AsyncConnection[Any]
) -> None:
    """An accrual answers `archive_backlog` and moves nothing (not recorded: the same id pays once archived); a
    streak claim is refused 503 `archive_backlog`."""
    system = await start_system(archive_backlog_max=BACKLOG_MAX, **REWARD_SETTINGS)
    await watch(system).stop()
    assert (await fund(system, 100)).status_code == 201
    await fill(system, keys.rewards_part())
    period = uuid.uuid4().hex
    refused = await rewards(system).accrue("first_gift", "v1", period, 5)
    assert refused.status == "archive_backlog"
    assert [a.status for a in await rewards(system).accrue_watch(["v1", "v2"], 7)] == ["archive_backlog"] * 2
    streak = await system.http.post("/v1/rewards/streak", headers=system.auth("v1"))
    assert (streak.status_code, streak.json()["error"]["code"]) == (503, "archive_backlog"), streak.text
    assert await rewards(system).budget() == 100
    await drain(system.redis, history)
    assert (await rewards(system).accrue("first_gift", "v1", period, 5)).status == "ok"
    assert await rewards(system).budget() == 95
    await audit_clean(system, history)
