"""What the cluster chaos tests check at the end, over every ledger partition: one outcome per gift, exact
balances, each settled gift once in the journal and once in its room's history, every stream and outbox empty,
sys:transit back to 0, a clean audit. (Helpers, not tests: tests/test_cluster_*.py use them.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gifting import gifts, keys
from gifting.app import redis_client
from gifting.catalog.model import load_default
from gifting.config import Settings
from gifting.ledger import partitions, rules
from gifting.ledger.audit import run_audit
from gifting.ledger.store import Ledger
from gifting.rooms.store import RoomStore, announced_events
from tests.conftest import REPO, SECRET, gift_id, stop
from workers.settlement import SettlementWorker

POLL_S = 0.05
GIFT = "coffee"
STORE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)  # a node down or failing over
RESEND_S_MAX = 60.0  # a storm's feeder gives up queueing a chunk after this long


def users_in(part: str, count: int, prefix: str) -> list[str]:
    """`count` user names whose accounts live in partition `part` (bounded search)."""
    found = [f"{prefix}{i}" for i in range(20_000) if keys.part_of_user(f"{prefix}{i}") == part]
    assert len(found) >= count, f"only {len(found)} users of {part} among {prefix}0..19999"
    return found[:count]


def spread_users(count: int, prefix: str, skip: int = 0) -> list[str]:
    """One user in each of `count` partitions, starting at partition `skip` (so two calls with different skips
    give viewers and creators in different partitions: every gift between them crosses partitions)."""
    tags = partitions.all_tags()
    return [users_in(tags[(skip + i) % len(tags)], 1, prefix)[0] for i in range(count)]


async def wait_until(
    predicate: Callable[[], Awaitable[bool]],
    what: str,
    timeout_s: float,
    alive: Callable[[], str | None] | None = None,
) -> None:
    """Poll `predicate` (store errors count as 'not yet': a node may be failing over) until true; bounded in time
    and in polls. `alive` returns why to give up early."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for _ in range(int(timeout_s / POLL_S) + 1):
        try:
            if await predicate():
                return
        except STORE_ERRORS:
            pass
        if alive is not None and (reason := alive()) is not None:
            raise AssertionError(f"while waiting for {what}: {reason}")
        if loop.time() > deadline:
            break
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def grant(redis: aioredis.Redis, user: str, coins: int) -> None:
    """Credit coins as a purchase does (issuance -> user) in the user's partition, journalled for the audit."""
    part = keys.part_of_user(user)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hincrby(keys.coins(part), keys.account(user), coins)
        pipe.hincrby(keys.coins(part), keys.SYS_COIN_ISSUANCE, -coins)
        pipe.xadd(
            keys.journal(part),
            {"kind": "purchase", "id": f"grant:{gift_id()}", "legs": f"coins sys:coin_issuance u:{user} {coins}"},
        )
        await pipe.execute()


