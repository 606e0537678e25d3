"""The partitioned streams' backlogs: the archive backlog bound per partition, and what ops and metrics show.

Each ledger partition has its own gift stream, dead letters, journal and outbox (keys.py), on the primary that
holds the partition. So the archive backlog bound (rules.archive_backlog_reject, GIFTING_ARCHIVE_BACKLOG_MAX) is
per partition: a debit is refused when the journal of the partition being debited (the payer's: a viewer's for a
gift, a pledge, a perk; a campaign's for a sponsored gift; the creator's for a withdrawal) holds more entries
than the bound. The bound is what one partition's journal may hold on its primary while PostgreSQL is away, and
a stalled partition refuses only its own accounts' debits. Callers read the length with `journal_lengths` (one
round trip for any number of partitions) and pass it to the rule.

Metrics: the settlement worker's gauges give each partition's streams (gifting_stream_length, labelled by stream
key); `observe` adds the age of the oldest outbox entry over every partition (gifting_outbox_oldest_age_seconds:
the creator-credit lag a stalled redrive causes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as aioredis

from gifting import clock, keys, metrics
from gifting.ledger import partitions, rules
from gifting.wire.reasons import RejectReason

ALL = "{ledger:*}"  # how labels and answers name a stream kind over every partition ('{ledger:*}:journal')

# The per-partition streams: (their kind, as ops names it, the stream's key in a partition).
STREAMS: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("gifts", keys.gifts_stream),
    ("gifts:dead", keys.gifts_dead_letter),
    ("journal", keys.journal),
    ("outbox", keys.outbox),
)


async def journal_lengths(redis: aioredis.Redis, parts: Iterable[str]) -> dict[str, int]:
    """The journal length of each partition in `parts` (tags), in one round trip: what the archive backlog rule
    compares with GIFTING_ARCHIVE_BACKLOG_MAX for a debit of that partition."""
    return await stream_lengths(redis, keys.journal, parts)


async def stream_lengths(
    redis: aioredis.Redis, stream_of: Callable[[str], str], parts: Iterable[str] | None = None
) -> dict[str, int]:
    """XLEN of one stream kind in each partition (None: every partition); a missing stream is 0."""
    tags = list(partitions.all_tags() if parts is None else dict.fromkeys(parts))
    async with redis.pipeline(transaction=False) as pipe:
        for part in tags:
            pipe.xlen(stream_of(part))
        lengths = await pipe.execute()
    return {part: int(n) for part, n in zip(tags, lengths, strict=True)}


def backlog_reject(lengths: dict[str, int], part: str, backlog_max: int) -> RejectReason | None:
    """rules.archive_backlog_reject for a debit of partition `part`, given `journal_lengths`."""
    return rules.archive_backlog_reject(lengths.get(part, 0), backlog_max)


async def snapshot(redis: aioredis.Redis) -> dict[str, dict[str, int]]:
    """Every stream kind's length in every partition, in one round trip: kind -> partition -> length."""
    tags = partitions.all_tags()
    async with redis.pipeline(transaction=False) as pipe:
        for _, stream_of in STREAMS:
            for part in tags:
                pipe.xlen(stream_of(part))
        replies = iter(await pipe.execute())
    return {name: {part: int(next(replies)) for part in tags} for name, _ in STREAMS}


async def oldest_outbox_age_ms(redis: aioredis.Redis, now_ms: int | None = None) -> int:
    """How long the oldest outbox entry of any partition has waited (0: none): its id is its XADD time."""
    async with redis.pipeline(transaction=False) as pipe:
        for part in partitions.all_tags():
            pipe.xrange(keys.outbox(part), count=1)
        firsts = await pipe.execute()
    oldest = min((int(entries[0][0].partition("-")[0]) for entries in firsts if entries), default=None)
    now = clock.now_ms() if now_ms is None else now_ms
    return 0 if oldest is None else max(0, now - oldest)


async def observe(redis: aioredis.Redis) -> None:
    """Set the oldest outbox entry's age (one round trip)."""
    metrics.outbox_oldest_age.set(await oldest_outbox_age_ms(redis) / 1000)


def by_partition(lengths: dict[str, int]) -> dict[str, Any]:
    """An answer for ops: the total, the longest, and the partitions holding any (named by tag)."""
    return {
        "length": sum(lengths.values()),
        "max": max(lengths.values(), default=0),
        "partitions": {part: n for part, n in lengths.items() if n},
    }
