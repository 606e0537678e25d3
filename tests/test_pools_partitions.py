"""Pooled gifts on ledger partitions: a pool in its creator's partition, pledgers paying from their own, each
pledge accepted or refunded exactly once whatever step a crash interrupts (gifting/ledger/pools.py)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gifting import clock, keys
from gifting.ledger import partitions, pools, rules
from gifting.ledger.store import Ledger
from tests.conftest import make_settings

pytestmark = pytest.mark.cluster  # on a standalone Valkey and on a Valkey Cluster (tests/conftest.py)

PRICE = 1000
POOL_PART, OTHER_PART, THIRD_PART = 0, 1, 2


def user_in(partition: int, prefix: str) -> str:
    """A user name whose account lives in `partition`."""
    for i in range(10_000):
        if partitions.of_account(keys.account(f"{prefix}{i}")) == partition:
            return f"{prefix}{i}"
    raise AssertionError(f"no {prefix}* user in partition {partition}")


@pytest.fixture
async def ledger(redis: aioredis.Redis, tmp_path: Path) -> AsyncIterator[Ledger]:
    yield Ledger(redis, make_settings(tmp_path))


async def grant(redis: aioredis.Redis, user: str, coins: int) -> None:
    """Coins the way a purchase credits them (issuance -> user), in the user's partition, with its journal entry."""
    part, account = keys.part_of_user(user), keys.account(user)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hincrby(keys.coins(part), account, coins)
        pipe.hincrby(keys.coins(part), keys.SYS_COIN_ISSUANCE, -coins)
        pipe.xadd(keys.journal(part), {"kind": "purchase", "id": f"grant:{secrets.token_hex(4)}",
                                       "legs": f"coins {keys.SYS_COIN_ISSUANCE} {account} {coins}"})  # fmt: skip
        await pipe.execute()


async def open_pool(ledger: Ledger, creator: str, starter: str, deadline_ms: int | None = None) -> str:
    pool_id = rules.pool_id(partitions.of_account(keys.account(creator)), secrets.token_hex(8))
    record = {
        "id": pool_id, "room": "room1", "creator": creator, "gift": "galaxy", "price": PRICE,
        "bps": ledger.settings.creator_share_bps, "pledged": 0, "status": "open",
        "deadline_ms": deadline_ms or clock.now_ms() + 60_000, "starter": starter, "contributors": "[]",
    }  # fmt: skip
    reason, pool = await ledger.pool_open("room1", starter, record)
    assert reason == "" and pool is not None, reason
    return pool_id


async def coins(redis: aioredis.Redis, part: str, account: str) -> int:
    return int(await redis.hget(keys.coins(part), account) or 0)


async def transit_total(redis: aioredis.Redis) -> int:
    """sys:transit over every partition: what is in flight between partitions."""
    return sum([await coins(redis, part, keys.SYS_TRANSIT) for part in partitions.all_tags()])


async def assert_each_partition_balances(redis: aioredis.Redis) -> None:
    for part in partitions.all_tags():
        for ledger_name, key in keys.ledgers(part):
            total = sum(int(v) for v in (await redis.hvals(key)))
            assert total == 0, f"{ledger_name} of {part} sums to {total}"


async def pledge(ledger: Ledger, pool_id: str, user: str, amount: int, pid: str | None = None) -> Any:
    return await ledger.pool_op("pledge", pool_id, pid or secrets.token_hex(6), user, amount, user.upper())


async def test_pledgers_of_other_partitions_complete_a_pool_with_exact_balances(
    redis: aioredis.Redis, ledger: Ledger
) -> None:
    """Two pledgers in two other partitions fill a pool: escrow pays the creator in the pool's partition, transit
    sums to 0, every partition's ledgers sum to 0."""
    creator, a, b = user_in(POOL_PART, "c"), user_in(OTHER_PART, "a"), user_in(THIRD_PART, "b")
    q = keys.part_of_user(creator)
    await grant(redis, a, 500)
    await grant(redis, b, 700)
    pool_id = await open_pool(ledger, creator, a)
    assert rules.pool_part(pool_id) == q
    status, reason, balance, _replay, view = await pledge(ledger, pool_id, a, 400)
    assert (status, reason, balance) == ("accepted", "", 100)
    assert view is not None and int(view["pledged"]) == 400
    status, _reason, balance, _replay, view = await pledge(ledger, pool_id, b, 600)
    assert (status, balance) == ("accepted", 100)
    assert view is not None and view["status"] == "completed"
    split = rules.split_gift(PRICE, ledger.settings.creator_share_bps)
    assert await coins(redis, keys.part_of_user(a), keys.account(a)) == 100
    assert await coins(redis, keys.part_of_user(b), keys.account(b)) == 100
    assert await coins(redis, q, keys.SYS_POOL_ESCROW) == 0
    assert await coins(redis, q, keys.SYS_PLATFORM_REVENUE) == split.platform_coins
    assert int(await redis.hget(keys.diamonds(q), keys.account(creator)) or 0) == split.diamonds
    assert await transit_total(redis) == 0
    await assert_each_partition_balances(redis)
    board = await redis.zrange(keys.creator_top(creator, "all"), 0, -1, withscores=True)
    assert dict(board) == {keys.account(a): 400, keys.account(b): 600}


