"""The audit checks the journal's continuity across PostgreSQL and Valkey: each planted defect (an entry in
neither store, in both, differing, past the archive's cursor, or past what Valkey ever gave out) is named."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import redis.asyncio as aioredis

from gifting import keys
from gifting.history import journal
from gifting.ledger.audit import AuditReport, run_audit
from tests.conftest import make_settings
from tests.test_archive import drain
from tests.test_audit_partitions import grant
from workers.archiver import Archiver

USER = "viewer0"
PART = keys.part_of_user(USER)  # the partition whose journal the defects are planted in
STREAM = keys.journal(PART)


async def audit(redis: aioredis.Redis, history: psycopg.AsyncConnection[Any]) -> AuditReport:
    return await run_audit(redis, archive=history)


def named(report: AuditReport, text: str) -> bool:
    return any(text in finding for finding in report.findings)


async def ten_entries(redis: aioredis.Redis, tmp_path: Path) -> list[str]:
    """Ten journal entries in PART (granted coins, each with its balances)."""
    for i in range(10):
        await grant(redis, USER, str(i), 10)
    return [entry_id for entry_id, _ in await redis.xrange(STREAM)]


def entry(entry_id: str) -> str:
    """An entry of PART as findings name it."""
    return f"{PART}/{entry_id}"


async def test_committed_but_not_trimmed_is_awaiting_trim_not_a_finding(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """Entries the archiver committed and Valkey still holds unchanged are counted as awaiting trim; clean."""
    await ten_entries(redis, tmp_path)
    await journal.archive_batch(redis, history, STREAM, 4)
    report = await audit(redis, history)
    assert report.clean and report.awaiting_trim == 4, report.summary()


async def test_an_archived_entry_deleted_from_postgresql_is_in_neither(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """An archived (and trimmed) entry deleted from PostgreSQL is a gap: one entry in neither store."""
    ids = await ten_entries(redis, tmp_path)
    await drain(redis, history)
    await history.execute("DELETE FROM journal WHERE (ms, seq) = (%s, %s)", journal.parse_id(ids[3]))
    report = await audit(redis, history)
    assert named(report, "1 entries in neither store"), report.summary()


async def test_an_unarchived_entry_deleted_from_valkey_is_in_neither(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """An entry deleted from Valkey before it was archived is a gap, and the deleted id is named."""
    ids = await ten_entries(redis, tmp_path)
    await journal.archive_batch(redis, history, STREAM, 3)
    await redis.xdel(STREAM, ids[6])
    report = await audit(redis, history)
    assert named(report, "1 entries in neither store"), report.summary()
    assert named(report, f"entry {ids[6]} was deleted from Valkey (XDEL)"), report.summary()


async def test_an_archived_entry_valkey_lacks_inside_its_span_is_named(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """An entry committed to the archive and then deleted from Valkey before the trim (a hole, not a trim)."""
    ids = await ten_entries(redis, tmp_path)
    await journal.archive_batch(redis, history, STREAM, 4)
    await redis.xdel(STREAM, ids[2])
    report = await audit(redis, history)
    assert named(report, f"journal {entry(ids[2])}: archived, but Valkey's journal"), report.summary()


async def test_an_entry_in_both_stores_past_the_cursor_is_named(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """Archived rows the cursor does not cover (written outside the archiver's transaction) are in both."""
    ids = await ten_entries(redis, tmp_path)
    await journal.archive_batch(redis, history, STREAM, 4)
    await history.execute("UPDATE archive_cursor SET ms = %s, seq = %s", journal.parse_id(ids[1]))
    report = await audit(redis, history)
    assert named(report, "2 archived entries past the archive cursor"), report.summary()
    assert named(report, f"journal {entry(ids[2])}: in both stores, archived past the archive cursor"), report.summary()
    assert named(report, f"journal {entry(ids[3])}: in both stores, archived past the archive cursor"), report.summary()


async def test_an_entry_in_both_stores_that_differs_is_named(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """An archived entry whose fields differ from Valkey's copy of it is named."""
    ids = await ten_entries(redis, tmp_path)
    await journal.archive_batch(redis, history, STREAM, 4)
    await history.execute(
        "UPDATE journal SET fields = jsonb_set(fields, '{ts}', '\"1\"') WHERE (ms, seq) = (%s, %s)",
        journal.parse_id(ids[0]),
    )
    report = await audit(redis, history)
    assert named(report, f"journal {entry(ids[0])}: in both stores, and the archived entry differs"), report.summary()


async def test_archived_entries_valkey_never_gave_out_are_named(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """An archive holding ids past Valkey's newest (Valkey restored from an older copy) is named."""
    ids = await ten_entries(redis, tmp_path)
    await drain(redis, history)
    ms, _ = journal.parse_id(ids[-1])
    future = (ms + 3_600_000, 0)
    await history.execute(
        "INSERT INTO journal SELECT stream, %s, %s, kind, fields FROM journal ORDER BY ms DESC LIMIT 1", future
    )
    await history.execute("UPDATE archive_cursor SET ms = %s, seq = %s", future)
    report = await audit(redis, history)
    assert named(report, f"past the newest id Valkey ever gave out ({ids[-1]})"), report.summary()


async def test_audits_while_the_archiver_runs_find_nothing(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], database_url: str, tmp_path: Path
) -> None:
    """Audits racing a running archiver (commits and trims between the audit's reads) report no gap or overlap."""
    settings = make_settings(tmp_path, archive_batch_entries=3, archive_idle_ms=1)
    stop = asyncio.Event()
    archiver = Archiver(redis, database_url, settings)
    task = asyncio.create_task(archiver.run(stop))
    try:
        for round_ in range(8):
            for i in range(10):  # ten users: entries in several partitions
                await grant(redis, f"viewer{i}", str(round_), 10)
            report = await audit(redis, history)
            assert report.clean, report.summary()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert archiver.archived > 0
    assert (await audit(redis, history)).entries == 80
