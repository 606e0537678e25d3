"""The journal's continuity across the two stores: every entry Valkey ever gave out is in exactly one of them
(the archive in PostgreSQL, or Valkey's journal), except for the moment between an archive batch's commit and
its trim.

The contiguous sequence is Valkey's own: a stream counts every entry it ever added (XINFO `entries-added`,
kept in the AOF and across restarts), trimming does not change that count, and the audit reads each entry
once (the archive up to Valkey's oldest entry, then Valkey). So the entries read must equal the entries added;
fewer is a gap (an entry in neither store), and an archived entry that Valkey still holds is in both unless
it is exactly what the archiver committed and is about to trim. Valkey's `max-deleted-entry-id` names an
entry deleted one by one (XDEL): the archiver never does that, it only trims the oldest.
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gifting.history import journal

OVERLAP_ROWS_MAX = 10_000  # archived entries compared with Valkey's (healthy: at most one batch awaiting trim)
NAMED_MAX = 20  # entries named one by one in the findings; the rest are counted


def entries_added(info: dict[str, Any] | Exception) -> int:
    """How many entries the stream ever gave out, from XINFO STREAM (0: no stream)."""
    return 0 if isinstance(info, Exception) else int(info["entries-added"])


def gap_findings(stream: str, info: dict[str, Any] | Exception, read: int, archived: int) -> list[str]:
    """The entries read (`archived` of them from the archive) against the entries the stream gave out."""
    added = entries_added(info)
    if read == added:
        return []
    where = f"{stream}: the stream gave out {added} entries, the archive and Valkey hold {read} ({archived} archived)"
    if read < added:
        findings = [f"journal {where}: {added - read} entries in neither store"]
        deleted = "0-0" if isinstance(info, Exception) else str(info.get("max-deleted-entry-id", "0-0"))
        if deleted != "0-0":
            findings.append(
                f"journal {stream}: entry {deleted} was deleted from Valkey (XDEL), not archived and trimmed"
            )
        return findings
    return [f"journal {where}: {read - added} entries more than it gave out"]


async def overlap_findings(
    redis: aioredis.Redis, archive: psycopg.AsyncConnection[Any], stream: str
) -> tuple[list[str], int]:
    """Archived entries that are also in Valkey's journal, or inside its span but not in it, or past the archive's
    own cursor, or past the newest id Valkey ever gave out. Returns (findings, entries awaiting trim): an entry
    the archiver committed (up to its cursor) and Valkey holds unchanged is awaiting trim, not a finding.
    Each query reads the rows with the cursor in one statement (one snapshot), so a batch committed meanwhile
    by a running archiver is never taken for rows past the cursor."""
    findings: list[str] = []
    row = await (await archive.execute(PAST_CURSOR_SQL, (stream,))).fetchone()
    await archive.commit()
    assert row is not None  # an aggregate answers one row
    beyond, newest = int(row[0]), (None if row[1] is None else (int(row[1]), int(row[2])))
    if beyond:
        findings.append(f"journal {stream}: {beyond} archived entries past the archive cursor")
    info = await _info(redis, stream)  # after the archive's newest: Valkey's last id only grows
    last = journal.parse_id(str(info["last-generated-id"])) if info else (0, 0)
    if newest is not None and newest > last:
        findings.append(
            f"journal {stream}: the archive holds entries up to {journal.format_id(newest)}, past "
            f"the newest id Valkey ever gave out ({journal.format_id(last)}): Valkey lost entries the archive has"
        )
    first = await redis.xrange(stream, count=1)
    if not first:
        return findings, 0
    overlap, awaiting = await _compare(redis, archive, stream, first[0][0])
    return findings + overlap, awaiting


# The archived rows past the stream's cursor, and the newest archived row, as of one snapshot.
PAST_CURSOR_SQL = b"""
    SELECT count(*) FILTER (WHERE c.stream IS NULL OR (j.ms, j.seq) > (c.ms, c.seq)), max(j.ms),
           (array_agg(j.seq ORDER BY j.ms DESC, j.seq DESC))[1]
    FROM journal j LEFT JOIN archive_cursor c ON c.stream = j.stream WHERE j.stream = %s
"""
# The archived rows from Valkey's oldest entry on, each with whether the cursor covers it, as of one snapshot.
OVERLAP_SQL = b"""
    SELECT j.ms, j.seq, j.fields::text, c.stream IS NOT NULL AND (j.ms, j.seq) <= (c.ms, c.seq)
    FROM journal j LEFT JOIN archive_cursor c ON c.stream = j.stream
    WHERE j.stream = %s AND (j.ms, j.seq) >= (%s, %s) ORDER BY j.ms, j.seq LIMIT %s
"""


async def _compare(
    redis: aioredis.Redis, archive: psycopg.AsyncConnection[Any], stream: str, first: str
) -> tuple[list[str], int]:
    rows = await (await archive.execute(OVERLAP_SQL, (stream, *journal.parse_id(first), OVERLAP_ROWS_MAX))).fetchall()
    await archive.commit()
    if not rows:
        return [], 0
    # One atomic read of the rows' Valkey copies and Valkey's oldest entry: a row missing from Valkey and older
    # than its oldest entry was trimmed meanwhile (archived, so in one store); one inside its span is a hole.
    async with redis.pipeline(transaction=True) as pipe:
        for ms, seq, *_ in rows:
            entry_id = journal.format_id((int(ms), int(seq)))
            pipe.xrange(stream, min=entry_id, max=entry_id)
        pipe.xrange(stream, count=1)
        *in_valkey, oldest = await pipe.execute()
    oldest_now = journal.parse_id(oldest[0][0]) if oldest else None
    findings: list[str] = []
    awaiting = 0
    for (ms, seq, fields, covered), found in zip(rows, in_valkey, strict=True):
        position = (int(ms), int(seq))
        entry_id = named(stream, journal.format_id(position))
        if not found:
            if oldest_now is not None and position > oldest_now:
                findings.append(f"journal {entry_id}: archived, but Valkey's journal (holding entries from "
                                f"{journal.format_id(oldest_now)}) lacks it")  # fmt: skip
        elif orjson.loads(fields) != found[0][1]:
            findings.append(f"journal {entry_id}: in both stores, and the archived entry differs from Valkey's")
        elif not covered:
            findings.append(f"journal {entry_id}: in both stores, archived past the archive cursor")
        else:
            awaiting += 1
    if len(findings) > NAMED_MAX:
        findings = [*findings[:NAMED_MAX], f"journal {stream}: {len(findings) - NAMED_MAX} more such entries"]
    return findings, awaiting


def named(stream: str, entry_id: str) -> str:
    """An entry as findings name it: ids are per stream, so with its partition ('{ledger:3.41}/1700000000000-0')."""
    return stream.removesuffix(":journal") + "/" + entry_id


async def _info(redis: aioredis.Redis, stream: str) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = await redis.xinfo_stream(stream)
    except ResponseError:  # no such stream: nothing given out
        return None
    return info
