"""Reward coins earned by taking part: funding, accruals (watch time, streak, first gift), caps, spending them on
gifts, and that they are never refunded, charged back or paid out; against a real Valkey, app and worker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from gifting import keys
from gifting.clock import now_ms, utc_day
from gifting.ledger import rules
from gifting.ledger.audit import run_audit
from gifting.ledger.rewards import Rewards
from gifting.live.watch_rewards import WatchRewards
from tests.conftest import System, SystemFactory, WsClient

ADMIN = "boss"
REWARD_SETTINGS: dict[str, Any] = {
    "reward_watch_period_s": 1,
    "reward_idle_s": 1,
    "reward_viewer_day_coins_max": 1000,
    "reward_first_gift_coins": 0,
}


async def start(start_system: SystemFactory, **overrides: Any) -> System:
    """A system whose watch-reward timer is stopped: tests pay periods themselves, so counts are exact."""
    system = await start_system(**(REWARD_SETTINGS | overrides))
    await watch(system).stop()
    return system


def watch(system: System) -> WatchRewards:
    watch_rewards: WatchRewards = system.app.state.watch_rewards
    return watch_rewards


def rewards(system: System) -> Rewards:
    r: Rewards = system.app.state.rewards
    return r


async def fund(system: System, coins: int, key: str | None = None) -> Any:
    return await system.http.post(
        "/v1/admin/rewards/budget",
        headers={**system.auth(ADMIN, "admin"), "Idempotency-Key": key or str(uuid.uuid4())},
        json={"coins": coins},
    )


async def reward_coins(redis: aioredis.Redis, user: str) -> int:
    return int(await redis.hget(keys.rewards(keys.part_of_user(user)), keys.account(user)) or 0)


async def give_rewards(system: System, user: str, coins: int) -> None:
    """Credit `coins` reward coins by one accrual (a made-up streak day, so it needs no watching)."""
    outcome = await rewards(system).accrue("first_gift", user, uuid.uuid4().hex, coins)
    assert outcome.status == "ok", outcome


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    """Wait (bounded) until `check` holds: a first-gift reward lands just after its gift's result."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def audit_clean(system: System) -> None:
    report = await run_audit(system.redis)
    assert report.clean, report.summary()


async def watching(system: System, user: str, room: str) -> WsClient:
    client = await system.connect(user)
    joined = await client.join(room)
    assert joined["type"] == "joined", joined
    return client


async def ping(client: WsClient) -> None:
    await client.send({"type": "ping", "ref": "p"})
    await client.wait_type("pong")


async def a_whole_period_later() -> int:
    """Sleep until a whole watch period (1 s) passed since now, and return that period's number."""
    began = time.time()
    await asyncio.sleep(2.1 - (began % 1))
    period = int(time.time()) - 1
    assert period >= began
    return period


# Funding --------------------------------------------------------------------------------------------------


async def test_admin_funds_the_budget_once_per_key(start_system: SystemFactory) -> None:
    """A funding is a transfer issuance -> budget; its retry answers replay and moves nothing."""
    system = await start(start_system)
    first = await fund(system, 500, "f1")
    assert first.status_code == 201 and first.json()["budget_coins"] == 500
    again = await fund(system, 500, "f1")
    assert again.status_code == 200 and again.json() == {"budget_coins": 500, "coins": 500, "replay": True}
    await audit_clean(system)


@pytest.mark.parametrize(
    ("role", "body", "status", "code"),
    [
        ("viewer", {"coins": 5}, 403, "forbidden"),
        ("admin", {"coins": 0}, 400, "bad_amount"),
        ("admin", {"coins": 1.5}, 400, "bad_amount"),
        ("admin", {"coins": "5"}, 400, "bad_amount"),
    ],
)
async def test_bad_funding_is_refused_and_moves_nothing(
    start_system: SystemFactory, role: str, body: dict[str, Any], status: int, code: str
) -> None:
    """A non-admin or a non-positive or non-integer amount gets its code; the budget stays empty."""
    system = await start(start_system)
    response = await system.http.post(
        "/v1/admin/rewards/budget",
        headers={**system.auth(ADMIN, role), "Idempotency-Key": "k"},  # type: ignore[arg-type]
        json=body,
    )
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert await rewards(system).budget() == 0


