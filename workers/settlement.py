"""The settlement worker: a partition's gift stream -> one Lua call per batch -> fsync -> credits -> room
events + results -> XACK.

    XREADGROUP (batch of one partition's stream) -> settle.lua (idempotent by gift_id, atomic, in the viewers'
      partition; the credits owed to creators of other partitions go to its outbox in the same call)
      -> WAITAOF (durable before anything is announced)
      -> credit.lua per creators' partition (idempotent by gift id) -> WAITAOF -> outbox entry deleted
      -> announce.lua per room (history exactly once, PUBLISH) + results to the senders' hubs
      -> XACK + XDEL

Each process leases partitions (workers/leases.py) and runs GIFTING_SETTLE_CONCURRENCY batch loops per leased
partition. A crash anywhere before XACK leaves the entries pending: the loops' consumer names are the same in
every process, so whoever leases the partition next re-reads them first; entries idle with any other consumer
are reclaimed after GIFTING_CLAIM_IDLE_MS (XAUTOCLAIM). Redelivered gifts hit their idempotency record;
announce.lua's markers keep room history exactly-once; an outbox entry left by a crash is applied again by the
partition's loop (Ledger.redrive_outbox), each credit once. An entry delivered more than GIFTING_DELIVERIES_MAX
times goes to the partition's dead-letter stream with its error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError

from gifting import clock, keys, metrics, valkey
from gifting.catalog.store import CatalogStore
from gifting.config import Settings
from gifting.errors import ScriptFailed
from gifting.fanclubs import FanClubs
from gifting.gifts import GiftRequest, gift_result, room_event
from gifting.ledger import partitions, rules
from gifting.ledger.backlog import observe as observe_partitions
from gifting.ledger.rewards import Rewards
from gifting.ledger.store import DurabilityError, GiftToSettle, Ledger, LedgerError
from gifting.payments import PayoutProvider, SandboxPayouts
from gifting.rooms.matches import MatchStore
from gifting.rooms.pools import POOL_FIELD, PoolOp, closing_event, pledge_result, pool_view
from gifting.rooms.recipients import RecipientBoards
from gifting.rooms.store import RoomStore
from gifting.wire.messages import PoolCompleted, PoolProgress
from gifting.wire.reasons import RejectReason
from workers.leases import PartitionLeases
from workers.payouts import Payouts
from workers.pool_sweep import PoolSweeper
from workers.sponsored import SponsoredGifts

log = logging.getLogger(__name__)

BACKOFF_S_MAX = 5.0
CONSUMER = "settler"  # every process's consumer name in every partition's group (see partition_loop)
HEARTBEAT_INTERVAL_S = 1.0
Entry = tuple[str, dict[str, str]]

# XACK and XDEL in one atomic step: an empty stream then means every entry went all the way through.
ACK_SCRIPT = """
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
"""

# Remove the group's consumers idle longer than ARGV[2] ms that hold no pending entry (restarted processes leave
# their names behind), except ARGV[3] (ourselves). One atomic step: a consumer that reads an entry between the
# check and the delete would lose it from the pending list.
PRUNE_CONSUMERS_SCRIPT = """
local removed = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info.pending == 0 and info.idle > tonumber(ARGV[2]) and info.name ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info.name)
    removed = removed + 1
  end
end
return removed
"""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an entry came from: its partition, the consumer that read it, its stream entry id."""

    part: str
    consumer: str
    entry_id: str


@dataclass(slots=True)
class Handover:
    """A partition's batch as its reader hands it to the batch loops; `done` answers the reader."""

    part: str
    consumer: str
    entries: list[Entry]
    redelivered: bool
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def run_workers(redis: aioredis.Redis, settings: Settings, stop: asyncio.Event) -> None:
    """One process's settlement: the partitions it leases, GIFTING_SETTLE_CONCURRENCY batch loops each.

    Why loops per partition and many partitions: a loop spends most of a batch waiting (round trips and
    fsyncs), so with one loop Valkey idles while the worker works and the other way round; several loops keep
    both busy (docs/BENCHMARKS.md, "Settlement")."""
    await SettlementWorker(redis, settings, consumer=default_consumer()).run(stop)


