"""Resolved withdrawals past Valkey's hot window move to PostgreSQL; reads and resends reach them there.

A withdrawal stays in Valkey while pending (the payout loop and the caps work on it there) and GIFTING_WITHDRAWAL_HOT_S
after it is resolved (paid or failed: final). Then one archive round writes a batch of each ledger partition's
(keys.withdrawals_done) to `withdrawals` (keyed by id; a second write of the same final record does nothing) and
commits; only then is each dropped from Valkey. A crash anywhere repeats the round and loses or duplicates nothing.

A resend of a withdrawal request whose record was archived answers the archived one (never a new withdrawal):
Valkey drops a record only after PostgreSQL committed it, so a record absent from Valkey and from PostgreSQL
(read after) never existed.
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
import redis.asyncio as aioredis
from psycopg.types.json import Jsonb

from gifting import keys
from gifting.ledger import partitions

INSERT_SQL = b"""
    INSERT INTO withdrawals (id, account, diamonds, status, fp, fields, created_ms, resolved_ms)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING
"""
FINAL = ("paid", "failed")


async def archive_due(
    redis: aioredis.Redis, conn: psycopg.AsyncConnection[Any], resolved_before_ms: int, batch: int
) -> int:
    """Move up to `batch` withdrawals per partition resolved before `resolved_before_ms` to PostgreSQL. Returns how
    many."""
    committed = await commit_due(redis, conn, resolved_before_ms, batch)
    await drop_committed(redis, committed)
    return len(committed)


async def commit_due(
    redis: aioredis.Redis, conn: psycopg.AsyncConnection[Any], resolved_before_ms: int, batch: int
) -> list[tuple[str, dict[str, str]]]:
    """Insert up to `batch` due withdrawals of each partition, a PostgreSQL transaction per partition."""
    committed = []
    for part in partitions.all_tags():
        committed += await _commit_due_in(redis, conn, part, resolved_before_ms, batch)
    return committed


async def _commit_due_in(
    redis: aioredis.Redis, conn: psycopg.AsyncConnection[Any], part: str, resolved_before_ms: int, batch: int
) -> list[tuple[str, dict[str, str]]]:
    due = await redis.zrangebyscore(keys.withdrawals_done(part), "-inf", resolved_before_ms, start=0, num=batch)
    if not due:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for withdrawal_id in due:
            pipe.hgetall(keys.withdrawal(withdrawal_id))
        records: list[dict[str, str]] = await pipe.execute()
    done = [(wid, r) for wid, r in zip(due, records, strict=True) if r.get("status") in FINAL]
    async with conn.transaction(), conn.cursor() as cur:
        await cur.executemany(INSERT_SQL, [_row(wid, r) for wid, r in done])
    # An id whose record is gone (or not final: never expected) leaves the index with nothing to archive.
    return [(wid, r if r.get("status") in FINAL else {}) for wid, r in zip(due, records, strict=True)]


def _row(withdrawal_id: str, record: dict[str, str]) -> tuple[Any, ...]:
    return (
        withdrawal_id, record["user"], int(record["diamonds"]), record["status"], record.get("fp", ""),
        Jsonb(record), int(record["created_ms"]), int(record["resolved_ms"]),
    )  # fmt: skip


async def drop_committed(redis: aioredis.Redis, committed: list[tuple[str, dict[str, str]]]) -> None:
    """Final records never change, so they go with their index entries in one MULTI per partition (a
    withdrawal's keys are all in its user's partition: one slot)."""
    by_part: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for withdrawal_id, record in committed:
        by_part.setdefault(keys.part_of_user(keys.scoped_user(withdrawal_id)), []).append((withdrawal_id, record))
    for part, done in by_part.items():
        async with redis.pipeline(transaction=True) as pipe:
            for withdrawal_id, record in done:
                if record:
                    pipe.delete(keys.withdrawal(withdrawal_id))
                    user = record["user"].removeprefix(keys.ACCOUNT_PREFIX)
                    pipe.lrem(keys.withdrawals_of(user), 1, withdrawal_id)
                pipe.zrem(keys.withdrawals_done(part), withdrawal_id)
            await pipe.execute()


async def archived(conn: psycopg.AsyncConnection[Any], withdrawal_id: str) -> dict[str, str] | None:
    """An archived withdrawal's record, as it was in Valkey, if any."""
    row = await (await conn.execute("SELECT fields::text FROM withdrawals WHERE id = %s", (withdrawal_id,))).fetchone()
    await conn.commit()
    return None if row is None else dict(orjson.loads(row[0]))


async def archived_of(
    conn: psycopg.AsyncConnection[Any], account: str, limit: int, exclude: set[str]
) -> list[tuple[str, dict[str, str]]]:
    """A user's newest archived withdrawals (not in `exclude`: those Valkey still answers for)."""
    rows = await (
        await conn.execute(
            "SELECT id, fields::text FROM withdrawals WHERE account = %s ORDER BY created_ms DESC LIMIT %s",
            (account, limit + len(exclude)),
        )
    ).fetchall()
    await conn.commit()
    return [(wid, dict(orjson.loads(fields))) for wid, fields in rows if wid not in exclude][:limit]
