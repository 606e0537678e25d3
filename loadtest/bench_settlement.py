"""Settlement benchmark: durable gifts per second through the real worker, next to two yardsticks.

    python loadtest/bench_settlement.py [--gifts N] [--batch N] [--viewers N] [--rooms N] [--workers N]
                                        [--naive-gifts N] [--ceiling-gifts N] [--hub ID] [--flush]

Everything happens in one run against one Valkey (a private embedded one in a temporary directory, or
REDIS_URL if set: then the database must be empty, or pass --flush to empty it first):

1. real path  `--gifts` gift requests are pre-loaded into their viewers' partition streams (pipelined XADD,
              before any worker runs), then `--workers` real worker processes (`python -m gifting.cli worker`)
              are started while the benchmark holds every partition's lease, released at once when all have
              started (each takes its fair share; none changes hands while timed). Timed from the moment a
              worker first takes an entry until every partition stream and outbox is drained: XREADGROUP ->
              settle.lua per partition -> WAITAOF -> credit.lua per creators' partition -> WAITAOF -> outbox
              XDEL -> announce.lua per room + the result PUBLISHed to the sender's hub channel -> XACK + XDEL.
              Every request names hub `--hub` (default "bench"; nobody subscribes, so PUBLISH costs what it
              costs with no hub listening); `--hub ""` skips the results.
2. ceiling    the ledger's scripts alone, through Ledger.settle from this process with batches of up to `--batch`
              gifts of one partition, prepared exactly as the worker prepares them (SettlementWorker.prepare):
              settle.lua + WAITAOF, then credit.lua per creators' partition + WAITAOF. Valkey's own execution
              time comes from INFO commandstats (usec of evalsha, stats reset just before): ceiling gifts/s =
              1e6 / (usec / gifts). It is what one Valkey could settle if the scripts were its only work: no
              client, network, announce or ack cost.
3. naive      one gift at a time: settle.lua with a batch of one gift (and its credit.lua + WAITAOF when the
              creator is in another partition), then WAITAOF 1 0 (so each gift is as durable as in the real
              path), strictly in sequence, from this process. Gifts are prepared before the clock starts.
              No stream, no announce, no ack: the naive baseline does less work per gift than the real path.

Then it checks the result: the workers settled exactly `--gifts` gifts (partition journals, a credit row per
gift to another partition's creator, room offsets, worker logs), nothing was dead-lettered, every viewer spent
exactly what it was funded with, and `gifting audit`'s check (run_audit) is clean. The last line is one
parseable summary:

    RESULT settlement gifts_per_s=... ceiling_ratio=... naive_ratio=...

ceiling_ratio = real gifts/s / ceiling gifts/s; naive_ratio = real gifts/s / naive gifts/s.
Exit status: 0 when the run verified, 1 when a check failed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import orjson
import redis.asyncio as aioredis

from gifting import keys
from gifting.app import redis_client
from gifting.catalog.model import Catalog, Gift
from gifting.config import Settings
from gifting.embedded import EmbeddedValkey, die_with_parent, stop_processes
from gifting.gifts import STREAM_FIELD, GiftRequest
from gifting.ledger import partitions
from gifting.ledger.audit import run_audit
from gifting.ledger.store import GiftToSettle
from gifting.rooms.store import RoomStore
from loadtest.ledger_streams import payloads, read_journals, stream_lengths, summed_lengths
from workers.settlement import SettlementWorker

REPO = Path(__file__).resolve().parent.parent
PRELOAD_CHUNK = 5000  # XADDs per pipeline round trip while pre-loading
FUND_CHUNK = 2000  # viewers funded per pipeline round trip
POLL_S = 0.01  # drain check interval (one XLEN)
FIRST_TAKE_POLL_S = 0.001
WORKER_START_TIMEOUT_S = 60.0
STALL_TIMEOUT_S = 30.0  # no progress this long while draining: give up
WORKER_STOP_TIMEOUT_S = 15.0
GIFT_COINS_MIN, GIFT_COINS_MAX = 2, 100  # catalog gifts used: >= 2 coins so every gift has all three legs
COUNT_MAX = 3  # gift counts cycle 1..COUNT_MAX
BUSY_WARN = 0.10  # warn when other processes took more than this share of a core during the real path
LEASE_HOLDER = "bench-preload"  # holds every partition's lease while the workers start (hold_leases)
LEASE_HOLD_MS = 600_000  # bounds the hold if the benchmark dies holding it
STOPPED_LOG = re.compile(r"stopped \((\d+) gifts settled\)")

# Targets from the issue (this machine kind: 2 cores, loopback).
TARGET_GIFTS_PER_S = 25_000
TARGET_CEILING_RATIO = 0.5
TARGET_NAIVE_RATIO = 4.0


def say(message: str) -> None:
    print(message, flush=True)


# Workload ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """Deterministic gift number -> (viewer, room, gift, count); gift ids are fresh UUIDs, as clients make them."""

    viewers: list[str]
    rooms: list[str]
    creators: dict[str, str]  # room -> creator user id
    gifts: list[Gift]
    hub: str

    def shape(self, i: int) -> tuple[str, str, Gift, int]:
        return (
            self.viewers[i % len(self.viewers)],
            self.rooms[i % len(self.rooms)],
            self.gifts[(i // len(self.rooms)) % len(self.gifts)],
            1 + i % COUNT_MAX,
        )

    def request(self, i: int, now_ms: int) -> GiftRequest:
        viewer, room, gift, count = self.shape(i)
        return GiftRequest(
            gift_id=str(uuid.uuid4()),
            room=room,
            gift=gift.id,
            count=count,
            sender=viewer,
            sender_name="Viewer " + viewer,
            hub=self.hub,
            price=gift.coins,
            ts_ms=now_ms,
        )

    def room_state(self, room: str) -> dict[str, str]:
        return {"creator": self.creators[room], "status": "live"}

    def cross_partition(self, numbers: Iterable[int]) -> int:
        """How many of these gifts go to a creator in another partition than their viewer's (credited through
        the viewer's partition's outbox)."""
        count = 0
        for i in numbers:
            viewer, room, _gift, _count = self.shape(i)
            count += keys.part_of_user(viewer) != keys.part_of_user(self.creators[room])
        return count

    def coins_needed(self, total: int) -> dict[str, int]:
        """Coins each viewer spends over gifts 0..total-1: funded exactly, so every gift settles and every
        viewer ends at 0 whatever order the workers settle in."""
        needed: dict[str, int] = {}
        for i in range(total):
            viewer, _room, gift, count = self.shape(i)
            needed[viewer] = needed.get(viewer, 0) + gift.coins * count
        return needed


def bench_gifts(catalog: Catalog) -> list[Gift]:
    gifts = [g for g in catalog.gifts.values() if GIFT_COINS_MIN <= g.coins <= GIFT_COINS_MAX and not g.retired]
    if not gifts:
        raise SystemExit(f"bench: the catalog has no gift of {GIFT_COINS_MIN}..{GIFT_COINS_MAX} coins")
    return sorted(gifts, key=lambda g: (g.coins, g.id))


async def fund(redis: aioredis.Redis, needed: dict[str, int]) -> None:
    """Credit coins the way a purchase does: user +N, issuance -N, and a journal entry the audit accepts."""
    items = sorted(needed.items())
    for start in range(0, len(items), FUND_CHUNK):
        async with redis.pipeline(transaction=False) as pipe:
            for user, coins in items[start : start + FUND_CHUNK]:
                part = keys.part_of_user(user)  # the viewer's own partition, and its share of issuance
                pipe.hincrby(keys.coins(part), keys.account(user), coins)
                pipe.hincrby(keys.coins(part), keys.SYS_COIN_ISSUANCE, -coins)
                pipe.xadd(
                    keys.journal(part),
                    {
                        "kind": "purchase",
                        "id": f"grant:bench:{user}",  # "grant:" ids need no purchase record (audit)
                        "legs": f"coins {keys.SYS_COIN_ISSUANCE} {keys.account(user)} {coins}",
                    },
                )
            await pipe.execute()


async def open_rooms(rooms: RoomStore, count: int) -> dict[str, str]:
    creators: dict[str, str] = {}
    for n in range(count):
        creator = f"bench_creator{n}"
        info = await rooms.open(creator, f"Creator {n}", f"Bench room {n}")
        creators[info.room] = creator
    return creators


async def preload(redis: aioredis.Redis, workload: Workload, gifts: int) -> None:
    """Every gift request into its viewer's partition stream (as the hub does), pipelined, before any worker runs."""
    started = time.perf_counter()
    sample = workload.request(0, int(time.time() * 1000))
    # orjson serialises the dataclass itself: the same bytes as GiftRequest.to_entry() (asserted), 3x faster.
    assert {STREAM_FIELD: orjson.dumps(sample)} == sample.to_entry(), "GiftRequest.to_entry changed: update preload"
    entries = [(tag, payload) for tag, queue in payloads(workload, gifts).items() for _id, payload in reversed(queue)]
    next_report = 0
    for start in range(0, gifts, PRELOAD_CHUNK):
        async with redis.pipeline(transaction=False) as pipe:
            for tag, payload in entries[start : start + PRELOAD_CHUNK]:
                pipe.xadd(keys.gifts_stream(tag), {STREAM_FIELD: payload})
            await pipe.execute()
        done = min(start + PRELOAD_CHUNK, gifts)
        if done >= next_report or done == gifts:
            say(f"  preload: {done:>9,}/{gifts:,} gift requests in the {partitions.count()} partition streams")
            next_report = done + max(gifts // 5, PRELOAD_CHUNK)
    elapsed = time.perf_counter() - started
    say(f"  preload: done in {elapsed:.1f} s ({gifts / elapsed:,.0f} XADD/s, pipelined)")


async def hold_leases(redis: aioredis.Redis, hold: bool) -> None:
    """Hold every partition's lease under the benchmark's name (or give them back): the workers start, then
    take their fair shares at once when released, so no partition changes hands while timed (workers/leases.py)."""
    async with redis.pipeline(transaction=False) as pipe:
        for tag in partitions.all_tags():
            if hold:
                pipe.set(keys.lease(tag), LEASE_HOLDER, px=LEASE_HOLD_MS)
            else:
                pipe.delete(keys.lease(tag))
        await pipe.execute()


async def workers_alive(redis: aioredis.Redis, workers: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    """Until every worker process has started (its heartbeat is in Valkey; the bench itself sends none)."""
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while int(await redis.zcard(keys.WORKER_HEARTBEATS)) < len(workers):
        check_alive(workers, logs)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers did not start within {WORKER_START_TIMEOUT_S:.0f} s:\n{tail(logs[0])}")
        await asyncio.sleep(FIRST_TAKE_POLL_S)


def check_alive(workers: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    for proc, log in zip(workers, logs, strict=True):
        if proc.poll() is not None:
            raise RuntimeError(f"worker {proc.pid} exited with {proc.returncode}:\n{tail(log)}")


# Measurements ----------------------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (Linux /proc); 0.0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_cpu_s() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, all cores, excluding steal; steal seconds) from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


async def valkey_cpu_s(redis: aioredis.Redis) -> tuple[float, float]:
    """(CPU seconds of the Valkey server process, of its children: AOF rewrites)."""
    info = await redis.info("cpu")
    server = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return server, float(info.get("used_cpu_user_children", 0)) + float(info.get("used_cpu_sys_children", 0))


async def command_stats(redis: aioredis.Redis) -> dict[str, dict[str, float]]:
    info = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): stats for name, stats in info.items() if isinstance(stats, dict)}


async def left_in_streams(redis: aioredis.Redis) -> tuple[int, int]:
    """(entries still in the partitions' gift streams, in their outboxes). The worker XDELs an entry in the same
    step as its XACK (and so does the dead-letter path), and an outbox entry once its credits are durable, so
    (0, 0) means every gift went all the way through; XPENDING is checked once at the end."""
    waiting, outboxed = await stream_lengths(redis, partitions.all_tags())
    return sum(waiting), outboxed


async def first_take(redis: aioredis.Redis, workers: list[subprocess.Popen[bytes]], logs: list[Path]) -> float:
    """Wait until a worker has taken the first entry of any partition (a group delivered something); return that
    moment."""
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        check_alive(workers, logs)
        async with redis.pipeline(transaction=False) as pipe:
            for tag in partitions.all_tags():
                pipe.xinfo_groups(keys.gifts_stream(tag))
            replies = await pipe.execute(raise_on_error=False)
        for groups in replies:
            for group in groups if isinstance(groups, list) else []:
                if group["name"] == keys.SETTLEMENT_GROUP and (group["pending"] or group.get("entries-read")):
                    return time.perf_counter()
        await asyncio.sleep(FIRST_TAKE_POLL_S)
    raise RuntimeError(f"no worker took an entry within {WORKER_START_TIMEOUT_S:.0f} s:\n{tail(logs[0])}")


def tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def spawn_workers(url: str, args: argparse.Namespace, tmp: Path) -> tuple[list[subprocess.Popen[bytes]], list[Path]]:
    env = {
        **os.environ,
        "REDIS_URL": url,
        "GIFTING_SETTLE_BATCH_MAX": str(args.batch),
        "GIFTING_DATA_DIR": str(tmp / "gifting"),
        "PYTHONUNBUFFERED": "1",
    }
    procs, logs = [], []
    for n in range(args.workers):
        log = tmp / f"worker{n}.log"
        with open(log, "wb") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "gifting.cli", "worker"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=REPO,
                    preexec_fn=die_with_parent,
                )
            )
        logs.append(log)
    return procs, logs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (the worker finishes its batch in hand and logs its count), then SIGKILL if it hangs."""
    stop_processes(procs, WORKER_STOP_TIMEOUT_S)


@dataclass
class RealResult:
    gifts: int
    seconds: float
    gifts_per_s: float
    valkey_cpu_s: float
    valkey_children_cpu_s: float  # AOF rewrite children
    worker_cpu_s: list[float]
    stats: dict[str, dict[str, float]]
    worker_settled: list[int | None]
    aof_rewrites: int
    other_cpu_s: float  # CPU the rest of the machine used meanwhile (not Valkey, the workers or this process)
    steal_s: float  # CPU time the hypervisor took from this machine meanwhile


async def run_real_path(
    redis: aioredis.Redis, url: str, args: argparse.Namespace, workload: Workload, tmp: Path, local_valkey: bool
) -> RealResult:
    say(f"phase 1/3: real path, {args.gifts:,} gifts, {args.workers} worker process(es), batch {args.batch}")
    await hold_leases(redis, hold=True)
    await preload(redis, workload, args.gifts)
    procs, logs = spawn_workers(url, args, tmp)
    try:
        spawned = time.perf_counter()
        await workers_alive(redis, procs, logs)
        rewrites0 = int((await redis.info("persistence")).get("aof_rewrites", 0))
        await hold_leases(redis, hold=False)
        started = await first_take(redis, procs, logs)
        await redis.config_resetstat()  # here, not before: first_take's polls are not the workers' work
        worker_cpu0 = [proc_cpu_s(p.pid) for p in procs]
        valkey_cpu0 = await valkey_cpu_s(redis)
        machine0, steal0, self0 = *machine_cpu_s(), time.process_time()
        say(f"  workers: first entry taken {started - spawned:.2f} s after spawn (start-up, not timed)")
        last_report, last_done, last_progress = started, 0, started
        while True:
            length, outboxed = await left_in_streams(redis)
            now = time.perf_counter()
            done = args.gifts - length
            if length == 0 and outboxed == 0:
                break
            if done != last_done:
                last_progress = now
            elif now - last_progress > STALL_TIMEOUT_S:
                raise RuntimeError(f"no progress for {STALL_TIMEOUT_S:.0f} s ({length} left):\n{tail(logs[0])}")
            check_alive(procs, logs)
            if now - last_report >= 1.0:
                rate = (done - last_done) / (now - last_report)
                say(f"  settled+acked {done:>9,}/{args.gifts:,}  {rate:>8,.0f} gifts/s (last second)")
                last_report, last_done = now, done
            await asyncio.sleep(POLL_S)
        finished = time.perf_counter()
        worker_cpu = [proc_cpu_s(p.pid) - c0 for p, c0 in zip(procs, worker_cpu0, strict=True)]
        valkey_cpu1 = await valkey_cpu_s(redis)
        valkey_cpu, children_cpu = valkey_cpu1[0] - valkey_cpu0[0], valkey_cpu1[1] - valkey_cpu0[1]
        machine1, steal1 = machine_cpu_s()
        own = sum(worker_cpu) + time.process_time() - self0
        if local_valkey:
            own += valkey_cpu + children_cpu
        stats = await command_stats(redis)
        rewrites = int((await redis.info("persistence")).get("aof_rewrites", 0)) - rewrites0
    finally:
        stop_workers(procs)
    settled: list[int | None] = []
    for log in logs:
        counts = STOPPED_LOG.findall(tail(log, 200))  # one line per batch loop (GIFTING_SETTLE_CONCURRENCY)
        settled.append(sum(map(int, counts)) if counts else None)
    seconds = finished - started
    return RealResult(
        gifts=args.gifts,
        seconds=seconds,
        gifts_per_s=args.gifts / seconds,
        valkey_cpu_s=valkey_cpu,
        valkey_children_cpu_s=children_cpu,
        worker_cpu_s=worker_cpu,
        stats=stats,
        worker_settled=settled,
        aof_rewrites=max(rewrites, 0),
        other_cpu_s=max(machine1 - machine0 - own, 0.0),
        steal_s=steal1 - steal0,
    )


@dataclass
class CeilingResult:
    gifts: int
    calls: int  # settle.lua calls (one partition's batch each)
    credit_calls: int  # credit.lua calls (one destination partition of a batch each)
    usec_per_call: float  # both scripts' server time per settle.lua call
    usec_per_gift: float
    gifts_per_s: float  # server-side ceiling
    client_gifts_per_s: float  # what this process got: settle + WAITAOF, credits + WAITAOF, per batch in sequence
    valkey_cpu_us_per_gift: float  # all of Valkey's CPU in the phase (script, protocol, AOF), per gift
    settled: int


async def run_ceiling(
    redis: aioredis.Redis, worker: SettlementWorker, workload: Workload, first: int, gifts: int, batch: int
) -> CeilingResult:
    say(
        f"phase 2/3: ceiling, the ledger's scripts alone, {gifts:,} gifts in batches of up to {batch} of one "
        "partition (settle.lua + WAITAOF, then credit.lua per creators' partition + WAITAOF)"
    )
    # Gifts are prepared (uuid, GiftRequest, SettlementWorker.prepare) before the clock starts.
    for script in (worker.ledger.settle_script, worker.ledger.credit_script):
        await redis.script_load(script.script)  # so no NOSCRIPT round lands in the stats
    batches = partition_batches(prepare(worker, workload, range(first, first + gifts), int(time.time() * 1000)), batch)
    credit_calls = sum(len(destinations(part, prepared)) for part, prepared in batches)
    await redis.config_resetstat()
    settled, timeout_ms = 0, worker.settings.waitaof_timeout_ms
    cpu0 = (await valkey_cpu_s(redis))[0]
    started = time.perf_counter()
    for _part, prepared in batches:
        outcomes = await worker.ledger.settle(prepared, durable_timeout_ms=timeout_ms)
        settled += sum(1 for o in outcomes if o.settled and not o.replay)
    elapsed = time.perf_counter() - started
    cpu_us = ((await valkey_cpu_s(redis))[0] - cpu0) / gifts * 1e6
    calls = len(batches)
    evalsha = (await command_stats(redis)).get("evalsha", {})
    if int(evalsha.get("calls", 0)) != calls + credit_calls:
        raise RuntimeError(f"ceiling: expected {calls} + {credit_calls} evalsha calls in commandstats, got {evalsha}")
    usec_per_gift = float(evalsha["usec"]) / gifts
    result = CeilingResult(gifts, calls, credit_calls, float(evalsha["usec"]) / calls, usec_per_gift,
                           1e6 / usec_per_gift, gifts / elapsed, cpu_us, settled)  # fmt: skip
    say(
        f"  evalsha: {calls} settle.lua calls ({gifts / calls:,.0f} gifts each) + {credit_calls} credit.lua calls, "
        f"{result.usec_per_call:,.0f} us per batch = {usec_per_gift:.2f} us per gift "
        f"-> ceiling {result.gifts_per_s:,.0f} gifts/s"
    )
    say(
        f"  (this client, one batch after the other: {result.client_gifts_per_s:,.0f} gifts/s; "
        f"Valkey CPU in the phase {cpu_us:.1f} us/gift incl. protocol and AOF)"
    )
    return result


def partition_batches(prepared: list[GiftToSettle], batch: int) -> list[tuple[str, list[GiftToSettle]]]:
    """The gifts as a worker reads them: each viewer's partition stream in order, `batch` at a time."""
    by_part: dict[str, list[GiftToSettle]] = {}
    for gift in prepared:
        by_part.setdefault(keys.part_of_user(gift.viewer), []).append(gift)
    return [
        (part, gifts[i : i + batch]) for part, gifts in sorted(by_part.items()) for i in range(0, len(gifts), batch)
    ]