class SettlementWorker:
    def __init__(
        self,
        redis: aioredis.Redis,
        settings: Settings,
        consumer: str | None = None,
        payouts: PayoutProvider | None = None,
        housekeeping: bool = True,
        parts: list[str] | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.housekeeping = housekeeping  # payouts, sweeps and the heartbeat (run() only)
        self._last_payout_run = 0.0
        self.catalogs = CatalogStore(redis)
        self.consumer = consumer or default_consumer()  # this process: its heartbeat and its leases
        # The partitions this worker reads: fixed (tests, benchmarks: all by default), or leased by run().
        self.parts: list[str] = parts if parts is not None else list(partitions.all_tags())
        self.leases = PartitionLeases(redis, self.consumer, settings.partition_lease_ms)
        self.ledger = Ledger(redis, settings)
        self.rooms = RoomStore(redis, settings)
        self.payouts = Payouts(self.ledger, settings, payouts or SandboxPayouts())
        self.pool_sweeper = PoolSweeper(redis, settings, self.rooms)
        self.matches = MatchStore(redis, settings, self.rooms)
        self.rewards = Rewards(redis, settings, self.ledger)
        self.sponsored = SponsoredGifts(redis, settings, self.catalogs, self.rooms)
        self.boards = RecipientBoards(redis, settings)
        self.fanclubs = FanClubs(redis, settings)
        self._last_heartbeat = 0.0
        self.settled_total = 0  # gifts settled by this process (for logs and benchmarks)
        self._ack_script = redis.register_script(ACK_SCRIPT)
        self._prune_consumers = redis.register_script(PRUNE_CONSUMERS_SCRIPT)
        # Settled and announced, per (partition, loop): acked with that loop's next read (one round trip less).
        self._to_ack: dict[str, list[str]] = defaultdict(list)
        self._handovers: asyncio.Queue[Handover] = asyncio.Queue()  # readers -> batch loops (run())
        self._scoring = asyncio.Lock()  # batches with gifts to rooms in a match: scored and announced in turn

    async def ensure_group(self) -> None:
        """The settlement group on every partition's stream (created with the stream)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for part in partitions.all_tags():
                pipe.xgroup_create(keys.gifts_stream(part), keys.SETTLEMENT_GROUP, id="0", mkstream=True)
            replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise reply

    async def load_scripts(self) -> None:
        """The hot path calls its scripts by sha inside pipelines (no SCRIPT EXISTS round trip per batch), so
        they are loaded at start, and again after a NOSCRIPT error (Valkey restarted without them)."""
        for script in (self.ledger.settle_script, self.rooms.announce_script, self._ack_script, self.boards.script):
            await self.redis.script_load(script.script)

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: lease partitions and settle their streams, GIFTING_SETTLE_CONCURRENCY loops each;
        housekeeping (heartbeat, payouts, sweeps, gauges) here. Every loop finishes the batch in hand before
        returning (graceful drain), then the leases are given back."""
        if not await self.start_up(stop):
            return
        log.info("settlement worker %s started", self.consumer)
        loops: dict[str, list[asyncio.Task[None]]] = {}
        processors = [
            asyncio.create_task(self.process_handed_over(), name=f"settle batches {i}")
            for i in range(self.settings.settle_concurrency)
        ]
        renew_s = self.settings.partition_lease_ms / 3000
        last_renew, backoff_s = 0.0, 0.1
        try:
            while not stop.is_set():
                try:
                    await self.heartbeat()
                    if time.monotonic() - last_renew >= renew_s:
                        last_renew = time.monotonic()
                        owned = await self.leases.refresh()
                        self._follow_leases(owned, loops, stop)
                    if time.monotonic() - self._last_payout_run > self.settings.payout_interval_ms / 1000:
                        self._last_payout_run = time.monotonic()
                        await self.housekeep()
                    backoff_s = 0.1
                except (ConnectionError, TimeoutError, ResponseError, OSError, DurabilityError, LedgerError) as exc:
                    log.warning("settlement housekeeping: %s; retrying in %.1f s", exc, backoff_s)
                    metrics.store_errors.labels(component="worker").inc()
                    backoff_s = min(backoff_s * 2, BACKOFF_S_MAX)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(HEARTBEAT_INTERVAL_S, renew_s, backoff_s))
        finally:
            held = sorted(self.leases.owned)
            self.leases.owned.clear()  # every loop ends after the batch in hand (or its blocking read)
            await asyncio.gather(*(t for ts in loops.values() for t in ts), return_exceptions=True)
            for task in processors:  # idle now: every handed-over batch was answered
                task.cancel()
            await asyncio.gather(*processors, return_exceptions=True)
            with contextlib.suppress(ConnectionError, TimeoutError, ResponseError, OSError):
                await self.leases.release(held)
        log.info("settlement worker %s stopped (%d gifts settled)", self.consumer, self.settled_total)

    def _follow_leases(self, owned: set[str], loops: dict[str, list[asyncio.Task[None]]], stop: asyncio.Event) -> None:
        """Start the reader of each newly leased partition; the reader of a lost one stops after its batch."""
        for part in [p for p, ts in loops.items() if all(t.done() for t in ts)]:
            del loops[part]
        for part in sorted(owned - set(loops)):
            loops[part] = [asyncio.create_task(self.partition_loop(part, stop), name=f"read {part}")]
            log.info("settlement worker %s: settling partition %s", self.consumer, part)

    async def partition_loop(self, part: str, stop: asyncio.Event) -> None:
        """The reader of one leased partition, until `stop` or the lease is lost: reads a batch (blocking while
        the stream is empty), hands it to the process's batch loops and waits for it to be settled (its acks go
        with the next read), then reads again. A batch loop takes every batch handed over meanwhile, of any
        partition, and settles them together (process_many): one settle.lua call per partition, one credit.lua
        call per destination, one announce.lua call per room, whatever the number of partitions."""
        consumer = CONSUMER  # the same in every process: the next owner re-reads what we left pending
        backoff_s, own_pending = 0.1, True
        last_claim = last_redrive = time.monotonic()
        while not stop.is_set() and part in self.leases.owned:
            try:
                if own_pending:
                    entries = await self.read_partition(part, consumer, pending=True)
                    own_pending = bool(entries)
                    if entries:
                        await self._hand_over(Handover(part, consumer, entries, redelivered=True))
                    continue
                now = time.monotonic()
                if now - last_redrive > self.settings.outbox_redrive_ms / 1000:
                    last_redrive = now
                    await self.ledger.redrive_outbox(part, self.settings.outbox_redrive_ms)
                if now - last_claim > self.settings.claim_idle_ms / 2000:
                    last_claim = now
                    await self.reclaim(part, consumer)
                entries = await self.read_partition(part, consumer, pending=False, block=self.settings.settle_block_ms)
                if entries:
                    await self._hand_over(Handover(part, consumer, entries, redelivered=False))
                backoff_s = 0.1
            except (ConnectionError, TimeoutError, ResponseError, OSError, DurabilityError, LedgerError) as exc:
                # Nothing of the batch was announced or acked: it stays pending and is settled (idempotently) again.
                # (LedgerError: a pool that kept changing under its pledge, `busy`.)
                log.warning("settlement %s: %s; retrying in %.1f s", part, exc, backoff_s)
                metrics.store_errors.labels(component="worker").inc()
                own_pending = True
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, BACKOFF_S_MAX)
                with contextlib.suppress(ConnectionError, TimeoutError, ResponseError, OSError):
                    if isinstance(exc, NoScriptError):
                        await self.load_scripts()
            except Exception:  # a defect: this partition's loop backs off and retries, the others go on
                log.exception("settlement %s: unexpected error; retrying in %.1f s", part, BACKOFF_S_MAX)
                metrics.store_errors.labels(component="worker").inc()
                own_pending = True
                await asyncio.sleep(BACKOFF_S_MAX)
        with contextlib.suppress(ConnectionError, TimeoutError, OSError):
            await self.flush_acks(part, consumer)  # what is not acked here is settled again (idempotently)

    async def housekeep(self) -> None:
        """Payouts, the sweeps (pools, room ends, matches, campaigns), idle consumers and the gauges."""
        await self.run_payouts()
        await self.sweep_pools()
        await self.sweep_room_ends()
        await self.matches.sweep()
        await self.sponsored.sweep()
        await self.prune_consumers()
        await self.observe_state()

    async def start_up(self, stop: asyncio.Event) -> bool:
        """Consumer groups, scripts and catalog; retried while Valkey is unreachable (a worker may start before
        it, or while it restarts), rather than the worker dying. False if `stop` was set first."""
        backoff_s = 0.1
        while not stop.is_set():
            try:
                await self.ensure_group()
                await self.load_scripts()
                await self.catalogs.load()
                return True
            except (ConnectionError, TimeoutError, OSError) as exc:
                log.warning("settlement worker %s: cannot start: %s; retrying in %.1f s", self.consumer, exc, backoff_s)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff_s)
                backoff_s = min(backoff_s * 2, BACKOFF_S_MAX)
        return False

    async def run_payouts(self) -> int:
        """A page of pending withdrawals to the payout provider (workers/payouts.py)."""
        return await self.payouts.run()

    async def sweep_pools(self) -> None:
        """Enqueue the expiry of pools past their deadline (workers/pool_sweep.py)."""
        await self.pool_sweeper.sweep_pools()

    async def sweep_room_ends(self) -> int:
        """Finish room ends interrupted by a crash (workers/pool_sweep.py)."""
        return await self.pool_sweeper.sweep_room_ends()

    async def prune_consumers(self) -> int:
        """Remove consumers left behind by stopped processes (idle, nothing pending) from every partition's group
        (older releases named consumers per process)."""
        removed = 0
        for part in partitions.all_tags():
            removed += int(
                await self._prune_consumers(
                    keys=[keys.gifts_stream(part)],
                    args=[keys.SETTLEMENT_GROUP, self.settings.consumer_idle_s_max * 1000, CONSUMER],
                )
            )
        if removed:
            log.info("settlement: removed %d idle consumers from the groups", removed)
        return removed

    async def observe_state(self) -> None:
        """Backlogs, pending entries and outboxes of every partition (labelled by stream key), withdrawals, pools
        and heartbeats for the gauges; one round trip."""
        tags = partitions.all_tags()
        async with self.redis.pipeline(transaction=False) as pipe:
            for part in tags:
                for stream in (
                    keys.gifts_stream(part),
                    keys.gifts_dead_letter(part),
                    keys.journal(part),
                    keys.outbox(part),
                ):
                    pipe.xlen(stream)  # journal: the archive backlog, entries not yet moved to PostgreSQL
                pipe.xpending(keys.gifts_stream(part), keys.SETTLEMENT_GROUP)
                pipe.zcard(keys.withdrawals_pending(part))
                pipe.zcard(keys.pools_open(part))
            pipe.zrange(keys.WORKER_HEARTBEATS, -1, -1, withscores=True)
            *replies, newest = await pipe.execute(raise_on_error=False)
        withdrawals = pools = 0
        for i, part in enumerate(tags):
            gifts, dead, journal, outbox, pending, part_withdrawals, part_pools = replies[7 * i : 7 * i + 7]
            streams = (keys.gifts_stream(part), keys.gifts_dead_letter(part), keys.journal(part), keys.outbox(part))
            for stream, length in zip(streams, (gifts, dead, journal, outbox), strict=True):
                metrics.stream_length.labels(stream=stream).set(length)
            if not isinstance(pending, Exception):  # no group yet: nothing pending
                metrics.stream_pending.labels(stream=keys.gifts_stream(part)).set(pending["pending"])
            withdrawals, pools = withdrawals + part_withdrawals, pools + part_pools
        metrics.withdrawals_pending.set(withdrawals)
        metrics.pools_open.set(pools)
        if newest:
            metrics.worker_heartbeat_age.set(max(clock.now_ms() - newest[0][1], 0) / 1000)
        await observe_partitions(self.redis)  # the oldest outbox entry's age (ledger/backlog.py)

    async def heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat >= HEARTBEAT_INTERVAL_S:
            self._last_heartbeat = now
            now_ms = clock.now_ms()
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zadd(keys.WORKER_HEARTBEATS, {self.consumer: now_ms})
                pipe.zremrangebyscore(keys.WORKER_HEARTBEATS, 0, now_ms - 3600_000)
                await pipe.execute()

    async def step(self, pending: bool = False) -> int:
        """Read one batch of each of this worker's partitions and settle them together, as a batch loop does
        (tests and tools; run() reads each leased partition in a reader of its own). Returns entries read."""
        handed = []
        for part in self.parts:
            entries = await self.read_partition(part, CONSUMER, pending)
            if entries:
                handed.append(Handover(part, CONSUMER, entries, redelivered=pending))
        if handed:
            await self.process_many(handed)
        return sum(len(h.entries) for h in handed)

    async def step_partition(self, part: str, consumer: str, pending: bool, block: int | None = None) -> int:
        """Read one batch of a partition's stream and settle it. Returns entries read."""
        entries = await self.read_partition(part, consumer, pending, block)
        if entries:
            await self.process(entries, part, consumer, redelivered=pending)
        return len(entries)

    async def read_partition(self, part: str, consumer: str, pending: bool, block: int | None = None) -> list[Entry]:
        """One batch of a partition's stream: new entries, or the consumer's pending ones. The previous batch's
        acks travel in the same round trip, ahead of the read."""
        stream = keys.gifts_stream(part)
        async with self.redis.pipeline(transaction=False) as pipe:
            self._queue_acks(pipe, part, consumer)
            pipe.xreadgroup(
                keys.SETTLEMENT_GROUP,
                consumer,
                {stream: "0" if pending else ">"},
                count=self.settings.settle_batch_max,
                block=None if pending else block,
            )
            *_, response = await pipe.execute()
        entries: list[Entry] = response[0][1] if response else []
        return [(eid, fields) for eid, fields in entries if fields]  # deleted while pending

    async def _hand_over(self, handover: Handover) -> None:
        """Queue a partition's batch for the batch loops and wait until it is settled (or failed: raised here)."""
        await self._handovers.put(handover)
        await handover.done

    async def process_handed_over(self) -> None:
        """A batch loop: takes every batch handed over (one, then all queued meanwhile, up to
        GIFTING_SETTLE_BATCH_MAX x 4 gifts) and settles them together; each reader learns its batch's outcome."""
        while True:
            batch = [await self._handovers.get()]
            size = len(batch[0].entries)
            while not self._handovers.empty() and size < 4 * self.settings.settle_batch_max:
                batch.append(self._handovers.get_nowait())
                size += len(batch[-1].entries)
            try:
                await self.process_many(batch)
            except Exception as exc:  # the readers retry their own (pending) entries, idempotently
                for h in batch:
                    if not h.done.done():
                        h.done.set_exception(exc)
            else:
                for h in batch:
                    if not h.done.done():
                        h.done.set_result(None)

    async def reclaim(self, part: str, consumer: str = CONSUMER) -> None:
        """Take over entries idle with any other consumer of the partition's group and settle them."""
        _next, entries, _deleted = await self.redis.xautoclaim(
            keys.gifts_stream(part),
            keys.SETTLEMENT_GROUP,
            consumer,
            min_idle_time=self.settings.claim_idle_ms,
            start_id="0-0",
            count=self.settings.settle_batch_max,
        )
        entries = [(eid, fields) for eid, fields in entries if fields]
        if entries:
            log.info("settlement: reclaimed %d idle entries of %s", len(entries), part)
            await self.process(entries, part, consumer, redelivered=True)

    async def process(self, entries: list[Entry], part: str, consumer: str, redelivered: bool = False) -> None:
        await self.process_many([Handover(part, consumer, entries, redelivered)])

    async def process_many(self, handed: list[Handover]) -> None:
        """Settle the batches of several partitions together: gifts in one Ledger.settle (a settle.lua call per
        partition, the credits per destination, an announce per room), then sponsored gifts, then pool
        operations one by one in stream order. Malformed entries go to their partition's dead letters."""
        requests: list[tuple[Origin, GiftRequest]] = []
        pool_ops: list[tuple[Origin, PoolOp]] = []
        fields: dict[Origin, dict[str, str]] = {}
        for h in handed:
            entries = await self._drop_exhausted(h.entries, h.part, h.consumer) if h.redelivered else h.entries
            for entry_id, entry in entries:
                origin = Origin(h.part, h.consumer, entry_id)
                fields[origin] = entry
                try:
                    if POOL_FIELD in entry:
                        pool_ops.append((origin, PoolOp.from_entry(entry)))
                    else:
                        requests.append((origin, GiftRequest.from_entry(entry)))
                except ValueError as exc:
                    await self.dead_letter(entry_id, entry, str(exc), h.part, h.consumer)
        sponsored = [(origin, r) for origin, r in requests if r.campaign]  # workers/sponsored.py
        requests = [(origin, r) for origin, r in requests if not r.campaign]
        if requests:
            await self._settle_entries(requests, fields)
        if sponsored:
            await self._settle_entries(sponsored, fields, self.sponsored.settle)
        for origin, op in pool_ops:  # pledges are rare next to gifts: one call each, in stream order
            try:
                await self.settle_pool_op(op, origin.entry_id)
            except ResponseError as exc:
                if not script_failed(exc):
                    raise
                await self.dead_letter(origin.entry_id, fields[origin], str(exc), origin.part, origin.consumer)
                continue
            self.ack(origin.part, origin.consumer, [origin.entry_id])

    async def _settle_entries(
        self,
        requests: list[tuple[Origin, GiftRequest]],
        fields: dict[Origin, dict[str, str]],
        settle: Callable[[list[GiftRequest], list[str]], Awaitable[Any]] | None = None,
    ) -> None:
        settle = settle or self.settle
        try:
            await settle([r for _, r in requests], [origin.entry_id for origin, _ in requests])
        except ResponseError as exc:
            if len(requests) == 1 or not script_failed(exc):
                raise
            # A script error names no entry: settle one by one so only the poison entry stays behind.
            log.warning("settlement: batch failed (%s); settling %d entries one by one", exc, len(requests))
            for origin, request in requests:
                try:
                    await settle([request], [origin.entry_id])
                except ResponseError as one_exc:
                    if not script_failed(one_exc):
                        raise
                    await self.dead_letter(origin.entry_id, fields[origin], str(one_exc), origin.part, origin.consumer)
                    continue
                self.ack(origin.part, origin.consumer, [origin.entry_id])
            return
        for origin, _ in requests:
            self.ack(origin.part, origin.consumer, [origin.entry_id])

    async def settle_pool_op(self, op: PoolOp, entry_id: str | None = None) -> None:
        """A pledge (pending transfer; may complete the pool) or an expiry (voids every pledge), then its events.
        A completed pool scores in its room's match like a gift, by the cutoff of `entry_id` (default: now)."""
        archive_full = op.op == "pledge" and self._archive_full(
            int(await self.redis.xlen(keys.journal(keys.part_of_user(op.sender))))
        )
        status, reason, balance, _replay, pool = await self.ledger.pool_op(
            op.op, op.pool, op.pledge_id, op.sender, op.coins, op.sender_name,
            reject=RejectReason.ARCHIVE_BACKLOG if archive_full else "",
        )  # fmt: skip
        events: list[tuple[str, dict[str, Any]]] = []
        match_events: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        view = pool_view(pool) if pool else None
        closing = closing_event(view) if view is not None and op.op == "expire" else None
        if closing is not None:
            # From the pool's durable status, not this call's: a redelivered expiry (its first delivery expired the
            # pool, then died before announcing) announces it; announce.lua keeps it once.
            events.append(closing)
        if view is not None and op.op == "pledge" and status == "accepted":
            events.append((f"pledge:{op.pledge_id}", PoolProgress(view).to_dict()))
            if view["status"] == "completed":
                split = rules.split_gift(view["price"], int(pool["bps"]))  # type: ignore[index]
                completed = PoolCompleted(view, view["gift"], 1, split.coins, split.diamonds).to_dict()
                events.append((f"pool:{op.pool}:completed", completed))
                accepted_ms = int(entry_id.split("-")[0]) if entry_id else clock.now_ms()
                match_events = await self.matches.score_pool(view, accepted_ms)
                if match_events:
                    await self.ledger.durable(self.settings.waitaof_timeout_ms)  # announced only once durable
        async with self.redis.pipeline(transaction=False) as pipe:
            if view is not None:
                events += match_events.pop(view["room"], [])
            for room, scored in match_events.items():  # the other side's room
                await self.rooms.announce(room, scored, client=pipe)
            if events and view is not None:
                await self.rooms.announce(view["room"], events, client=pipe)
            if op.op == "pledge" and op.hub:
                result = pledge_result(op, status, reason, balance, view)
                valkey.queue_publish(pipe, keys.hub_channel(op.hub), orjson.dumps([{**result, "req": op.req}]))
            await pipe.execute()

    async def settle(self, requests: list[GiftRequest], entry_ids: list[str] | None = None) -> list[rules.GiftOutcome]:
        """Settle, score matches, announce. `entry_ids`: the gifts' stream entries (when the hub accepted each:
        a match's cutoff); without them (benchmarks, tests) the request's own ts_ms."""
        started_s = time.perf_counter()
        staged = {r.room for r in requests if r.to}
        payers = {keys.part_of_user(r.sender) for r in requests}
        rooms, journal_entries = await self._room_states({r.room for r in requests}, staged, payers)
        full = {part for part, n in journal_entries.items() if self._archive_full(n)}
        prepared = [self.prepare(r, rooms.get(r.room), keys.part_of_user(r.sender) in full) for r in requests]
        batch = await self.fanclubs.check_batch(prepared)
        accepted_ms = [int(e.split("-")[0]) for e in entry_ids] if entry_ids else [r.ts_ms for r in requests]
        batch = await self.matches.gate(requests, batch, accepted_ms)  # gifts naming a match that ended
        outcomes = await self.ledger.settle(batch, durable_timeout_ms=self.settings.waitaof_timeout_ms)
        names = {r.sender: r.sender_name for r in requests}
        badges = await self.fanclubs.record_batch([g for g, o in zip(batch, outcomes, strict=True) if o.settled], names)
        settled_ms = clock.now_ms()
        with_boards = {room for room, state in rooms.items() if state["staged"]}
        in_match = any(state["match"] for state in rooms.values())
        # Batch loops score a match and announce its scores in the same order (each score event carries the
        # points so far: announced out of order, a room would see a score go back).
        async with self._scoring if in_match else contextlib.nullcontext():
            match_events = await self._score_matches(requests, batch, outcomes, rooms, accepted_ms)
            await self.publish(requests, batch, outcomes, match_events, with_boards, badges)
        await self._first_gift_rewards(outcomes, requests)
        fresh = observe_batch(requests, outcomes, settled_ms, time.perf_counter() - started_s)
        self.settled_total += fresh
        if log.isEnabledFor(logging.DEBUG):  # one pass over the batch only when someone reads it
            for outcome in outcomes:
                if not outcome.settled or outcome.replay:
                    log.debug(
                        "gift %s: %s %s (replay=%s)", outcome.gift_id, outcome.status, outcome.reason, outcome.replay
                    )
        return outcomes

    async def _first_gift_rewards(self, outcomes: list[rules.GiftOutcome], requests: list[GiftRequest]) -> None:
        """Each sender's first settled gift of the day earns reward coins (idempotent by viewer and day, so a
        redelivered batch pays nothing twice). A failure here loses a reward, never a gift: logged, not raised."""
        senders = {r.sender for r, o in zip(requests, outcomes, strict=True) if o.settled}
        try:
            await self.rewards.first_gifts(senders)
        except (ResponseError, ConnectionError, TimeoutError, DurabilityError) as exc:
            log.warning("settlement: first-gift rewards of %d senders not paid: %r", len(senders), exc)

    async def _score_matches(
        self,
        requests: list[GiftRequest],
        batch: list[GiftToSettle],
        outcomes: list[rules.GiftOutcome],
        rooms: dict[str, dict[str, str]],
        accepted_ms: list[int],
    ) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        """Each settled gift to a room in a match scores there once (gifting/rooms/matches.py); a replayed one
        gets its recorded score back, announced again under the same dedupe id. Returns room -> events."""
        by_match: dict[str, list[tuple[str, str, int, int, str, str]]] = defaultdict(list)
        for request, settled, outcome, at in zip(requests, batch, outcomes, accepted_ms, strict=True):
            match = rooms.get(request.room, {}).get("match")
            if match and outcome.settled:
                gift = (request.gift_id, request.room, settled.coins, at, request.sender, request.gift)
                by_match[match].append(gift)
        events: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
        for match, gifts in by_match.items():
            match_rooms, scored = await self.matches.score(match, gifts)
            for room in match_rooms if scored else []:  # announce.lua takes at least one event
                events[room].extend(scored)
        if events:
            await self.ledger.durable(self.settings.waitaof_timeout_ms)  # a score is announced only once durable
        return events

    def _archive_full(self, journal_entries: int) -> bool:
        """Whether debits are refused now (ledger/rules.archive_backlog_reject: one rule for gifts and pledges)."""
        backlog_max = self.settings.archive_backlog_max
        if rules.archive_backlog_reject(journal_entries, backlog_max) is None:
            return False
        log.error("archive backlog: %d journal entries in Valkey > %d: refusing debits", journal_entries, backlog_max)
        return True

    def prepare(self, request: GiftRequest, room: dict[str, str] | None, archive_full: bool = False) -> GiftToSettle:
        """Decide everything the ledger does not: price from the catalog, room live, the recipient on stage (a
        guest gets the diamonds; default the host), not a self-gift; and whether the unarchived journal is past
        GIFTING_ARCHIVE_BACKLOG_MAX (memory is bounded before money)."""
        gift = self.catalogs.current.gifts.get(request.gift)
        status, host = (room.get("status"), room.get("creator", "")) if room else (None, "")
        guest = request.to if request.to and request.to != host else ""
        on_stage = not guest or (room is not None and guest in room.get("stage", "").split(" "))
        creator = guest or host
        reject = rules.gift_reject(gift, request.price, status, creator, request.sender, on_stage) or ""
        if archive_full and not reject:
            reject = RejectReason.ARCHIVE_BACKLOG
        coins, diamonds = 0, 0
        if gift is not None and not reject:
            split = rules.split_gift(gift.coins * request.count, self.settings.creator_share_bps)
            coins, diamonds = split.coins, split.diamonds
        return GiftToSettle(
            gift_id=request.gift_id,
            viewer=request.sender,
            creator=creator or "?",
            coins=coins,
            diamonds=diamonds,
            # A recipient and a named match are part of what the id stands for (kept out when absent: older
            # records stay valid).
            fingerprint=rules.fingerprint(
                request.sender,
                request.room,
                request.gift,
                request.count,
                *((request.to,) if request.to else ()),
                *(("match:" + request.match,) if request.match else ()),
            ),
            reject=reject,
            room=request.room,
            gift=request.gift,
            count=request.count,
            host=host or "?",
        )

    async def _room_states(
        self, rooms: set[str], staged: set[str] | None = None, payers: set[str] | None = None
    ) -> tuple[dict[str, dict[str, str]], dict[str, int]]:
        """Each room's creator, status and match, the stage of the `staged` rooms (gifts named a recipient), the
        catalog version and the journal entries not yet archived of each `payers` partition, in one round trip
        per batch."""
        ordered, stages, parts = sorted(rooms), sorted(staged or ()), sorted(payers or ())
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.CATALOG_VERSION)
            for part in parts:
                pipe.xlen(keys.journal(part))
            for room in ordered:
                pipe.hmget(keys.room_meta(room), "creator", "status", "match", "staged")
            for room in stages:
                pipe.hkeys(keys.room_stage(room))
            version, *replies = await pipe.execute()
        journal_entries = {part: int(n) for part, n in zip(parts, replies[: len(parts)], strict=True)}
        replies = replies[len(parts) :]
        if int(version or 0) != self.catalogs.version:
            await self.catalogs.refresh()
        guests = dict(zip(stages, replies[len(ordered) :], strict=True))
        states = {
            room: {
                "creator": creator,
                "status": status,
                "match": match or "",
                "stage": " ".join(guests.get(room, [])),
                "staged": staged_ or "",
            }
            for room, (creator, status, match, staged_) in zip(ordered, replies[: len(ordered)], strict=True)
            if creator is not None
        }
        return states, journal_entries

    async def publish(
        self,
        requests: list[GiftRequest],
        batch: list[GiftToSettle],
        outcomes: list[rules.GiftOutcome],
        match_events: dict[str, list[tuple[str, dict[str, Any]]]] | None = None,
        with_boards: set[str] | None = None,
        badges: dict[str, dict[str, int]] | None = None,
    ) -> None:
        """Room events (settled gifts only, once each; then the match scores they made), the top gifters per
        recipient of the rooms `with_boards` (a guest took their stage) and every sender's result, in one pipeline."""
        boards: dict[str, list[tuple[str, str, str, int]]] = defaultdict(list)
        events_by_room: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
        results_by_hub: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for request, settled, outcome in zip(requests, batch, outcomes, strict=True):
            results_by_hub[request.hub].append({**gift_result(outcome), "req": request.req})
            if outcome.settled:
                fan = (badges or {}).get(request.gift_id)
                events_by_room[request.room].append((request.gift_id, room_event(request, settled, outcome, fan)))
                if with_boards and request.room in with_boards:
                    boards[request.room].append((request.gift_id, settled.creator, request.sender, settled.coins))
        for room, events in (match_events or {}).items():
            events_by_room[room].extend(events)
        names = {r.sender: r.sender_name for r, o in zip(requests, outcomes, strict=True) if o.settled}
        async with self.redis.pipeline(transaction=False) as pipe:
            if names:
                pipe.hset(keys.USER_NAMES, mapping=names)  # for leaderboards
            for room, events in events_by_room.items():
                await self.rooms.announce(room, events, client=pipe)
            for room, gifts in boards.items():
                self.boards.record(room, gifts, pipe)
            for hub, results in results_by_hub.items():
                if hub:
                    valkey.queue_publish(pipe, keys.hub_channel(hub), orjson.dumps(results))
            await pipe.execute()

    def ack(self, part: str, consumer: str, entry_ids: list[str]) -> None:
        """Done with these entries: they are acked (and deleted) with the loop's next read, or by flush_acks."""
        self._to_ack[part + " " + consumer].extend(entry_ids)

    def _queue_acks(self, pipe: Any, part: str, consumer: str) -> None:
        ids = self._to_ack.pop(part + " " + consumer, None)
        if ids:
            stream = keys.gifts_stream(part)
            valkey.queue_evalsha(pipe, self._ack_script.sha, [stream], [keys.SETTLEMENT_GROUP, *ids])

    async def flush_acks(self, part: str | None = None, consumer: str = CONSUMER) -> None:
        """Send the acks waiting for a loop's next read (of one partition's loop, or of every partition)."""
        for p in [part] if part else self.parts:
            async with self.redis.pipeline(transaction=False) as pipe:
                self._queue_acks(pipe, p, consumer)
                await pipe.execute()

    async def dead_letter(self, entry_id: str, fields: dict[str, str], error: str, part: str, consumer: str) -> None:
        """Park an entry we cannot settle, with its error; never drop it silently."""
        log.error("settlement: entry %s of %s to dead-letter stream: %s", entry_id, part, error)
        metrics.dead_lettered.inc()
        record = {**fields, "entry_id": entry_id, "error": error[:1000], "ts": str(clock.now_ms())}
        stream = keys.gifts_stream(part)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(keys.gifts_dead_letter(part), record)
            pipe.xack(stream, keys.SETTLEMENT_GROUP, entry_id)
            pipe.xdel(stream, entry_id)
            await pipe.execute()

    async def _drop_exhausted(self, entries: list[Entry], part: str, consumer: str) -> list[Entry]:
        """Entries delivered more than GIFTING_DELIVERIES_MAX times go to the dead-letter stream."""
        ids = [eid for eid, _ in entries]
        pending = await self.redis.xpending_range(
            keys.gifts_stream(part),
            keys.SETTLEMENT_GROUP,
            min=ids[0],
            max=ids[-1],
            count=len(ids),
            consumername=consumer,
        )
        deliveries = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        keep = []
        for entry_id, fields in entries:
            count = deliveries.get(entry_id, 0)
            if count > self.settings.deliveries_max:
                await self.dead_letter(entry_id, fields, f"delivered {count} times without settling", part, consumer)
            else:
                keep.append((entry_id, fields))
        return keep


