"""Moving a journal stream's entries from Valkey to PostgreSQL exactly once, and reading them back.

The unit is one journal stream: each ledger partition's (keys.journal(part)), with its own cursor, so partitions
are archived independently (workers/archiver.py walks them). One batch is one PostgreSQL transaction that locks
the stream's cursor row, reads the entries after the cursor from Valkey, COPYs them in and moves the cursor. Only
after that commit does Valkey drop them (XTRIM MINID: everything up to the cursor, nothing newer). Every step can
be repeated after a crash anywhere: the cursor says what PostgreSQL holds, the trim is re-run from it, and
(stream, ms, seq) is the primary key (and (part, ms, seq) unique: schema migration 6), so no entry is written
twice.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import redis.asyncio as aioredis
from psycopg.types.json import Jsonb

from gifting.history.hot import HotState
from gifting.ledger import rules

log = logging.getLogger(__name__)

READ_CHUNK_ENTRIES = 500  # archived entries read per query by the audit


def parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def format_id(position: tuple[int, int]) -> str:
    return f"{position[0]}-{position[1]}"


async def cursor(conn: psycopg.AsyncConnection[Any], stream: str) -> tuple[int, int] | None:
    """The newest entry of `stream` committed in PostgreSQL, if any."""
    row = await (await conn.execute("SELECT ms, seq FROM archive_cursor WHERE stream = %s", (stream,))).fetchone()
    await conn.commit()
    return None if row is None else (int(row[0]), int(row[1]))


async def trim_archived(redis: aioredis.Redis, stream: str, upto: tuple[int, int] | None) -> int:
    """Drop from Valkey the entries up to `upto` (committed in PostgreSQL); returns how many went."""
    if upto is None:
        return 0
    removed: int = await redis.xtrim(stream, minid=format_id((upto[0], upto[1] + 1)), approximate=False)
    return removed


async def archive_batch(
    redis: aioredis.Redis,
    conn: psycopg.AsyncConnection[Any],
    stream: str,
    batch_entries: int,
    hot: HotState | None = None,
) -> tuple[int, tuple[int, int] | None]:
    """Commit the next up to `batch_entries` entries of `stream` to PostgreSQL (with `hot`, the statement rows
    of the accounts they touched too: gifting/history/hot.py). Returns (entries, new cursor)."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO archive_cursor VALUES (%s, 0, 0) ON CONFLICT (stream) DO NOTHING", (stream,)
        )  # fmt: skip
        row = await (
            await conn.execute("SELECT ms, seq FROM archive_cursor WHERE stream = %s FOR UPDATE", (stream,))
        ).fetchone()
        assert row is not None
        after = (int(row[0]), int(row[1]))
        entries = await redis.xrange(stream, min="(" + format_id(after), max="+", count=batch_entries)
        if not entries:
            return 0, after
        async with conn.cursor().copy("COPY journal (stream, ms, seq, kind, fields) FROM STDIN") as copy:
            for entry_id, fields in entries:
                ms, seq = parse_id(entry_id)
                await copy.write_row((stream, ms, seq, fields.get("kind", ""), Jsonb(fields)))
        async with conn.cursor().copy(
            "COPY legs (stream, ms, seq, transfer, kind, ledger, debit, credit, amount, day) FROM STDIN"
        ) as copy:
            batch_legs: list[tuple[int, rules.Leg]] = []
            for entry_id, fields in entries:
                ms, seq = parse_id(entry_id)
                day = datetime.fromtimestamp(ms / 1000, UTC).date()
                for transfer, kind, leg in entry_legs(entry_id, fields):
                    # Not dataclasses.astuple: it deep-copies, and it was a third of the archiver's CPU.
                    await copy.write_row((stream, ms, seq, transfer, kind, leg.ledger, leg.debit, leg.credit,
                                          leg.amount, day))  # fmt: skip
                    batch_legs.append((ms, leg))
        last = parse_id(entries[-1][0])
        if hot is not None:
            await hot.archive(conn, last, batch_legs)
        await conn.execute("UPDATE archive_cursor SET ms = %s, seq = %s WHERE stream = %s", (*last, stream))
    return len(entries), last


def entry_legs(entry_id: str, fields: dict[str, str]) -> list[tuple[str, str, rules.Leg]]:
    """(transfer id, kind, leg) of every leg of one journal entry (a batch's gifts, a `credits` entry's credits by
    their own ids and kinds); an entry that does not parse has none here (its journal row is archived as it is,
    and the audit names it)."""
    try:
        kind = fields.get("kind")
        if kind in ("gifts", "credits"):
            transfers = rules.journal_gifts(fields) if kind == "gifts" else rules.journal_credits(fields)
        else:
            transfers = [fields]
        return [
            (t.get("id", "?"), t.get("kind", "?"), leg)
            for t in transfers
            for leg in rules.parse_legs(t.get("legs", ""))
        ]
    except rules.JournalError as exc:
        log.warning("journal %s: legs not archived: %s", entry_id, exc)
        return []


async def archived_entries(
    conn: psycopg.AsyncConnection[Any], stream: str, after: str | None, before: str | None, inclusive: bool
) -> list[tuple[str, dict[str, str]]]:
    """Archived entries of `stream` after `after` (exclusive) up to `before` (inclusive or not; None: all),
    oldest first, at most READ_CHUNK_ENTRIES."""
    low = parse_id(after) if after else (-1, -1)
    sql = "SELECT ms, seq, fields::text FROM journal WHERE stream = %s AND (ms, seq) > (%s, %s)"
    params: list[Any] = [stream, *low]
    if before is not None:
        sql += " AND (ms, seq) <= (%s, %s)" if inclusive else " AND (ms, seq) < (%s, %s)"
        params += parse_id(before)
    sql += " ORDER BY ms, seq LIMIT %s"
    rows = await (await conn.execute(sql.encode(), [*params, READ_CHUNK_ENTRIES])).fetchall()
    await conn.commit()
    return [(format_id((int(ms), int(seq))), orjson.loads(fields)) for ms, seq, fields in rows]
