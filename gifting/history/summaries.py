"""Stream summaries past Valkey's hot window move to PostgreSQL; the summary and session reads reach them there.

A summary is written once when its stream ends (the room's summary key, the creator's session list, and the
index `rooms:summarized`). GIFTING_SUMMARY_HOT_S after the end, one archive round writes a batch to
`summaries` (keyed by room; final, so a second write does nothing) and commits; only then is each dropped from
Valkey (its key, its session-list entry, its index entry). A crash anywhere repeats the round.
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
import redis.asyncio as aioredis
from psycopg.types.json import Jsonb

from gifting import keys

INSERT_SQL = b"""
    INSERT INTO summaries (room, creator, ended_ms, summary) VALUES (%s, %s, %s, %s) ON CONFLICT (room) DO NOTHING
"""


async def archive_due(
    redis: aioredis.Redis, conn: psycopg.AsyncConnection[Any], ended_before_ms: int, batch: int
) -> int:
    """Move up to `batch` summaries of streams ended before `ended_before_ms` to PostgreSQL. Returns how many."""
    committed = await commit_due(redis, conn, ended_before_ms, batch)
    await drop_committed(redis, committed)
    return len(committed)


async def commit_due(
    redis: aioredis.Redis, conn: psycopg.AsyncConnection[Any], ended_before_ms: int, batch: int
) -> list[tuple[str, str | None]]:
    """Insert up to `batch` due summaries in one transaction. Returns (room, summary JSON as stored or None)."""
    due = await redis.zrangebyscore(keys.ROOMS_SUMMARIZED, "-inf", ended_before_ms, start=0, num=batch, withscores=True)
    if not due:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for room, _ in due:
            pipe.get(keys.room_summary(room))
        stored: list[str | None] = await pipe.execute()
    rows = []
    for (room, ended_ms), raw in zip(due, stored, strict=True):
        if raw is not None:
            rows.append((room, orjson.loads(raw)["creator"], int(ended_ms), Jsonb(orjson.loads(raw))))
    async with conn.transaction(), conn.cursor() as cur:
        await cur.executemany(INSERT_SQL, rows)
    return [(room, raw) for (room, _), raw in zip(due, stored, strict=True)]


async def drop_committed(redis: aioredis.Redis, committed: list[tuple[str, str | None]]) -> None:
    """Drop what PostgreSQL committed. The keys lie in different slots on a cluster, so these are separate
    idempotent steps, the index entry last: a crash in between leaves it, and the next round drops the rest."""
    async with redis.pipeline(transaction=False) as pipe:
        for room, raw in committed:
            if raw is not None:
                pipe.delete(keys.room_summary(room))
                pipe.lrem(keys.creator_sessions(orjson.loads(raw)["creator"]), 1, raw)
        await pipe.execute()
    async with redis.pipeline(transaction=False) as pipe:
        for room, _ in committed:
            pipe.zrem(keys.ROOMS_SUMMARIZED, room)
        await pipe.execute()


async def archived(conn: psycopg.AsyncConnection[Any], room: str) -> dict[str, Any] | None:
    row = await (await conn.execute("SELECT summary::text FROM summaries WHERE room = %s", (room,))).fetchone()
    await conn.commit()
    return None if row is None else dict(orjson.loads(row[0]))


async def archived_of(
    conn: psycopg.AsyncConnection[Any], creator: str, limit: int, exclude: set[str]
) -> list[dict[str, Any]]:
    """A creator's newest archived summaries (not in `exclude`: rooms Valkey still answers for)."""
    rows = await (
        await conn.execute(
            "SELECT room, summary::text FROM summaries WHERE creator = %s ORDER BY ended_ms DESC LIMIT %s",
            (creator, limit + len(exclude)),
        )
    ).fetchall()
    await conn.commit()
    return [dict(orjson.loads(summary)) for room, summary in rows if room not in exclude][:limit]
