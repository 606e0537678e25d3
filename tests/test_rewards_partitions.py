"""Reward coins on a partitioned ledger: the budget's partition decides every accrual; a viewer of another
partition is credited through the budget partition's outbox, exactly once, whatever step is skipped or repeated.
Against a real Valkey, standalone and cluster (docs/REWARDS.md "Partitions")."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gifting import keys
from gifting.clock import now_ms, utc_day
from gifting.ledger import partitions
from gifting.ledger.audit import run_audit
from gifting.ledger.rewards import Grant, Rewards
from gifting.ledger.store import Ledger
from tests.conftest import make_settings, run_worker

pytestmark = pytest.mark.cluster

ADMIN = "boss"


@pytest.fixture
def rewards(redis: aioredis.Redis, tmp_path: Path) -> Rewards:
    settings = make_settings(tmp_path, reward_viewer_day_coins_max=1000, reward_day_coins_max=100_000)
    return Rewards(redis, settings, Ledger(redis, settings))


def budget_part() -> int:
    return partitions.of_account(keys.SYS_REWARDS_BUDGET)


def viewers(count: int, where: Callable[[int], bool], prefix: str = "v") -> list[str]:
    """`count` user names whose partition satisfies `where` (names picked by partitions.of_account)."""
    found = []
    for i in range(100_000):
        name = f"{prefix}{i}"
        if where(partitions.of_account(keys.account(name))):
            found.append(name)
            if len(found) == count:
                return found
    raise AssertionError("not enough names")


def elsewhere(count: int) -> list[str]:
    """Viewers of partitions other than the budget's, as many different partitions as there are."""
    seen: set[int] = set()

    def new_partition(p: int) -> bool:
        if p == budget_part() or (p in seen and len(seen) < partitions.count() - 1):
            return False
        seen.add(p)
        return True

    return viewers(count, new_partition)


async def reward_coins(redis: aioredis.Redis, account: str, part: str | None = None) -> int:
    return int(await redis.hget(keys.rewards(part or keys.part_of(account)), account) or 0)


async def per_partition(redis: aioredis.Redis) -> dict[str, dict[str, int]]:
    """Each partition's reward coin balances."""
    found = {}
    for tag in partitions.all_tags():
        found[tag] = {k: int(v) for k, v in (await redis.hgetall(keys.rewards(tag))).items()}
    return found


async def check_exact(redis: aioredis.Redis, funded: int, paid: dict[str, int]) -> None:
    """The money is exact: each viewer holds what it was paid, in its own partition only; the budget holds the
    rest and never went negative; each partition's ledger sums to zero; nothing is in transit; no outbox left."""
    balances = await per_partition(redis)
    for tag, accounts in balances.items():
        assert sum(accounts.values()) == 0, (tag, accounts)
        for account in accounts:
            assert partitions.is_shared(account) or keys.part_of(account) == tag, (tag, account)
    assert sum(b.get(keys.SYS_TRANSIT, 0) for b in balances.values()) == 0
    for viewer, coins in paid.items():
        assert await reward_coins(redis, keys.account(viewer)) == coins, viewer
    assert await reward_coins(redis, keys.SYS_REWARDS_BUDGET) == funded - sum(paid.values()) >= 0
    assert await redis.xlen(keys.outbox(keys.rewards_part())) == 0


async def statement_kinds(redis: aioredis.Redis, user: str) -> list[str]:
    return [row.split("\t")[1] for row in await redis.lrange(keys.statement(user), 0, -1)]


