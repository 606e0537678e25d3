"""The partitioned ledger (docs/SCALING.md "Stage 2"): layout, legs placed by partition, gifts across
partitions exactly once through the outbox (crash between the two steps included), partition leases."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from gifting import keys
from gifting.config import ConfigError
from gifting.ledger import partitions, rules
from gifting.ledger.store import GiftToSettle, Ledger, claim_partition_count
from tests.conftest import gift_id, make_settings
from workers.leases import PartitionLeases, fair_share

pytestmark = pytest.mark.cluster  # on a standalone Valkey and on a Valkey Cluster (tests/conftest.py)


def users_in(part: str, count: int, prefix: str) -> list[str]:
    """`count` user names whose accounts live in partition `part`."""
    found = [f"{prefix}{i}" for i in range(10_000) if keys.part_of_user(f"{prefix}{i}") == part]
    return found[:count]


def test_partition_tags_spread_evenly_over_the_slot_space() -> None:
    """Partition p's tag hashes into the p-th of n equal slot ranges, for several partition counts."""
    try:
        for n in (1, 3, 16, 64, 256):
            partitions.configure(n)
            for p, tag in enumerate(partitions.all_tags()):
                slot = key_slot(keys.coins(tag).encode())
                assert p * REDIS_CLUSTER_HASH_SLOTS // n <= slot < (p + 1) * REDIS_CLUSTER_HASH_SLOTS // n
    finally:
        partitions.configure(partitions.PARTITIONS_DEFAULT)


def test_every_key_of_an_account_is_in_its_partition() -> None:
    """An account's statement, purchases, withdrawals, boards and earnings share its partition's slot."""
    part = keys.part_of_user("alice")
    for key in (
        keys.statement("alice"),
        keys.purchases_of("alice"),
        keys.withdrawals_of("alice"),
        keys.earned("alice"),
        keys.creator_top("alice", "all"),
        keys.purchase_record(keys.purchase_id("alice", "k1")),
        keys.withdrawal(keys.withdrawal_id("alice", "k1")),
    ):
        assert key_slot(key.encode()) == key_slot(keys.coins(part).encode()), key


def test_configure_refuses_counts_out_of_range() -> None:
    """0 and more than PARTITIONS_MAX partitions are refused."""
    for bad in (0, partitions.PARTITIONS_MAX + 1):
        with pytest.raises(ValueError, match="partitions"):
            partitions.configure(bad)


def test_place_legs_keeps_each_partition_balanced() -> None:
    """A gift's coin legs stay with the viewer, its diamonds go to the creator; a transfer between users of two
    partitions goes through sys:transit on both sides; every partition's legs sum to zero per ledger."""
    alice, bob = (
        "alice",
        next(u for u in (f"b{i}" for i in range(100)) if keys.part_of_user(u) != keys.part_of_user("alice")),
    )
    a, b = keys.part_of_user(alice), keys.part_of_user(bob)
    placed = rules.place_legs(rules.gift_legs(alice, bob, rules.split_gift(10, 5000)), a)
    assert {leg.ledger for leg in placed[a]} == {"coins"} and {leg.ledger for leg in placed[b]} == {"diamonds"}
    moved = rules.place_legs([rules.Leg("coins", keys.account(alice), keys.account(bob), 7)], a)
    assert moved[a] == [rules.Leg("coins", keys.account(alice), keys.SYS_TRANSIT, 7)]
    assert moved[b] == [rules.Leg("coins", keys.SYS_TRANSIT, keys.account(bob), 7)]
    same = rules.place_legs(rules.gift_legs(alice, alice + "x", rules.split_gift(10, 5000)), a)
    assert set(same) >= {a}


def test_credit_line_round_trips() -> None:
    """A credit survives its outbox encoding, statement rows with tabs included."""
    credit = rules.Credit(
        id="g1",
        kind="gift_received",
        legs=[rules.Leg("diamonds", keys.SYS_DIAMOND_ISSUANCE, "u:bob", 5)],
        ts_ms=123,
        statement=[("u:bob", rules.statement_row(123, "gift_received", "diamonds", 5, "u:al", "g1", "rose", "2"))],
        earned=("u:bob", 5),
        board=("u:bob", "u:al", 10),
        room="r1",
        gift="rose",
        count=2,
    )
    assert rules.Credit.decode(credit.encode()) == credit
    assert "\n" not in credit.encode()