async def test_funding_key_reused_for_another_amount_is_a_conflict(start_system: SystemFactory) -> None:
    """Same Idempotency-Key, another amount: 409 idempotency_key_conflict, the first funding stands."""
    system = await start(start_system)
    assert (await fund(system, 100, "f2")).status_code == 201
    response = await fund(system, 999, "f2")
    assert (response.status_code, response.json()["error"]["code"]) == (409, "idempotency_key_conflict")
    assert await rewards(system).budget() == 100


# Accruals and caps ----------------------------------------------------------------------------------------


async def test_accrual_twice_with_one_id_moves_once(start_system: SystemFactory) -> None:
    """A retried accrual (same kind, viewer, period) is a replay and pays nothing more."""
    system = await start(start_system)
    await fund(system, 100)
    first = await rewards(system).accrue("watch", "v1", "42", 3)
    again = await rewards(system).accrue("watch", "v1", "42", 3)
    assert (first.status, again.status) == ("ok", "replay")
    assert await reward_coins(system.redis, "v1") == 3 and await rewards(system).budget() == 97
    await audit_clean(system)


async def test_an_accrual_dated_days_ago_is_still_remembered(start_system: SystemFactory) -> None:
    """An accrual of a past day's period (a late hub) keeps its record: tried again, it is a replay."""
    system = await start(start_system)
    await fund(system, 100)
    three_days_ago = now_ms() - 3 * 86_400_000
    first = await rewards(system).accrue("watch", "v1", "7", 2, three_days_ago)
    again = await rewards(system).accrue("watch", "v1", "7", 2, three_days_ago)
    assert (first.status, again.status) == ("ok", "replay")
    assert await reward_coins(system.redis, "v1") == 2


async def test_accrual_beyond_the_budget_is_refused_and_the_budget_never_goes_below_zero(
    start_system: SystemFactory,
) -> None:
    """With 5 coins in the budget, accruals of 2 to many viewers at once pay two of them and refuse the rest."""
    system = await start(start_system)
    await fund(system, 5)
    outcomes = await asyncio.gather(*(rewards(system).accrue("watch", f"v{i}", "1", 2) for i in range(10)))
    assert sorted(o.status for o in outcomes).count("ok") == 2
    assert {o.status for o in outcomes} == {"ok", "rewards_budget_exhausted"}
    assert await rewards(system).budget() == 1
    await audit_clean(system)


async def test_viewer_daily_cap_refuses_the_accrual_that_would_pass_it(start_system: SystemFactory) -> None:
    """With a cap of 5 a day, 3 + 2 pay, then 1 more is refused (reward_viewer_cap) and moves nothing."""
    system = await start(start_system, reward_viewer_day_coins_max=5)
    await fund(system, 100)
    statuses = [(await rewards(system).accrue("watch", "v1", str(p), c)).status for p, c in ((1, 3), (2, 2), (3, 1))]
    assert statuses == ["ok", "ok", "reward_viewer_cap"]
    assert await reward_coins(system.redis, "v1") == 5
    await audit_clean(system)


async def test_platform_daily_cap_refuses_accruals_beyond_it(start_system: SystemFactory) -> None:
    """With a platform cap of 4 a day, two viewers' 2 + 2 pay and a third viewer's 2 is refused."""
    system = await start(start_system, reward_day_coins_max=4)
    await fund(system, 100)
    statuses = [(await rewards(system).accrue("watch", u, "1", 2)).status for u in ("a", "b", "c")]
    assert statuses == ["ok", "ok", "reward_platform_cap"]
    assert await rewards(system).budget() == 96
    await audit_clean(system)


# Watch time, observed by the hub ----------------------------------------------------------------------------


