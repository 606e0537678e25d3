"""Pooled gifts on ledger partitions: a pool in its creator's partition, pledgers paying from their own, each
pledge accepted or refunded exactly once whatever step a crash interrupts (gifting/ledger/pools.py)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis

from gifting import clock, keys
from gifting.config import ConfigError
from gifting.history import journal
from gifting.history import pools as history_pools
from gifting.ledger import partitions, pools, rules
from gifting.ledger.audit import run_audit
from gifting.ledger.store import Ledger
from gifting.wire import protocol
from tests.conftest import make_settings
from workers.settlement import SettlementWorker

pytestmark = pytest.mark.cluster  # on a standalone Valkey and on a Valkey Cluster (tests/conftest.py)

PRICE = 1000
REDRIVE_MS = 2000  # long enough that the test's own steps never take it
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
    pool_id = rules.pool_id(partitions.of_account(keys.account(creator)), secrets.token_hex(rules.POOL_TOKEN_BYTES))
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


async def audit_clean(redis: aioredis.Redis) -> None:
    report = await run_audit(redis)
    assert report.clean, report.summary()


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
    await audit_clean(redis)
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
    for missing in (rules.pool_id(POOL_PART, "0" * 12), "p_x"):  # no such pool; no pool's id
        status, reason, _balance, _replay, _view = await pledge(ledger, missing, b, 50)
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
    await audit_clean(redis)  # the audit sees the pledge in flight, not lost
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
    await audit_clean(redis)


async def test_a_crash_after_landing_finishes_once(redis: aioredis.Redis, ledger: Ledger) -> None:
    """Steps 1 and 2 (landed), then the process dies: the redrive records it accepted without landing it again."""
    creator, a = user_in(POOL_PART, "c"), user_in(OTHER_PART, "a")
    await grant(redis, a, 500)
    pool_id = await open_pool(ledger, creator, a)
    q, sid = keys.part_of_user(creator), keys.user_scoped_id(a, "pl2")
    await pools._debit(ledger, pool_id, sid, a, 300, "A", "", clock.now_ms())
    assert (await pools._land(ledger, q, pool_id, sid, a, 300, "A"))[0] == "accepted"
    await audit_clean(redis)  # landed, not yet finished: settled as far as money goes
    assert await pools.redrive_pledges(ledger, keys.part_of_user(a), 0) == 1
    assert await redis.hget(keys.pledge_record(keys.part_of_user(a), sid), "status") == "accepted"
    assert int(await redis.hget(keys.pool(q, pool_id), "pledged") or 0) == 300
    assert await transit_total(redis) == 0
    await assert_each_partition_balances(redis)
    await audit_clean(redis)


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
    q = keys.part_of_user(creator)
    assert (await pools._land(ledger, q, pool_id, sid, a, 300, "A"))[:2] == ("rejected", "pool_completed")
    await audit_clean(redis)  # refused, not yet refunded: in flight
    await asyncio.gather(pools.redrive_pledges(ledger, p, 0), pools.redrive_pledges(ledger, p, 0))
    record = await redis.hgetall(keys.pledge_record(p, sid))
    assert (record["status"], record["reason"], record["balance"]) == ("rejected", "pool_completed", "500")
    assert await coins(redis, p, keys.account(a)) == 500
    assert int(await redis.hget(keys.spent_on(p, clock.utc_day(clock.now_ms())), keys.account(a)) or 0) == 0
    statement = await redis.lrange(keys.statement(a), 0, -1)
    assert [row.split("\t")[1] for row in statement] == ["pledge", "pledge_refunded"]
    assert await transit_total(redis) == 0
    await assert_each_partition_balances(redis)
    await audit_clean(redis)


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
    await audit_clean(redis)


async def test_an_expired_pool_returns_every_coin(redis: aioredis.Redis, ledger: Ledger) -> None:
    """Past its deadline a pool expires once: every pledge back, nothing paid to the creator."""
    creator, a = user_in(POOL_PART, "c"), user_in(OTHER_PART, "a")
    await grant(redis, a, 300)
    deadline_ms = clock.now_ms() + 1000
    pool_id = await open_pool(ledger, creator, a, deadline_ms=deadline_ms)
    assert (await pledge(ledger, pool_id, a, 200))[0] == "accepted"
    await asyncio.sleep((deadline_ms - clock.now_ms() + 50) / 1000)
    assert (await ledger.pool_op("expire", pool_id))[0] == "expired"
    assert await coins(redis, keys.part_of_user(a), keys.account(a)) == 300
    assert int(await redis.hget(keys.diamonds(keys.part_of_user(creator)), keys.account(creator)) or 0) == 0
    assert await transit_total(redis) == 0
    await assert_each_partition_balances(redis)
    await audit_clean(redis)


def test_pool_ids_name_their_partition() -> None:
    """A pool id gives back its partition and has the wire's shape; ids no pool can have give None."""
    for p in (0, partitions.count() - 1):
        pool = rules.pool_id(p, "ab12cd34ef56")
        assert rules.pool_part(pool) == partitions.tag(p) and protocol.POOL_ID_PATTERN.fullmatch(pool)
    beyond = f"p_{partitions.count():04x}ab12cd34ef56"
    for bad in ("", "p_", "p_0000ab12cd34ef5", "p_0000ab12cd34ef567", "p_0000ab12cd34ef5g", "q_0000ab12cd34ef56",
                "p_0000AB12CD34EF56", "p_-001ab12cd34ef56", beyond):  # fmt: skip
        assert rules.pool_part(bad) is None, bad