async def test_a_pledge_to_a_closed_pool_moves_no_coin(redis: aioredis.Redis, ledger: Ledger) -> None:
    """A pledge the pool as read already refuses (completed) is rejected in the pledger's partition, no debit."""
    creator, a, b = user_in(POOL_PART, "c"), user_in(OTHER_PART, "a"), user_in(THIRD_PART, "b")
    await grant(redis, a, PRICE)
    await grant(redis, b, 50)
    pool_id = await open_pool(ledger, creator, a)
    assert (await pledge(ledger, pool_id, a, PRICE))[0] == "accepted"
    journal_before = await redis.xlen(keys.journal(keys.part_of_user(b)))
    status, reason, balance, _replay, _view = await pledge(ledger, pool_id, b, 50)
    assert (status, reason, balance) == ("rejected", "pool_completed", 50)
    assert await redis.xlen(keys.journal(keys.part_of_user(b))) == journal_before
    status, reason, _balance, _replay, _view = await pledge(ledger, "p_nosuchpool", b, 50)
    assert (status, reason) == ("rejected", "unknown_pool")


async def test_a_crash_after_the_debit_neither_loses_nor_doubles_coins(redis: aioredis.Redis, ledger: Ledger) -> None:
    """Step 1 only (the process dies), then two redrives and a resend at once: the pledge lands exactly once."""
    creator, a = user_in(POOL_PART, "c"), user_in(OTHER_PART, "a")
    await grant(redis, a, 500)
    pool_id = await open_pool(ledger, creator, a)
    sid = keys.user_scoped_id(a, "pl1")
    debited = await pools._debit(ledger, pool_id, sid, a, 300, "A", "", clock.now_ms())
    assert debited[:3] == ("debited", "", 200)
    assert await transit_total(redis) == 300  # in flight
    p = keys.part_of_user(a)
    results = await asyncio.gather(
        pools.redrive_pledges(ledger, p, 0), pools.redrive_pledges(ledger, p, 0), pledge(ledger, pool_id, a, 300, "pl1")
    )
    assert results[2][:4] == ("accepted", "", 200, True)
    assert await pools.redrive_pledges(ledger, p, 0) == 0  # nothing left in flight
    assert await coins(redis, p, keys.account(a)) == 200
    assert await coins(redis, keys.part_of_user(creator), keys.SYS_POOL_ESCROW) == 300
    assert int(await redis.hget(keys.pool(keys.part_of_user(creator), pool_id), "pledged") or 0) == 300
    assert await transit_total(redis) == 0
    await assert_each_partition_balances(redis)


async def test_a_crash_after_landing_finishes_once(redis: aioredis.Redis, ledger: Ledger) -> None:
    """Steps 1 and 2 (landed), then the process dies: the redrive records it accepted without landing it again."""
    creator, a = user_in(POOL_PART, "c"), user_in(OTHER_PART, "a")
    await grant(redis, a, 500)
    pool_id = await open_pool(ledger, creator, a)
    q, sid = keys.part_of_user(creator), keys.user_scoped_id(a, "pl2")
    await pools._debit(ledger, pool_id, sid, a, 300, "A", "", clock.now_ms())
    assert (await pools._land(ledger, q, pool_id, sid, a, 300, "A"))[0] == "accepted"
    assert await pools.redrive_pledges(ledger, keys.part_of_user(a), 0) == 1
    assert await redis.hget(keys.pledge_record(keys.part_of_user(a), sid), "status") == "accepted"
    assert int(await redis.hget(keys.pool(q, pool_id), "pledged") or 0) == 300
    assert await transit_total(redis) == 0
    await assert_each_partition_balances(redis)


