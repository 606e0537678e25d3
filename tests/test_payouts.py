"""Payouts: durable before paid, fair across creators (per-creator cap, paging, backoff), and the group's
consumers pruned. Against the real embedded Valkey; the provider is the product's own interface."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gifting import keys
from gifting.ledger import partitions
from gifting.ledger.store import DurabilityError, Ledger, LedgerError
from gifting.payments import PAYOUT_OK, PAYOUT_SLOW, Payout, SandboxPayouts
from tests.conftest import make_settings
from workers.settlement import SettlementWorker


class CountingPayouts(SandboxPayouts):
    """The sandbox provider, counting the calls it gets per withdrawal id."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def payout(self, withdrawal_id: str, user: str, diamonds: int, payout_account: str) -> Payout:
        self.calls[withdrawal_id] += 1
        return await super().payout(withdrawal_id, user, diamonds, payout_account)


async def withdraw(ledger: Ledger, user: str, key: str, account: str, diamonds: int = 1) -> str:
    await ledger.redis.hincrby(keys.diamonds(keys.part_of_user(user)), keys.account(user), diamonds)
    wid = keys.withdrawal_id(user, key)
    withdrawal, _ = await ledger.request_withdrawal(user, wid, diamonds, account, f"{diamonds}:{account}")
    withdrawal_id: str = withdrawal["withdrawal_id"]
    return withdrawal_id


def worker_with(redis: aioredis.Redis, tmp_path: Path, **overrides: Any) -> tuple[SettlementWorker, CountingPayouts]:
    settings = make_settings(tmp_path, withdrawal_diamonds_min=1, diamond_hold_s=0, **overrides)
    provider = CountingPayouts()
    return SettlementWorker(redis, settings, payouts=provider), provider


async def test_a_creator_may_have_only_so_many_pending_withdrawals(redis: aioredis.Redis, tmp_path: Path) -> None:
    """The fourth pending withdrawal of one creator is refused (too_many_pending_withdrawals); once one resolves,
    another may be requested; other creators are not affected."""
    worker, _ = worker_with(redis, tmp_path)
    ids = [await withdraw(worker.ledger, "c1", f"k{i}", PAYOUT_SLOW) for i in range(3)]
    with pytest.raises(LedgerError) as refused:
        await withdraw(worker.ledger, "c1", "k3", PAYOUT_SLOW)
    assert refused.value.code == "too_many_pending_withdrawals"
    await withdraw(worker.ledger, "c2", "k0", PAYOUT_SLOW)
    await worker.ledger.resolve_withdrawal(ids[0], "void", "test")
    await withdraw(worker.ledger, "c1", "k4", PAYOUT_SLOW)


def user_in(part: int, prefix: str) -> str:
    """A user name whose account lives in ledger partition `part`."""
    return next(f"{prefix}{i}" for i in range(10_000) if partitions.of_account(keys.account(f"{prefix}{i}")) == part)