@pytest.mark.cluster
async def test_an_active_socket_in_a_live_room_earns_a_watch_period(start_system: SystemFactory) -> None:
    """A viewer connected through a whole period, pinging, earns GIFTING_REWARD_WATCH_COINS for it."""
    system = await start(start_system, reward_watch_coins=2)
    await fund(system, 100)
    room = await system.open_room("creator1")
    client = await watching(system, "v1", room)
    period = await a_whole_period_later()
    await ping(client)
    outcomes = await watch(system).accrue(period)
    assert [(o.transfer_id, o.status) for o in outcomes] == [(rules.reward_id("watch", "v1", str(period)), "ok")]
    assert await reward_coins(system.redis, "v1") == 2
    await audit_clean(system)


async def test_many_sockets_of_one_user_earn_as_one(start_system: SystemFactory) -> None:
    """Three sockets of one viewer (two rooms), and a second hub paying the same period, earn one period once."""
    system = await start(start_system)
    await fund(system, 100)
    rooms = [await system.open_room("creator1"), await system.open_room("creator2")]
    clients = [await watching(system, "v1", rooms[i % 2]) for i in range(3)]
    period = await a_whole_period_later()
    for client in clients:
        await ping(client)
    first = await watch(system).accrue(period)
    second_hub = await watch(system).accrue(period)  # another process with the same viewer: same transfer id
    assert [o.status for o in first] == ["ok"] and [o.status for o in second_hub] == ["replay"]
    assert await reward_coins(system.redis, "v1") == 1


async def test_an_idle_socket_earns_nothing(start_system: SystemFactory) -> None:
    """A socket that sent nothing for GIFTING_REWARD_IDLE_S is idle: its viewer earns nothing that period."""
    system = await start(start_system)
    await fund(system, 100)
    room = await system.open_room("creator1")
    active, _idle = await watching(system, "active", room), await watching(system, "idle", room)
    period = await a_whole_period_later()
    await ping(active)
    outcomes = await watch(system).accrue(period)
    assert [o.transfer_id for o in outcomes] == [rules.reward_id("watch", "active", str(period))]
    assert await reward_coins(system.redis, "idle") == 0


async def test_a_socket_opened_during_the_period_or_in_an_ended_or_own_room_earns_nothing(
    start_system: SystemFactory,
) -> None:
    """Late joiners, viewers of an ended room and a creator in their own room earn nothing for the period."""
    system = await start(start_system)
    await fund(system, 100)
    room, ended = await system.open_room("creator1"), await system.open_room("creator2")
    own = await watching(system, "creator1", room)
    gone = await watching(system, "v_ended", ended)
    response = await system.http.post(f"/v1/rooms/{ended}/end", headers=system.auth("creator2", "creator"))
    assert response.status_code == 200, response.text
    period = await a_whole_period_later()
    late = await watching(system, "v_late", room)
    for client in (own, gone, late):
        await ping(client)
    assert await watch(system).accrue(period) == []


# Streak -------------------------------------------------------------------------------------------------------


async def test_streak_needs_a_watch_period_today_then_pays_once(start_system: SystemFactory) -> None:
    """Before watching: 409 reward_not_earned; after: the bonus; claimed twice: 409 reward_already_claimed."""
    system = await start(start_system, reward_streak_coins=3)
    await fund(system, 100)
    headers = system.auth("v1")
    early = await system.http.post("/v1/rewards/streak", headers=headers)
    assert (early.status_code, early.json()["error"]["code"]) == (409, "reward_not_earned")
    day_period = now_ms() // 1000
    assert (await rewards(system).accrue_watch(["v1"], day_period))[0].status == "ok"
    claimed = await system.http.post("/v1/rewards/streak", headers=headers)
    assert claimed.status_code == 200, claimed.text
    assert (claimed.json()["streak_days"], claimed.json()["coins"]) == (1, 3)
    twice = await system.http.post("/v1/rewards/streak", headers=headers)
    assert (twice.status_code, twice.json()["error"]["code"]) == (409, "reward_already_claimed")
    assert await reward_coins(system.redis, "v1") == 1 + 3
    summary = (await system.http.get("/v1/rewards", headers=headers)).json()
    assert summary["streak_claimed_today"] and summary["earned_today"] == 4
    await audit_clean(system)


