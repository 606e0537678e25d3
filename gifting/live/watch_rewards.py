"""Watch-time rewards, measured by the hub itself from its own sockets (never from what a client reports).

Once per GIFTING_REWARD_WATCH_PERIOD_S, right after a period ends, the hub pays that period to every viewer who
had, on this process, a socket that
- was open before the period began (watched through all of it),
- is in at least one room that is live now, not the viewer's own room, and
- sent a message (a ping will do) within the last GIFTING_REWARD_IDLE_S: an idle socket earns nothing.

A viewer earns once per period however many sockets (or web processes) it has: the transfer id is
rules.reward_id('watch', user, period), and a second accrual of one id moves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.asyncio as aioredis

from gifting import keys
from gifting.config import Settings
from gifting.ledger.rewards import Accrual, Rewards
from gifting.live.output import Connection

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 3.0


def earning(conns: set[Connection], user: str, creators: dict[str, str], live: set[str], since_s: float,
            idle_before_s: float) -> bool:  # fmt: skip
    """Whether one of the viewer's sockets earns: open since `since_s`, active after `idle_before_s`, and in a
    live room of another creator (`creators`: room -> its creator)."""
    return any(
        not c.closed
        and c.connected_s <= since_s
        and c.active_s >= idle_before_s
        and any(r in live and creators.get(r) != user for r in c.rooms)
        for c in conns
    )


class WatchRewards:
    """The hub's periodic watch accrual (started and stopped with the web process)."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, rewards: Rewards,
                 users: dict[str, set[Connection]], creators: dict[str, str]) -> None:  # fmt: skip
        self.redis = redis
        self.settings = settings
        self.rewards = rewards
        self.users = users  # the hub's own map: user -> open sockets
        self.creators = creators  # filled as rooms are looked up: room -> creator
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.settings.reward_watch_coins > 0:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
                await asyncio.wait_for(self._task, STOP_TIMEOUT_S)

    async def _run(self) -> None:
        period_s = self.settings.reward_watch_period_s
        while True:
            # Wake just after a period ends (wall clock: every hub numbers periods alike, so ids agree).
            now = time.time()
            await asyncio.sleep(period_s - now % period_s + 0.05)
            try:
                await self.accrue(int(time.time() // period_s) - 1)
            except Exception:  # Valkey down or slow: that period is lost for this hub, the next one counts
                log.exception("watch rewards: accrual failed")

    async def accrue(self, period: int) -> list[Accrual]:
        """Pay `period` to the viewers of this process who watched through it."""
        period_s = self.settings.reward_watch_period_s
        # Monotonic time the period began: sockets opened after it did not watch all of it.
        since_s = time.monotonic() - (time.time() - period * period_s)
        idle_before_s = time.monotonic() - self.settings.reward_idle_s
        rooms = sorted({r for conns in self.users.values() for c in conns for r in c.rooms})
        if not rooms:
            return []
        for gone in set(self.creators) - set(rooms):  # bounded by the rooms this process's sockets are in
            del self.creators[gone]
        await self._learn_creators(rooms)
        scores = await self.redis.zmscore(keys.ROOMS_LIVE, rooms)
        live = {r for r, score in zip(rooms, scores, strict=True) if score is not None}
        users = [
            u for u, conns in list(self.users.items()) if earning(conns, u, self.creators, live, since_s, idle_before_s)
        ]
        outcomes = await self.rewards.accrue_watch(users, period)
        refused = [o for o in outcomes if not o.paid]
        if refused:
            log.info("watch rewards: period %d: %d accruals refused (%s)", period, len(refused), refused[0].status)
        return outcomes

    async def _learn_creators(self, rooms: list[str]) -> None:
        missing = [r for r in rooms if r not in self.creators]
        if not missing:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for room in missing:
                pipe.hget(keys.room_meta(room), "creator")
            found = await pipe.execute()
        for room, creator in zip(missing, found, strict=True):
            self.creators[room] = creator or ""
