"""Settlement: idempotent resends, concurrent overspend, crash and reclaim, dead letters, durability.

Everything runs against the real embedded Valkey; the crash test kills real `gifting worker` processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gifting import gifts, keys, valkey
from gifting.app import redis_client
from gifting.catalog.model import load_default
from gifting.config import Settings
from gifting.ledger import partitions, rules
from gifting.ledger.store import Ledger
from gifting.rooms.store import RoomStore, announced_events
from tests.cluster_checks import assert_audit_clean, balances, grant, journal_gift_ids, task_failure
from tests.conftest import REPO, SECRET, System, WsClient, gift_id, make_settings, run_worker, stop
from workers.settlement import SettlementWorker

pytestmark = pytest.mark.cluster  # on a standalone Valkey and on a Valkey Cluster (tests/conftest.py)

WAIT_S = 60.0  # upper bound of every wait loop; never an assertion on speed
POLL_S = 0.01
SHARE_BPS = 5000  # creator share given to the worker processes of the crash test

# ---------------------------------------------------------------------------------------------------------
# Helpers


async def wait_until(
    predicate: Callable[[], Awaitable[bool]],
    what: str,
    timeout_s: float = WAIT_S,
    alive: Callable[[], str | None] | None = None,
) -> None:
    """Poll `predicate` until true; bounded in time and in iterations. `alive` returns why to give up early."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for _ in range(int(timeout_s / POLL_S) + 1):
        if await predicate():
            return
        if alive is not None and (reason := alive()) is not None:
            raise AssertionError(f"while waiting for {what}: {reason}")
        if loop.time() > deadline:
            break
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def stream(user: str = "viewer1") -> str:
    """The gift stream of the sender's ledger partition (where the hub appends their gifts)."""
    return keys.gifts_stream(keys.part_of_user(user))


def dead_letters(user: str = "viewer1") -> str:
    return keys.gifts_dead_letter(keys.part_of_user(user))


async def open_room(redis: aioredis.Redis, creator: str = "creator1") -> str:
    store = RoomStore(redis, Settings.from_env({}))
    return (await store.open(creator, creator.title(), "Live")).room


def request(gid: str, room: str, sender: str, gift: str = "coffee", count: int = 1) -> gifts.GiftRequest:
    """A gift request as the hub enqueues it; hub="" so no result is published."""
    return gifts.new_request(gift_id=gid, room=room, gift=gift, count=count, sender=sender, sender_name=sender, hub="")


async def ensure_group(redis: aioredis.Redis) -> None:
    for part in partitions.all_tags():
        with contextlib.suppress(ResponseError):
            await redis.xgroup_create(keys.gifts_stream(part), keys.SETTLEMENT_GROUP, id="0", mkstream=True)


async def pending(redis: aioredis.Redis) -> int:
    """Entries read and not acked, over every partition's stream."""
    total = 0
    for part in partitions.all_tags():
        if await redis.exists(keys.gifts_stream(part)):
            total += int((await redis.xpending(keys.gifts_stream(part), keys.SETTLEMENT_GROUP))["pending"])
    return total


async def drained(redis: aioredis.Redis) -> bool:
    """Every partition's stream is empty, nothing is pending, every outbox is empty (credits applied)."""
    for part in partitions.all_tags():
        if await redis.xlen(keys.gifts_stream(part)) or await redis.xlen(keys.outbox(part)):
            return False
    return await pending(redis) == 0


async def history(redis: aioredis.Redis, room: str) -> list[tuple[str, dict[str, Any]]]:
    """Every event of the room history, with the id of the history entry (one announce call) that holds it."""
    entries = await redis.xrange(keys.room_history(room))
    return [(entry_id, event) for entry_id, f in entries for event in announced_events(f["e"])]


async def outcomes(redis: aioredis.Redis, gids: list[str]) -> dict[str, rules.GiftOutcome | None]:
    found = await Ledger(redis, Settings.from_env({})).gift_outcomes(gids)
    return {g: found.get(g) for g in gids}


async def decided(redis: aioredis.Redis, gid: str) -> bool:
    return (await outcomes(redis, [gid]))[gid] is not None


