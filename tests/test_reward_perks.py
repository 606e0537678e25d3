"""Perks paid with reward coins: the gift rule (reward coins first, a whole price at a time), the creator's share,
a reward-paid ticket refunded in reward coins, and the audit's findings. Against a real Valkey, app and worker."""

from __future__ import annotations

import itertools

import pytest
import redis.asyncio as aioredis

from gifting import keys
from gifting.clock import now_ms, utc_day
from gifting.ledger import partitions, rules
from gifting.ledger.audit import run_audit
from tests.conftest import SystemFactory
from tests.test_perks import SHARE_BPS, SMALL, all_journal, buy, premium, put_perk, ticket
from tests.test_rewards import audit_clean, fund, give_rewards, reward_coins, start

pytestmark = pytest.mark.cluster  # a money path or a multi-key step in every test; a short module

TICKET = 40
# The hand-written journals below: a viewer and a creator in the rewards budget's partition, so every leg of them
# is local to one partition, as the audit requires of a single entry (no credit in flight to plant).
_HOME = partitions.of_account(keys.SYS_REWARDS_BUDGET)
V, C = (next(f"{p}{i}" for i in itertools.count() if partitions.of_account(f"u:{p}{i}") == _HOME) for p in "vc")


async def test_a_perk_the_reward_coins_cover_is_paid_with_them_and_the_creator_earns_alike(
    start_system: SystemFactory,
) -> None:
    """Reward coins covering the price pay the whole perk (bought coins untouched, the spend cap not counted);
    the creator earns the same diamonds as from bought coins; the viewer's statement row is on `rewards`."""
    system = await start(start_system, daily_spend_coins_max=SMALL)
    assert (await fund(system, 100)).status_code == 201
    await give_rewards(system, "v1", SMALL + 5)
    await system.grant("v1", 100)
    room = await system.open_room()
    result = (await buy(system, "v1", room, "highlight_small")).json()
    assert (result["status"], result["paid_with"], result["coins"]) == ("settled", "rewards", 100), result
    assert await reward_coins(system.redis, "v1") == 5
    assert (await system.wallet("creator1"))["diamonds"] == rules.split_gift(SMALL, SHARE_BPS).diamonds
    spent_today = keys.spent_on(keys.part_of_user("v1"), utc_day(now_ms()))
    assert await system.redis.hget(spent_today, keys.account("v1")) is None
    rows = await system.redis.lrange(keys.statement("v1"), 0, -1)
    assert rules.parse_statement_row(0, rows[-1])["ledger"] == "rewards"
    # The spend cap (SMALL coins) is still whole: a perk paid with bought coins up to it settles.
    paid = (await buy(system, "v1", room, "highlight_small")).json()
    assert (paid["status"], paid["paid_with"], paid["coins"]) == ("settled", "coins", 100 - SMALL), paid
    await audit_clean(system)


async def test_reward_coins_short_of_the_price_leave_the_whole_perk_to_bought_coins(
    start_system: SystemFactory,
) -> None:
    """Never a mix: reward coins below the price stay untouched and bought coins pay all of it; with neither
    enough the purchase is rejected `insufficient_coins` and nothing moves."""
    system = await start(start_system)
    assert (await fund(system, 100)).status_code == 201
    await give_rewards(system, "v1", SMALL - 1)
    await system.grant("v1", SMALL)
    room = await system.open_room()
    paid = (await buy(system, "v1", room, "highlight_small")).json()
    assert (paid["status"], paid["paid_with"], paid["coins"]) == ("settled", "coins", 0), paid
    assert await reward_coins(system.redis, "v1") == SMALL - 1
    refused = await buy(system, "v1", room, "highlight_small")
    assert (refused.status_code, refused.json()["reason"]) == (422, "insufficient_coins")
    assert await reward_coins(system.redis, "v1") == SMALL - 1
    await audit_clean(system)


async def test_a_viewer_in_chargeback_debt_buys_no_perk_with_reward_coins(start_system: SystemFactory) -> None:
    """As for gifts: a coin balance below zero (chargeback debt) pays with neither kind of coin."""
    system = await start(start_system)
    assert (await fund(system, 100)).status_code == 201
    await give_rewards(system, "v1", 60)
    bought = await system.buy("v1", "coins_65")
    assert (await put_perk(system, "h65", {"kind": "highlight", "name": "H", "coins": 65})).status_code == 200
    room = await system.open_room()
    assert (await buy(system, "v1", room, "h65")).json()["paid_with"] == "coins"  # 60 reward coins fall short
    response = await system.http.post(
        f"/v1/admin/purchases/{bought['purchase']['purchase_id']}/chargeback", headers=system.auth("boss", "admin")
    )
    assert response.status_code == 200, response.text
    refused = await buy(system, "v1", room, "highlight_small")
    assert (refused.status_code, refused.json()["reason"]) == (422, "insufficient_coins"), refused.text
    assert await reward_coins(system.redis, "v1") == 60
    await audit_clean(system)