async def balances(redis: aioredis.Redis, ledger: str = "coins") -> dict[str, dict[str, int]]:
    """Every partition's balances of one ledger (partitions with none left out)."""
    out = {}
    for part in partitions.all_tags():
        raw = await redis.hgetall(dict(keys.ledgers(part))[ledger])
        if raw:
            out[part] = {k: int(v) for k, v in raw.items()}
    return out


def fund(part: str, user: str, coins: int) -> tuple[str, list[Any]]:
    return keys.coins(part), [keys.account(user), coins, keys.SYS_COIN_ISSUANCE, -coins]


async def grant(redis: aioredis.Redis, user: str, coins: int) -> None:
    part = keys.part_of_user(user)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hincrby(keys.coins(part), keys.account(user), coins)
        pipe.hincrby(keys.coins(part), keys.SYS_COIN_ISSUANCE, -coins)
        pipe.xadd(
            keys.journal(part),
            {"kind": "purchase", "id": f"grant:{user}", "legs": f"coins sys:coin_issuance u:{user} {coins}"},
        )
        await pipe.execute()


def gift(viewer: str, creator: str, coins: int = 10, gid: str | None = None) -> GiftToSettle:
    split = rules.split_gift(coins, 5000)
    return GiftToSettle(gid or gift_id(), viewer, creator, split.coins, split.diamonds, "fp", "", "room1", "rose", 1)


def assert_each_partition_balances(all_balances: dict[str, dict[str, int]]) -> None:
    for part, accounts in all_balances.items():
        assert sum(accounts.values()) == 0, (part, accounts)


class CrashBeforeCredit(Ledger):
    """A ledger whose process 'dies' between a gift's two steps: the debit and its outbox entry are written, the
    credit never is (as when the worker is killed right after settle.lua answered)."""

    async def _apply_entries_of(self, sources: dict[str, dict[str, dict[str, str]]]) -> None:
        raise RedisConnectionError("killed between the debit and the credit")


async def test_gifts_across_partitions_settle_once_and_credit_once(redis: aioredis.Redis, tmp_path: Path) -> None:
    """Viewers of two partitions gift creators of two others: coins leave the viewers' partitions, diamonds,
    statement rows, boards and earnings land in the creators', each partition balances, the outbox is empty;
    a resend of the batch changes nothing."""
    tags = partitions.all_tags()
    viewers = users_in(tags[0], 2, "v") + users_in(tags[1], 2, "v")
    creators = users_in(tags[2], 1, "c") + users_in(tags[3], 1, "c")
    for v in viewers:
        await grant(redis, v, 100)
    ledger = Ledger(redis, make_settings(tmp_path, creator_share_bps=5000))
    batch = [gift(v, creators[i % 2]) for i, v in enumerate(viewers) for _ in range(3)]
    outcomes = await ledger.settle(batch, durable_timeout_ms=1000)
    assert all(o.settled and not o.replay for o in outcomes)
    again = await ledger.settle(batch, durable_timeout_ms=1000)
    assert all(o.settled and o.replay for o in again)
    coins, diamonds = await balances(redis, "coins"), await balances(redis, "diamonds")
    for v in viewers:
        assert coins[keys.part_of_user(v)][keys.account(v)] == 70
    for c in creators:
        part = keys.part_of_user(c)
        assert diamonds[part][keys.account(c)] == 30  # two viewers x three gifts x 5 diamonds
        assert await redis.llen(keys.statement(c)) == 6
        assert (
            int(
                await redis.zscore(keys.creator_top(c, "all"), keys.account(viewers[0 if c == creators[0] else 1])) or 0
            )
            == 30
        )
        assert sum(int(v) for v in (await redis.hgetall(keys.earned(c))).values()) == 30
    assert_each_partition_balances(coins)
    assert_each_partition_balances(diamonds)
    for part in tags:
        assert await redis.xlen(keys.outbox(part)) == 0


