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
from tests.conftest import REPO, SystemFactory

pytestmark = pytest.mark.cluster  # tests taking valkey_url run on both backends

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
    """kill -9 of a primary: its replica is promoted, the cluster serves again, and writes confirmed by WAIT
    (one replica) before the kill are all there."""
    cluster = EmbeddedCluster(tmp_path, primaries=3, replicas=1, announce=False)
    cluster.start()
    try:
        client = redis.cluster.RedisCluster.from_url(cluster.url, decode_responses=True)
        key = "{ledger}:failover-probe"
        primary = client.get_node_from_key(key)
        direct = redis.Redis(host=primary.host, port=primary.port)  # WAIT counts its own connection's writes
        for _ in range(100):
            direct.incr(key)
        assert direct.wait(1, 5000) == 1
        direct.close()
        cluster.kill(int(primary.port))
        _wait_served(client, key, FAILOVER_WAIT_S)
        assert client.get(key) == str(100)
        assert client.get_node_from_key(key).port != primary.port  # the replica, promoted
        client.close()
    finally:
        cluster.stop()


def _wait_served(client: redis.cluster.RedisCluster, key: str, timeout_s: float) -> None:
    """Until the key's slot answers again (bounded in time and in attempts)."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.2) + 1):
        try:
            client.get(key)
            return
        except (redis.exceptions.RedisClusterException, redis.exceptions.ConnectionError, OSError):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
    pytest.fail(f"the slot of {key} was not served again within {timeout_s} s")
