"""Closed pools past Valkey's hot window move to PostgreSQL; GET /v1/pools/{id} reaches them there.

pool.lua indexes a pool in its partition's `pools_closed` as it closes (a closed pool is final). GIFTING_POOL_HOT_S
after it closed, one archive round writes a batch of them to `pools` (keyed by id; final, so a second write
does nothing) and commits; only then is each dropped from Valkey (its record and its index entry). A crash
anywhere repeats the round. The record's Valkey TTL (GIFTING_POOL_RECORD_TTL_S, set as it closes) is only a
safety bound for a server without an archiver. The pledges themselves are journal entries (kind
pledge_pending, `ref` the pool), archived with the journal; the view `pledges` lists them.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import psycopg
import redis.asyncio as aioredis
from psycopg.types.json import Jsonb

from gifting import keys
from gifting.ledger import partitions

log = logging.getLogger(__name__)
INSERT_SQL = b"""
    INSERT INTO pools (id, room, creator, status, closed_ms, record) VALUES (%s, %s, %s, %s, %s, %s)
    ON CONFLICT (id) DO NOTHING
"""
OPEN = "open"


async def archive_due(
    redis: aioredis.Redis, conn: psycopg.AsyncConnection[Any], closed_before_ms: int, batch: int
) -> int:
    """Move up to `batch` pools closed before `closed_before_ms` to PostgreSQL, partition by partition. Returns
    how many."""
    moved = 0
    for part in partitions.all_tags():
        committed = await commit_due(redis, conn, closed_before_ms, batch - moved, part)
        await drop_committed(redis, committed, part)
        moved += len(committed)
        if moved >= batch:
            break
    return moved


async def commit_due(
    redis: aioredis.Redis, conn: psycopg.AsyncConnection[Any], closed_before_ms: int, batch: int, part: str
) -> list[tuple[str, bool]]:
    """Insert up to `batch` due closed pools of a partition in one transaction. Returns (pool id, archived) for
    each due one."""
    closed = keys.pools_closed(part)
    due = await redis.zrangebyscore(closed, "-inf", closed_before_ms, start=0, num=batch, withscores=True)
    if not due:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for pool_id, _ in due:
            pipe.hgetall(keys.pool(part, pool_id))
        records: list[dict[str, str]] = await pipe.execute()
    rows, committed = [], []
    for (pool_id, closed_ms), record in zip(due, records, strict=True):
        archived = bool(record) and record.get("status") != OPEN
        if archived:
            rows.append((pool_id, record["room"], record["creator"], record["status"], int(closed_ms), Jsonb(record)))
        else:  # expired unarchived (GIFTING_POOL_RECORD_TTL_S), or open (cannot be): unindexed, never dropped
            log.warning("pool %s: closed but its record is %s; not archived", pool_id, record.get("status", "gone"))
        committed.append((pool_id, archived))
    async with conn.transaction(), conn.cursor() as cur:
        await cur.executemany(INSERT_SQL, rows)
    return committed


async def drop_committed(redis: aioredis.Redis, committed: list[tuple[str, bool]], part: str) -> None:
    """Unindex the due pools and drop the archived ones' records (a closed pool is final: what PostgreSQL
    committed is what Valkey holds)."""
    if not committed:
        return
    async with redis.pipeline(transaction=True) as pipe:
        for pool_id, archived in committed:
            if archived:
                pipe.delete(keys.pool(part, pool_id))
            pipe.zrem(keys.pools_closed(part), pool_id)
        await pipe.execute()


async def archived(conn: psycopg.AsyncConnection[Any], pool_id: str) -> dict[str, str] | None:
    row = await (await conn.execute("SELECT record::text FROM pools WHERE id = %s", (pool_id,))).fetchone()
    await conn.commit()
    return None if row is None else dict(orjson.loads(row[0]))