async def ensure_groups(redis: aioredis.Redis) -> None:
    """The settlement group on every partition's gift stream (as the worker makes it), before gifts are queued."""
    for part in partitions.all_tags():
        try:
            await redis.xgroup_create(keys.gifts_stream(part), keys.SETTLEMENT_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


async def open_room(redis: aioredis.Redis, creator: str) -> str:
    store = RoomStore(redis, Settings.from_env({}))
    return (await store.open(creator, creator.title(), "Live")).room


def request(gid: str, room: str, sender: str) -> gifts.GiftRequest:
    """A gift request as the hub enqueues it; hub="" so no result is published."""
    return gifts.new_request(gift_id=gid, room=room, gift=GIFT, count=1, sender=sender, sender_name=sender, hub="")


async def drained(redis: aioredis.Redis) -> bool:
    """Every partition's gift stream empty with nothing pending, and every outbox empty (each credit applied)."""
    for part in partitions.all_tags():
        if await redis.xlen(keys.gifts_stream(part)) or await redis.xlen(keys.outbox(part)):
            return False
        if int((await redis.xpending(keys.gifts_stream(part), keys.SETTLEMENT_GROUP))["pending"]):
            return False
    return True


async def settled_count(redis: aioredis.Redis) -> int:
    """Gift entries settled so far, over every partition's journal (progress of a storm)."""
    total = 0
    for part in partitions.all_tags():
        total += sum(len(rules.journal_gifts(f)) for _, f in await redis.xrange(keys.journal(part)) if _is_gifts(f))
    return total


async def journal_entries(redis: aioredis.Redis) -> int:
    """Entries in every partition's journal (cheap progress of a storm: a batch writes one, its credits one)."""
    return sum([int(await redis.xlen(keys.journal(part))) for part in partitions.all_tags()])


def _is_gifts(fields: dict[str, str]) -> bool:
    return fields.get("kind") == "gifts"


async def journal_gift_ids(redis: aioredis.Redis) -> Counter[str]:
    """Each gift id in the journals of every partition, with how often it appears."""
    ids: Counter[str] = Counter()
    for part in partitions.all_tags():
        for _, fields in await redis.xrange(keys.journal(part)):
            if _is_gifts(fields):
                ids.update(g["id"] for g in rules.journal_gifts(fields))
    return ids


async def room_gift_ids(redis: aioredis.Redis, room: str) -> Counter[str]:
    """Each gift id in a room's history, with how often it appears."""
    return Counter(
        e["gift_id"] for _, f in await redis.xrange(keys.room_history(room)) for e in announced_events(f["e"])
    )


async def balances(redis: aioredis.Redis, user: str) -> tuple[int, int]:
    """(coins, diamonds) of a user, in the user's partition."""
    part = keys.part_of_user(user)
    coins = await redis.hget(keys.coins(part), keys.account(user))
    diamonds = await redis.hget(keys.diamonds(part), keys.account(user))
    return int(coins or 0), int(diamonds or 0)


async def in_transit(redis: aioredis.Redis) -> dict[str, int]:
    """sys:transit summed over the partitions, per ledger: what is still on its way between partitions."""
    totals: dict[str, int] = {}
    for part in partitions.all_tags():
        for ledger, hash_key in keys.ledgers(part):
            totals[ledger] = totals.get(ledger, 0) + int(await redis.hget(hash_key, keys.SYS_TRANSIT) or 0)
    return totals


@contextlib.asynccontextmanager
async def worker_task(settings: Settings, redis_url: str) -> AsyncIterator[tuple[SettlementWorker, asyncio.Task[None]]]:
    """A settlement worker in this process, its task exposed so a test can see it die (and say why)."""
    client = redis_client(redis_url)
    worker = SettlementWorker(client, settings)
    stop_event = asyncio.Event()
    task = asyncio.create_task(worker.run(stop_event))
    try:
        yield worker, task
    finally:
        stop_event.set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 15)
        await client.aclose()


