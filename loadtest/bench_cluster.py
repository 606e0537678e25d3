"""Cluster benchmark: one gift workload on a standalone Valkey and on a Valkey Cluster, in one run.

    python loadtest/bench_cluster.py [--gifts N] [--workers N] [--primaries N] [--batch N] [--backlog N]
                                     [--viewers N] [--rooms N]

Each backend is started by the benchmark in a temporary directory (127.0.0.1, children that die with it) and
stopped after its run: (a) one embedded Valkey (gifting/embedded.py), (b) an embedded cluster of `--primaries`
primaries without replicas (gifting/embedded_cluster.py). On each, the same run:

1. setup     catalog, `--rooms` live rooms (one creator each), `--viewers` viewers funded in their own partitions
             with exactly what they will spend; `--workers` real worker processes (`gifting worker`, the same
             count on both) started, and the run waits until they hold every partition's lease between them.
2. load      `--gifts` gift requests (made before the clock starts) are fed straight into the partitions' gift
             streams (each to its viewer's partition, as the hub does), keeping at most `--backlog` entries
             waiting in each stream: enough that a worker's read always finds a batch (saturated), few enough
             that the queue does not make up the credit lag. Timed from the first XADD until every stream and
             outbox is empty (every gift settled, announced, acked, and its creator's credit durable).
3. figures   durable gifts/s; CPU microseconds per gift of each Valkey node, the workers, this process (the
             feeder) and the rest of the machine, from /proc/<pid>/stat and /proc/stat; INFO commandstats summed
             over the nodes; gifts per settle.lua call and credits per credit.lua call (from the journals); the
             share of gifts whose viewer and creator live in different partitions; the creator-credit lag of
             each cross-partition gift: from its settle entry's id (ms, in the viewer's partition: when the gift
             counts for the sender and the room) to its credit row's journal entry id (ms, in the creator's
             partition), p50/p99; and, for context, each gift's time from its stream entry to its credit (or own
             settle entry), which adds the queue in front of settlement (saturated here by design).
4. checks    every gift settled once (journal rows, worker logs), streams, outboxes and dead letters empty,
             viewers spent exactly what they were funded with, `gifting audit`'s run_audit clean.

Last line:

    RESULT cluster gifts_per_s=... vs_standalone=... cpu_per_gift_ratio=... credit_lag_p99_ms=...

vs_standalone = cluster gifts/s / standalone gifts/s; cpu_per_gift_ratio = (Valkey nodes + workers) CPU per gift
on the cluster / the same on the standalone server; credit_lag_p99_ms: the cluster's settle -> credit p99 (how long
a creator's credit trails the gift; docs/SCALING.md "When a gift counts"). Exit status 0 when both
runs verified, 1 when a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from gifting import keys
from gifting.app import redis_client
from gifting.config import Settings
from gifting.embedded import EmbeddedValkey
from gifting.embedded_cluster import EmbeddedCluster
from gifting.gifts import STREAM_FIELD
from gifting.ledger import partitions
from gifting.ledger.audit import run_audit
from loadtest.bench_settlement import (
    STOPPED_LOG,
    Checks,
    Workload,
    bench_gifts,
    fund,
    machine_cpu_s,
    open_rooms,
    positive,
    proc_cpu_s,
    say,
    spawn_workers,
    stop_workers,
    tail,
)
from loadtest.ledger_streams import Journals, payloads, read_journals, stream_lengths
from workers.settlement import SettlementWorker

POLL_S = 0.005  # feeder: stream lengths read this often when nothing could be added
LEASE_TIMEOUT_S = 30.0  # workers to hold every partition between them
RUN_TIMEOUT_S = 900.0  # the load phase of one backend, at most
PROGRESS_S = 10.0  # a progress line this often while loading
BUSY_WARN = 0.10  # warn when other processes took more than this share of a core
STALL_TIMEOUT_S = 30.0  # no gift settled for this long: give up

# Targets from issue #12 (this machine kind: 2 cores, loopback).
TARGET_VS_STANDALONE = 1.3
TARGET_CPU_RATIO = 1.25
TARGET_LAG_P99_MS = 500.0


@dataclass
class Server:
    """A started backend: its URL and (label, pid, port) of each Valkey node."""

    name: str
    url: str
    nodes: list[tuple[str, int, int]]


@contextlib.contextmanager
def started(kind: str, data_dir: Path, primaries: int) -> Iterator[Server]:
    if kind == "standalone":
        valkey = EmbeddedValkey(data_dir, announce=False)
        try:
            url = valkey.start()
            assert valkey.process is not None
            yield Server(kind, url, [("valkey", valkey.process.pid, valkey.port)])
        finally:
            valkey.stop()
        return
    cluster = EmbeddedCluster(data_dir, primaries, 0, announce=False)
    try:
        url = cluster.start()
        nodes = [
            (f"node{i}", p.pid, port) for i, (p, port) in enumerate(zip(cluster.processes, cluster.ports, strict=True))
        ]
        yield Server(f"cluster of {primaries}", url, nodes)
    finally:
        cluster.stop()


@dataclass
class Run:
    server: str
    gifts: int
    seconds: float
    cpu_s: dict[str, float]  # process kind (each node, "workers", "feeder", "other") -> CPU seconds
    stats: dict[str, dict[str, float]]  # commandstats summed over the nodes
    settle_entries: int
    credit_entries: int
    credit_rows: int
    cross: int  # gifts whose viewer and creator are in different partitions
    lag_ms: list[int]  # per gift: stream entry -> credit (or own settle) entry
    queue_ms: list[int]  # per gift: stream entry -> settle entry
    credit_step_ms: list[int]  # per cross-partition gift: settle entry -> credit entry
    steal_s: float
    checks: Checks = field(default_factory=Checks)

    @property
    def gifts_per_s(self) -> float:
        return self.gifts / self.seconds

    def us_per_gift(self, kind: str) -> float:
        return self.cpu_s.get(kind, 0.0) / self.gifts * 1e6

    @property
    def system_us_per_gift(self) -> float:
        """Valkey nodes + workers: what the gift path itself costs (feeder and the rest are not the server)."""
        return sum(c for k, c in self.cpu_s.items() if k not in ("feeder", "other")) / self.gifts * 1e6


def percentile(values: list[int], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


# Load ------------------------------------------------------------------------------------------------------


async def feed_and_drain(
    redis: aioredis.Redis,
    queues: dict[str, list[tuple[str, bytes]]],
    backlog: int,
    workers: list[subprocess.Popen[bytes]],
) -> tuple[dict[str, int], float]:
    """Feed every partition's stream up to `backlog` waiting entries until the queues are empty, then wait
    until every stream and outbox is empty. Returns (gift id -> stream entry ms, when drained)."""
    tags = partitions.all_tags()
    entered: dict[str, int] = {}
    left = sum(len(q) for q in queues.values())
    deadline = time.monotonic() + RUN_TIMEOUT_S
    last_progress, last_waiting = time.monotonic(), -1
    began = next_report = time.monotonic()
    while True:
        waiting, outboxed = await stream_lengths(redis, tags)
        total_waiting = sum(waiting)
        if time.monotonic() >= next_report + PROGRESS_S:
            next_report = time.monotonic()
            done = len(entered) - total_waiting
            say(
                f"    t={next_report - began:5.0f} s  {done:>9,} settled  {done / (next_report - began):>7,.0f} gifts/s"
            )
        if not left and not total_waiting and not outboxed:
            return entered, time.perf_counter()
        if total_waiting != last_waiting:
            last_progress, last_waiting = time.monotonic(), total_waiting
        check_run(workers, deadline, last_progress)
        sent: list[str] = []
        async with redis.pipeline(transaction=False) as pipe:
            for tag, length in zip(tags, waiting, strict=True):
                queue = queues[tag]
                for _ in range(min(backlog - length, len(queue))):
                    gift_id, payload = queue.pop()
                    pipe.xadd(keys.gifts_stream(tag), {STREAM_FIELD: payload})
                    sent.append(gift_id)
            if not sent:
                await asyncio.sleep(POLL_S)
                continue
            ids = await pipe.execute()
        left -= len(sent)
        for gift_id, entry_id in zip(sent, ids, strict=True):
            entered[gift_id] = int(entry_id.split("-")[0])


def check_run(workers: list[subprocess.Popen[bytes]], deadline: float, last_progress: float) -> None:
    now = time.monotonic()
    if now > deadline:
        raise RuntimeError(f"the load phase took longer than {RUN_TIMEOUT_S:.0f} s")
    if now - last_progress > STALL_TIMEOUT_S:
        raise RuntimeError(f"no gift settled for {STALL_TIMEOUT_S:.0f} s")
    for proc in workers:
        if proc.poll() is not None:
            raise RuntimeError(f"worker {proc.pid} exited with {proc.returncode}")


async def wait_for_leases(redis: aioredis.Redis, workers: int) -> None:
    """Until every partition is leased and each worker holds its share (no rebalancing while timed)."""
    tags = partitions.all_tags()
    deadline = time.monotonic() + LEASE_TIMEOUT_S
    owners: Counter[str] = Counter()
    while time.monotonic() < deadline:
        async with redis.pipeline(transaction=False) as pipe:
            for tag in tags:
                pipe.get(keys.lease(tag))
            owners = Counter(o for o in await pipe.execute() if o)
        share = -(-len(tags) // workers)
        if sum(owners.values()) == len(tags) and len(owners) == workers and max(owners.values()) <= share:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"workers did not lease every partition within {LEASE_TIMEOUT_S:.0f} s: {dict(owners)}")


# Measurements ----------------------------------------------------------------------------------------------


class CpuClock:
    """CPU seconds of each Valkey node, the workers, this process and the rest of the machine since start."""

    def __init__(self, server: Server, workers: list[subprocess.Popen[bytes]]) -> None:
        self.server, self.workers = server, workers
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        busy, steal = machine_cpu_s()
        cpu = {label: proc_cpu_s(pid) for label, pid, _port in self.server.nodes}
        cpu["workers"] = sum(proc_cpu_s(p.pid) for p in self.workers)
        cpu["feeder"] = time.process_time()
        cpu["machine"], cpu["steal"] = busy, steal
        return cpu

    def spent(self) -> tuple[dict[str, float], float]:
        """(CPU seconds per process kind, steal seconds) since start."""
        end = self._read()
        delta = {k: end[k] - self.start[k] for k in end}
        machine, steal = delta.pop("machine"), delta.pop("steal")
        delta["other"] = max(machine - sum(delta.values()), 0.0)
        return delta, steal


async def node_clients(server: Server) -> list[aioredis.Redis]:
    return [aioredis.Redis(host="127.0.0.1", port=port, decode_responses=True) for _l, _p, port in server.nodes]


async def reset_stats(nodes: list[aioredis.Redis]) -> None:
    for node in nodes:
        await node.config_resetstat()


async def summed_stats(nodes: list[aioredis.Redis]) -> dict[str, dict[str, float]]:
    total: dict[str, dict[str, float]] = {}
    for node in nodes:
        for name, stats in (await node.info("commandstats")).items():
            if isinstance(stats, dict):
                into = total.setdefault(name.removeprefix("cmdstat_"), {"calls": 0.0, "usec": 0.0})
                into["calls"] += float(stats.get("calls", 0))
                into["usec"] += float(stats.get("usec", 0))
    return total


def lags(entered: dict[str, int], journals: Journals) -> tuple[list[int], list[int], list[int]]:
    """(stream -> credit or own settle, stream -> settle, settle -> credit of cross-partition gifts), ms."""
    lag, queue, step = [], [], []
    for gift_id, entered_ms in entered.items():
        settled = journals.settle_ms.get(gift_id)
        if settled is None:
            continue
        credited = journals.credit_ms.get(gift_id)
        queue.append(settled - entered_ms)
        lag.append((credited if credited is not None else settled) - entered_ms)
        if credited is not None:
            step.append(credited - settled)
    return lag, queue, step


# One backend -----------------------------------------------------------------------------------------------


async def run_backend(server: Server, args: argparse.Namespace, tmp: Path) -> Run:
    redis = redis_client(server.url)
    nodes = await node_clients(server)
    try:
        return await _run_backend(redis, nodes, server, args, tmp)
    finally:
        for node in nodes:
            await node.aclose()
        await redis.aclose()


async def _run_backend(
    redis: aioredis.Redis, nodes: list[aioredis.Redis], server: Server, args: argparse.Namespace, tmp: Path
) -> Run:
    say(f"{server.name}: setup ({server.url}, {len(server.nodes)} node(s))")
    settings = Settings.from_env(redis_url=server.url, settle_batch_max=args.batch)
    helper = SettlementWorker(redis, settings, consumer="bench", housekeeping=False)
    catalog = await helper.catalogs.load()
    creators = await open_rooms(helper.rooms, args.rooms)
    workload = Workload([f"bench_viewer{n}" for n in range(args.viewers)], sorted(creators), creators,
                        bench_gifts(catalog), "")  # fmt: skip
    needed = workload.coins_needed(args.gifts)
    await fund(redis, needed)
    queues = payloads(workload, args.gifts)
    cross = sum(
        1 for i in range(args.gifts)
        if keys.part_of_user(workload.shape(i)[0]) != keys.part_of_user(creators[workload.shape(i)[1]])
    )  # fmt: skip
    workers, logs = spawn_workers(server.url, args, tmp)
    try:
        await wait_for_leases(redis, args.workers)
        say(f"  {args.workers} worker(s) hold the {partitions.count()} partitions; feeding {args.gifts:,} gifts")
        await reset_stats(nodes)
        cpu = CpuClock(server, workers)
        began = time.perf_counter()
        entered, drained = await feed_and_drain(redis, queues, args.backlog, workers)
        cpu_s, steal_s = cpu.spent()
        stats = await summed_stats(nodes)
    except RuntimeError as exc:
        raise RuntimeError(f"{server.name}: {exc}\nworker log:\n{tail(logs[0])}") from None
    finally:
        stop_workers(workers)
    journals = await read_journals(redis)
    lag, queue, step = lags(entered, journals)
    run = Run(server.name, args.gifts, drained - began, cpu_s, stats, journals.settle_entries,
              journals.credit_entries, journals.credit_rows, cross, lag, queue, step, steal_s)  # fmt: skip
    await check(redis, run, journals, logs, len(needed))
    return run


async def check(redis: aioredis.Redis, run: Run, journals: Journals, logs: list[Path], funded: int) -> None:
    checks = run.checks
    say(f"  checks on the {run.server}:")
    checks.expect(
        len(journals.settle_ms) == run.gifts, f"journal gift rows {len(journals.settle_ms):,} == {run.gifts:,}"
    )
    checks.expect(journals.credit_rows == run.cross, f"credit rows {journals.credit_rows:,} == {run.cross:,} cross")
    matched = len(run.credit_step_ms)
    checks.expect(matched == run.cross, f"credit rows matched to their gifts {matched:,} == {run.cross:,}")
    checks.expect(journals.others == funded, f"other journal entries {journals.others:,} == {funded:,} fundings")
    settled = [STOPPED_LOG.search(log.read_text(errors="replace")) for log in logs]
    total = sum(int(m.group(1)) for m in settled if m)
    checks.expect(None not in settled and total == run.gifts, f"workers report {total:,} settled == {run.gifts:,}")
    async with redis.pipeline(transaction=False) as pipe:
        for tag in partitions.all_tags():
            pipe.xlen(keys.gifts_dead_letter(tag))
        dead = sum(int(n) for n in await pipe.execute())
    checks.expect(dead == 0, f"dead-letter streams empty ({dead})")
    users = 0
    for tag in partitions.all_tags():
        balances = await redis.hgetall(keys.coins(tag))
        users += sum(int(v) for a, v in balances.items() if a.startswith("u:"))
    checks.expect(users == 0, f"viewers spent exactly what they were funded with (user coins left {users})")
    try:
        report = await run_audit(redis)
    except Exception as exc:  # the audit of partitions is being written beside this benchmark: say so, go on
        checks.expect(False, f"audit ran ({exc!r})")
        return
    checks.expect(report.clean, "audit clean" + ("" if report.clean else ":\n" + report.summary()))


# Report ----------------------------------------------------------------------------------------------------


def report(run: Run) -> None:
    say(f"  {run.server}: {run.gifts:,} gifts in {run.seconds:.2f} s = {run.gifts_per_s:,.0f} durable gifts/s")
    cpu = ", ".join(
        f"{kind} {run.us_per_gift(kind):.1f} ({seconds / run.seconds:.0%} of a core)"
        for kind, seconds in run.cpu_s.items()
    )
    say(f"  cpu us/gift: {cpu}; steal {run.steal_s / run.seconds:.0%}")
    if (run.cpu_s.get("other", 0.0) + run.steal_s) / run.seconds > BUSY_WARN:
        say("  WARNING: other processes (or the hypervisor) took CPU during the run: the figures are low")
    say(f"  valkey + workers: {run.system_us_per_gift:.1f} us/gift")
    say(
        f"  cross-partition gifts {run.cross / run.gifts:.1%}; gifts per settle.lua call "
        f"{run.gifts / max(run.settle_entries, 1):.0f} ({run.settle_entries:,} calls), credits per credit.lua call "
        f"{run.credit_rows / max(run.credit_entries, 1):.0f} ({run.credit_entries:,} calls)"
    )
    say(
        f"  credit lag (settle -> credit) ms: p50 {percentile(run.credit_step_ms, 0.5):.0f} "
        f"p99 {percentile(run.credit_step_ms, 0.99):.0f} max {percentile(run.credit_step_ms, 1.0):.0f}; "
        f"stream -> credit p50 {percentile(run.lag_ms, 0.5):.0f} p99 {percentile(run.lag_ms, 0.99):.0f} "
        f"(of it the queue, stream -> settle: p50 {percentile(run.queue_ms, 0.5):.0f} "
        f"p99 {percentile(run.queue_ms, 0.99):.0f})"
    )
    say("  commandstats summed over the nodes (us per gift; commands inside a script count there too):")
    top = sorted(run.stats.items(), key=lambda kv: -kv[1]["usec"])[:8]
    for name, stats in top:
        calls = stats["calls"]
        say(
            f"    {name:<14} calls {int(calls):>8,} ({calls / run.gifts:5.2f}/gift)  "
            f"{stats['usec'] / run.gifts:>7.2f} us/gift  {stats['usec'] / max(calls, 1):>8.1f} us/call"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="One gift workload on a standalone Valkey and on a cluster.")
    parser.add_argument("--gifts", type=positive, default=50_000, help="gifts per backend (50000)")
    parser.add_argument("--workers", type=positive, default=2, help="worker processes on each backend (2)")
    parser.add_argument("--primaries", type=positive, default=3, help="cluster primaries (3)")
    parser.add_argument("--batch", type=positive, default=500, help="settle_batch_max: gifts per Lua call (500)")
    parser.add_argument("--backlog", type=positive, default=200, help="entries waiting per partition stream (200)")
    parser.add_argument("--viewers", type=positive, default=10_000, help="distinct senders (10000)")
    parser.add_argument("--rooms", type=positive, default=20, help="live rooms, one creator each (20)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.pop("REDIS_URL", None)  # each backend is the benchmark's own
    settings = Settings.from_env()
    say(
        f"cluster benchmark: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{settings.ledger_partitions} ledger partitions, gifts {args.gifts:,}, workers {args.workers}, "
        f"batch {args.batch}, backlog {args.backlog}/partition, viewers {args.viewers:,}, rooms {args.rooms}"
    )
    say(f"  machine load average at start: {load_average()}")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp_name:
        tmp = Path(tmp_name)
        for kind in ("standalone", "cluster"):
            with started(kind, tmp / kind, args.primaries) as server:
                (tmp / kind / "workers").mkdir(parents=True, exist_ok=True)
                runs.append(asyncio.run(run_backend(server, args, tmp / kind / "workers")))
            report(runs[-1])
    standalone, cluster = runs
    vs = cluster.gifts_per_s / standalone.gifts_per_s
    cpu_ratio = cluster.system_us_per_gift / standalone.system_us_per_gift
    lag_p99 = percentile(cluster.credit_step_ms, 0.99)
    say(f"summary (machine load average at the end: {load_average()}):")
    say(f"  vs_standalone {vs:.2f} (target >= {TARGET_VS_STANDALONE}: {verdict(vs >= TARGET_VS_STANDALONE)})")
    say(
        f"  cpu_per_gift_ratio {cpu_ratio:.2f} (target <= {TARGET_CPU_RATIO}: {verdict(cpu_ratio <= TARGET_CPU_RATIO)})"
    )
    say(
        f"  credit lag p99 {lag_p99:.0f} ms "
        f"(target <= {TARGET_LAG_P99_MS:.0f}: {verdict(lag_p99 <= TARGET_LAG_P99_MS)})"
    )
    failures = [f"{r.server}: {f}" for r in runs for f in r.checks.failures]
    if failures:
        say(f"FAILED checks: {len(failures)}: " + "; ".join(failures))
    say(
        f"RESULT cluster gifts_per_s={cluster.gifts_per_s:.0f} vs_standalone={vs:.3f} "
        f"cpu_per_gift_ratio={cpu_ratio:.3f} credit_lag_p99_ms={lag_p99:.0f}"
    )
    return 1 if failures else 0


def load_average() -> str:
    """/proc/loadavg's 1, 5 and 15 minute figures: other work on the machine skews every figure here."""
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