async def test_an_accrual_to_a_viewer_of_another_partition_lands_there_once(
    rewards: Rewards, redis: aioredis.Redis
) -> None:
    """Budget debited in its partition, the viewer credited in its own with its statement row; a replay moves
    nothing."""
    (viewer,) = elsewhere(1)
    await rewards.fund(ADMIN, "k1", 100)
    first = await rewards.accrue("first_gift", viewer, "20260101", 10)
    again = await rewards.accrue("first_gift", viewer, "20260101", 10)
    assert (first.status, again.status) == ("ok", "replay")
    await check_exact(redis, 100, {viewer: 10})
    assert await reward_coins(redis, keys.account(viewer), keys.rewards_part()) == 0  # not in the budget's
    assert await statement_kinds(redis, viewer) == ["reward_first_gift"]
    summary = await rewards.summary(viewer)
    assert (summary["reward_coins"], summary["earned_today"]) == (10, 10)


async def test_a_viewer_in_the_budgets_partition_is_paid_in_one_step(rewards: Rewards, redis: aioredis.Redis) -> None:
    """Viewer and budget in one partition: no outbox entry, no credit; the script writes the row itself."""
    (viewer,) = viewers(1, lambda p: p == budget_part())
    await rewards.fund(ADMIN, "k1", 100)
    part = keys.rewards_part()
    entries_before = await redis.xlen(keys.outbox(part))
    assert (await rewards.accrue("first_gift", viewer, "20260101", 7)).status == "ok"
    await check_exact(redis, 100, {viewer: 7})
    assert entries_before == 0 and not await redis.xrange(keys.outbox(part))
    kinds = [f["kind"] for _, f in await redis.xrange(keys.journal(part))]
    assert kinds == ["reward_funding", "reward"]  # no credits entry: nothing crossed
    assert await statement_kinds(redis, viewer) == ["reward_first_gift"]


async def source_step(rewards: Rewards, viewer: str, period: str, coins: int) -> tuple[str, str]:
    """Only the budget partition's step of an accrual (rewards.lua), as a process that dies right after it."""
    (outcome,), outbox_id = await rewards._decide("first_gift", [Grant(viewer, period, coins)], now_ms())
    return outcome.status, outbox_id


async def test_accruals_land_once_when_the_credit_step_is_skipped_and_redriven(
    rewards: Rewards, redis: aioredis.Redis
) -> None:
    """Step 1 alone (a crash before the credit), then redrives, a credit applied but its entry left (a crash
    before XDEL), and replays: every paid viewer holds its coins once, the budget is exactly spent, never less."""
    remote = elsewhere(5)
    (local,) = viewers(1, lambda p: p == budget_part(), prefix="w")
    await rewards.fund(ADMIN, "k1", 50)
    steps = [await source_step(rewards, v, "p1", 10) for v in [*remote, local]]
    assert [s for s, _ in steps] == ["ok"] * 5 + ["rewards_budget_exhausted"]
    assert await reward_coins(redis, keys.SYS_REWARDS_BUDGET) == 0
    balances = await per_partition(redis)
    assert sum(b.get(keys.SYS_TRANSIT, 0) for b in balances.values()) == 50  # all in flight
    assert [await reward_coins(redis, keys.account(v)) for v in remote] == [0] * 5
    part = keys.rewards_part()
    kept = await redis.xrange(keys.outbox(part))
    assert len(kept) == 5
    await rewards.ledger.apply_credits(part, [steps[0][1]])  # one applied by its writer...
    await redis.xadd(keys.outbox(part), kept[0][1])  # ...whose XDEL then "never happened" (a copy is back)
    for _ in range(2):
        await rewards.ledger.redrive_outbox(part, 0)
    replays = [await rewards.accrue("first_gift", v, "p1", 10) for v in remote]
    assert {r.status for r in replays} == {"replay"}
    await check_exact(redis, 50, {v: 10 for v in remote} | {local: 0})
    for viewer in remote:
        assert await statement_kinds(redis, viewer) == ["reward_first_gift"]