@contextlib.contextmanager
def processes(log_dir: Path) -> Iterator[Callable[[str, dict[str, str]], subprocess.Popen[bytes]]]:
    """start(command, env) runs a real `gifting <command>` process, its output in log_dir; every one still running
    is stopped (SIGTERM, then SIGKILL) and its log closed on exit."""
    started: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start(command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        full_env = {**os.environ, **env, "GIFTING_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
        log = open(log_dir / f"{command}-{len(started)}.log", "wb")  # noqa: SIM115 - closed on exit
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "gifting.cli", command],
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        except BaseException:
            log.close()
            raise
        started.append((process, log))
        return process

    try:
        yield start
    finally:
        for process, log in started:
            stop(process)
            log.close()


def task_failure(task: asyncio.Task[None]) -> str | None:
    if not task.done():
        return None
    return f"the worker task ended: {task.exception()!r}"


async def assert_audit_clean(redis: aioredis.Redis) -> None:
    report = await run_audit(redis)
    assert report.clean, report.summary()


async def feed(
    client: aioredis.Redis, plan: Plan, enough: asyncio.Event, gifts_max: int, chunk: int, pause_s: float
) -> None:
    """Queue gifts (viewers and rooms in turn), `chunk` at a time every `pause_s`, until `enough` or `gifts_max`:
    the storm. A chunk that meets a node down is sent again, the same gift ids (as clients resend), until it
    goes through; the ledger settles each id once."""
    viewers, rooms = list(plan.funds), list(plan.creators)
    loop = asyncio.get_running_loop()
    while len(plan.gifts) < gifts_max and not enough.is_set():
        n = len(plan.gifts)
        batch = [
            (gift_id(), viewers[i % len(viewers)], rooms[(i // len(viewers)) % len(rooms)]) for i in range(n, n + chunk)
        ]
        plan.gifts.extend(batch)  # before sending: a chunk half queued when a node died is resent whole
        deadline = loop.time() + RESEND_S_MAX
        while True:
            try:
                async with client.pipeline(transaction=False) as pipe:
                    for gid, viewer, room in batch:
                        pipe.xadd(keys.gifts_stream(keys.part_of_user(viewer)), request(gid, room, viewer).to_entry())
                    await pipe.execute()
                break
            except STORE_ERRORS:
                assert loop.time() < deadline, f"could not queue gifts for {RESEND_S_MAX} s"
                await asyncio.sleep(pause_s)
        await asyncio.sleep(pause_s)


@dataclass
class Plan:
    """A storm's gifts: (gift id, sender, room) each, the funds granted to each sender, each room's creator."""

    gifts: list[tuple[str, str, str]]
    funds: dict[str, int]
    creators: dict[str, str]  # room -> creator
    share_bps: int

    async def assert_exact(self, redis: aioredis.Redis) -> None:
        """One outcome per gift; each settled gift once in the journal and once in its room's history; senders
        debited and creators credited exactly; nothing left in a stream, an outbox or sys:transit; audit clean."""
        assert await drained(redis), "a gift stream, its pending list or an outbox is not empty"
        found = await Ledger(redis, Settings.from_env({})).gift_outcomes([gid for gid, _, _ in self.gifts])
        assert len(found) == len(self.gifts), f"{len(self.gifts) - len(found)} gifts without an outcome"
        settled = {gid for gid, outcome in found.items() if outcome.status == "settled"}
        rejected = {o.reason for gid, o in found.items() if gid not in settled}
        assert rejected <= {"insufficient_coins"}, rejected
        assert await journal_gift_ids(redis) == Counter(dict.fromkeys(settled, 1))
        for room in self.creators:
            want = {gid for gid, _, r in self.gifts if r == room and gid in settled}
            assert await room_gift_ids(redis, room) == Counter(dict.fromkeys(want, 1)), room
        await self._assert_balances(redis, settled)
        for part in partitions.all_tags():  # every ledger sums to zero inside every partition
            for ledger, hash_key in keys.ledgers(part):
                assert sum(int(v) for v in (await redis.hgetall(hash_key)).values()) == 0, (part, ledger)
        assert set((await in_transit(redis)).values()) <= {0}, await in_transit(redis)
        await assert_audit_clean(redis)

    async def _assert_balances(self, redis: aioredis.Redis, settled: set[str]) -> None:
        price = load_default().gifts[GIFT].coins
        split = rules.split_gift(price, self.share_bps)
        spent = Counter(sender for gid, sender, _ in self.gifts if gid in settled)
        for sender, coins in self.funds.items():
            assert spent[sender] == min(self.sent_by(sender), coins // price), sender
            assert await balances(redis, sender) == (coins - spent[sender] * price, 0), sender
        earned = Counter(self.creators[room] for gid, _, room in self.gifts if gid in settled)
        for creator in set(self.creators.values()):
            assert await balances(redis, creator) == (0, earned[creator] * split.diamonds), creator

    def sent_by(self, sender: str) -> int:
        return sum(1 for _, s, _ in self.gifts if s == sender)