async def test_crash_between_debit_and_credit_is_finished_by_the_redrive_once(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    """The debit is durable and the credit waits in the outbox (nothing lost); the redrive applies it, a second
    redrive and a resend of the gifts apply nothing twice."""
    tags = partitions.all_tags()
    viewer, creator = users_in(tags[4], 1, "v")[0], users_in(tags[5], 1, "c")[0]
    await grant(redis, viewer, 50)
    settings = make_settings(tmp_path, creator_share_bps=5000)
    batch = [gift(viewer, creator) for _ in range(4)]
    outcomes = await CrashBeforeCredit(redis, settings).settle(batch, durable_timeout_ms=1000)
    assert all(o.settled for o in outcomes)
    viewer_part, creator_part = keys.part_of_user(viewer), keys.part_of_user(creator)
    assert int(await redis.hget(keys.coins(viewer_part), keys.account(viewer))) == 10
    assert await redis.hget(keys.diamonds(creator_part), keys.account(creator)) is None
    assert await redis.xlen(keys.outbox(viewer_part)) == 1
    ledger = Ledger(redis, settings)
    assert await ledger.redrive_outbox(viewer_part, older_than_ms=0) == 1
    assert await ledger.redrive_outbox(viewer_part, older_than_ms=0) == 0
    await ledger.settle(batch, durable_timeout_ms=1000)  # a redelivered batch: replays, no new credit
    assert int(await redis.hget(keys.diamonds(creator_part), keys.account(creator))) == 20
    assert await redis.llen(keys.statement(creator)) == 4
    assert_each_partition_balances(await balances(redis, "diamonds"))


async def test_a_credit_applied_twice_counts_once(redis: aioredis.Redis, tmp_path: Path) -> None:
    """Two redrives racing over one outbox entry (a paused owner and its successor) credit once."""
    tags = partitions.all_tags()
    viewer, creator = users_in(tags[6], 1, "v")[0], users_in(tags[7], 1, "c")[0]
    await grant(redis, viewer, 20)
    settings = make_settings(tmp_path, creator_share_bps=5000)
    await CrashBeforeCredit(redis, settings).settle([gift(viewer, creator)], durable_timeout_ms=1000)
    part = keys.part_of_user(viewer)
    [(entry_id, fields)] = await redis.xrange(keys.outbox(part))
    first, second = Ledger(redis, settings), Ledger(redis, settings)
    await first._apply_entries(part, {entry_id: fields})
    await second._apply_entries(part, {entry_id: fields})
    assert int(await redis.hget(keys.diamonds(keys.part_of_user(creator)), keys.account(creator))) == 5


async def test_workers_divide_partitions_and_take_over_a_dead_ones(redis: aioredis.Redis) -> None:
    """Two processes share the partitions fairly; when one stops renewing, the other takes all once the
    leases expire; a stopped one gives its partitions back at once."""
    n = len(partitions.all_tags())
    now = await redis.time()
    beat = now[0] * 1000 + now[1] // 1000
    await redis.zadd(keys.WORKER_HEARTBEATS, {"a": beat, "b": beat})
    a, b = PartitionLeases(redis, "a", ttl_ms=400), PartitionLeases(redis, "b", ttl_ms=400)
    owned_a = await a.refresh()
    owned_b = await b.refresh()
    owned_a = await a.refresh()
    assert owned_a.isdisjoint(owned_b)
    assert len(owned_a) == fair_share(n, 2) and len(owned_b) == n - fair_share(n, 2)
    await b.release(sorted(owned_b))
    await redis.zrem(keys.WORKER_HEARTBEATS, "b")
    assert len(await a.refresh()) == n
    assert fair_share(16, 3) == 6 and fair_share(16, 0) == 16


async def test_a_process_with_another_partition_count_refuses_to_start(redis: aioredis.Redis) -> None:
    """The first process fixes the installation's count; one configured otherwise gets a ConfigError naming both."""
    await claim_partition_count(redis, 16)
    await claim_partition_count(redis, 16)
    with pytest.raises(ConfigError, match="is 8 but this installation's ledger has 16"):
        await claim_partition_count(redis, 8)


async def test_a_dead_workers_partitions_are_taken_over_when_its_leases_expire(redis: aioredis.Redis) -> None:
    """A process that stops renewing (killed) loses its partitions to the survivor once the leases run out."""
    n = len(partitions.all_tags())
    dead, survivor = PartitionLeases(redis, "dead", ttl_ms=300), PartitionLeases(redis, "survivor", ttl_ms=300)
    taken = await dead.refresh()  # alone: takes everything
    assert len(taken) == n and not await survivor.refresh()
    for _ in range(100):  # bounded: the leases expire after 300 ms
        if len(await survivor.refresh()) == n:
            break
        await asyncio.sleep(0.05)
    assert len(survivor.owned) == n
    assert await dead.refresh() == set()  # the dead one, back, renews nothing it lost


async def test_a_valkey_with_the_one_slot_ledger_is_refused(redis: aioredis.Redis) -> None:
    """Balances of a release before partitions would be ignored: nothing starts, and the error says why."""
    await redis.hset("{ledger}:coins", "u:old", 5)
    with pytest.raises(ConfigError, match="before partitions"):
        await claim_partition_count(redis, 16)


@pytest.mark.parametrize("coins", [1, 10, 999])
def test_the_workers_spelled_out_gift_rows_and_credit_are_the_placed_legs(coins: int) -> None:
    """gift_journal_row, reward_gift_journal_row and gift_credit_line (built per gift, spelled out for speed) hold
    exactly place_legs of gift_legs / reward_gift_legs, for a creator in the viewer's partition and in another."""
    viewer = "viewer1"
    part = keys.part_of_user(viewer)
    here = next(u for u in (f"c{i}" for i in range(1000)) if keys.part_of_user(u) == part)
    there = next(u for u in (f"c{i}" for i in range(1000)) if keys.part_of_user(u) != part)
    split = rules.split_gift(coins, 5000)
    for creator in (here, there):
        is_here = creator == here
        for legs, row in (
            (
                rules.gift_legs(viewer, creator, split),
                rules.gift_journal_row("g", viewer, creator, split, "r", "rose", 1, is_here),
            ),
            (
                rules.reward_gift_legs(viewer, creator, split),
                rules.reward_gift_journal_row("g", viewer, creator, split, "r", "rose", 1, is_here),
            ),
        ):
            placed = rules.place_legs(legs, part)
            assert rules.parse_legs(row.split("\t")[1]) == placed[part]
            if not is_here:
                assert rules.encode_legs(placed.get(keys.part_of_user(creator), [])) == "|".join(
                    rules.creator_legs(creator, split)
                )
        if not is_here:
            c, v = keys.account(creator), keys.account(viewer)
            credit = rules.Credit.decode(rules.gift_credit_line("g", c, v, split, 5, "row", "r", "rose", 1, part))
            placed = rules.place_legs(rules.gift_legs(viewer, creator, split), part)
            expected = rules.Credit(
                id=rules.credit_id("g", part),
                kind="gift_received",
                legs=placed.get(keys.part_of_user(creator), []),
                ts_ms=5,
                statement=[(c, "row")],
                earned=(c, split.diamonds) if split.diamonds else None,
                board=(c, v, split.coins),
                room="r",
                gift="rose",
                count=1,
            )
            assert credit == expected


async def test_a_large_batch_credits_every_gift_once(redis: aioredis.Redis, tmp_path: Path) -> None:
    """1,200 gifts from one partition to a creator of another: one settle.lua and one credit.lua call (whose
    reads and writes go in chunks of 1,000, as settle.lua's: the batch loops merge up to 4 batches) apply them
    all, each once."""
    tags = partitions.all_tags()
    viewers, creator = users_in(tags[8], 40, "v"), users_in(tags[9], 1, "c")[0]
    for v in viewers:
        await grant(redis, v, 300)
    ledger = Ledger(redis, make_settings(tmp_path, creator_share_bps=5000))
    batch = [gift(v, creator) for v in viewers for _ in range(30)]
    outcomes = await ledger.settle(batch, durable_timeout_ms=1000)
    assert all(o.settled for o in outcomes)
    assert int(await redis.hget(keys.diamonds(keys.part_of_user(creator)), keys.account(creator))) == 1200 * 5
    assert await redis.llen(keys.statement(creator)) == 1200


async def test_worker_and_archiver_wait_for_valkey_before_checking_the_partition_count() -> None:
    """Valkey unreachable (a restart under `gifting dev`): the check retries until stopped instead of failing the
    process (an archiver that exited here made `gifting dev` stop everything)."""
    from gifting.cli import claim_partition_count_when_reachable
    from gifting.config import Settings
    from gifting.embedded import free_port

    unreachable = aioredis.Redis(port=free_port(), socket_connect_timeout=0.2)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.5, stop.set)
    try:
        assert await claim_partition_count_when_reachable(unreachable, Settings.from_env({}), stop) is False
    finally:
        await unreachable.aclose()
