"""Purchase records past Valkey's hot window move to PostgreSQL; reads and reversals reach them there.

Each ledger partition indexes its own hot records (keys.purchases_hot); a round takes up to a batch from each
partition in turn, so no busy partition holds back the others. A record stays in Valkey GIFTING_PURCHASE_HOT_S
after it is made (the refund window: most refunds and
chargebacks come within it, and a resent purchase answers from it). Then one archive round, for up to a batch
of due records: upsert each into `purchases` (keyed by purchase id; the newest status wins) and commit; only
then drop each from Valkey, and only if it is still exactly what was committed (one script): a reversal that
landed meanwhile keeps it in Valkey for the next round. A crash anywhere repeats the round: the upsert
writes the same row again, and nothing is dropped that PostgreSQL does not hold.

A refund or chargeback of an archived purchase first restores its record into Valkey (only if absent, one script),
then reverse.lua runs as for any purchase (one transfer with legs, idempotent by the record's status); the
restored record is due at once, so the archiver moves it back with its new status.
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
import redis.asyncio as aioredis
from psycopg.types.json import Jsonb

from gifting import keys
from gifting.ledger import partitions
from gifting.ledger.store import load_script

# A status only moves paid -> refunded | charged_back: a stale read (another archiver's) never undoes a reversal.
UPSERT_SQL = b"""
    INSERT INTO purchases (id, account, status, coins, fp, record, made_ms, reversed_ms)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, reversed_ms = EXCLUDED.reversed_ms
    WHERE purchases.status = 'paid' AND EXCLUDED.status <> 'paid'
"""
RECORD_LUA = load_script("purchase_record.lua")  # restore and drop, each one atomic step
RECORD_FIELDS = ("fp", "record", "user", "coins", "status", "reversed_ms")


async def archive_due(
    redis: aioredis.Redis, conn: psycopg.AsyncConnection[Any], made_before_ms: int, batch: int
) -> int:
    """Move up to `batch` purchase records per partition made before `made_before_ms` to PostgreSQL. Returns how
    many."""
    committed = await commit_due(redis, conn, made_before_ms, batch)
    await drop_committed(redis, committed)
    return len(committed)


async def commit_due(
    redis: aioredis.Redis, conn: psycopg.AsyncConnection[Any], made_before_ms: int, batch: int
) -> list[tuple[str, dict[str, str]]]:
    """Upsert up to `batch` due records of each partition, a PostgreSQL transaction per partition. Returns (id,
    record as committed)."""
    committed = []
    for part in partitions.all_tags():
        committed += await _commit_due_in(redis, conn, part, made_before_ms, batch)
    return committed


async def _commit_due_in(
    redis: aioredis.Redis, conn: psycopg.AsyncConnection[Any], part: str, made_before_ms: int, batch: int
) -> list[tuple[str, dict[str, str]]]:
    hot = keys.purchases_hot(part)
    due = await redis.zrangebyscore(hot, "-inf", made_before_ms, start=0, num=batch, withscores=True)
    if not due:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for purchase_id, _ in due:
            pipe.hgetall(keys.purchase_record(purchase_id))
        records: list[dict[str, str]] = await pipe.execute()
    async with conn.transaction(), conn.cursor() as cur:
        rows = [_row(pid, int(made), r) for (pid, made), r in zip(due, records, strict=True) if r]
        await cur.executemany(UPSERT_SQL, rows)
    return [(pid, record) for (pid, _), record in zip(due, records, strict=True)]


async def drop_committed(redis: aioredis.Redis, committed: list[tuple[str, dict[str, str]]]) -> None:
    for purchase_id, record in committed:
        await _drop_if_unchanged(redis, purchase_id, record)


def _row(purchase_id: str, made_ms: int, record: dict[str, str]) -> tuple[Any, ...]:
    reversed_ms = int(record["reversed_ms"]) if record.get("reversed_ms") else None
    return (
        purchase_id, record["user"], record["status"], int(record["coins"]), record["fp"],
        Jsonb(orjson.loads(record["record"])), made_ms, reversed_ms,
    )  # fmt: skip


async def _drop_if_unchanged(redis: aioredis.Redis, purchase_id: str, committed: dict[str, str]) -> None:
    """Drop the record (and its index entries) only if it is still what PostgreSQL committed (one script in the
    buyer's partition: a reversal that landed meanwhile keeps it for the next round)."""
    user = committed.get("user", "").removeprefix(keys.ACCOUNT_PREFIX)
    record_key = keys.purchase_record(purchase_id)
    hot = keys.purchases_hot(purchase_part(purchase_id))
    keys_ = [record_key, hot, keys.purchases_of(user) if committed else record_key]
    pairs = [x for pair in committed.items() for x in pair]
    await redis.register_script(RECORD_LUA)(keys=keys_, args=["drop", purchase_id, 0, *pairs])


async def archived(conn: psycopg.AsyncConnection[Any], purchase_id: str) -> dict[str, str] | None:
    """An archived purchase record, in Valkey's field form (RECORD_FIELDS), if any."""
    row = await (
        await conn.execute(
            "SELECT fp, record::text, account, coins, status, reversed_ms, made_ms FROM purchases WHERE id = %s",
            (purchase_id,),
        )
    ).fetchone()
    await conn.commit()
    if row is None:
        return None
    fp, record, account, coins, status, reversed_ms, made_ms = row
    fields = {"fp": fp, "record": record, "user": account, "coins": str(coins), "status": status}
    if reversed_ms is not None:
        fields["reversed_ms"] = str(reversed_ms)
    fields["made_ms"] = str(made_ms)
    return fields


async def archived_of(
    conn: psycopg.AsyncConnection[Any], account: str, limit: int, exclude: set[str]
) -> list[dict[str, str]]:
    """A user's newest archived purchase records (not in `exclude`: those Valkey still answers for)."""
    rows = await (
        await conn.execute(
            "SELECT id, record::text, status FROM purchases WHERE account = %s ORDER BY made_ms DESC LIMIT %s",
            (account, limit + len(exclude)),
        )
    ).fetchall()
    await conn.commit()
    return [{"id": pid, "record": record, "status": status} for pid, record, status in rows if pid not in exclude][
        :limit
    ]


async def restore(redis: aioredis.Redis, conn: psycopg.AsyncConnection[Any], purchase_id: str) -> bool:
    """Put an archived purchase record back into Valkey unless Valkey has one. Returns whether one exists now."""
    key = keys.purchase_record(purchase_id)
    if await redis.exists(key):
        return True
    fields = await archived(conn, purchase_id)
    if fields is None:
        return False
    made_ms = int(fields.pop("made_ms"))
    pairs = [x for pair in fields.items() for x in pair]
    keys_ = [key, keys.purchases_hot(purchase_part(purchase_id)), key]  # due at once: archived again after its reversal
    await redis.register_script(RECORD_LUA)(keys=keys_, args=["restore", purchase_id, made_ms, *pairs])
    return True  # restored now, or concurrently


def purchase_part(purchase_id: str) -> str:
    """The partition of a purchase's record and index entries: its buyer's (the id names the buyer)."""
    return keys.part_of_user(keys.scoped_user(purchase_id))
