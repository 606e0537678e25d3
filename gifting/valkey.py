"""One home for making Valkey clients: a standalone server or a Valkey/Redis Cluster, told apart on connect.

REDIS_URL names any node; `INFO cluster` says whether it runs in cluster mode (`cluster_enabled:1`). Every
process (web, workers, CLI commands, benchmarks, locust helpers) gets its clients here, so no other setting
is needed to move to a cluster.

The cluster client is typed as `redis.asyncio.Redis`: the code base calls the commands both clients share
(every key it touches is hash-tagged so each call stays in one slot, gifting/keys.py), and one annotation
keeps every module's signatures as they are. What differs is asked through `is_cluster_client`: sharded
pub/sub for rooms (gifting/live/fanout.py) and per-node commands.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable
from typing import Any, cast

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster
import redis.exceptions

log = logging.getLogger(__name__)

DETECT_TIMEOUT_S = 5.0  # connect + INFO on the node REDIS_URL names


@functools.lru_cache(maxsize=64)
def is_cluster_url(url: str) -> bool:
    """Whether the node at `url` runs in cluster mode. A node that cannot be reached counts as standalone (a
    process started while its Valkey is down then reports store_unavailable, as before); the answer is kept
    per URL for the life of the process."""
    client = redis.Redis.from_url(url, socket_timeout=DETECT_TIMEOUT_S, socket_connect_timeout=DETECT_TIMEOUT_S)
    try:
        info = client.info("cluster")
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        log.warning("could not ask %s whether it is a cluster (%s): assuming a standalone server", url, exc)
        is_cluster_url.cache_clear()  # ask again next time
        return False
    finally:
        client.close()
    return bool(info.get("cluster_enabled"))


class ClusterConnection(aioredis.Connection):  # type: ignore[misc]  # redis-py ships it untyped
    """redis-py 8.1's cluster client, meeting a node down (a failover), closes every connection of every node,
    also those other tasks are writing on at that moment: such a write finds its writer gone and raises
    AttributeError (TypeError on some Pythons; redis-py issue #4287), which no retry and no caller takes for a
    lost connection (a settlement worker died of it mid-failover). Here it is the ConnectionError it is."""

    async def _send_packed_command(self, command: Iterable[bytes]) -> None:
        writer = self._writer
        if writer is None:
            raise redis.exceptions.ConnectionError("the connection was closed while in use (topology refresh)")
        try:
            writer.writelines(command)
            await writer.drain()
        except (AttributeError, TypeError) as exc:
            raise redis.exceptions.ConnectionError(f"the connection was closed while writing: {exc!r}") from exc


def client(url: str, connections_max: int = 100, wait_s: float = 10.0) -> aioredis.Redis:
    """An asyncio client for `url`. Standalone: a pool that waits (up to `wait_s`) for a free connection instead
    of failing, so a reconnect storm of joins queues up rather than dropping sockets. Cluster: redis-py's
    RedisCluster, `connections_max` per node, following MOVED/ASK and refreshing the topology on failover."""
    if is_cluster_url(url):
        cluster = aiocluster.RedisCluster.from_url(
            url, decode_responses=True, health_check_interval=30, max_connections=connections_max
        )
        # from_url takes no connection class: set it where every node (the startup one, those found later) reads it.
        cluster.connection_kwargs["connection_class"] = ClusterConnection
        for node in cluster.nodes_manager.startup_nodes.values():
            node.connection_class = ClusterConnection
        return cast(aioredis.Redis, cluster)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, decode_responses=True, health_check_interval=30, max_connections=connections_max, timeout=wait_s
    )
    return aioredis.Redis.from_pool(pool)


def sync_client(url: str, **options: Any) -> redis.Redis:
    """A blocking client for `url` (scripts, locust helpers): redis.Redis or redis.cluster.RedisCluster."""
    if is_cluster_url(url):
        return cast(redis.Redis, redis.cluster.RedisCluster.from_url(url, **options))
    return redis.Redis.from_url(url, **options)


def is_cluster_client(client: object) -> bool:
    return isinstance(client, aiocluster.RedisCluster | redis.cluster.RedisCluster)


async def on_node_of(client: aioredis.Redis, key: str) -> dict[str, Any]:
    """Keyword arguments that send a keyless command (WAITAOF) to the node holding `key`: a cluster client would
    send it to some node, which knows nothing of the writes it should wait for. Nothing on a standalone server."""
    if not is_cluster_client(client):
        return {}
    cluster = cast(aiocluster.RedisCluster, client)
    await cluster.initialize()  # the slot map is read on first use; a no-op after
    return {"target_nodes": cluster.get_node_from_key(key)}


def queue_evalsha(pipe: Any, sha: str, keys: list[str], args: list[Any]) -> Any:
    """EVALSHA queued on a pipeline by its raw command: redis-py's cluster pipeline refuses `pipe.evalsha()` by
    name, yet routes the raw command by its first key like any other (one slot per script: gifting/keys.py)."""
    return pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)


async def queue_script(pipe: Any, script: Any, keys: list[str], args: list[Any]) -> None:
    """A registered script queued on a pipeline. Standalone: through the script object, so the pipeline loads it
    if Valkey lost it (a restart). Cluster: by its raw EVAL with the script's text (EVALSHA is refused by name on a
    cluster pipeline, see queue_evalsha, and nothing there would load a script a node lost or never had)."""
    if isinstance(pipe, aiocluster.ClusterPipeline):
        pipe.execute_command("EVAL", script.script, len(keys), *keys, *args)
    else:
        await script(keys=keys, args=args, client=pipe)


def queue_publish(pipe: Any, channel: str, message: Any) -> Any:
    """PUBLISH queued on a pipeline by its raw command (refused by name on a cluster pipeline, as EVALSHA): a
    plain publish reaches every node's subscribers, so whichever node takes it is right."""
    return pipe.execute_command("PUBLISH", channel, message)


async def ready(client: aioredis.Redis) -> None:
    """Read a cluster's slot map now, before concurrent first commands: redis-py 8.1's cluster client, first
    used by several tasks at once, can drop a connection in use (seen as `'NoneType' object has no attribute
    'writelines'` in a worker's concurrent start, about one start in ten). Nothing to do on a standalone server."""
    if is_cluster_client(client):
        with contextlib.suppress(redis.exceptions.RedisError, OSError):  # unreachable: read on first use instead
            await cast(aiocluster.RedisCluster, client).initialize()