def destinations(part: str, prepared: list[GiftToSettle]) -> set[str]:
    """The other partitions a batch of `part` credits (its creators'): one credit.lua call each."""
    return {keys.part_of_user(g.creator) for g in prepared if not g.reject} - {part}


@dataclass
class NaiveResult:
    gifts: int
    gifts_per_s: float
    usec_per_gift: float  # server-side, settle.lua with one gift (and credit.lua when it crosses partitions)
    settled: int
    cross: int  # gifts whose creator is in another partition: a second script and WAITAOF each


async def run_naive(
    redis: aioredis.Redis, worker: SettlementWorker, workload: Workload, first: int, gifts: int
) -> NaiveResult:
    say(
        f"phase 3/3: naive, {gifts:,} gifts one at a time: settle.lua with 1 gift (and credit.lua + WAITAOF when "
        "its creator is in another partition), then WAITAOF, in sequence"
    )
    await redis.config_resetstat()
    settled, timeout_ms = 0, worker.settings.waitaof_timeout_ms
    singles = [[gift] for gift in prepare(worker, workload, range(first, first + gifts), int(time.time() * 1000))]
    crossing = [bool(destinations(keys.part_of_user(gift.viewer), [gift])) for (gift,) in singles]
    cross, cross_s = sum(crossing), 0.0
    started = time.perf_counter()  # gifts are prepared before the clock starts: only the round trips are timed
    next_report = started + 1.0
    for done, (single, crosses) in enumerate(zip(singles, crossing, strict=True), 1):
        one = time.perf_counter()
        outcomes = await worker.ledger.settle(single)  # a credit to another partition: applied durably in here
        await worker.ledger.durable(timeout_ms, keys.part_of_user(single[0].viewer))
        cross_s += time.perf_counter() - one if crosses else 0.0
        settled += sum(1 for o in outcomes if o.settled and not o.replay)
        if time.perf_counter() >= next_report:
            say(f"  naive: {done:>7,}/{gifts:,}  {done / (time.perf_counter() - started):>8,.0f} gifts/s")
            next_report += 1.0
    elapsed = time.perf_counter() - started
    evalsha = (await command_stats(redis)).get("evalsha", {})
    usec_per_gift = float(evalsha.get("usec", 0.0)) / gifts
    result = NaiveResult(gifts, gifts / elapsed, usec_per_gift, settled, cross)
    say(
        f"  naive: {result.gifts_per_s:,.0f} gifts/s ({usec_per_gift:.1f} us of it inside Valkey per gift; "
        f"{cross / gifts:.0%} of the gifts cross partitions)"
    )
    local_s = elapsed - cross_s
    say(
        f"  naive, apart: gifts to a creator in another partition {cross / max(cross_s, 1e-9):,.0f} gifts/s, "
        f"in the viewer's own {(gifts - cross) / max(local_s, 1e-9):,.0f} gifts/s"
    )
    return result


