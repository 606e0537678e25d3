"""Moving an installation from a standalone Valkey to a Valkey Cluster with Valkey's own tool (docs/OPERATIONS.md
"Moving an installation to a cluster"): the key layout is the same on both, so `valkey-cli --cluster import`
copies every key to the node owning its slot and the system goes on where it stopped."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from gifting import keys, valkey
from gifting.catalog.model import load_default
from gifting.config import Settings
from gifting.embedded import EmbeddedValkey, valkey_binary
from gifting.embedded_cluster import EmbeddedCluster
from gifting.ledger import partitions, rules
from gifting.ledger.audit import run_audit
from tests.cluster_checks import balances, drained, spread_users, wait_until
from tests.conftest import System, gift_id, make_settings, run_web, run_worker

pytestmark = pytest.mark.timeout(120)

VIEWERS = 6  # one in each of partitions 0..5
CREATORS = 3  # one in each of partitions 8..10: every gift crosses partitions
GIFTS_PER_VIEWER = 3
IMPORT_TIMEOUT_S = 60
WAIT_S = 30.0


async def test_standalone_installation_imported_into_a_cluster_keeps_every_coin(tmp_path: Path) -> None:
    """Purchases and cross-partition gifts through the real system on a standalone Valkey; writers stopped,
    `valkey-cli --cluster import ... --cluster-copy` into a fresh 3-primary cluster: every key without a TTL is
    there with what it held (balances, journals, gift streams with their groups, rooms), the audit is clean, and a
    new gift settles on the cluster. (Keys with a TTL, combos of a few seconds, may expire meanwhile.)"""
    standalone = EmbeddedValkey(tmp_path / "standalone", announce=False)
    cluster = EmbeddedCluster(tmp_path / "cluster", primaries=3, replicas=0, announce=False)
    settings = make_settings(tmp_path)
    viewers, creators = spread_users(VIEWERS, "v"), spread_users(CREATORS, "c", skip=8)
    try:
        source = valkey.client(standalone.start())
        async with _system(settings, standalone.url, source) as system:
            rooms = await _fill(system, viewers, creators)
        before = await _ledger_snapshot(source)
        persistent = await _contents(source, [k for k in await source.keys("*") if await source.pttl(k) == -1])
        await source.aclose()
        cluster.start()
        _import(cluster, standalone)
        target = valkey.client(cluster.url)
        try:
            assert await _ledger_snapshot(target) == before
            assert await _contents(target, list(persistent)) == persistent
            report = await run_audit(target)
            assert report.clean, report.summary()
            async with _system(settings, cluster.url, target) as system:
                await _gift_settles_on_the_cluster(system, target, viewers[0], creators[1], rooms[1])
        finally:
            await target.aclose()
    finally:
        cluster.stop()
        standalone.stop()


@contextlib.asynccontextmanager
async def _system(settings: Settings, url: str, client: aioredis.Redis) -> AsyncIterator[System]:
    """The web app and a settlement worker on `url`; on exit both stop (the writers of the installation)."""
    async with (
        run_web(settings, url) as (base_url, app),
        run_worker(settings, url),
        httpx.AsyncClient(base_url=base_url, timeout=15) as http,
    ):
        yield System(settings, client, base_url, http, app)


async def _fill(system: System, viewers: list[str], creators: list[str]) -> list[str]:
    """Each viewer buys coins and sends gifts to every creator's room over HTTP; returns the rooms once every
    gift is settled and every creator's credit applied."""
    rooms = [await system.open_room(creator) for creator in creators]
    for viewer in viewers:
        await system.buy(viewer)
    for viewer in viewers:
        for i in range(GIFTS_PER_VIEWER):
            result = await _send_gift(system, viewer, rooms[i % len(rooms)])
            assert result["status"] == "settled", result
    await wait_until(lambda: drained(system.redis), "every credit applied", WAIT_S)
    return rooms


async def _send_gift(system: System, viewer: str, room: str) -> dict[str, Any]:
    response = await system.http.post(
        f"/v1/rooms/{room}/gifts",
        headers=system.auth(viewer),
        json={"gift": "coffee", "count": 1, "gift_id": gift_id()},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _ledger_snapshot(client: aioredis.Redis) -> dict[str, dict[str, str]]:
    """Every balance hash of every partition, and each journal's length."""
    snapshot: dict[str, dict[str, str]] = {}
    for part in partitions.all_tags():
        for _ledger, hash_key in keys.ledgers(part):
            snapshot[hash_key] = await client.hgetall(hash_key)
        snapshot[keys.journal(part)] = {"length": str(await client.xlen(keys.journal(part)))}
    return snapshot


def _import(cluster: EmbeddedCluster, standalone: EmbeddedValkey) -> None:
    """valkey-cli, shipped next to valkey-server, copies every key of the standalone server into the cluster."""
    cli = str(Path(valkey_binary()).with_name("valkey-cli"))
    command = [cli, "--cluster", "import", f"127.0.0.1:{cluster.ports[0]}"]
    command += ["--cluster-from", f"127.0.0.1:{standalone.port}", "--cluster-copy", "--cluster-pipeline", "1000"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=IMPORT_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


async def _contents(client: aioredis.Redis, names: list[str]) -> dict[str, Any]:
    """What each key holds, by its type (a stream: its entries and each consumer group's position and pending)."""
    readers: dict[str, Callable[[str], Awaitable[Any]]] = {
        "string": client.get,
        "hash": client.hgetall,
        "list": lambda k: client.lrange(k, 0, -1),
        "set": client.smembers,
        "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
        "stream": lambda k: _stream(client, k),
    }
    return {name: await readers[await client.type(name)](name) for name in names}


async def _stream(client: aioredis.Redis, name: str) -> tuple[Any, ...]:
    groups = [(g["name"], g["last-delivered-id"], g["pending"]) for g in await client.xinfo_groups(name)]
    return await client.xrange(name), groups


async def _gift_settles_on_the_cluster(
    system: System, client: aioredis.Redis, viewer: str, creator: str, room: str
) -> None:
    """A gift sent after the move settles: the viewer's coins and the creator's diamonds move on from where the
    standalone server left them."""
    (coins, _), (_, diamonds) = await balances(client, viewer), await balances(client, creator)
    result = await _send_gift(system, viewer, room)
    assert result["status"] == "settled", result
    await wait_until(lambda: drained(client), "the new gift's credit applied", WAIT_S)
    price = load_default().gifts["coffee"].coins
    assert (await balances(client, viewer))[0] == coins - price
    earned = rules.split_gift(price, system.settings.creator_share_bps).diamonds
    assert (await balances(client, creator))[1] == diamonds + earned
    report = await run_audit(client)
    assert report.clean, report.summary()
