"""The partitioned ledger as the benchmarks see it: gift requests per partition stream, every partition's streams
and outboxes counted in one round trip, every partition's journal read back (bench_settlement, bench_archive and
bench_cluster share these; docs/SCALING.md "Stage 2")."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson
import redis.asyncio as aioredis

from gifting import keys
from gifting.ledger import partitions, rules

if TYPE_CHECKING:
    from loadtest.bench_settlement import Workload

JOURNAL_PAGE = 200  # journal entries per XRANGE when reading the journals back


def payloads(workload: Workload, gifts: int, first: int = 0) -> dict[str, list[tuple[str, bytes]]]:
    """Each partition's gift requests first..first+gifts-1 (gift id, stream field value), made before the clock
    starts; each list in reverse order (popped from the end)."""
    now_ms = int(time.time() * 1000)
    by_part: dict[str, list[tuple[str, bytes]]] = {tag: [] for tag in partitions.all_tags()}
    for i in range(first, first + gifts):
        request = workload.request(i, now_ms)
        by_part[keys.part_of_user(request.sender)].append((request.gift_id, orjson.dumps(request)))
    for queue in by_part.values():
        queue.reverse()  # popped from the end
    return by_part


async def stream_lengths(redis: aioredis.Redis, tags: tuple[str, ...]) -> tuple[list[int], int]:
    """(entries waiting in each partition's gift stream, entries in all outboxes)."""
    async with redis.pipeline(transaction=False) as pipe:
        for tag in tags:
            pipe.xlen(keys.gifts_stream(tag))
        for tag in tags:
            pipe.xlen(keys.outbox(tag))
        replies = [int(r) for r in await pipe.execute()]
    return replies[: len(tags)], sum(replies[len(tags) :])


async def summed_lengths(redis: aioredis.Redis, key_of_part: Callable[[str], str]) -> int:
    """XLEN of `key_of_part(tag)` summed over every partition (journals, dead letters), one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for tag in partitions.all_tags():
            pipe.xlen(key_of_part(tag))
        return sum(int(n) for n in await pipe.execute())


@dataclass
class Journals:
    settle_ms: dict[str, int] = field(default_factory=dict)  # gift id -> its settle entry's ms
    credit_ms: dict[str, int] = field(default_factory=dict)  # credit id (gift id) -> its credit entry's ms
    settle_entries: int = 0
    credit_entries: int = 0
    credit_rows: int = 0
    others: int = 0


async def read_journals(redis: aioredis.Redis) -> Journals:
    """Every partition's journal: when each gift was settled and when each credit was applied."""
    found = Journals()
    for tag in partitions.all_tags():
        start = "-"
        while True:
            page = await redis.xrange(keys.journal(tag), start, "+", count=JOURNAL_PAGE)
            for entry_id, fields in page:
                ms = int(entry_id.split("-")[0])
                if fields.get("kind") == "gifts":
                    found.settle_entries += 1
                    found.settle_ms.update((g["id"], ms) for g in rules.journal_gifts(fields))
                elif fields.get("kind") == "credits":
                    rows = rules.journal_credits(fields)
                    found.credit_entries += 1
                    found.credit_rows += len(rows)
                    # A credit's id is its gift's id and '/' and the source partition (rules.credit_id).
                    found.credit_ms.update((c["id"].rsplit("/", 1)[0], ms) for c in rows)
                else:
                    found.others += 1
            if len(page) < JOURNAL_PAGE:
                break
            start = "(" + page[-1][0]
    return found