def prepare(worker: SettlementWorker, workload: Workload, numbers: Iterable[int], now_ms: int) -> list[GiftToSettle]:
    """Gifts as the worker hands them to settle.lua (its own prepare: catalog price, room live, split)."""
    prepared = []
    for i in numbers:
        request = workload.request(i, now_ms)
        prepared.append(worker.prepare(request, workload.room_state(request.room)))
    return prepared


# Checks and report -----------------------------------------------------------------------------------------


@dataclass
class Checks:
    failures: list[str] = field(default_factory=list)

    def expect(self, ok: bool, what: str) -> None:
        say(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.failures.append(what)


async def check_real_path(
    redis: aioredis.Redis, workload: Workload, funded: int, real: RealResult, checks: Checks
) -> None:
    say("checks after the real path (every partition):")
    journals = await read_journals(redis)
    gifts, cross = len(journals.settle_ms), workload.cross_partition(range(real.gifts))
    checks.expect(
        gifts == real.gifts, f"journal gifts {gifts:,} == {real.gifts:,} (in {journals.settle_entries:,} batch entries)"
    )
    checks.expect(
        journals.credit_rows == cross,
        f"credit rows {journals.credit_rows:,} == {cross:,} gifts to another partition's creator "
        f"(in {journals.credit_entries:,} credit.lua entries)",
    )
    checks.expect(journals.others == funded, f"other journal entries {journals.others:,} == {funded:,} fundings")
    async with redis.pipeline(transaction=False) as pipe:
        for room in workload.rooms:
            pipe.hget(keys.room_meta(room), "offset")
        offsets = sum(int(o or 0) for o in await pipe.execute())
    checks.expect(
        offsets == real.gifts, f"room history offsets sum {offsets:,} == {real.gifts:,} (announced once each)"
    )
    async with redis.pipeline(transaction=False) as pipe:
        for tag in partitions.all_tags():
            pipe.xpending(keys.gifts_stream(tag), keys.SETTLEMENT_GROUP)
        pending = sum(int(p["pending"]) for p in await pipe.execute())
    checks.expect(pending == 0, f"nothing pending in the partitions' consumer groups ({pending})")
    dead = await summed_lengths(redis, keys.gifts_dead_letter)
    checks.expect(dead == 0, f"dead-letter streams empty ({dead})")
    if None in real.worker_settled:
        checks.expect(False, f"every worker logged its settled count ({real.worker_settled})")
    else:
        total = sum(n for n in real.worker_settled if n is not None)
        checks.expect(total == real.gifts, f"workers report {total:,} gifts settled == {real.gifts:,}")


def print_breakdown(real: RealResult) -> None:
    """Where Valkey's time went in the real path, per gift (commandstats were reset just before the workers)."""
    say("valkey commandstats during the real path (usec per gift; commands run inside a script or MULTI are")
    say("counted on their own line too, and inside their evalsha/exec):")
    top = sorted(real.stats.items(), key=lambda kv: -float(kv[1].get("usec", 0)))
    for name, stats in top[:12]:
        calls, usec = int(stats.get("calls", 0)), float(stats.get("usec", 0))
        say(
            f"  {name:<14} calls {calls:>9,}  {usec / real.gifts:>6.2f} us/gift  "
            f"{float(stats.get('usec_per_call', 0)):>9.1f} us/call"
        )


def cpu_line(real: RealResult) -> str:
    workers = " + ".join(f"{c / real.seconds:.0%}" for c in real.worker_cpu_s)
    return (
        f"cpu during the real path ({os.cpu_count()} cores): valkey {real.valkey_cpu_s / real.seconds:.0%} of a core "
        f"({real.valkey_cpu_s / real.gifts * 1e6:.1f} us/gift), its AOF rewrite children "
        f"{real.valkey_children_cpu_s / real.seconds:.0%}, worker(s) {workers} "
        f"({sum(real.worker_cpu_s) / real.gifts * 1e6:.1f} us/gift), other processes "
        f"{real.other_cpu_s / real.seconds:.0%}, steal {real.steal_s / real.seconds:.0%}"
    )


# Main ------------------------------------------------------------------------------------------------------


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Durable gifts/s through the settlement worker, its Valkey ceiling and a naive baseline."
    )
    parser.add_argument("--gifts", type=positive, default=100_000, help="gifts through the real path (100000)")
    parser.add_argument("--batch", type=positive, default=500, help="settle_batch_max: gifts per Lua call (500)")
    parser.add_argument("--viewers", type=positive, default=10_000, help="distinct senders (10000)")
    parser.add_argument("--rooms", type=positive, default=20, help="live rooms the gifts go to (20)")
    parser.add_argument("--workers", type=positive, default=1, help="worker processes (1)")
    parser.add_argument("--naive-gifts", type=positive, default=2000, help="gifts for the naive baseline (2000)")
    parser.add_argument(
        "--ceiling-gifts", type=positive, default=None, help="gifts for the ceiling phase (default: 40 batches)"
    )
    parser.add_argument("--hub", default="bench", help='hub id in every request ("": no result PUBLISH)')
    parser.add_argument("--flush", action="store_true", help="with REDIS_URL: FLUSHDB first instead of refusing")
    args = parser.parse_args(argv)
    if args.ceiling_gifts is None:
        args.ceiling_gifts = 40 * args.batch
    return args