async def test_concurrent_accruals_across_partitions_never_overdraw_the_budget(
    rewards: Rewards, redis: aioredis.Redis
) -> None:
    """40 viewers over every partition accrue at once against a budget of 100: 14 are paid 7 each, the rest are
    refused, and every coin is where it belongs."""
    users = viewers(40, lambda p: True, prefix=uuid.uuid4().hex[:6])
    await rewards.fund(ADMIN, "k1", 100)
    outcomes = await asyncio.gather(*(rewards.accrue("first_gift", u, "p1", 7) for u in users))
    paid = {u: 7 for u, o in zip(users, outcomes, strict=True) if o.status == "ok"}
    assert len(paid) == 100 // 7
    assert {o.status for o in outcomes} == {"ok", "rewards_budget_exhausted"}
    await check_exact(redis, 100, {u: paid.get(u, 0) for u in users})


async def test_watch_periods_and_the_streak_of_a_remote_viewer(rewards: Rewards, redis: aioredis.Redis) -> None:
    """Watch accruals (pipelined) and the streak claim pay a viewer of another partition; the day's totals and the
    streak stay in the budget's partition."""
    users = elsewhere(3)
    await rewards.fund(ADMIN, "k1", 1000)
    period = now_ms() // 1000 // rewards.settings.reward_watch_period_s
    outcomes = await rewards.accrue_watch(users, period)
    assert [o.status for o in outcomes] == ["ok"] * 3
    claimed = await rewards.claim_streak(users[0])
    watch_coins, streak_coins = rewards.settings.reward_watch_coins, claimed["coins"]
    paid = {u: watch_coins for u in users} | {users[0]: watch_coins + streak_coins}
    await check_exact(redis, 1000, paid)
    summary: dict[str, Any] = await rewards.summary(users[0])
    assert summary["reward_coins"] == watch_coins + streak_coins
    assert (summary["watch_periods_today"], summary["streak_days"], summary["streak_claimed_today"]) == (1, 1, True)


async def test_the_settlement_worker_redrives_credits_a_dead_process_left(
    redis: aioredis.Redis, valkey_url: str, tmp_path: Path
) -> None:
    """Accruals whose writer died after the budget's step are credited by a worker holding the budget's partition,
    once each, with no gift traffic at all."""
    settings = make_settings(tmp_path, outbox_redrive_ms=50, reward_viewer_day_coins_max=1000)
    rewards = Rewards(redis, settings, Ledger(redis, settings))
    users = elsewhere(4)
    await rewards.fund(ADMIN, "k1", 100)
    for user in users:
        assert (await source_step(rewards, user, "p1", 5))[0] == "ok"
    async with run_worker(settings, valkey_url):
        deadline = asyncio.get_running_loop().time() + 10
        while await redis.xlen(keys.outbox(keys.rewards_part())):
            assert asyncio.get_running_loop().time() < deadline, "outbox not redriven in time"
            await asyncio.sleep(0.05)
        await check_exact(redis, 100, {u: 5 for u in users})


async def test_the_audit_checks_the_caps_of_viewers_of_other_partitions(
    rewards: Rewards, redis: aioredis.Redis
) -> None:
    """Real accruals across partitions audit clean; an accrual past a remote viewer's daily cap is a finding that
    names the viewer, though its legs in the budget's partition end at sys:transit."""
    users = elsewhere(3)
    await rewards.fund(ADMIN, "k1", 100)
    for user in users:
        assert (await rewards.accrue("first_gift", user, "20260101", 10)).status == "ok"
    report = await run_audit(redis)
    assert report.clean, report.summary()
    part, viewer = keys.rewards_part(), keys.account(users[0])
    legs = f"rewards {keys.SYS_REWARDS_BUDGET} {keys.SYS_TRANSIT} 995"
    fields = {"kind": "reward", "id": "reward:watch:x:1", "reward": "watch", "viewer": viewer, "legs": legs}
    caps = {"day": utc_day(now_ms()), "viewer_cap": "1000", "day_cap": "100000"}  # the accruals' day: today
    await redis.xadd(keys.journal(part), fields | caps)
    findings = "\n".join((await run_audit(redis)).findings)
    assert f"{viewer} accrued 1005 reward coins, over the cap of 1000" in findings, findings