async def test_one_creators_slow_withdrawals_do_not_hold_back_another_creators(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    """25 withdrawals the provider keeps processing, ahead of another creator's in the same partition: paging
    reaches it (10 a partition per run), and the slow ones are not asked again before their backoff."""
    per_run = 10 * partitions.count()
    worker, provider = worker_with(
        redis, tmp_path, withdrawals_pending_per_user_max=100, payouts_per_run_max=per_run, payout_interval_ms=60_000
    )
    slow_creator, other_creator = user_in(3, "slow"), user_in(3, "other")
    slow = [await withdraw(worker.ledger, slow_creator, f"k{i}", PAYOUT_SLOW) for i in range(25)]
    other = await withdraw(worker.ledger, other_creator, "k0", PAYOUT_OK)
    for _ in range(3):
        await worker.run_payouts()
    assert (await worker.ledger.withdrawal(other))["status"] == "paid"  # type: ignore[index]
    await worker.run_payouts()  # the first page again: backing off, not asked
    assert {provider.calls[w] for w in slow} == {1} and provider.calls[other] == 1


async def test_a_busy_partition_does_not_hold_back_the_others(redis: aioredis.Redis, tmp_path: Path) -> None:
    """With fewer payouts per run than partitions, each run takes one withdrawal from the next partitions in turn:
    a partition full of slow withdrawals gets its one a run, and every other partition's creator is paid within
    partitions / per-run runs."""
    per_run = 4
    worker, provider = worker_with(
        redis, tmp_path, withdrawals_pending_per_user_max=100, payouts_per_run_max=per_run, payout_interval_ms=60_000
    )
    busy = user_in(0, "busy")
    slow = [await withdraw(worker.ledger, busy, f"k{i}", PAYOUT_SLOW) for i in range(10)]
    others = [await withdraw(worker.ledger, user_in(p, "c"), "k0", PAYOUT_OK) for p in range(1, partitions.count())]
    asked = []
    for _ in range(partitions.count() // per_run):
        before = sum(provider.calls.values())
        await worker.run_payouts()
        asked.append(sum(provider.calls.values()) - before)
    assert asked == [per_run] * len(asked)  # a page per run, never more
    assert [(await worker.ledger.withdrawal(w))["status"] for w in others] == ["paid"] * len(others)  # type: ignore[index]
    assert sum(provider.calls[w] for w in slow) == 1


async def test_payouts_wait_for_durability_before_the_provider(redis: aioredis.Redis, tmp_path: Path) -> None:
    """When the fsync of pending withdrawals cannot be confirmed, nothing reaches the payout provider."""
    worker, provider = worker_with(redis, tmp_path)
    withdrawal = await withdraw(worker.ledger, "c1", "k0", PAYOUT_OK)
    await worker.ledger.durable(1000)  # learn that WAITAOF works here
    assert worker.ledger.waitaof_supported
    await redis.config_set("appendonly", "no")
    try:
        with pytest.raises((ResponseError, DurabilityError)):
            await worker.run_payouts()
    finally:
        await redis.config_set("appendonly", "yes")
        for _ in range(500):
            info = await redis.info("persistence")
            if info["aof_enabled"] and not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                break
            await asyncio.sleep(0.02)
    assert provider.calls[withdrawal] == 0
    assert (await worker.ledger.withdrawal(withdrawal))["status"] == "pending"  # type: ignore[index]
    assert await worker.run_payouts() == 1
    assert (await worker.ledger.withdrawal(withdrawal))["status"] == "paid"  # type: ignore[index]


async def test_consumers_left_by_stopped_processes_are_pruned(redis: aioredis.Redis, tmp_path: Path) -> None:
    """Idle consumers with nothing pending leave the group (also an old per-process name such as ours); one
    holding a pending entry, and the settling loop's own (settler, the same in every process), stay."""
    worker, _ = worker_with(redis, tmp_path, consumer_idle_s_max=0)
    await worker.ensure_group()
    stream = keys.gifts_stream(partitions.tag(0))  # every partition's group is pruned alike
    await redis.xgroup_createconsumer(stream, keys.SETTLEMENT_GROUP, "gone-1")
    await redis.xadd(stream, {"x": "1"})
    await redis.xreadgroup(keys.SETTLEMENT_GROUP, "gone-2", {stream: ">"}, count=1)
    await redis.xgroup_createconsumer(stream, keys.SETTLEMENT_GROUP, worker.consumer)
    await redis.xgroup_createconsumer(stream, keys.SETTLEMENT_GROUP, "settler")
    await asyncio.sleep(0.01)  # idle > 0 ms
    assert await worker.prune_consumers() == 2
    names = {c["name"] for c in await redis.xinfo_consumers(stream, keys.SETTLEMENT_GROUP)}
    assert names == {"gone-2", "settler"}


class StuckPayouts(CountingPayouts):
    """A provider that never answers for one account and fails for another (its own outage)."""

    async def payout(self, withdrawal_id: str, user: str, diamonds: int, payout_account: str) -> Payout:
        if payout_account == "acct_hangs":
            self.calls[withdrawal_id] += 1
            await asyncio.Event().wait()
        if payout_account == "acct_raises":
            self.calls[withdrawal_id] += 1
            raise RuntimeError("provider outage")
        return await super().payout(withdrawal_id, user, diamonds, payout_account)


async def test_a_hanging_or_failing_provider_call_does_not_stop_the_payouts(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    """A provider call that never returns is cut at its timeout and one that raises is retried later; both stay
    pending, and the withdrawal after them is paid."""
    settings = make_settings(tmp_path, withdrawal_diamonds_min=1, diamond_hold_s=0, payout_call_timeout_ms=50)
    provider = StuckPayouts()
    worker = SettlementWorker(redis, settings, payouts=provider)
    hangs = await withdraw(worker.ledger, "c1", "k0", "acct_hangs")
    raises = await withdraw(worker.ledger, "c2", "k0", "acct_raises")
    paid = await withdraw(worker.ledger, "c3", "k0", PAYOUT_OK)
    assert await worker.run_payouts() == 1
    statuses = [(await worker.ledger.withdrawal(w))["status"] for w in (hangs, raises, paid)]  # type: ignore[index]
    assert statuses == ["pending", "pending", "paid"]
    assert provider.calls[hangs] == provider.calls[raises] == 1
