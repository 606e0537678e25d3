"""Ended matches past Valkey's hot window move to PostgreSQL; GET /v1/matches/{id} reaches them there.

MatchStore.finish indexes a match in `matches:ended` once it ended (its record is final then).
GIFTING_MATCH_HOT_S after its end, one archive round writes a batch of records to `matches` (keyed by id; final,
so a second write does nothing) and commits; only then are the match's keys (record, scored gifts, gifters)
dropped from Valkey, and after them its index entry. A crash anywhere repeats the round. A match the worker has
not finished sweeping (still in `matches:due`: its creators and rooms not yet released) waits for a later round.
The keys' Valkey TTL (GIFTING_MATCH_RECORD_TTL_S, set as it ends) is only a safety bound for a server without an
archiver. The match's gifts are journal entries, archived with the journal.
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
INSERT_SQL = b"INSERT INTO matches (id, ended_ms, record) VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING"
ENDED = "ended"
SIDES = ("a", "b")  # gifters are kept per side (gifting/rooms/matches.py)


async def archive_due(
    redis: aioredis.Redis, conn: psycopg.AsyncConnection[Any], ended_before_ms: int, batch: int
) -> int:
    """Move up to `batch` matches ended before `ended_before_ms` to PostgreSQL. Returns how many were due."""
    committed = await commit_due(redis, conn, ended_before_ms, batch)
    await drop_committed(redis, committed)
    return len(committed)


async def commit_due(
    redis: aioredis.Redis, conn: psycopg.AsyncConnection[Any], ended_before_ms: int, batch: int
) -> list[tuple[str, bool]]:
    """Insert up to `batch` due ended matches in one transaction. Returns (match id, archived) for each one done."""
    due = await redis.zrangebyscore(keys.MATCHES_ENDED, "-inf", ended_before_ms, start=0, num=batch)
    if not due:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for match in due:
            pipe.hgetall(keys.match_meta(match))
            pipe.zscore(keys.MATCHES_DUE, match)
        replies = await pipe.execute()
    rows, committed = [], []
    for match, meta, sweeping in zip(due, replies[0::2], replies[1::2], strict=True):
        if sweeping is not None:
            continue  # the worker still releases its creators and rooms: a later round
        archived = meta.get("status") == ENDED
        if archived:
            rows.append((match, int(meta["end_ms"]), Jsonb(meta)))
        else:  # expired unarchived (GIFTING_MATCH_RECORD_TTL_S): unindexed
            log.warning("match %s: ended but its record is %s; not archived", match, meta.get("status", "gone"))
        committed.append((match, archived))
    async with conn.transaction(), conn.cursor() as cur:
        await cur.executemany(INSERT_SQL, rows)
    return committed


async def drop_committed(redis: aioredis.Redis, committed: list[tuple[str, bool]]) -> None:
    """Drop the archived matches' keys, then unindex every done one (no transaction: each match's keys share its
    own slot; a crash between repeats the round, which finds the record gone and only unindexes it)."""
    if not committed:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for match, archived in committed:
            if archived:
                pipe.delete(keys.match_meta(match), keys.match_scored(match))
                pipe.delete(*(keys.match_gifters(match, side) for side in SIDES))
        await pipe.execute()
    await redis.zrem(keys.MATCHES_ENDED, *(match for match, _ in committed))


async def archived(conn: psycopg.AsyncConnection[Any], match_id: str) -> dict[str, str] | None:
    row = await (await conn.execute("SELECT record::text FROM matches WHERE id = %s", (match_id,))).fetchone()
    return None if row is None else dict(orjson.loads(row[0]))
