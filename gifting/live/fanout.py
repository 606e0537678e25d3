"""Room fan-out over pub/sub: plain PUBLISH/SUBSCRIBE on a standalone Valkey, sharded on a cluster.

On a cluster, a plain PUBLISH is broadcast over the cluster bus to every node, so one busy room would cost every
primary; SPUBLISH stays on the primary that owns the channel's slot. A room's shard channel carries the room's
tag (keys.room_channel), so announce.lua publishes it next to the room's history, and each primary carries only
its own rooms' traffic (Centrifugo and socket.io made the same move).

redis-py's cluster pub/sub reads shard channels through `get_sharded_message`, apart from the node connection
that carries the global channels (results, catalog, revocations), and it visits its shard connections in turn,
each with the timeout given: a blocking read on a quiet primary would hold back a busy one. So shard messages
are polled without blocking, and the reader sleeps half a tick when none is waiting: the hub shows events once
per tick anyway (GIFTING_TICK_MS), so this adds no more than that half tick.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

from gifting import keys, metrics

log = logging.getLogger(__name__)

SHARD_READS_PER_WAKE_MAX = 1000  # messages read before yielding to the event loop (bounded work per wake)
RECONNECT_PAUSE_S = 0.5


class RoomFanout:
    """Subscribes the hub's pub/sub to rooms; on a cluster, also reads their shard channels."""

    def __init__(self, pubsub: PubSub, sharded: bool, tick_ms: int) -> None:
        self.pubsub = pubsub
        self.sharded = sharded
        self.idle_sleep_s = max(0.001, tick_ms / 2000)

    def channel(self, room: str) -> str:
        return keys.room_channel(room, self.sharded)

    async def subscribe(self, room: str) -> None:
        if self.sharded:
            await self.pubsub.ssubscribe(self.channel(room))
        else:
            await self.pubsub.subscribe(self.channel(room))

    async def unsubscribe(self, room: str) -> None:
        if self.sharded:
            await self.pubsub.sunsubscribe(self.channel(room))
        else:
            await self.pubsub.unsubscribe(self.channel(room))

    async def read_shards(self, deliver: Callable[[str, Any], None]) -> None:
        """Cluster only: forever, hand each shard message's (room, data) to `deliver`."""
        assert self.sharded
        while True:
            try:
                read = 0
                while read < SHARD_READS_PER_WAKE_MAX:
                    message = await self.pubsub.get_sharded_message(timeout=0.0)
                    if message is None:
                        break
                    read += 1
                    if message.get("type") == "smessage" and (room := keys.channel_room(message["channel"])):
                        deliver(room, message["data"])
            except (RedisConnectionError, OSError) as exc:
                log.warning("hub shard pub/sub: %s; reconnecting", exc)
                metrics.store_reconnects.inc()
                await asyncio.sleep(RECONNECT_PAUSE_S)
                continue
            await asyncio.sleep(0 if read == SHARD_READS_PER_WAKE_MAX else self.idle_sleep_s)
