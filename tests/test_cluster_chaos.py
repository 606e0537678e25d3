"""Chaos on a Valkey Cluster: `gifting worker` processes killed -9 again and again mid-storm while two of them
share the ledger partitions by leases, with every gift crossing partitions (viewer's coins in one, creator's
diamonds in another). A kill may land between a gift's debit and its credit; the outbox redrive finishes it.
(tests/test_partitions.py has the deterministic crash between the two steps.)"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gifting import keys, valkey
from gifting.config import Settings
from gifting.ledger import partitions
from tests.cluster_checks import (
    Plan,
    drained,
    ensure_groups,
    feed,
    grant,
    journal_entries,
    open_room,
    processes,
    spread_users,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)  # ~25 s alone here; slower when the 2 cores are shared
log = logging.getLogger(__name__)

VIEWERS = 8  # one in each of partitions 0..7
CREATORS = 4  # one in each of partitions 8..11: every gift crosses partitions
FUNDS = 2000  # coins per viewer: enough for every gift it can be given; the last viewer gets POOR_FUNDS
POOR_FUNDS = 300
ROUNDS = 3  # kill one worker, start another, this many times
ENTRIES_PER_ROUND = 10  # journal entries (settled batches, applied credits) between two kills: the storm moves on
FEED_CHUNK = 16  # gifts queued per feeder step (two per viewer)
FEED_PAUSE_S = 0.15
GIFTS_MAX = 1600  # the feeder stops here even if the rounds are not over
WAIT_S = 40.0
WORKER_ENV = {
    "GIFTING_PARTITION_LEASE_MS": "600",  # a killed worker's partitions are taken over after this
    "GIFTING_OUTBOX_REDRIVE_MS": "200",  # a credit its dead writer left in an outbox is applied after this
    "GIFTING_CLAIM_IDLE_MS": "500",
    "GIFTING_SETTLE_BATCH_MAX": "8",  # small batches: more of them in flight when a kill lands
    "GIFTING_SETTLE_BLOCK_MS": "50",
    "GIFTING_DELIVERIES_MAX": "1000",  # redelivered after every kill, never dead-lettered
}


async def test_workers_killed_repeatedly_mid_storm_settle_every_gift_once(
    cluster_valkey_url: str, tmp_path: Path
) -> None:
    """Two workers share the partitions; ROUNDS times one is killed -9 mid-storm and another started: every gift
    has one outcome, balances are exact, each settled gift is once in the journal and its room's history, every
    stream, pending list and outbox is empty, sys:transit is 0 and the audit is clean."""
    client = valkey.client(cluster_valkey_url)
    await client.flushall()
    try:
        plan = await _prepare(client)
        env = WORKER_ENV | {"REDIS_URL": cluster_valkey_url, "GIFTING_DATA_DIR": str(tmp_path)}
        with processes(tmp_path) as start:
            workers = [start("worker", env), start("worker", env)]

            def alive() -> str | None:
                dead = [w for w in workers if w.poll() is not None]
                return f"a worker exited by itself with {dead[0].returncode}" if dead else None

            enough = asyncio.Event()
            feeding = asyncio.create_task(feed(client, plan, enough, GIFTS_MAX, FEED_CHUNK, FEED_PAUSE_S))
            try:
                for _ in range(ROUNDS):
                    await _settle_some(client, workers, alive)
                    victim = workers.pop(0)
                    victim.send_signal(signal.SIGKILL)
                    victim.wait(15)
                    log.info("killed a worker; credits left in outboxes: %d", await _in_outboxes(client))
                    workers.append(start("worker", env))
            finally:
                enough.set()
                await asyncio.wait_for(feeding, WAIT_S)
            await wait_until(lambda: drained(client), "every gift settled and credited", WAIT_S, alive)
            await wait_until(lambda: _running(client, workers), "the last worker to be up", WAIT_S, alive)
            for worker in workers:  # a graceful stop, so nothing writes while the money is counted
                worker.terminate()
                assert worker.wait(15) == 0
        assert await _dead_letters(client) == 0
        await plan.assert_exact(client)
    finally:
        await client.aclose()


async def _prepare(client: aioredis.Redis) -> Plan:
    viewers = spread_users(VIEWERS, "v")
    creators = spread_users(CREATORS, "c", skip=VIEWERS)
    funds = {v: FUNDS for v in viewers} | {viewers[-1]: POOR_FUNDS}
    for viewer, coins in funds.items():
        await grant(client, viewer, coins)
    rooms = {await open_room(client, creator): creator for creator in creators}
    await ensure_groups(client)
    return Plan([], funds, rooms, Settings.from_env({}).creator_share_bps)


async def _settle_some(
    client: aioredis.Redis, workers: list[subprocess.Popen[bytes]], alive: Callable[[], str | None]
) -> None:
    """Until every worker is up (the one started last round too: two share the partitions at each kill) and
    ENTRIES_PER_ROUND more entries are in the journals than now (bounded in time)."""
    before = await journal_entries(client)

    async def moved_on() -> bool:
        return await _running(client, workers) and await journal_entries(client) >= before + ENTRIES_PER_ROUND

    await wait_until(moved_on, "the workers to settle some gifts", WAIT_S, alive)


async def _running(client: aioredis.Redis, workers: list[subprocess.Popen[bytes]]) -> bool:
    """Whether every worker has started settling (its first heartbeat: its signal handlers are installed)."""
    host = socket.gethostname()
    return all([await client.zscore(keys.WORKER_HEARTBEATS, f"{host}-{w.pid}") is not None for w in workers])


async def _in_outboxes(client: aioredis.Redis) -> int:
    """Outbox entries (debited gifts whose credits are not applied yet): > 0 right after a kill when it landed
    between a debit and its credit, or while other credits were in flight."""
    return sum([await client.xlen(keys.outbox(p)) for p in partitions.all_tags()])


async def _dead_letters(client: aioredis.Redis) -> int:
    return sum([await client.xlen(keys.gifts_dead_letter(p)) for p in partitions.all_tags()])