@pytest.mark.cluster
async def test_streak_claimed_from_many_tabs_at_once_pays_once(start_system: SystemFactory) -> None:
    """Five concurrent claims (tabs, sockets, retries): one 200, four 409 reward_already_claimed, paid once."""
    system = await start(start_system, reward_streak_coins=3)
    await fund(system, 100)
    await rewards(system).accrue_watch(["v1"], now_ms() // 1000)
    answers = await asyncio.gather(
        *(system.http.post("/v1/rewards/streak", headers=system.auth("v1")) for _ in range(5))
    )
    assert sorted(a.status_code for a in answers) == [200, 409, 409, 409, 409]
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {"reward_already_claimed"}
    assert await reward_coins(system.redis, "v1") == 1 + 3
    await audit_clean(system)


def test_streak_grows_by_consecutive_days_and_restarts_after_a_gap() -> None:
    """Yesterday's streak + 1; a gap (or nothing stored) starts at 1; the bonus stops growing at its maximum."""
    assert rules.streak_after(None, "20260102", "20260101") == (1, "20260102 1")
    assert rules.streak_after("20260101 4", "20260102", "20260101") == (5, "20260102 5")
    assert rules.streak_after("20251230 4", "20260102", "20260101") == (1, "20260102 1")
    assert rules.streak_coins(9, 2, 7) == 14 and rules.streak_coins(3, 2, 7) == 6


# Spending reward coins ------------------------------------------------------------------------------------------


async def settle(client: WsClient, room: str, gift: str, count: int = 1) -> dict[str, Any]:
    gid = await client.gift(room, gift, count)
    result = await client.result(gid)
    assert result["status"] == "settled", result
    return result


async def test_a_gift_the_reward_coins_cover_is_paid_with_them_and_the_creator_earns_alike(
    start_system: SystemFactory,
) -> None:
    """Reward coins first: a 10-coin gift takes 10 reward coins, no bought coins, and the creator earns the same
    diamonds as from bought coins (the platform pays them); a gift they cannot cover is paid with bought coins."""
    system = await start(start_system)
    await fund(system, 100)
    await give_rewards(system, "v1", 15)
    await system.grant("v1", 50)
    room = await system.open_room("creator1")
    client = await system.connect("v1")
    await settle(client, room, "coffee")  # 10 coins: reward coins cover it
    assert (await system.wallet("v1"))["coins"] == 50 and await reward_coins(system.redis, "v1") == 5
    diamonds_from_rewards = (await system.wallet("creator1"))["diamonds"]
    assert diamonds_from_rewards == rules.split_gift(10, system.settings.creator_share_bps).diamonds
    await settle(client, room, "coffee")  # 5 reward coins do not cover 10: bought coins pay, whole
    assert (await system.wallet("v1"))["coins"] == 40 and await reward_coins(system.redis, "v1") == 5
    assert (await system.wallet("creator1"))["diamonds"] == 2 * diamonds_from_rewards
    items = (await system.http.get("/v1/wallet/transactions", headers=system.auth("v1"))).json()["transactions"]
    assert [(i["kind"], i["ledger"], i["amount"]) for i in items[:3]] == [
        ("gift_sent", "coins", -10),
        ("gift_sent", "rewards", -10),
        ("reward_first_gift", "rewards", 15),
    ]
    await audit_clean(system)


@pytest.mark.parametrize(("coins", "bps"), [(1, 5000), (10, 5000), (99, 3333), (7, 0), (8, 10000)])
def test_a_reward_paid_gift_balances_every_ledger_and_its_row_carries_its_legs(coins: int, bps: int) -> None:
    """rewards, coins and diamonds each sum to zero over the legs; the journal row holds exactly those legs."""
    split = rules.split_gift(coins, bps)
    legs = rules.reward_gift_legs("v", "c", split)
    for ledger in rules.LEDGERS:
        net: dict[str, int] = {}
        for leg in (g for g in legs if g.ledger == ledger):
            net[leg.debit] = net.get(leg.debit, 0) - leg.amount
            net[leg.credit] = net.get(leg.credit, 0) + leg.amount
        assert sum(net.values()) == 0
    assert sum(g.amount for g in legs if g.credit == "u:c") == split.diamonds  # the creator's full share
    row = rules.reward_gift_journal_row("g1", "v", "c", split, "r", "rose", 1)
    assert rules.parse_legs(row.split("\t")[1]) == legs


def test_the_spending_rule_is_whole_gifts_reward_coins_first_and_never_in_debt() -> None:
    """pays_with_rewards: covered -> rewards; not covered, a zero price or a coin debt -> not."""
    assert rules.pays_with_rewards(10, 0, 10)
    assert not rules.pays_with_rewards(9, 100, 10)
    assert not rules.pays_with_rewards(10, -1, 10)
    assert not rules.pays_with_rewards(10, 0, 0)


async def test_refund_and_chargeback_never_touch_reward_coins(start_system: SystemFactory) -> None:
    """A refund takes back only bought coins (reward coins do not count as unspent coins), and a chargeback
    leaves the reward balance as it was; reward coins spent on gifts are not reversed either."""
    system = await start(start_system)
    await fund(system, 100)
    await give_rewards(system, "v1", 40)
    room = await system.open_room("creator1")
    client = await system.connect("v1")
    await settle(client, room, "coffee")  # paid with reward coins
    bought = await system.buy("v1", "coins_65")
    await settle(client, room, "coffee")  # reward coins first again: bought coins stay unspent
    assert await reward_coins(system.redis, "v1") == 20
    purchase_id = bought["purchase"]["purchase_id"]
    admin = system.auth(ADMIN, "admin")
    refund = await system.http.post(f"/v1/admin/purchases/{purchase_id}/refund", headers=admin)
    assert refund.status_code == 200, refund.text
    assert (await system.wallet("v1"))["coins"] == 0 and await reward_coins(system.redis, "v1") == 20
    second = await system.buy("v1", "coins_65")
    await settle(client, room, "doughnut")  # 30 > 20 reward coins: paid with bought coins
    charged = await system.http.post(
        f"/v1/admin/purchases/{second['purchase']['purchase_id']}/chargeback", headers=admin
    )
    assert charged.status_code == 200, charged.text
    assert (await system.wallet("v1"))["coins"] == -30 and await reward_coins(system.redis, "v1") == 20
    await audit_clean(system)


async def test_a_viewer_in_chargeback_debt_cannot_gift_with_reward_coins(start_system: SystemFactory) -> None:
    """Debt blocks gifting, reward coins included: insufficient_coins, nothing moves."""
    system = await start(start_system)
    await fund(system, 100)
    await give_rewards(system, "v1", 50)
    bought = await system.buy("v1", "coins_65")
    room = await system.open_room("creator1")
    client = await system.connect("v1")
    await settle(client, room, "doughnut", 2)  # 60 > 50 reward coins: bought coins pay
    response = await system.http.post(
        f"/v1/admin/purchases/{bought['purchase']['purchase_id']}/chargeback", headers=system.auth(ADMIN, "admin")
    )
    assert response.status_code == 200, response.text
    gid = await client.gift(room, "coffee")
    result = await client.result(gid)
    assert (result["status"], result["reason"]) == ("rejected", "insufficient_coins")
    assert await reward_coins(system.redis, "v1") == 50
    await audit_clean(system)


@pytest.mark.cluster
async def test_the_first_gift_of_the_day_earns_once(start_system: SystemFactory) -> None:
    """The first settled gift of the UTC day pays GIFTING_REWARD_FIRST_GIFT_COINS; later gifts pay nothing."""
    system = await start(start_system, reward_first_gift_coins=5)
    await fund(system, 100)
    await system.grant("v1", 20)
    room = await system.open_room("creator1")
    client = await system.connect("v1")
    for _ in range(3):
        await settle(client, room, "rose")
    day = utc_day(now_ms())

    async def recorded() -> bool:
        first = await system.redis.hget(
            keys.reward_records(keys.rewards_part(), day), rules.reward_id("first_gift", "v1", day)
        )
        return first == "5|first_gift"

    await eventually(recorded)
    # Later roses may be paid with the new reward coins or not (the reward lands just after the first result):
    # either way 3 coins of the 20 bought + 5 earned were spent, and the reward was paid once.
    wallet = (await system.http.get("/v1/wallet", headers=system.auth("v1"))).json()
    assert wallet["coins"] + wallet["reward_coins"] == 20 + 5 - 3
    await audit_clean(system)


# The audit -------------------------------------------------------------------------------------------------------


async def tamper(redis: aioredis.Redis, fields: dict[str, str], moves: list[tuple[str, str, int]]) -> None:
    """A journal entry and the stored balances it implies (so only the rule it breaks is a finding), in the
    budget's partition: its viewer, u:v7, lives there too, so every leg is local."""
    part = keys.rewards_part()
    assert keys.part_of("u:v7") == part
    for debit, credit, amount in moves:
        await redis.hincrby(keys.rewards(part), debit, -amount)
        await redis.hincrby(keys.rewards(part), credit, amount)
    await redis.xadd(keys.journal(part), fields)


async def test_audit_finds_reward_coins_paid_out(redis: aioredis.Redis) -> None:
    """A `rewards` leg from a viewer to anything but sys:rewards_spent is a finding (paid out)."""
    await tamper(
        redis,
        {"kind": "reward_funding", "id": "f", "legs": "rewards sys:rewards_issuance sys:rewards_budget 5"},
        [("sys:rewards_issuance", "sys:rewards_budget", 5)],
    )
    await tamper(
        redis,
        {
            "kind": "reward",
            "id": "r",
            "legs": "rewards sys:rewards_budget u:v7 5",
            "day": "20260101",
            "viewer_cap": "10",
            "day_cap": "10",
        },
        [("sys:rewards_budget", "u:v7", 5)],
    )
    await tamper(
        redis,
        {"kind": "withdrawal_posted", "id": "w", "legs": "rewards u:v7 sys:diamonds_paid_out 5"},
        [("u:v7", "sys:diamonds_paid_out", 5)],
    )
    report = await run_audit(redis)
    assert [f for f in report.findings if "reward coins moved u:v7 -> sys:diamonds_paid_out" in f], report.summary()


async def test_audit_finds_a_budget_below_zero_and_accruals_over_the_caps(redis: aioredis.Redis) -> None:
    """An accrual the budget could not cover, and a day's accruals over the recorded caps, are findings."""
    common = {"kind": "reward", "day": "20260101", "viewer_cap": "3", "day_cap": "4"}
    await tamper(
        redis, {**common, "id": "r1", "legs": "rewards sys:rewards_budget u:v7 3"}, [("sys:rewards_budget", "u:v7", 3)]
    )
    await tamper(
        redis, {**common, "id": "r2", "legs": "rewards sys:rewards_budget u:v7 2"}, [("sys:rewards_budget", "u:v7", 2)]
    )
    findings = "\n".join((await run_audit(redis)).findings)
    assert "sys:rewards_budget at -3, below zero" in findings
    assert "u:v7 accrued 5 reward coins, over the cap of 3" in findings
    assert "the platform accrued 5 reward coins, over the cap of 4" in findings


async def test_first_gift_reward_waits_for_a_funded_budget(start_system: SystemFactory) -> None:
    """With an empty budget a settled gift pays no reward (and tries no accrual); once funded, the next one does."""
    system = await start(start_system, reward_first_gift_coins=5)
    await system.grant("v1", 20)
    room = await system.open_room("creator1")
    client = await system.connect("v1")
    await settle(client, room, "rose")
    journal = await system.redis.xrange(keys.journal(keys.rewards_part()))
    assert [f["kind"] for _, f in journal if f["kind"].startswith("reward")] == []
    await fund(system, 100)
    await settle(client, room, "rose")

    async def paid() -> bool:
        return await reward_coins(system.redis, "v1") == 5

    await eventually(paid)
    await audit_clean(system)
