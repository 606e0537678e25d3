"""Which worker process settles which ledger partition: leases (docs/SCALING.md "Stage 2").

Each partition has a lease key (keys.lease) holding its owner's name, set with NX and a TTL
(GIFTING_PARTITION_LEASE_MS) and renewed at a third of it. A process takes free partitions up to its fair
share (the partitions divided by the live worker processes, counted from their heartbeats) and gives back any
beyond it, so a new process gets work within a renewal or two and a dead one's partitions are taken over once
its leases expire. Leases are about efficiency, not correctness: two processes settling one partition at once
(a paused owner whose lease ran out) is still exactly once, by the ledger's idempotency records.
"""

from __future__ import annotations

import math
import zlib

import redis.asyncio as aioredis

from gifting import clock, keys, valkey
from gifting.ledger import partitions

# Renew (ARGV 2 = ttl ms) or give back (ARGV 2 = 0) a lease only while ARGV 1 still holds it.
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""


def fair_share(partition_count: int, live_workers: int) -> int:
    """Partitions one process should hold: all of them divided by the live processes, rounded up."""
    return math.ceil(partition_count / max(live_workers, 1))


class PartitionLeases:
    def __init__(self, redis: aioredis.Redis, owner: str, ttl_ms: int) -> None:
        self.redis = redis
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.owned: set[str] = set()
        self._renew = redis.register_script(RENEW)

    async def refresh(self) -> set[str]:
        """Renew what we hold (dropping what we lost), take free partitions up to our share, give back extras.
        Returns the partitions held now."""
        tags = partitions.all_tags()
        live = await self.redis.zcount(keys.WORKER_HEARTBEATS, clock.now_ms() - self.ttl_ms, "+inf")
        share = fair_share(len(tags), int(live))
        held = sorted(self.owned)
        if held:
            async with self.redis.pipeline(transaction=False) as pipe:
                for part in held:
                    await valkey.queue_script(pipe, self._renew, [keys.lease(part)], [self.owner, self.ttl_ms])
                renewed = await pipe.execute()
            self.owned = {part for part, ok in zip(held, renewed, strict=True) if ok}
        if len(self.owned) > share:
            await self.release(sorted(self.owned)[share:])
        elif len(self.owned) < share:
            # Each process starts looking at its own offset, so concurrent starters do not all race for the same.
            start = zlib.crc32(self.owner.encode()) % len(tags)
            free = [tags[(start + i) % len(tags)] for i in range(len(tags))]
            free = [part for part in free if part not in self.owned]
            async with self.redis.pipeline(transaction=False) as pipe:
                for part in free:
                    pipe.set(keys.lease(part), self.owner, nx=True, px=self.ttl_ms)
                taken = await pipe.execute()
            for part, ok in zip(free, taken, strict=True):
                if ok and len(self.owned) < share:
                    self.owned.add(part)
                elif ok:
                    await self.release([part])  # taken in the same pipeline beyond the share
        return set(self.owned)

    async def release(self, parts: list[str]) -> None:
        """Give partitions back (a graceful stop, or beyond our share): another process takes them at once."""
        if not parts:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for part in parts:
                await valkey.queue_script(pipe, self._renew, [keys.lease(part)], [self.owner, 0])
            await pipe.execute()
        self.owned -= set(parts)