async def test_a_reward_paid_ticket_of_a_stream_ended_early_returns_reward_coins(start_system: SystemFactory) -> None:
    """The refund reverses the reward-paid chain: reward coins back (never bought coins or money), the creator's
    diamonds and the platform's funding of them back; once, however often the end is repeated; audit clean."""
    system = await start(start_system)
    assert (await fund(system, 100)).status_code == 201
    await give_rewards(system, "v1", TICKET)
    await system.grant("v1", 100)
    room = await system.open_room()
    await premium(system, room, TICKET)
    bought = (await ticket(system, "v1", room, TICKET)).json()
    assert (bought["status"], bought["paid_with"]) == ("settled", "rewards"), bought
    assert await reward_coins(system.redis, "v1") == 0
    ended = await system.http.post(f"/v1/rooms/{room}/end", headers=system.auth("creator1", "creator"))
    assert ended.status_code == 200, ended.text
    await system.app.state.rooms.finish_end(room)  # an interrupted end, finished again
    assert await reward_coins(system.redis, "v1") == TICKET
    assert await system.wallet("v1") == {"coins": 100, "diamonds": 0}
    assert (await system.wallet("creator1"))["diamonds"] == 0
    refunds = [f for _, f in await all_journal(system.redis) if f["kind"] == "perk_refund"]
    assert len(refunds) == 1 and refunds[0]["legs"].startswith(f"rewards {keys.SYS_REWARDS_SPENT} u:v1 {TICKET}")
    assert await system.redis.hget(keys.perk_purchase(bought["purchase_id"]), "status") == "refunded"
    rows = await system.redis.lrange(keys.statement("v1"), 0, -1)
    last = rules.parse_statement_row(0, rows[-1])
    assert (last["kind"], last["ledger"], last["amount"]) == ("perk_refund", "rewards", TICKET)
    await audit_clean(system)


async def _entry(redis: aioredis.Redis, fields: dict[str, str]) -> None:
    """A journal entry and the stored balances its legs imply (so only the rule it breaks is a finding), all in
    the rewards budget's partition (V's and C's too)."""
    part = keys.rewards_part()
    hashes = dict(keys.ledgers(part))
    for leg in rules.parse_legs(fields["legs"]):
        await redis.hincrby(hashes[leg.ledger], leg.debit, -leg.amount)
        await redis.hincrby(hashes[leg.ledger], leg.credit, leg.amount)
    await redis.xadd(keys.journal(part), fields)  # type: ignore[arg-type]


async def _reward_paid_perk(redis: aioredis.Redis, purchase: str) -> None:
    """A funded budget, an accrual of 50 reward coins to V and a 50-coin perk V paid with them."""
    await _entry(
        redis, {"kind": "reward_funding", "id": "f", "legs": "rewards sys:rewards_issuance sys:rewards_budget 50"}
    )
    await _entry(
        redis,
        {"kind": "reward", "id": "r", "legs": f"rewards sys:rewards_budget u:{V} 50", "day": "20260101",
         "viewer_cap": "100", "day_cap": "100"},
    )  # fmt: skip
    legs = rules.perk_legs(V, C, rules.split_gift(50, 5000), with_rewards=True)
    await _entry(
        redis, {"kind": "perk", "id": purchase, "perk": "ticket", "legs": rules.encode_legs(legs), "bps": "5000"}
    )


async def test_the_audit_passes_a_reward_paid_perk_and_its_refund(redis: aioredis.Redis) -> None:
    """A reward-paid perk has the reward gift's legs, and its refund gives the same reward coins back: clean."""
    await _reward_paid_perk(redis, "p1")
    legs = rules.perk_refund_legs(V, C, rules.split_gift(50, 5000), with_rewards=True)
    await _entry(redis, {"kind": "perk_refund", "id": "perk_refund:p1", "ref": "p1", "legs": rules.encode_legs(legs)})
    report = await run_audit(redis)
    assert report.clean, report.summary()


async def test_the_audit_finds_a_reward_paid_perk_refunded_in_bought_coins(redis: aioredis.Redis) -> None:
    """Refunding a reward-paid perk with bought coins would turn reward coins into money: a finding."""
    await _reward_paid_perk(redis, "p1")
    legs = rules.perk_refund_legs(V, C, rules.split_gift(50, 5000))
    await _entry(redis, {"kind": "perk_refund", "id": "perk_refund:p1", "ref": "p1", "legs": rules.encode_legs(legs)})
    findings = "\n".join((await run_audit(redis)).findings)
    assert "perk p1: refunded 50 coins, paid 50 rewards" in findings, findings


async def test_the_audit_finds_reward_coins_of_a_perk_paid_out(redis: aioredis.Redis) -> None:
    """A perk or its refund moving reward coins anywhere but viewer <-> sys:rewards_spent is a finding."""
    await _reward_paid_perk(redis, "p1")
    await _entry(redis, {"kind": "perk_refund", "id": "perk_refund:p1", "ref": "p1",
                         "legs": "rewards sys:rewards_spent sys:payouts 50"})  # fmt: skip
    findings = "\n".join((await run_audit(redis)).findings)
    assert "reward coins moved sys:rewards_spent -> sys:payouts" in findings, findings
