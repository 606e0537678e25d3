"""Failover mid-storm on the partitioned ledger: kill -9 of the primary holding the most ledger partitions while a
worker settles gifts across partitions; its replica takes over."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import cast

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from gifting import keys, valkey
from gifting.embedded_cluster import EmbeddedCluster
from gifting.ledger import partitions
from tests.cluster_checks import (
    Plan,
    drained,
    ensure_groups,
    feed,
    grant,
    open_room,
    settled_count,
    spread_users,
    task_failure,
    wait_until,
    worker_task,
)
from tests.conftest import make_settings

pytestmark = pytest.mark.timeout(120)

VIEWERS = 8  # one in each of partitions 0..7, so some live on every primary
CREATORS = 4  # one in each of partitions 8..11: every gift crosses partitions
FUNDS = 2000  # coins per viewer: enough for every gift it can be given; the last viewer gets POOR_FUNDS
POOR_FUNDS = 200
FEED_CHUNK = 16  # gifts queued per feeder step, until the killed primary is back as a replica
FEED_PAUSE_S = 0.1
GIFTS_MAX = 1200
KILL_AFTER_SETTLED = 60  # gifts in the journals before the kill: the storm is under way
FAILOVER_WAIT_S = 60.0
DELIVERIES_MAX = 1000  # retried through the outage, not dead-lettered


async def test_killed_primary_with_most_partitions_mid_storm_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """With GIFTING_DURABLE_REPLICAS=1, kill -9 of the primary holding the most ledger partitions mid-storm: its
    replica takes over, the worker rides through, every gift has one outcome, balances are exact per partition,
    each settled gift is once in its room's history, the outboxes drain and the audit is clean."""
    cluster = EmbeddedCluster(tmp_path / "cluster", primaries=3, replicas=1, announce=False)
    cluster.start()
    client = valkey.client(cluster.url)
    enough = asyncio.Event()
    feeding: asyncio.Task[None] | None = None
    try:
        settings = make_settings(
            tmp_path,
            durable_replicas=1,
            settle_batch_max=10,
            claim_idle_ms=1000,
            deliveries_max=DELIVERIES_MAX,
            # Above a replica's fsync period (appendfsync everysec): a wait for a fresh write's replica fsync
            # below it times out about every other batch (and the batch is retried, backing off).
            waitaof_timeout_ms=2000,
            outbox_redrive_ms=300,
            partition_lease_ms=1500,
        )
        plan = await _prepare(client, settings.creator_share_bps)
        feeding = asyncio.create_task(feed(client, plan, enough, GIFTS_MAX, FEED_CHUNK, FEED_PAUSE_S))
        async with worker_task(settings, cluster.url) as (_worker, task):

            async def under_way() -> bool:
                return await settled_count(client) >= KILL_AFTER_SETTLED

            await wait_until(under_way, "the storm to be under way", FAILOVER_WAIT_S, lambda: task_failure(task))
            primary = await _primary_with_most_partitions(client)
            replica = _replica_of(cluster, primary)
            cluster.kill(primary)
            # Promoted, the replica has no replica of its own: GIFTING_DURABLE_REPLICAS=1 confirms nothing (and
            # nothing is announced) until the old primary is back, as its replica: what an operator would do.
            await _wait_promoted(replica)
            cluster.restart(primary)
            enough.set()
            await asyncio.wait_for(feeding, FAILOVER_WAIT_S)
            await wait_until(lambda: drained(client), "every gift through", FAILOVER_WAIT_S, lambda: task_failure(task))
        await plan.assert_exact(client)
    finally:
        if feeding is not None and not feeding.done():  # the test failed mid-storm
            feeding.cancel()
        await client.aclose()
        cluster.stop()


async def test_a_write_on_a_connection_closed_under_it_is_a_connection_error(cluster_valkey_url: str) -> None:
    """A cluster connection closed by another task (as redis-py's topology refresh does mid-failover) answers a
    write with ConnectionError, which callers retry, not with an AttributeError that killed the worker."""
    client = valkey.client(cluster_valkey_url)
    try:
        cluster = cast(RedisCluster, client)
        await cluster.initialize()
        connection = cluster.get_default_node().acquire_connection()
        assert isinstance(connection, valkey.ClusterConnection)
        await connection.connect()
        await connection.disconnect()  # after send_packed_command checked it was connected: its write step
        with pytest.raises(RedisConnectionError, match="closed while in use"):
            await connection._send_packed_command([b"*1\r\n$4\r\nPING\r\n"])
    finally:
        await client.aclose()


async def _prepare(client: aioredis.Redis, share_bps: int) -> Plan:
    """Viewers funded, rooms opened, the gift streams' groups made; the gifts come from the feeder."""
    viewers = spread_users(VIEWERS, "v")
    creators = spread_users(CREATORS, "c", skip=VIEWERS)
    funds = {v: FUNDS for v in viewers} | {viewers[-1]: POOR_FUNDS}
    for viewer, coins in funds.items():
        await grant(client, viewer, coins)
    rooms = {await open_room(client, creator): creator for creator in creators}
    await ensure_groups(client)
    return Plan([], funds, rooms, share_bps)


async def _primary_with_most_partitions(client: aioredis.Redis) -> int:
    """The port of the primary whose slots hold the most ledger partitions."""
    ports: Counter[int] = Counter()
    for part in partitions.all_tags():
        node = (await valkey.on_node_of(client, keys.coins(part)))["target_nodes"]
        ports[int(node.port)] += 1
    return ports.most_common(1)[0][0]


def _replica_of(cluster: EmbeddedCluster, primary: int) -> redis.Redis:
    for port in cluster.ports:
        node = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        if node.info("replication").get("master_port") == primary:
            return node
        node.close()
    raise AssertionError(f"no replica follows {primary}")


async def _wait_promoted(node: redis.Redis) -> None:
    """Until `node` reports itself a primary (bounded in time and in polls)."""
    try:
        for _ in range(int(FAILOVER_WAIT_S / 0.2)):
            if node.info("replication").get("role") == "master":
                return
            await asyncio.sleep(0.2)
        pytest.fail(f"the replica was not promoted within {FAILOVER_WAIT_S} s")
    finally:
        node.close()