async def collect_results(client: WsClient, gids: list[str]) -> dict[str, dict[str, Any]]:
    """The gift_result (or error) for each gid, whatever order they arrive in."""
    want, got = set(gids), {}
    for _ in range(20 * len(gids) + 100):
        if want <= got.keys():
            break
        message = await client.recv()
        if message.get("gift_id") in want and message.get("type") != "events":
            got[message["gift_id"]] = message
    assert want <= got.keys(), f"no result for {sorted(want - got.keys())}"
    return got


@contextlib.contextmanager
def processes(log_dir: Path) -> Iterator[Callable[[str, dict[str, str], str], subprocess.Popen[bytes]]]:
    """Start real `gifting <command>` processes; all are stopped and their log files closed on exit.

    (Like conftest.spawn, but keeps the log file handle so it can be closed: warnings are errors here.)
    """
    started: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start(command: str, env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
        full_env = {**os.environ, **env, "GIFTING_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
        log = open(log_dir / log_name, "wb")  # noqa: SIM115 - closed when the context exits
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


@contextlib.asynccontextmanager
async def worker_task(
    settings: Settings, redis_url: str, consumer: str | None = None
) -> AsyncIterator[tuple[SettlementWorker, asyncio.Task[None]]]:
    """Like conftest.run_worker, but exposes the task so a test can see the worker die (and say why)."""
    client = redis_client(redis_url)
    worker = SettlementWorker(client, settings, consumer=consumer)
    stop_event = asyncio.Event()
    task = asyncio.create_task(worker.run(stop_event))
    try:
        yield worker, task
    finally:
        stop_event.set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 15)
        await client.aclose()


# ---------------------------------------------------------------------------------------------------------
# 1. Resending the same gift_id


async def test_ws_resend_of_same_gift_id_debits_once_and_repeats_outcome(system: System) -> None:
    """Resending a gift_id over websockets (same and new connection) debits once and answers the same outcome."""
    await system.grant("viewer1", 50)
    room = await system.open_room("creator1")
    viewer = await system.connect("viewer1")
    gid = gift_id()
    results = []
    for _ in range(3):
        await viewer.gift(room, "coffee", 2, gid)
        results.append(await viewer.result(gid))
    other = await system.connect("viewer1")
    await other.gift(room, "coffee", 2, gid)
    results.append(await other.result(gid))
    expected = {"type": "gift_result", "gift_id": gid, "status": "settled", "reason": None, "coins": 30}
    assert results == [expected] * 4
    assert await system.wallet("viewer1") == {"coins": 30, "diamonds": 0}
    assert await system.wallet("creator1") == {"coins": 0, "diamonds": 10}
    events = [e for _, e in await history(system.redis, room)]
    assert [e["gift_id"] for e in events] == [gid]
    assert await journal_gift_ids(system.redis) == Counter({gid: 1})
    await assert_audit_clean(system.redis)


async def test_http_resend_of_same_gift_id_debits_once_and_repeats_outcome(system: System) -> None:
    """Resending a gift_id over HTTP, one after another and all at once, debits once with one outcome."""
    await system.grant("viewer1", 100)
    room = await system.open_room("creator1")
    gid = gift_id()
    body = {"gift": "perfume", "count": 1, "gift_id": gid}

    async def post() -> tuple[int, dict[str, Any]]:
        response = await system.http.post(f"/v1/rooms/{room}/gifts", headers=system.auth("viewer1"), json=body)
        return response.status_code, response.json()

    sequential = [await post() for _ in range(2)]
    concurrent = await asyncio.gather(*(post() for _ in range(6)))
    expected = (200, {"type": "gift_result", "gift_id": gid, "status": "settled", "reason": None, "coins": 80})
    assert [*sequential, *concurrent] == [expected] * 8
    viewer = await system.connect("viewer1")
    await viewer.gift(room, "perfume", 1, gid)
    assert await viewer.result(gid) == expected[1]
    await wait_until(lambda: drained(system.redis), "the resends to be settled")
    assert await system.wallet("viewer1") == {"coins": 80, "diamonds": 0}
    assert await system.wallet("creator1") == {"coins": 0, "diamonds": 10}
    assert [e["gift_id"] for _, e in await history(system.redis, room)] == [gid]
    assert await journal_gift_ids(system.redis) == Counter({gid: 1})
    await assert_audit_clean(system.redis)


async def test_resend_of_rejected_gift_id_stays_rejected_after_funding(system: System) -> None:
    """A gift_id rejected for insufficient coins stays rejected with its original balance even after a top-up."""
    await system.grant("viewer1", 5)
    room = await system.open_room("creator1")
    viewer = await system.connect("viewer1")
    gid = await viewer.gift(room, "coffee", 1)
    first = await viewer.result(gid)
    assert first == {
        "type": "gift_result",
        "gift_id": gid,
        "status": "rejected",
        "reason": "insufficient_coins",
        "coins": 5,
    }
    await system.grant("viewer1", 100)
    await viewer.gift(room, "coffee", 1, gid)
    assert await viewer.result(gid) == first
    assert await system.wallet("viewer1") == {"coins": 105, "diamonds": 0}
    assert await history(system.redis, room) == []
    assert await journal_gift_ids(system.redis) == Counter()


async def test_same_gift_id_with_other_fields_is_a_conflict_and_not_debited(system: System) -> None:
    """A gift_id reused for a different gift gets gift_id_conflict; only the first gift is debited."""
    await system.grant("viewer1", 100)
    room = await system.open_room("creator1")
    viewer = await system.connect("viewer1")
    gid = await viewer.gift(room, "coffee", 1)
    assert (await viewer.result(gid))["status"] == "settled"
    await viewer.gift(room, "coffee", 3, gid)
    conflict = await viewer.result(gid)
    assert conflict["type"] == "error" and conflict["code"] == "gift_id_conflict"
    assert await system.wallet("viewer1") == {"coins": 90, "diamonds": 0}
    assert [e["gift_id"] for _, e in await history(system.redis, room)] == [gid]
    assert await journal_gift_ids(system.redis) == Counter({gid: 1})


# ---------------------------------------------------------------------------------------------------------
# 2. Concurrent overspend


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_100_concurrent_gifts_with_coins_for_37_settle_exactly_37(system: System, transport: str) -> None:
    """100 concurrent gifts from one viewer funded for exactly 37 settle 37 and reject 63; offsets are 1..37."""
    price = load_default().gifts["finger_heart"].coins
    per_gift = rules.split_gift(price, system.settings.creator_share_bps)
    await system.grant("viewer1", 37 * price)
    room = await system.open_room("creator1")
    gids = [gift_id() for _ in range(100)]
    results: dict[str, dict[str, Any]] = {}
    if transport == "ws":
        clients = [await system.connect("viewer1") for _ in range(4)]

        async def send_all(client: WsClient, mine: list[str]) -> dict[str, dict[str, Any]]:
            for gid in mine:
                await client.gift(room, "finger_heart", 1, gid)
            return await collect_results(client, mine)

        for part in await asyncio.gather(*(send_all(c, gids[i::4]) for i, c in enumerate(clients))):
            results.update(part)
    else:

        async def post(gid: str) -> dict[str, Any]:
            body = {"gift": "finger_heart", "count": 1, "gift_id": gid}
            response = await system.http.post(f"/v1/rooms/{room}/gifts", headers=system.auth("viewer1"), json=body)
            assert response.status_code == 200, response.text
            result: dict[str, Any] = response.json()
            return result

        for gid, result in zip(gids, await asyncio.gather(*(post(g) for g in gids)), strict=True):
            results[gid] = result

    settled = {g for g, r in results.items() if r["status"] == "settled"}
    rejected = [r for r in results.values() if r["status"] == "rejected"]
    assert len(settled) == 37 and len(rejected) == 63
    assert {r["reason"] for r in rejected} == {"insufficient_coins"}
    assert {r["coins"] for r in rejected} == {0}
    # Each settled gift saw the balance after it: 36*price, ..., price, 0, each exactly once.
    assert sorted(results[g]["coins"] for g in settled) == [price * k for k in range(37)]
    assert await system.wallet("viewer1") == {"coins": 0, "diamonds": 0}
    assert await system.wallet("creator1") == {"coins": 0, "diamonds": 37 * per_gift.diamonds}
    events = await history(system.redis, room)
    last_in_entry = {entry_id: e["offset"] for entry_id, e in events}  # an entry's id: its last event's offset
    assert all(entry_id == f"{last}-0" for entry_id, last in last_in_entry.items())
    assert [e["offset"] for _, e in events] == list(range(1, 38))
    assert {e["gift_id"] for _, e in events} == settled and len(events) == 37
    assert all(e["kind"] == "gift" and e["sender"] == "viewer1" for _, e in events)
    assert await journal_gift_ids(system.redis) == Counter(dict.fromkeys(settled, 1))
    await assert_audit_clean(system.redis)


# ---------------------------------------------------------------------------------------------------------
# 3. kill -9 of the worker mid-batch, then a restart


async def test_worker_killed_mid_batch_and_restarted_settles_every_gift_once(
    redis: aioredis.Redis, valkey_url: str, tmp_path: Path
) -> None:
    """SIGKILL of a worker process with a backlog and a restart leave every gift settled once and the audit clean."""
    room = await open_room(redis)
    funds = {"v0": 8000, "v1": 8000, "v2": 8000, "v3": 3000}  # v3 can pay for 300 of its 750 coffees
    per_sender = 750
    coffee = load_default().gifts["coffee"].coins
    for user, coins in funds.items():
        await grant(redis, user, coins)
    plan = [(gift_id(), sender) for _ in range(per_sender) for sender in funds]  # senders interleaved
    sender_of = dict(plan)
    total = len(plan)
    env = {
        "REDIS_URL": valkey_url,
        "GIFTING_CLAIM_IDLE_MS": "500",
        "GIFTING_SETTLE_BATCH_MAX": "50",
        "GIFTING_DATA_DIR": str(tmp_path),
        "GIFTING_CREATOR_SHARE_BPS": str(SHARE_BPS),
        "GIFTING_SETTLE_CONCURRENCY": "2",  # two batch loops per partition in the killed process
    }
    host = socket.gethostname()

    with processes(tmp_path) as start:
        killed_pending: list[dict[str, Any]] = []
        for attempt in range(5):  # retried only if the kill fell between two batches (nothing pending)
            worker = start("worker", env, f"worker-{attempt}.log")
            consumer = f"{host}-{worker.pid}"

            async def beating(consumer: str = consumer) -> bool:
                return await redis.zscore(keys.WORKER_HEARTBEATS, consumer) is not None

            def exited(worker: subprocess.Popen[bytes] = worker) -> str | None:
                return None if worker.poll() is None else f"worker exited with {worker.returncode}"

            await wait_until(beating, "the worker's first heartbeat", alive=exited)
            if attempt == 0:
                for i in range(0, total, 250):  # enqueued while the worker already settles
                    async with redis.pipeline(transaction=False) as pipe:
                        for gid, sender in plan[i : i + 250]:
                            gift = request(gid, room, sender)
                            pipe.xadd(gifts.stream_of(gift), gift.to_entry())  # queued, not awaited
                        await pipe.execute()
            backlog = await gifts.gift_backlog(redis)

            async def progressed(backlog: int = backlog) -> bool:
                return await gifts.gift_backlog(redis) <= backlog - 200

            await wait_until(progressed, "the worker to settle some gifts", alive=exited)
            worker.send_signal(signal.SIGKILL)
            worker.wait(15)
            assert worker.returncode == -signal.SIGKILL
            # The only worker: whatever is pending was held by it (consumer `settler` in every partition).
            killed_pending = [
                p
                for sender in funds
                for p in await redis.xpending_range(stream(sender), keys.SETTLEMENT_GROUP, "-", "+", 5000)
            ]
            if killed_pending:
                break
        assert killed_pending, "never killed the worker while it held a batch"
        assert await gifts.gift_backlog(redis) > 0, "the streams should still have a backlog at the kill"

        restarted = start("worker", env, "worker-restarted.log")

        def restarted_exited() -> str | None:
            return None if restarted.poll() is None else f"restarted worker exited with {restarted.returncode}"

        await wait_until(lambda: drained(redis), "the restarted worker to drain the stream", alive=restarted_exited)
        stop(restarted)
        assert restarted.returncode == 0

    records = await outcomes(redis, [gid for gid, _ in plan])
    assert all(r is not None for r in records.values()), "every gift has its record"
    settled = {g for g, r in records.items() if r is not None and r.status == "settled"}
    rejected = {g: r for g, r in records.items() if r is not None and r.status == "rejected"}
    assert len(settled) + len(rejected) == total
    assert {r.reason for r in rejected.values()} == {"insufficient_coins"}
    assert {sender_of[g] for g in rejected} == {"v3"}
    settled_by = Counter(sender_of[g] for g in settled)
    assert settled_by == {"v0": per_sender, "v1": per_sender, "v2": per_sender, "v3": funds["v3"] // coffee}
    # The journal and the room history hold each settled gift exactly once, and nothing else.
    assert await journal_gift_ids(redis) == Counter(dict.fromkeys(settled, 1))
    events = await history(redis, room)
    assert Counter(e["gift_id"] for _, e in events) == Counter(dict.fromkeys(settled, 1))
    assert [e["offset"] for _, e in events] == list(range(1, len(settled) + 1))
    per_gift = rules.split_gift(coffee, SHARE_BPS)
    for user, coins in funds.items():
        assert await balances(redis, user) == (coins - settled_by[user] * coffee, 0), user
    assert await balances(redis, "creator1") == (0, len(settled) * per_gift.diamonds)
    assert all([await redis.xlen(dead_letters(sender)) == 0 for sender in funds])
    await assert_audit_clean(redis)


# ---------------------------------------------------------------------------------------------------------
# 4. Reclaiming entries of a dead consumer


async def test_entries_left_pending_by_a_dead_consumer_are_reclaimed_and_settled(
    redis: aioredis.Redis, valkey_url: str, tmp_path: Path
) -> None:
    """Entries read but never acked by a consumer that died are claimed by a live worker, settled and acked."""
    room = await open_room(redis)
    await grant(redis, "viewer1", 100)
    await ensure_group(redis)
    gids = [gift_id() for _ in range(5)]
    for gid in gids:
        await gifts.enqueue(redis, request(gid, room, "viewer1"))
    read = await redis.xreadgroup(keys.SETTLEMENT_GROUP, "dead-1", {stream(): ">"}, count=10)
    assert len(read[0][1]) == 5 and await pending(redis) == 5
    async with run_worker(make_settings(tmp_path, claim_idle_ms=200), valkey_url, consumer="alive-1") as worker:
        await wait_until(lambda: drained(redis), "the dead consumer's entries to be reclaimed")
    assert worker.settled_total == 5
    assert {g: r.status if r else None for g, r in (await outcomes(redis, gids)).items()} == dict.fromkeys(
        gids, "settled"
    )
    assert await balances(redis, "viewer1") == (50, 0)
    assert [e["gift_id"] for _, e in await history(redis, room)] == gids
    consumers = {c["name"]: c["pending"] for c in await redis.xinfo_consumers(stream(), keys.SETTLEMENT_GROUP)}
    assert consumers.get("dead-1", 0) == 0
    await assert_audit_clean(redis)


async def test_restarted_worker_settles_its_own_pending_entries_first(
    redis: aioredis.Redis, valkey_url: str, tmp_path: Path
) -> None:
    """The next owner of a partition settles what the previous one read (same consumer names), without waiting."""
    room = await open_room(redis)
    await grant(redis, "viewer1", 100)
    await ensure_group(redis)
    gids = [gift_id() for _ in range(3)]
    for gid in gids:
        await gifts.enqueue(redis, request(gid, room, "viewer1"))
    await redis.xreadgroup(keys.SETTLEMENT_GROUP, "settler", {stream(): ">"}, count=10)
    settings = make_settings(tmp_path, claim_idle_ms=600_000)  # no reclaim: only the own-pending path can do it
    async with run_worker(settings, valkey_url, consumer="worker-a") as worker:
        await wait_until(lambda: drained(redis), "the worker's own pending entries to be settled")
    assert worker.settled_total == 3
    assert [e["gift_id"] for _, e in await history(redis, room)] == gids
    assert await balances(redis, "viewer1") == (70, 0)
    await assert_audit_clean(redis)


# ---------------------------------------------------------------------------------------------------------
# 5. Dead letters


async def test_malformed_entries_go_to_dead_letter_and_valid_ones_in_the_batch_settle(
    redis: aioredis.Redis, valkey_url: str, tmp_path: Path
) -> None:
    """Entries that are not gift requests are parked with their error; valid entries of the same batch settle."""
    room = await open_room(redis)
    await grant(redis, "viewer1", 100)
    await ensure_group(redis)
    zero_count = orjson.dumps({**orjson.loads(request("g0", room, "viewer1").to_entry()["g"]), "count": 0})
    bad_fields: list[dict[str, Any]] = [
        {"g": "not json"},
        {"other": "field"},
        {"g": orjson.dumps({"gift_id": "x"})},
        {"g": zero_count},
    ]
    gids = [gift_id() for _ in range(3)]
    bad_ids = []
    await gifts.enqueue(redis, request(gids[0], room, "viewer1"))
    for fields in bad_fields[:2]:
        bad_ids.append(await redis.xadd(stream(), fields))
    await gifts.enqueue(redis, request(gids[1], room, "viewer1"))
    for fields in bad_fields[2:]:
        bad_ids.append(await redis.xadd(stream(), fields))
    await gifts.enqueue(redis, request(gids[2], room, "viewer1"))
    async with run_worker(make_settings(tmp_path), valkey_url) as worker:
        await wait_until(lambda: drained(redis), "the batch to be settled or dead-lettered")
    assert worker.settled_total == 3
    dead = [fields for _, fields in await redis.xrange(dead_letters())]
    assert [d["entry_id"] for d in dead] == bad_ids
    assert all(d["error"].startswith("not a gift request entry") for d in dead), dead
    assert dead[0]["g"] == "not json" and dead[1]["other"] == "field"
    assert [e["gift_id"] for _, e in await history(redis, room)] == gids
    assert await balances(redis, "viewer1") == (70, 0)
    await assert_audit_clean(redis)


@pytest.mark.parametrize(
    "override",
    [{"room": 123}, {"sender": None}, {"gift": ["rose"]}],
    ids=["room-int", "sender-null", "gift-list"],
)
async def test_entry_with_wrongly_typed_fields_goes_to_dead_letter_without_stopping_the_worker(
    redis: aioredis.Redis, valkey_url: str, tmp_path: Path, override: dict[str, Any]
) -> None:
    """A JSON entry whose fields have the wrong types is dead-lettered; the worker lives on and settles the rest."""
    room = await open_room(redis)
    await grant(redis, "viewer1", 100)
    await ensure_group(redis)
    good = gift_id()
    bad = {**orjson.loads(request(gift_id(), room, "viewer1").to_entry()["g"]), **override}
    bad_id = await redis.xadd(stream(), {"g": orjson.dumps(bad)})
    async with worker_task(make_settings(tmp_path, claim_idle_ms=200), valkey_url) as (_worker, task):
        await wait_until(
            lambda: redis.xlen(dead_letters()),
            "the bad entry to be dead-lettered",
            10,
            lambda: task_failure(task),
        )
        await gifts.enqueue(redis, request(good, room, "viewer1"))
        await wait_until(lambda: drained(redis), "the stream to drain", 10, lambda: task_failure(task))
        assert not task.done()
    dead = await redis.xrange(dead_letters())
    assert [f["entry_id"] for _, f in dead] == [bad_id] and dead[0][1]["error"]
    assert [e["gift_id"] for _, e in await history(redis, room)] == [good]
    await assert_audit_clean(redis)


async def test_entry_delivered_more_than_deliveries_max_goes_to_dead_letter(
    redis: aioredis.Redis, valkey_url: str, tmp_path: Path
) -> None:
    """An entry delivered more than GIFTING_DELIVERIES_MAX times is dead-lettered unsettled; its neighbour settles."""
    room = await open_room(redis)
    await grant(redis, "viewer1", 100)
    await ensure_group(redis)
    poison, fine = gift_id(), gift_id()
    poison_id = await redis.xadd(stream(), request(poison, room, "viewer1").to_entry())
    await redis.xreadgroup(keys.SETTLEMENT_GROUP, "dead-1", {stream(): ">"}, count=1)
    for _ in range(2):  # two more deliveries: 3 in all
        await redis.xclaim(stream(), keys.SETTLEMENT_GROUP, "dead-1", min_idle_time=0, message_ids=[poison_id])
    fine_id = await redis.xadd(stream(), request(fine, room, "viewer1").to_entry())
    await redis.xreadgroup(keys.SETTLEMENT_GROUP, "dead-1", {stream(): ">"}, count=1)
    delivered = {
        p["message_id"]: p["times_delivered"]
        for p in await redis.xpending_range(stream(), keys.SETTLEMENT_GROUP, min="-", max="+", count=10)
    }
    assert delivered == {poison_id: 3, fine_id: 1}
    # The worker's reclaim is one more delivery each: 4 > 3 for the poison entry, 2 for its neighbour.
    settings = make_settings(tmp_path, claim_idle_ms=200, deliveries_max=3)
    async with run_worker(settings, valkey_url):
        await wait_until(lambda: drained(redis), "the reclaimed entries to be settled or dead-lettered")
    dead = [fields for _, fields in await redis.xrange(dead_letters())]
    assert len(dead) == 1 and dead[0]["entry_id"] == poison_id
    assert dead[0]["error"] == "delivered 4 times without settling"
    assert orjson.loads(dead[0]["g"])["gift_id"] == poison
    records = await outcomes(redis, [poison, fine])
    assert records[poison] is None
    assert records[fine] is not None and records[fine].status == "settled"
    assert await journal_gift_ids(redis) == Counter({fine: 1})
    assert [e["gift_id"] for _, e in await history(redis, room)] == [fine]
    assert await balances(redis, "viewer1") == (90, 0)
    await assert_audit_clean(redis)


# ---------------------------------------------------------------------------------------------------------
# 7. Durability


async def test_settlement_confirms_aof_fsync_with_waitaof(system: System) -> None:
    """WAITAOF works on the embedded server (AOF on) and the worker used it for a settled batch."""
    info = await system.redis.info("persistence")
    assert int(info["aof_enabled"]) == 1
    ledger = Ledger(system.redis, system.settings)
    await ledger.durable(2000)
    assert ledger.waitaof_supported is True
    await system.grant("viewer1", 10)
    room = await system.open_room("creator1")
    viewer = await system.connect("viewer1")
    gid = await viewer.gift(room, "rose", 1)
    assert (await viewer.result(gid))["status"] == "settled"
    assert system.worker is not None and system.worker.ledger.waitaof_supported is True


async def test_unconfirmed_fsync_announces_nothing_and_the_worker_retries(
    redis: aioredis.Redis, valkey_url: str, tmp_path: Path
) -> None:
    """While WAITAOF cannot confirm the fsync nothing is announced; the worker retries and settles once after."""
    room = await open_room(redis)
    await grant(redis, "viewer1", 100)
    await ensure_group(redis)
    gid = gift_id()
    settings = make_settings(tmp_path, waitaof_timeout_ms=50)
    async with worker_task(settings, valkey_url) as (worker, task):
        # Learn that WAITAOF works (as on the first batch of a real worker) before fsync stops confirming.
        await worker.ledger.durable(settings.waitaof_timeout_ms)
        everywhere = {"target_nodes": "all"} if valkey.is_cluster_client(redis) else {}  # every partition's node
        await redis.config_set("appendfsync", "no", **everywhere)  # WAITAOF 1 0 then times out with 0 local fsyncs
        try:
            await gifts.enqueue(redis, request(gid, room, "viewer1"))
            await wait_until(lambda: decided(redis, gid), "settle.lua to run", 10, lambda: task_failure(task))
            assert await history(redis, room) == [], "announced before the fsync was confirmed"
            # A window of many WAITAOF timeouts: the worker must stay up and keep the entry pending.
            loop = asyncio.get_running_loop()
            window_end = loop.time() + 1.0
            for _ in range(200):
                if loop.time() > window_end or task.done():
                    break
                await asyncio.sleep(POLL_S)
            assert task_failure(task) is None
            assert await history(redis, room) == []
            assert await pending(redis) == 1
        finally:
            await redis.config_set("appendfsync", "everysec", **everywhere)
        await wait_until(lambda: drained(redis), "the retried batch to be acked", 15, lambda: task_failure(task))
    assert [e["gift_id"] for _, e in await history(redis, room)] == [gid]
    assert await journal_gift_ids(redis) == Counter({gid: 1})
    assert await balances(redis, "viewer1") == (90, 0)
    await assert_audit_clean(redis)


async def test_same_gift_id_twice_in_one_batch_settles_once(redis: aioredis.Redis, tmp_path: Path) -> None:
    """settle.lua sees the first occurrence's record for the second one in the same call: one debit."""
    room = await open_room(redis)
    await grant(redis, "viewer1", 100)
    worker = SettlementWorker(redis, make_settings(tmp_path))
    await worker.catalogs.load()
    gid = gift_id()
    first, second = await worker.settle([request(gid, room, "viewer1"), request(gid, room, "viewer1")])
    assert (first.status, first.replay, second.status, second.replay) == ("settled", False, "settled", True)
    assert first.coins == second.coins == 100 - load_default().gifts["coffee"].coins
    assert await journal_gift_ids(redis) == Counter({gid: 1})
    assert [e["gift_id"] for _, e in await history(redis, room)] == [gid]
    await assert_audit_clean(redis)


async def test_resend_after_the_record_bucket_rolled_over_replays(redis: aioredis.Redis, tmp_path: Path) -> None:
    """Records live in time buckets (GIFTING_IDEMPOTENCY_TTL_S / 8 each); a resend in a later bucket, still
    within the TTL, gets the stored outcome and is not announced again."""
    settings = make_settings(tmp_path, idempotency_ttl_s=8)  # buckets of 1 s
    room = await open_room(redis)
    await grant(redis, "viewer1", 100)
    worker = SettlementWorker(redis, settings)
    await worker.catalogs.load()
    gid = gift_id()
    [first] = await worker.settle([request(gid, room, "viewer1")])
    await asyncio.sleep(1.5)
    [again] = await worker.settle([request(gid, room, "viewer1")])
    assert (first.replay, again.replay, again.status, again.coins) == (False, True, "settled", first.coins)
    assert (await balances(redis, "viewer1"))[0] == first.coins
    assert len(await history(redis, room)) == 1
    assert (await Ledger(redis, settings).gift_outcomes([gid]))[gid].coins == first.coins


async def test_worker_recovers_when_valkey_forgets_its_scripts(system: System) -> None:
    """The hot path calls scripts by sha; after SCRIPT FLUSH (as after a Valkey restart) gifts still settle once."""
    await system.grant("viewer1", 10)
    room = await system.open_room("creator1")
    viewer = await system.connect("viewer1")
    first = await viewer.gift(room, "rose", 1)
    assert (await viewer.result(first))["status"] == "settled"
    for _ in range(2):  # the first gift after a flush meets NOSCRIPT in settle; the next in announce and ack
        await system.redis.script_flush()
        gid = await viewer.gift(room, "rose", 1)
        assert (await viewer.result(gid))["status"] == "settled"
    assert (await system.wallet("viewer1"))["coins"] == 7

    async def announced() -> bool:  # a failed announce is retried with the batch (results may arrive first)
        return len(await history(system.redis, room)) == 3

    await wait_until(announced, "the third gift in the room history")
    await wait_until(lambda: drained(system.redis), "every entry acked")
    assert [e["offset"] for _, e in await history(system.redis, room)] == [1, 2, 3]
    await assert_audit_clean(system.redis)