def observe_batch(
    requests: list[GiftRequest], outcomes: list[rules.GiftOutcome], settled_ms: int, duration_s: float
) -> int:
    """The batch's metrics; returns the gifts settled for the first time (resends are not counted twice)."""
    announced_ms = clock.now_ms()
    fresh = 0
    for request, outcome in zip(requests, outcomes, strict=True):
        if outcome.replay:
            continue
        if outcome.settled:
            fresh += 1
            if request.ts_ms:
                metrics.gift_settled_latency.observe(max(settled_ms - request.ts_ms, 0) / 1000)
                metrics.gift_announced_latency.observe(max(announced_ms - request.ts_ms, 0) / 1000)
        else:
            metrics.gifts_rejected.labels(reason=outcome.reason or outcome.status).inc()
    metrics.gifts_settled.inc(fresh)
    metrics.settle_batch_size.observe(len(requests))
    metrics.settle_batch_seconds.observe(duration_s)
    return fresh


def script_failed(exc: ResponseError) -> bool:
    """A script ran and failed on its input (a poison entry). Not NOSCRIPT: after a Valkey restart the scripts
    are simply gone; the run loop loads them again and the entries settle then, never the dead-letter stream."""
    return ScriptFailed.parse(str(exc)) is not None and not isinstance(exc, NoScriptError)
