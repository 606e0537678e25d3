"""Pool expiry, pledges left between their steps, and interrupted room ends: run by the settlement worker's
housekeeping loop (workers/settlement.py). Each only enqueues or repeats steps that are safe to repeat."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import redis.asyncio as aioredis

from gifting import clock, keys
from gifting.config import Settings
from gifting.ledger import partitions, pools
from gifting.rooms.pools import PoolOp
from gifting.rooms.store import RoomError, RoomStore

log = logging.getLogger(__name__)

POOLS_PER_RUN_MAX = 100  # pools expired (and interrupted room ends finished) per housekeeping run
EXPIRE_RETRY_S = 5.0  # an expiry enqueued but not yet done is enqueued again after this long


class PoolSweeper:
    """Which pool expiries are already on their way (so a slow one is not enqueued on every run)."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, rooms: RoomStore) -> None:
        self.redis = redis
        self.settings = settings
        self.rooms = rooms
        self._expiring: dict[str, float] = {}  # pool id -> when to enqueue its expiry again (monotonic s)

    async def sweep_pools(self, parts: Iterable[str] | None = None) -> None:
        """In each partition (default: all): pools past their deadline get an `expire` operation through the
        partition's stream (crash-safe, exactly once), and pledges debited but not finished for
        GIFTING_PLEDGE_REDRIVE_MS get their pool's answer again (ledger/pools.py)."""
        for part in partitions.all_tags() if parts is None else parts:
            await self._expire_due(part)
            await pools.redrive_pledges(self.rooms.ledger, part, self.settings.pledge_redrive_ms)
        for pool_id in [p for p, t in self._expiring.items() if t < time.monotonic()]:
            del self._expiring[pool_id]

    async def _expire_due(self, part: str) -> None:
        due = await self.redis.zrangebyscore(keys.pools_open(part), 0, clock.now_ms(), start=0, num=POOLS_PER_RUN_MAX)
        for pool_id in due:
            if self._expiring.get(pool_id, 0) > time.monotonic():
                continue
            self._expiring[pool_id] = time.monotonic() + EXPIRE_RETRY_S
            await self.redis.xadd(keys.gifts_stream(part), PoolOp(op="expire", pool=pool_id).to_entry())

    async def sweep_room_ends(self) -> int:
        """Finish room ends interrupted (a crash) more than GIFTING_ROOM_END_RETRY_S ago: every step is safe to
        repeat (rooms.finish_end). Returns how many were finished."""
        before_ms = clock.now_ms() - self.settings.room_end_retry_s * 1000
        rooms = await self.redis.zrangebyscore(keys.ROOMS_ENDING, 0, before_ms, start=0, num=POOLS_PER_RUN_MAX)
        for room in rooms:
            try:
                await self.rooms.finish_end(room)
                log.info("room %s: finished its interrupted end", room)
            except RoomError as exc:
                log.warning("room %s: cannot finish its end yet: %s", room, exc.message)
                if exc.code == "room_not_found":  # its records expired: nothing is left to finish
                    await self.redis.zrem(keys.ROOMS_ENDING, room)
        return len(rooms)