async def test_a_pledge_refused_after_its_debit_is_refunded_once(redis: aioredis.Redis, ledger: Ledger) -> None:
    """The pool fills between a pledge's debit and its landing: refused in the pool's partition, the coins come
    back once, and the day's spend with them."""
    creator, a, b = user_in(POOL_PART, "c"), user_in(OTHER_PART, "a"), user_in(THIRD_PART, "b")
    await grant(redis, a, 500)
    await grant(redis, b, PRICE)
    pool_id = await open_pool(ledger, creator, a)
    p, sid = keys.part_of_user(a), keys.user_scoped_id(a, "pl3")
    await pools._debit(ledger, pool_id, sid, a, 300, "A", "", clock.now_ms())
    assert (await pledge(ledger, pool_id, b, PRICE))[0] == "accepted"  # fills it meanwhile
    await asyncio.gather(pools.redrive_pledges(ledger, p, 0), pools.redrive_pledges(ledger, p, 0))
    record = await redis.hgetall(keys.pledge_record(p, sid))
    assert (record["status"], record["reason"], record["balance"]) == ("rejected", "pool_completed", "500")
    assert await coins(redis, p, keys.account(a)) == 500
    assert int(await redis.hget(keys.spent_on(p, clock.utc_day(clock.now_ms())), keys.account(a)) or 0) == 0
    statement = await redis.lrange(keys.statement(a), 0, -1)
    assert [row.split("\t")[1] for row in statement] == ["pledge", "pledge_refunded"]
    assert await transit_total(redis) == 0
    await assert_each_partition_balances(redis)


async def test_pledge_ids_belong_to_their_pledger(redis: aioredis.Redis, ledger: Ledger) -> None:
    """Two pledgers may use the same pledge id; one pledger reusing it for other coins is a conflict."""
    creator, a, b = user_in(POOL_PART, "c"), user_in(OTHER_PART, "a"), user_in(OTHER_PART, "b")
    await grant(redis, a, 500)
    await grant(redis, b, 500)
    pool_id = await open_pool(ledger, creator, a)
    assert (await pledge(ledger, pool_id, a, 100, "same"))[0] == "accepted"
    assert (await pledge(ledger, pool_id, b, 100, "same"))[0] == "accepted"
    assert (await pledge(ledger, pool_id, a, 100, "same"))[:4] == ("accepted", "", 400, True)
    assert (await pledge(ledger, pool_id, a, 150, "same"))[0] == "conflict"


async def test_a_cancelled_pool_returns_each_pledge_to_its_partition(redis: aioredis.Redis, ledger: Ledger) -> None:
    """Pledgers in the pool's partition and in two others: each gets their coins back once, with a statement
    row, the escrow ends at 0 and so does transit."""
    creator = user_in(POOL_PART, "c")
    local, a, b = user_in(POOL_PART, "l"), user_in(OTHER_PART, "a"), user_in(THIRD_PART, "b")
    for user in (local, a, b):
        await grant(redis, user, 300)
    pool_id = await open_pool(ledger, creator, a)
    for user, amount in ((local, 100), (a, 200), (b, 300), (a, 50)):
        assert (await pledge(ledger, pool_id, user, amount))[0] == "accepted"
    status, _reason, _balance, _replay, view = await ledger.pool_op("cancel", pool_id)
    assert status == "cancelled" and view is not None
    assert (await ledger.pool_op("cancel", pool_id))[0] == "noop"
    for user in (local, a, b):
        assert await coins(redis, keys.part_of_user(user), keys.account(user)) == 300
        kinds = [row.split("\t")[1] for row in await redis.lrange(keys.statement(user), 0, -1)]
        assert kinds.count("pledge_returned") == 1, (user, kinds)
    assert await coins(redis, keys.part_of_user(creator), keys.SYS_POOL_ESCROW) == 0
    assert await redis.xlen(keys.outbox(keys.part_of_user(creator))) == 0  # applied, then deleted
    assert await transit_total(redis) == 0
    await assert_each_partition_balances(redis)


async def test_an_expired_pool_returns_every_coin(redis: aioredis.Redis, ledger: Ledger) -> None:
    """Past its deadline a pool expires once: every pledge back, nothing paid to the creator."""
    creator, a = user_in(POOL_PART, "c"), user_in(OTHER_PART, "a")
    await grant(redis, a, 300)
    deadline_ms = clock.now_ms() + 1000
    pool_id = await open_pool(ledger, creator, a, deadline_ms=deadline_ms)
    assert (await pledge(ledger, pool_id, a, 200))[0] == "accepted"
    while clock.now_ms() <= deadline_ms:
        await asyncio.sleep(0.05)
    assert (await ledger.pool_op("expire", pool_id))[0] == "expired"
    assert await coins(redis, keys.part_of_user(a), keys.account(a)) == 300
    assert int(await redis.hget(keys.diamonds(keys.part_of_user(creator)), keys.account(creator)) or 0) == 0
    assert await transit_total(redis) == 0
    await assert_each_partition_balances(redis)


def test_pool_ids_name_their_partition() -> None:
    """A pool id gives back its partition; ids no pool can have give None."""
    for p in (0, partitions.count() - 1):
        assert rules.pool_part(rules.pool_id(p, "ab12")) == partitions.tag(p)
    for bad in ("", "p_ab12", "p1", "p1_", "px_ab", f"p{partitions.count()}_ab", "q1_ab", "p-1_ab", "p99999_ab"):
        assert rules.pool_part(bad) is None, bad