async def bench(url: str, args: argparse.Namespace, tmp: Path, embedded: bool) -> int:
    main_task = asyncio.current_task()
    if main_task is not None:  # SIGTERM: unwind like Ctrl-C, so the workers and Valkey are stopped
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    redis = redis_client(url)
    try:
        return await _bench(redis, url, args, tmp, embedded)
    finally:
        await redis.aclose()


async def _bench(redis: aioredis.Redis, url: str, args: argparse.Namespace, tmp: Path, embedded: bool) -> int:
    if not embedded:
        size = int(await redis.dbsize())
        if size and not args.flush:
            say(f"bench: REDIS_URL database holds {size} keys; use an empty database or pass --flush to empty it")
            return 2
        if size:
            say(f"bench: --flush: emptying the REDIS_URL database ({size} keys)")
            await redis.flushdb()
    if (await redis.config_get("appendonly")).get("appendonly") != "yes":
        say("bench: the server has appendonly off: WAITAOF cannot make gifts durable; enable AOF")
        return 2
    server = await redis.info("server")
    version = server.get("valkey_version") or server.get("redis_version")
    say(
        f"settlement benchmark: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"Valkey {version} ({'embedded' if embedded else url}), appendfsync "
        f"{(await redis.config_get('appendfsync')).get('appendfsync')}"
    )
    say(
        f"  gifts {args.gifts:,}, batch {args.batch}, viewers {args.viewers:,}, rooms {args.rooms}, "
        f"workers {args.workers}, ceiling gifts {args.ceiling_gifts:,}, naive gifts {args.naive_gifts:,}, "
        f"hub {args.hub!r}"
    )

    settings = Settings.from_env(redis_url=url, settle_batch_max=args.batch)
    worker = SettlementWorker(redis, settings, consumer="bench")  # prepares gifts for the ceiling/naive phases
    catalog = await worker.catalogs.load()  # seeds the catalog from the shipped file, as a worker does
    say("setup: opening rooms, funding viewers")
    creators = await open_rooms(worker.rooms, args.rooms)  # the worker's own RoomStore
    workload = Workload(
        viewers=[f"bench_viewer{n}" for n in range(args.viewers)],
        rooms=sorted(creators),
        creators=creators,
        gifts=bench_gifts(catalog),
        hub=args.hub,
    )
    total = args.gifts + args.ceiling_gifts + args.naive_gifts
    needed = workload.coins_needed(total)
    await fund(redis, needed)
    say(f"  {len(creators)} rooms open, {len(needed):,} viewers funded with {sum(needed.values()):,} coins")

    checks = Checks()
    local = embedded or urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")
    real = await run_real_path(redis, url, args, workload, tmp, local_valkey=local)
    say(f"  real path: {real.gifts:,} gifts in {real.seconds:.2f} s = {real.gifts_per_s:,.0f} durable gifts/s")
    say(cpu_line(real))
    if (real.other_cpu_s + real.steal_s) / real.seconds > BUSY_WARN:
        say("  WARNING: other processes (or the hypervisor) took CPU during the run: the figures are low")
    if real.aof_rewrites:
        say(f"  note: {real.aof_rewrites} AOF rewrite(s) ran during the real path (Valkey's auto-aof-rewrite)")
    print_breakdown(real)
    await check_real_path(redis, workload, len(needed), real, checks)

    ceiling = await run_ceiling(redis, worker, workload, args.gifts, args.ceiling_gifts, args.batch)
    checks.expect(ceiling.settled == ceiling.gifts, f"ceiling phase settled {ceiling.settled:,} == {ceiling.gifts:,}")
    naive = await run_naive(redis, worker, workload, args.gifts + args.ceiling_gifts, args.naive_gifts)
    checks.expect(naive.settled == naive.gifts, f"naive phase settled {naive.settled:,} == {naive.gifts:,}")

    say("audit (gifting audit's run_audit over the whole journal):")
    report = await run_audit(redis)
    for line in report.summary().splitlines():
        say(f"  {line}")
    checks.expect(report.clean, "audit clean")
    checks.expect(
        report.kinds.get("gift", 0) == total, f"audit counts {report.kinds.get('gift', 0):,} gifts == {total:,}"
    )
    users = sum(v for a, v in report.totals.get("coins", {}).items() if a.startswith("u:"))
    checks.expect(users == 0, f"viewers spent exactly what they were funded with (user coins left {users})")

    ceiling_ratio = real.gifts_per_s / ceiling.gifts_per_s
    naive_ratio = real.gifts_per_s / naive.gifts_per_s
    say("summary:")
    met = (
        verdict(real.gifts_per_s >= TARGET_GIFTS_PER_S),
        verdict(ceiling_ratio >= TARGET_CEILING_RATIO),
        verdict(naive_ratio >= TARGET_NAIVE_RATIO),
    )
    say(f"  real path {real.gifts_per_s:>9,.0f} durable gifts/s  (target >= {TARGET_GIFTS_PER_S:,}: {met[0]})")
    say(f"  ceiling   {ceiling.gifts_per_s:>9,.0f} gifts/s, ratio {ceiling_ratio:.2f} (target >= 0.5: {met[1]})")
    say(f"  naive     {naive.gifts_per_s:>9,.0f} gifts/s, ratio {naive_ratio:.1f}x (target >= 4x: {met[2]})")
    if checks.failures:
        say(f"FAILED checks: {len(checks.failures)}: " + "; ".join(checks.failures))
    say(
        f"RESULT settlement gifts_per_s={real.gifts_per_s:.0f} "
        f"ceiling_ratio={ceiling_ratio:.3f} naive_ratio={naive_ratio:.2f}"
    )
    return 1 if checks.failures else 0


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    url = os.environ.get("REDIS_URL", "")
    with tempfile.TemporaryDirectory(prefix="bench-settlement-") as tmp_name:
        tmp = Path(tmp_name)
        server = None
        if not url:
            server = EmbeddedValkey(tmp / "data", announce=False)
            url = server.start()
        try:
            return asyncio.run(bench(url, args, tmp, embedded=server is not None))
        except asyncio.CancelledError:
            say("bench: stopped")
            return 143
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