async def test_the_pledges_view_names_pledgers_of_other_partitions(
    redis: aioredis.Redis, ledger: Ledger, history: psycopg.AsyncConnection[Any]
) -> None:
    """Archived, a pool's pledges list their pledgers, though the coins landed from sys:transit."""
    creator, a, b = user_in(POOL_PART, "c"), user_in(OTHER_PART, "a"), user_in(POOL_PART, "b")
    await grant(redis, a, 500)
    await grant(redis, b, 500)
    pool_id = await open_pool(ledger, creator, a)
    for user, amount in ((a, 400), (b, 100)):
        assert (await pledge(ledger, pool_id, user, amount))[0] == "accepted"
    await journal.archive_batch(redis, history, keys.journal(keys.part_of_user(creator)), 100)
    rows = await (await history.execute("SELECT pool, account, coins FROM pledges ORDER BY coins")).fetchall()
    assert rows == [(pool_id, keys.account(b), 100), (pool_id, keys.account(a), 400)]


async def test_concurrent_pledges_from_every_partition_fill_a_pool_exactly_once(
    redis: aioredis.Redis, ledger: Ledger
) -> None:
    """30 pledgers of all partitions pledge 50 each at once to a 1,000-coin pool: 20 land, 10 are refused and
    keep their coins, one completion, nothing left in transit."""
    creator = user_in(POOL_PART, "c")
    pledgers = [user_in(i % partitions.count(), f"p{i}_") for i in range(30)]
    for user in pledgers:
        await grant(redis, user, 50)
    pool_id = await open_pool(ledger, creator, pledgers[0])
    results = await asyncio.gather(*(pledge(ledger, pool_id, user, 50) for user in pledgers))
    accepted = [user for user, r in zip(pledgers, results, strict=True) if r[0] == "accepted"]
    assert len(accepted) == PRICE // 50, [r[:2] for r in results]
    assert {r[1] for r in results if r[0] != "accepted"} <= {"pool_completed", "pledge_exceeds_remaining"}
    for user in pledgers:
        assert await coins(redis, keys.part_of_user(user), keys.account(user)) == (0 if user in accepted else 50)
    q = keys.part_of_user(creator)
    assert await redis.hget(keys.pool(q, pool_id), "status") == "completed"
    assert await coins(redis, q, keys.SYS_POOL_ESCROW) == 0
    split = rules.split_gift(PRICE, ledger.settings.creator_share_bps)
    assert int(await redis.hget(keys.diamonds(q), keys.account(creator)) or 0) == split.diamonds
    assert await transit_total(redis) == 0
    await assert_each_partition_balances(redis)
    await audit_clean(redis)


async def test_the_workers_sweep_finishes_a_pledge_left_in_flight(redis: aioredis.Redis, tmp_path: Path) -> None:
    """A pledge debited by a process that died: the settlement worker's sweep lands it once it is
    GIFTING_PLEDGE_REDRIVE_MS old, and not before."""
    worker = SettlementWorker(redis, make_settings(tmp_path, pledge_redrive_ms=REDRIVE_MS))
    creator, a = user_in(POOL_PART, "c"), user_in(OTHER_PART, "a")
    await grant(redis, a, 500)
    pool_id = await open_pool(worker.ledger, creator, a)
    p, sid = keys.part_of_user(a), keys.user_scoped_id(a, "pl9")
    await pools._debit(worker.ledger, pool_id, sid, a, 200, "A", "", clock.now_ms())
    await worker.sweep_pools()  # younger than the redrive age: the pledge may still be on its way
    assert await redis.hget(keys.pledge_record(p, sid), "status") == "debited"
    debited_ms = int(await redis.hget(keys.pledge_record(p, sid), "debited_ms") or 0)
    await asyncio.sleep((debited_ms + REDRIVE_MS - clock.now_ms() + 50) / 1000)
    await worker.sweep_pools()
    assert await redis.hget(keys.pledge_record(p, sid), "status") == "accepted"
    assert await redis.zcard(keys.pledges_in_flight(p)) == 0
    assert await transit_total(redis) == 0
    await audit_clean(redis)


def test_a_pledge_redrive_age_below_one_ms_is_refused(tmp_path: Path) -> None:
    """GIFTING_PLEDGE_REDRIVE_MS = 0 would push every pledge again while its own caller is still on it."""
    with pytest.raises(ConfigError, match="GIFTING_PLEDGE_REDRIVE_MS"):
        make_settings(tmp_path, pledge_redrive_ms=0)


async def test_closed_pools_of_every_partition_move_to_postgresql(
    redis: aioredis.Redis, ledger: Ledger, history: psycopg.AsyncConnection[Any]
) -> None:
    """The archiver walks every partition's closed pools: each moves once, then leaves Valkey."""
    await history.execute("DELETE FROM pools")
    closed = []
    for part in (POOL_PART, OTHER_PART):
        creator, a = user_in(part, "c"), user_in(THIRD_PART, "a")
        await grant(redis, a, 1)  # an opener holds coins (GIFTING_POOL_OPEN_COINS_MIN)
        pool_id = await open_pool(ledger, creator, a)
        assert (await ledger.pool_op("cancel", pool_id))[0] == "cancelled"
        closed.append(pool_id)
    assert await history_pools.archive_due(redis, history, clock.now_ms() + 1, 10) == 2
    assert await history_pools.archive_due(redis, history, clock.now_ms() + 1, 10) == 0
    for pool_id in closed:
        part = rules.pool_part(pool_id)
        assert part is not None and not await redis.exists(keys.pool(part, pool_id))
        archived = await history_pools.archived(history, pool_id)
        assert archived is not None and archived["status"] == "cancelled"
