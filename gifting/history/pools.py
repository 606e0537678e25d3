"""Closed pools are copied to PostgreSQL soon after they close; GET /v1/pools/{id} reaches them there.

A closed pool's record stays in Valkey GIFTING_POOL_RECORD_TTL_S (its TTL, set when it closes), and pool.lua
indexes it in `{ledger}:pools:closed` as it closes. Each archive round writes a batch of closed pools to
`pools` (keyed by id; final, so a second write does nothing), commits, and only then removes them from the
index. A crash anywhere repeats the round. The pledges themselves are journal entries (kind pledge_pending,
`ref` the pool), archived with the journal; the view `pledges` lists them.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import psycopg
import redis.asyncio as aioredis
from psycopg.types.json import Jsonb

from gifting import keys

log = logging.getLogger(__name__)
INSERT_SQL = b"""
    INSERT INTO pools (id, room, creator, status, closed_ms, record) VALUES (%s, %s, %s, %s, %s, %s)
    ON CONFLICT (id) DO NOTHING
"""
OPEN = "open"


async def archive_due(redis: aioredis.Redis, conn: psycopg.AsyncConnection[Any], batch: int) -> int:
    """Copy up to `batch` closed pools to PostgreSQL, then unindex them. Returns how many."""
    due = await redis.zrange(keys.POOLS_CLOSED, 0, batch - 1, withscores=True)
    if not due:
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        for pool_id, _ in due:
            pipe.hgetall(keys.pool(pool_id))
        records: list[dict[str, str]] = await pipe.execute()
    rows = []
    for (pool_id, closed_ms), record in zip(due, records, strict=True):
        if not record or record.get("status") == OPEN:
            log.warning("pool %s: closed but its record is %s; not archived", pool_id, record.get("status", "gone"))
            continue
        rows.append((pool_id, record["room"], record["creator"], record["status"], int(closed_ms), Jsonb(record)))
    async with conn.transaction(), conn.cursor() as cur:
        await cur.executemany(INSERT_SQL, rows)
    await redis.zrem(keys.POOLS_CLOSED, *(pool_id for pool_id, _ in due))
    return len(due)


async def archived(conn: psycopg.AsyncConnection[Any], pool_id: str) -> dict[str, str] | None:
    row = await (await conn.execute("SELECT record::text FROM pools WHERE id = %s", (pool_id,))).fetchone()
    await conn.commit()
    return None if row is None else dict(orjson.loads(row[0]))
