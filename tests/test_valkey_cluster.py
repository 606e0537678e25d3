"""Valkey Cluster: detection, the embedded cluster (replicas, failover) and sharded room fan-out."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio.cluster as aiocluster

from gifting import keys, valkey
from gifting.embedded_cluster import EmbeddedCluster
from gifting.ledger import partitions
from gifting.ledger.store import DurabilityError, Ledger
from tests.conftest import REPO, SystemFactory, make_settings

pytestmark = pytest.mark.cluster  # tests taking valkey_url run on both backends

REPLICA_FSYNC_WAIT_MS = 5000  # a replica fsyncs its AOF once a second (everysec): bounded well above
MISSING_REPLICA_WAIT_MS = 300  # a replica that is not there never confirms
FAILOVER_WAIT_S = 30.0  # node timeout 2 s, election and gossip: about 6 s here, bounded well above


def test_detection_tells_a_cluster_from_a_standalone_server(
    standalone_valkey_url: str, cluster_valkey_url: str
) -> None:
    """INFO cluster on the node REDIS_URL names picks the client: RedisCluster for a cluster node only."""
    assert valkey.is_cluster_url(cluster_valkey_url) and not valkey.is_cluster_url(standalone_valkey_url)
    assert isinstance(valkey.client(cluster_valkey_url), aiocluster.RedisCluster)
    assert not valkey.is_cluster_client(valkey.client(standalone_valkey_url))
    sync = valkey.sync_client(cluster_valkey_url, decode_responses=True)
    try:
        sync.set("{room:x}:probe", "1")  # lands on whichever node owns the slot, wherever the URL pointed
        assert sync.get("{room:x}:probe") == "1"
    finally:
        sync.delete("{room:x}:probe")
        sync.close()


def test_replicas_without_cluster_is_a_usage_error(tmp_path: Path) -> None:
    """`gifting dev --replicas 1` alone says what is missing instead of starting a standalone server."""
    done = subprocess.run(
        [sys.executable, "-m", "gifting.cli", "dev", "--replicas", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "GIFTING_DATA_DIR": str(tmp_path)},
    )
    assert done.returncode == 2 and "--replicas needs --cluster" in done.stderr, done.stderr


async def test_hub_subscribes_each_room_as_a_shard_channel_on_its_own_primary(start_system: SystemFactory) -> None:
    """On a cluster a joined room is SSUBSCRIBEd on the primary owning the room's slot, not a plain channel."""
    system = await start_system()
    room = await system.open_room()
    viewer = await system.connect("viewer1")
    assert (await viewer.join(room))["type"] == "joined"
    client = system.redis
    if not valkey.is_cluster_client(client):
        assert (await client.pubsub_numsub(keys.room_channel(room)))[0][1] == 1
        return
    node = await valkey.on_node_of(client, keys.room_meta(room))
    shard = await client.execute_command("PUBSUB SHARDNUMSUB", keys.room_channel(room, True), **node)
    assert _pairs(shard) == [(keys.room_channel(room, True), 1)], shard
    plain = await client.execute_command("PUBSUB NUMSUB", keys.room_channel(room), target_nodes="all")
    assert all(count == 0 for _, count in _pairs(plain)), plain


def _pairs(reply: Any) -> list[tuple[str, int]]:
    """PUBSUB (SHARD)NUMSUB, from one node or every node ({node: reply}): pairs, or a flat list."""
    pairs: list[tuple[str, int]] = []
    for r in reply.values() if isinstance(reply, dict) else [reply]:
        if r and isinstance(r[0], tuple | list):
            pairs += [(channel, int(count)) for channel, count in r]
        else:
            pairs += [(r[i], int(r[i + 1])) for i in range(0, len(r), 2)]
    return pairs


def test_a_replica_takes_over_a_killed_primary_and_keeps_what_was_replicated(tmp_path: Path) -> None:
    """kill -9 of a primary: its replica is promoted and serves the slot, with every write that WAIT confirmed
    reached a replica before the kill."""
    cluster = EmbeddedCluster(tmp_path, primaries=3, replicas=1, announce=False)
    cluster.start()
    nodes = {port: redis.Redis(host="127.0.0.1", port=port, decode_responses=True) for port in cluster.ports}
    try:
        key = "{ledger}:failover-probe"
        slot = int(nodes[cluster.ports[0]].cluster("keyslot", key))
        primary = next(p for p in cluster.ports[: cluster.primaries] if _serves(nodes[p], slot))
        for _ in range(100):
            nodes[primary].incr(key)
        assert nodes[primary].wait(1, 5000) == 1  # WAIT counts this connection's own writes
        replica = next(p for p, n in nodes.items() if n.info("replication").get("master_port") == primary)
        cluster.kill(primary)
        _wait_promoted(nodes[replica], FAILOVER_WAIT_S)
        assert nodes[replica].get(key) == "100" and _serves(nodes[replica], slot)
    finally:
        for node in nodes.values():
            node.close()
        cluster.stop()


def _serves(node: redis.Redis, slot: int) -> bool:
    """Whether `node` is, in its own view, the primary that owns `slot`."""
    port = node.connection_pool.connection_kwargs["port"]
    for shard in node.execute_command("CLUSTER", "SHARDS"):
        ranges = zip(shard["slots"][::2], shard["slots"][1::2], strict=True)
        if any(a <= slot <= b for a, b in ranges):
            return any(n["port"] == port and n["role"] == "master" for n in shard["nodes"])
    return False


def _wait_promoted(node: redis.Redis, timeout_s: float) -> None:
    """Until `node` reports itself a primary (bounded in time and in polls)."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.2) + 1):
        if node.info("replication").get("role") == "master":
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    pytest.fail(f"the replica was not promoted within {timeout_s} s")


async def test_durable_replicas_counts_replicas_that_have_the_writes_in_their_aof(
    tmp_path: Path, standalone_valkey_url: str
) -> None:
    """GIFTING_DURABLE_REPLICAS: a write counts as done only once that many replicas have it in their AOF too;
    fewer replicas than asked (none on a standalone server) is a DurabilityError, never a silent pass."""
    cluster = EmbeddedCluster(tmp_path / "cluster", primaries=1, replicas=1, announce=False)
    cluster.start()
    clients = [valkey.client(cluster.url), valkey.client(standalone_valkey_url)]
    try:
        replicated, alone = clients
        await replicated.hincrby(keys.coins(partitions.tag(0)), "sys:probe", 0)
        await Ledger(replicated, make_settings(tmp_path, durable_replicas=1)).durable(REPLICA_FSYNC_WAIT_MS)
        # Each wait covers a write of its own (Ledger.durable), so the one replica may not have fsynced it yet.
        with pytest.raises(DurabilityError, match=r"[01] of 2 replicas"):
            await Ledger(replicated, make_settings(tmp_path, durable_replicas=2)).durable(MISSING_REPLICA_WAIT_MS)
        with pytest.raises(DurabilityError, match="0 of 1 replicas"):
            await Ledger(alone, make_settings(tmp_path, durable_replicas=1)).durable(MISSING_REPLICA_WAIT_MS)
    finally:
        for client in clients:
            await client.aclose()
        cluster.stop()
