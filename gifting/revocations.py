"""Token revocation: an admin sets a user's "not before" second; that user's tokens issued up to it stop working.

Valkey holds the table (user -> unix second) and a version incremented by every change; a change is announced on
a pub/sub channel so every web process updates its copy and closes the user's sockets at once. A process that
missed the message (its pub/sub connection was dropped) catches up when it re-subscribes and when it compares
the version every GIFTING_SYNC_CHECK_INTERVAL_S. Each process holds the whole table in memory (one integer per
revoked user), so HTTP requests check it without a round trip.
"""

from __future__ import annotations

import logging
import time

import redis.asyncio as aioredis

from gifting import keys

log = logging.getLogger(__name__)


class Revocations:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.not_before: dict[str, int] = {}
        self.version = -1

    async def revoke(self, user: str) -> int:
        """Revoke every token of `user` issued up to this second; returns that second (the new not-before)."""
        second = int(time.time())
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.AUTH_NOT_BEFORE, user, second)
            pipe.incr(keys.AUTH_VERSION)
            await pipe.execute()
        self.not_before[user] = second
        await self.redis.publish(keys.AUTH_CHANNEL, f"{user} {second}")
        return second

    def apply(self, message: str) -> str | None:
        """A `user second` message from the channel: update the table; returns the user (None if malformed)."""
        user, _, second = message.partition(" ")
        if not user or not second.isdigit():
            log.error("revocations: malformed message %r", message)
            return None
        self.not_before[user] = max(int(second), self.not_before.get(user, 0))
        return user

    async def refresh(self) -> bool:
        """Re-read the table if its version changed. Returns True if it did."""
        version = int(await self.redis.get(keys.AUTH_VERSION) or 0)
        if version == self.version:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.AUTH_VERSION)
            pipe.hgetall(keys.AUTH_NOT_BEFORE)
            version_read, table = await pipe.execute()
        self.not_before = {user: int(second) for user, second in table.items()}
        self.version = int(version_read or 0)
        log.info("revocations version %d: %d users", self.version, len(self.not_before))
        return True
