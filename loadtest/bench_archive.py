"""Archive benchmark: settlement with the archiver running, Valkey's memory per gift, PostgreSQL's size per gift.

    python loadtest/bench_archive.py [--gifts N] [--batch N] [--viewers N] [--rooms N] [--workers N]

A private embedded Valkey and PostgreSQL in a temporary directory; real worker processes (`gifting worker`) and
a real archiver process (`gifting archive`). `--gifts` (default 300,000) are fed in three phases through the
partitions' gift streams, each gift into its viewer's (never more than FEED_BACKLOG waiting in all of them, so
the streams' own memory stays level):

1. warm-up   a third of the gifts, archiver running; then everything settled and archived: Valkey memory M1.
2. steady    half the gifts, archiver running: settlement gifts/s (first take to drained); the archiver's lag
             after the last gift settled; then everything archived: Valkey memory M2.
             valkey_bytes_per_gift_steady = (M2 - M1) / gifts of this phase.
3. capacity  the rest settled with the archiver stopped, then the archiver's loop (workers/archiver.Archiver,
             in this process) alone on that backlog: its rows/s (journal entries and the gifts in them) is its
             capacity; keeps_up = archiver gifts/s (phase 3) / settlement gifts/s (phase 2), one run.

The hot windows are set small (the options below, passed to every process as GIFTING_* settings) so that
they are full after the warm-up, as they are on a server that has run for a while: statement rows per user,
room history events, the idempotency window. M1 and M2 are taken once the idempotency window (time-bounded)
has passed after the last gift, so both see it the same (empty); at a constant load it holds a constant
rate x window of records either way.

Valkey's used memory is printed every SAMPLE_S. Then `gifting audit`'s check over the archive and Valkey must
be clean and count every gift. Last line:

    RESULT archive keeps_up=... valkey_bytes_per_gift_steady=... pg_bytes_per_gift=...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import redis.asyncio as aioredis

from gifting import keys
from gifting.app import redis_client
from gifting.config import Settings
from gifting.embedded import EmbeddedValkey, die_with_parent, stop_processes
from gifting.embedded_pg import EmbeddedPostgres
from gifting.gifts import STREAM_FIELD, gift_backlog
from gifting.history.schema import migrate
from gifting.ledger import partitions, rules
from gifting.ledger.audit import run_audit
from loadtest.bench_settlement import Workload, bench_gifts, fund, open_rooms, positive, say, spawn_workers, tail
from loadtest.ledger_streams import payloads, stream_lengths, summed_lengths
from workers.archiver import Archiver
from workers.settlement import SettlementWorker

REPO = Path(__file__).resolve().parent.parent
FEED_BACKLOG = 20_000  # gift requests waiting in the gifts stream at most
FEED_CHUNK = 5_000
POLL_S = 0.02
SAMPLE_S = 2.0
DRAIN_TIMEOUT_S = 600.0
TARGET_KEEPS_UP = 1.0
TARGET_STEADY_BYTES = 0.05 * 0.9 * 1024  # 5 % of the 0.9 KiB per gift measured before the archive


async def feed(redis: aioredis.Redis, workload: Workload, start: int, stop: int) -> None:
    """Gifts start..stop-1, each into its viewer's partition stream (as the hub does), FEED_CHUNK at a time."""
    for first in range(start, stop, FEED_CHUNK):
        chunk = payloads(workload, min(FEED_CHUNK, stop - first), first)
        await wait_until(lambda: _room_to_feed(redis), "room in the gift streams")
        async with redis.pipeline(transaction=False) as pipe:
            for tag, queue in chunk.items():
                for _gift_id, payload in reversed(queue):
                    pipe.xadd(keys.gifts_stream(tag), {STREAM_FIELD: payload})
            await pipe.execute()


async def _room_to_feed(redis: aioredis.Redis) -> bool:
    return await gift_backlog(redis) <= FEED_BACKLOG - FEED_CHUNK


async def wait_until(condition: Any, what: str) -> float:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while not await condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench: {what} did not happen within {DRAIN_TIMEOUT_S:.0f} s")
        await asyncio.sleep(POLL_S)
    return time.perf_counter()


async def used_memory(redis: aioredis.Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def sampler(redis: aioredis.Redis, started: float) -> None:
    while True:
        await asyncio.sleep(SAMPLE_S)
        memory, journal = await used_memory(redis), await summed_lengths(redis, keys.journal)
        say(f"    t={time.perf_counter() - started:6.1f} s  valkey used_memory {memory / 2**20:7.1f} MiB  "
            f"journal entries in Valkey {journal:>6,}")  # fmt: skip


def spawn_archiver(url: str, database_url: str, tmp: Path) -> tuple[subprocess.Popen[bytes], Path]:
    env = {**os.environ, "REDIS_URL": url, "GIFTING_DATABASE_URL": database_url, "GIFTING_DATA_DIR": str(tmp)}
    log = tmp / "archiver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gifting.cli", "archive"], env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, cwd=REPO, preexec_fn=die_with_parent,
        )  # fmt: skip
    return proc, log


