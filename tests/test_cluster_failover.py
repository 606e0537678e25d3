"""Failover mid-storm: kill -9 of the ledger's primary while a worker settles, its replica takes over."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
from redis.exceptions import ConnectionError

from gifting import gifts, keys, valkey
from gifting.catalog.model import load_default
from gifting.embedded_cluster import EmbeddedCluster
from tests.conftest import gift_id, make_settings
from tests.test_settlement import (
    assert_audit_clean,
    balances,
    drained,
    ensure_group,
    grant,
    journal_gift_ids,
    open_room,
    request,
    task_failure,
    wait_until,
    worker_task,
)

pytestmark = pytest.mark.timeout(120)

SENDERS = {"v0": 3000, "v1": 3000, "v2": 600}  # v2 can pay for 60 of its coffees: some gifts are rejected
PER_SENDER = 150
KILL_AFTER_SETTLED = 100  # gifts in the journal before the kill: the storm is under way
FAILOVER_WAIT_S = 60.0
DELIVERIES_MAX = 1000  # retried through the outage, not dead-lettered


async def test_killed_ledger_primary_mid_storm_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """With GIFTING_DURABLE_REPLICAS=1, kill -9 of the ledger's primary mid-storm: the replica takes over, the
    worker rides through, every gift is settled or rejected once, the money is exact and the audit clean."""
    cluster = EmbeddedCluster(tmp_path / "cluster", primaries=3, replicas=1, announce=False)
    cluster.start()
    redis = valkey.client(cluster.url)
    try:
        room = await open_room(redis)
        for user, coins in SENDERS.items():
            await grant(redis, user, coins)
        await ensure_group(redis)
        plan = [(gift_id(), sender) for _ in range(PER_SENDER) for sender in SENDERS]
        for gid, sender in plan:
            await gifts.enqueue(redis, request(gid, room, sender))
        settings = make_settings(
            tmp_path,
            durable_replicas=1,
            settle_batch_max=20,
            claim_idle_ms=1000,
            deliveries_max=DELIVERIES_MAX,
            waitaof_timeout_ms=500,
        )
        async with worker_task(settings, cluster.url) as (_worker, task):

            async def under_way() -> bool:
                return len(await journal_gift_ids(redis)) >= KILL_AFTER_SETTLED

            await wait_until(under_way, "the storm to be under way", alive=lambda: task_failure(task))
            primary = int((await valkey.on_node_of(redis, keys.LEDGER_COINS))["target_nodes"].port)
            replica = _replica_of(cluster, primary)
            cluster.kill(primary)
            # Promoted, the replica has no replica of its own: GIFTING_DURABLE_REPLICAS=1 confirms nothing (and
            # nothing is announced) until the old primary is back, as its replica: what an operator would do.
            await _wait_promoted(replica)
            cluster.restart(primary)

            async def through() -> bool:  # this client too meets the dead primary until the replica takes over
                try:
                    return await drained(redis)
                except (ConnectionError, OSError):
                    return False

            await wait_until(through, "every gift through", FAILOVER_WAIT_S, lambda: task_failure(task))
        ids = await journal_gift_ids(redis)
        assert all(count == 1 for count in ids.values()), ids.most_common(3)
        coffee = load_default().gifts["coffee"].coins
        spent = {sender: sum(1 for gid, s in plan if s == sender and gid in ids) * coffee for sender in SENDERS}
        assert spent["v0"] == spent["v1"] == PER_SENDER * coffee and spent["v2"] == SENDERS["v2"], spent
        for sender, coins in SENDERS.items():
            assert await balances(redis, sender) == (coins - spent[sender], 0)
        await assert_audit_clean(redis)
    finally:
        await redis.aclose()
        cluster.stop()


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