def hot_windows(args: argparse.Namespace) -> dict[str, str]:
    """The hot windows as settings for every process of the run (see the module docstring)."""
    return {
        "GIFTING_STATEMENT_HOT_ROWS": str(args.hot_rows),
        "GIFTING_ROOM_HISTORY_EVENTS_MAX": str(args.room_history),
        "GIFTING_IDEMPOTENCY_TTL_S": str(args.idempotency_s),
    }


async def idempotency_window_passes(settings: Settings) -> None:
    """Until every gift record of the load has expired (a bucket lives its span beyond the TTL)."""
    ttl_s = settings.idempotency_ttl_s
    span_s = -(-ttl_s // rules.RECORD_BUCKETS)
    say(f"  waiting {ttl_s + 2 * span_s + 1} s: the idempotency window ({ttl_s} s) passes")
    await asyncio.sleep(ttl_s + 2 * span_s + 1)


class Run:
    def __init__(self, redis: aioredis.Redis, pg: psycopg.AsyncConnection[Any], workload: Workload) -> None:
        self.redis, self.pg, self.workload = redis, pg, workload

    async def drained(self) -> bool:
        """Every gift settled and acked, and every creator's credit applied (outboxes empty)."""
        waiting, outboxed = await stream_lengths(self.redis, partitions.all_tags())
        return sum(waiting) == 0 and outboxed == 0

    async def archived(self) -> bool:
        return await summed_lengths(self.redis, keys.journal) == 0

    async def settle(self, start: int, stop: int) -> tuple[float, float]:
        """Feed gifts start..stop-1; returns (when feeding started, when the last one settled)."""
        began = time.perf_counter()
        await feed(self.redis, self.workload, start, stop)
        return began, await wait_until(self.drained, "settlement")

    async def archived_rows(self) -> int:
        row = await (await self.pg.execute("SELECT count(*) FROM journal")).fetchone()
        return int(row[0]) if row else 0


async def bench(url: str, database_url: str, args: argparse.Namespace, tmp: Path) -> int:
    redis = redis_client(url)
    pg = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    try:
        return await _bench(redis, pg, url, database_url, args, tmp)
    finally:
        await redis.aclose()
        await pg.close()


async def _bench(
    redis: aioredis.Redis, pg: psycopg.AsyncConnection[Any], url: str, database_url: str,
    args: argparse.Namespace, tmp: Path,
) -> int:  # fmt: skip
    say(f"archive benchmark: {os.cpu_count()} cores, gifts {args.gifts:,}, batch {args.batch}, "
        f"viewers {args.viewers:,}, rooms {args.rooms}, workers {args.workers}")  # fmt: skip
    say("hot windows: " + ", ".join(f"{k}={v}" for k, v in hot_windows(args).items()))
    settings = Settings.from_env(redis_url=url, settle_batch_max=args.batch)
    worker = SettlementWorker(redis, settings, consumer="bench")
    catalog = await worker.catalogs.load()
    creators = await open_rooms(worker.rooms, args.rooms)
    workload = Workload([f"bench_viewer{n}" for n in range(args.viewers)], sorted(creators), creators,
                        bench_gifts(catalog), "")  # fmt: skip
    needed = workload.coins_needed(args.gifts)
    await fund(redis, needed)
    warm, steady = args.gifts // 3, args.gifts // 2
    run = Run(redis, pg, workload)
    workers, logs = spawn_workers(url, args, tmp)
    archiver, archiver_log = spawn_archiver(url, database_url, tmp)
    sampling = asyncio.create_task(sampler(redis, time.perf_counter()))
    try:
        say(f"phase 1: warm-up, {warm:,} gifts, archiver running")
        await run.settle(0, warm)
        await wait_until(run.archived, "archiving (warm-up)")
        await idempotency_window_passes(settings)
        m1 = await used_memory(redis)
        say(f"  settled and archived; Valkey used_memory M1 = {m1:,} bytes")

        say(f"phase 2: steady, {steady:,} gifts, archiver running")
        began, settled_at = await run.settle(warm, warm + steady)
        archived_at = await wait_until(run.archived, "archiving (steady)")
        await idempotency_window_passes(settings)
        m2 = await used_memory(redis)
        settle_rate = steady / (settled_at - began)
        say(f"  settlement {settle_rate:,.0f} gifts/s; archiver done {archived_at - settled_at:.2f} s after the "
            f"last gift settled; M2 = {m2:,} bytes")  # fmt: skip

        rest = args.gifts - warm - steady
        say(f"phase 3: capacity, {rest:,} gifts settled with the archiver stopped, then archived alone")
        stop_processes([archiver], 15.0)
        await run.settle(warm + steady, args.gifts)
        backlog_entries = await summed_lengths(redis, keys.journal)
        rows_before = await run.archived_rows()
        # In this process, so the figure is the archiver's work, not a Python start-up.
        alone = Archiver(redis, database_url, settings)  # every partition's journal, as `gifting archive`
        started = time.perf_counter()
        while await alone.step():
            pass
        done = time.perf_counter()
        await alone.close()
        rows = await run.archived_rows() - rows_before
        archiver, archiver_log = spawn_archiver(url, database_url, tmp)
        archive_rate = rest / (done - started)
        say(f"  archiver: {rows:,} journal rows ({backlog_entries:,} entries waited) holding {rest:,} gifts in "
            f"{done - started:.2f} s = {rows / (done - started):,.0f} rows/s, "
            f"{archive_rate:,.0f} gifts/s")  # fmt: skip
    except RuntimeError as exc:
        say(f"{exc}\nworker log:\n{tail(logs[0])}\narchiver log:\n{tail(archiver_log)}")
        return 1
    finally:
        sampling.cancel()
        stop_processes([*workers, archiver], 15.0)

    tables = ("journal", "legs", "statements", "statement_cursor")
    sizes = "SELECT " + " + ".join(f"pg_total_relation_size('{table}')" for table in tables)
    size_row = await (await pg.execute(sizes)).fetchone()
    pg_bytes = int(size_row[0]) if size_row else 0
    report = await run_audit(redis, archive=pg)
    say("audit over the archive and Valkey:")
    for line in report.summary().splitlines():
        say(f"  {line}")
    ok = report.clean and report.kinds.get("gift", 0) == args.gifts
    keeps_up = archive_rate / settle_rate
    steady_bytes = (m2 - m1) / steady
    say("summary:")
    say(f"  settlement {settle_rate:,.0f} gifts/s, archiver {archive_rate:,.0f} gifts/s: keeps_up {keeps_up:.2f} "
        f"(target >= {TARGET_KEEPS_UP}: {'met' if keeps_up >= TARGET_KEEPS_UP else 'NOT met'})")  # fmt: skip
    say(f"  Valkey growth per gift once warm {steady_bytes:,.1f} bytes (target < {TARGET_STEADY_BYTES:.0f}: "
        f"{'met' if steady_bytes < TARGET_STEADY_BYTES else 'NOT met'})")  # fmt: skip
    say(f"  PostgreSQL {' + '.join(tables)} {pg_bytes:,} bytes = {pg_bytes / args.gifts:,.0f} bytes per gift")
    if not ok:
        say(f"FAILED: audit clean {report.clean}, gifts counted {report.kinds.get('gift', 0):,} of {args.gifts:,}")
    say(f"RESULT archive keeps_up={keeps_up:.2f} valkey_bytes_per_gift_steady={steady_bytes:.0f} "
        f"pg_bytes_per_gift={pg_bytes / args.gifts:.0f}")  # fmt: skip
    return 0 if ok else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Settlement with the archiver: rows/s, memory per gift.")
    parser.add_argument("--gifts", type=positive, default=300_000, help="gifts settled in all (300000)")
    parser.add_argument("--batch", type=positive, default=500, help="settle_batch_max: gifts per Lua call (500)")
    parser.add_argument("--viewers", type=positive, default=10_000, help="distinct senders (10000)")
    parser.add_argument("--rooms", type=positive, default=20, help="live rooms the gifts go to (20)")
    parser.add_argument("--workers", type=positive, default=1, help="worker processes (1)")
    parser.add_argument("--hot-rows", type=positive, default=5, help="GIFTING_STATEMENT_HOT_ROWS (5)")
    parser.add_argument("--room-history", type=positive, default=1000, help="GIFTING_ROOM_HISTORY_EVENTS_MAX (1000)")
    parser.add_argument("--idempotency-s", type=positive, default=4, help="GIFTING_IDEMPOTENCY_TTL_S (4)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(hot_windows(args))  # this process's settings and the workers' and archiver's
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp_name:
        tmp = Path(tmp_name)
        valkey = EmbeddedValkey(tmp / "valkey-data", announce=False)
        postgres = EmbeddedPostgres(tmp / "pg-data", announce=False)
        try:
            url = valkey.start()
            database_url = postgres.start()
            migrate(database_url)
            return asyncio.run(bench(url, database_url, args, tmp))
        finally:
            postgres.stop()
            valkey.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
