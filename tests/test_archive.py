"""The archiver: the journal moves to a real PostgreSQL exactly once, in order; Valkey drops only what PostgreSQL
committed; the audit spans both; crashes of the archiver, PostgreSQL and Valkey lose and duplicate nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis

from gifting import keys
from gifting.app import redis_client
from gifting.config import Settings
from gifting.embedded import EmbeddedValkey
from gifting.embedded_pg import EmbeddedPostgres
from gifting.history import journal
from gifting.history.schema import migrate
from gifting.ledger import partitions, rules
from gifting.ledger.audit import run_audit
from gifting.ledger.store import GiftToSettle, Ledger
from tests.conftest import REPO, SystemFactory, make_settings

ONE = "viewer0"  # tests that need many entries in one journal stream have one user buy: its partition's
STREAM = keys.journal(keys.part_of_user(ONE))
WAIT_S = 30.0


async def purchases(ledger: Ledger, users: int, coins: int = 1000, one: bool = False) -> None:
    """One paid purchase per user (viewer0, viewer1, ...: over the partitions), or with `one` as many by ONE
    (all in STREAM): one journal entry each."""
    for i in range(users):
        user = ONE if one else f"viewer{i}"
        pid = keys.purchase_id(user, str(uuid.uuid4()))
        await ledger.purchase(user, pid, "fp", "paid", {"status": "paid", "coins": str(coins)}, coins)


async def gifts(ledger: Ledger, settings: Settings, users: int, coins: int = 10) -> None:
    """One settled batch (one journal entry) of a gift from each of `users` viewers to one creator."""
    split = rules.split_gift(coins, settings.creator_share_bps)
    batch = [
        GiftToSettle(
            str(uuid.uuid4()), f"viewer{i}", "creator1", split.coins, split.diamonds, "fp", "", "r1", "rose", 1
        )
        for i in range(users)
    ]
    outcomes = await ledger.settle(batch)
    assert all(o.settled for o in outcomes), outcomes


async def history_of(conn: psycopg.AsyncConnection[Any]) -> list[tuple[str, str, str]]:
    """(stream, id, kind) of every archived entry, by stream, oldest first."""
    rows = await (await conn.execute("SELECT stream, ms, seq, kind FROM journal ORDER BY stream, ms, seq")).fetchall()
    return [(stream, journal.format_id((ms, seq)), kind) for stream, ms, seq, kind in rows]


async def valkey_journals(redis: aioredis.Redis) -> list[tuple[str, str, str]]:
    """(stream, id, kind) of every entry in Valkey's partition journals, by stream, oldest first."""
    streams = sorted(map(keys.journal, partitions.all_tags()))
    return [(s, entry_id, fields["kind"]) for s in streams for entry_id, fields in await redis.xrange(s)]


async def journal_length(redis: aioredis.Redis) -> int:
    """Entries in every partition's journal in Valkey."""
    return sum([int(await redis.xlen(keys.journal(part))) for part in partitions.all_tags()])


async def drain(redis: aioredis.Redis, conn: psycopg.AsyncConnection[Any], batch: int = 7) -> None:
    """Archive and trim every partition's journal."""
    for stream in map(keys.journal, partitions.all_tags()):
        while (await journal.archive_batch(redis, conn, stream, batch))[0]:
            pass
        await journal.trim_archived(redis, stream, await journal.cursor(conn, stream))


async def clean_audit(redis: aioredis.Redis, conn: psycopg.AsyncConnection[Any]) -> int:
    report = await run_audit(redis, archive=conn)
    assert report.clean, report.summary()
    return report.entries


@pytest.mark.cluster
async def test_archive_moves_every_entry_once_in_order(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """Every journal entry lands in PostgreSQL once, oldest first, with its id; then Valkey's journal is empty."""
    settings = make_settings(tmp_path)
    ledger = Ledger(redis, settings)
    await purchases(ledger, 20)
    await gifts(ledger, settings, 20)
    before = await valkey_journals(redis)
    await drain(redis, history)
    assert await history_of(history) == before
    assert await journal_length(redis) == 0
    assert await clean_audit(redis, history) == len(before)


async def test_rerun_after_commit_before_trim_duplicates_nothing(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """A batch committed but not trimmed (a crash between the two) is neither archived twice nor counted twice."""
    ledger = Ledger(redis, make_settings(tmp_path))
    await purchases(ledger, 10, one=True)
    count, _ = await journal.archive_batch(redis, history, STREAM, 4)
    assert count == 4 and await redis.xlen(STREAM) == 10  # committed in PostgreSQL, still in Valkey
    assert await clean_audit(redis, history) == 10  # the overlap is read once
    await drain(redis, history)
    assert len(await history_of(history)) == 10 and await redis.xlen(STREAM) == 0


async def test_trim_keeps_entries_not_committed(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """A batch whose transaction rolls back leaves its entries in Valkey and nothing in PostgreSQL."""
    ledger = Ledger(redis, make_settings(tmp_path))
    await purchases(ledger, 5, one=True)
    with pytest.raises(RuntimeError):
        async with history.transaction():
            await journal.archive_batch(redis, history, STREAM, 5)
            raise RuntimeError("crash before the outer commit")
    await journal.trim_archived(redis, STREAM, await journal.cursor(history, STREAM))
    assert await redis.xlen(STREAM) == 5 and await history_of(history) == []


async def test_audit_finds_an_archived_entry_that_went_missing(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """The audit reads the archive: an archived purchase deleted from PostgreSQL is a balance finding."""
    ledger = Ledger(redis, make_settings(tmp_path))
    await purchases(ledger, 3)
    await drain(redis, history)
    await history.execute(
        "DELETE FROM journal WHERE (ms, seq) = (SELECT ms, seq FROM journal ORDER BY ms, seq LIMIT 1)"
    )
    report = await run_audit(redis, archive=history)
    assert any("stored balance" in f for f in report.findings), report.summary()


async def test_migrate_is_idempotent(database_url: str) -> None:
    """`migrate` applies each version once: a second run applies nothing."""
    assert migrate(database_url) == []


def archiver_env(redis_url: str, database_url: str, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "GIFTING_DATABASE_URL": database_url,
        "GIFTING_DATA_DIR": str(data_dir),
        "GIFTING_ARCHIVE_BATCH_ENTRIES": "3",
        "GIFTING_ARCHIVE_IDLE_MS": "20",
        "PYTHONPATH": str(REPO),
    }


async def start_archiver(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gifting.cli", "archive", env=env, cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def wait_archived(redis: aioredis.Redis, conn: psycopg.AsyncConnection[Any], total: int) -> None:
    """Poll (another process archives: there is no event to wait on) until `total` entries moved."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while len(await history_of(conn)) < total or await journal_length(redis):
        assert loop.time() < deadline, f"not archived within {WAIT_S} s"
        await asyncio.sleep(0.05)


async def test_archiver_killed_mid_batch_loses_and_duplicates_nothing(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], valkey_url: str, database_url: str, tmp_path: Path
) -> None:
    """`gifting archive` killed -9 as soon as it commits a batch (more batches waiting), five times, then left to
    finish: every entry archived exactly once, audit clean."""
    ledger = Ledger(redis, make_settings(tmp_path))
    env = archiver_env(valkey_url, database_url, tmp_path)
    process = await start_archiver(env)
    try:
        for _ in range(5):
            await purchases(ledger, 60)  # 20 batches of 3 entries: the kill lands while more wait
            await wait_archived_more(history, len(await history_of(history)))
            process.send_signal(signal.SIGKILL)
            await process.wait()
            process = await start_archiver(env)
        await wait_archived(redis, history, 300)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), WAIT_S)
    assert len(set(await history_of(history))) == 300
    assert await clean_audit(redis, history) == 300


async def wait_archived_more(conn: psycopg.AsyncConnection[Any], rows: int) -> None:
    """Poll until PostgreSQL holds more than `rows` journal rows (the archiver committed a batch)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while len(await history_of(conn)) <= rows:
        assert loop.time() < deadline, f"nothing archived within {WAIT_S} s"
        await asyncio.sleep(0.002)


async def test_postgres_restart_mid_batch(redis: aioredis.Redis, tmp_path: Path) -> None:
    """PostgreSQL stopped while the archiver runs: it retries, entries wait in Valkey; restarted: all archived once."""
    from workers.archiver import Archiver

    server = EmbeddedPostgres(tmp_path / "pg", announce=False)
    url = server.start()
    migrate(url)
    settings = make_settings(tmp_path, archive_batch_entries=3, archive_idle_ms=10, archive_retry_max_s=0.2)
    ledger = Ledger(redis, settings)
    archiver = Archiver(redis, url, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(archiver.run(stop))
    try:
        await purchases(ledger, 30)
        server.stop()
        await purchases(ledger, 30)  # gifts and purchases keep settling on Valkey
        assert await journal_length(redis) > 0
        server.start()
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        try:
            await wait_archived(redis, conn, 60)
            assert len(set(await history_of(conn))) == 60
            assert await clean_audit(redis, conn) == 60
        finally:
            await conn.close()
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)
        server.stop()


async def test_valkey_restart_from_aof(
    history: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:  # fmt: skip
    """Valkey killed -9 after archiving and restarted from its AOF: a trim it lost is redone, nothing duplicated."""
    valkey = EmbeddedValkey(tmp_path / "valkey-aof", announce=False)
    url = valkey.start()
    redis = redis_client(url)
    try:
        ledger = Ledger(redis, make_settings(tmp_path))
        await purchases(ledger, 12)
        await ledger.committed()
        await drain(redis, history, batch=5)
        assert valkey.process is not None
        valkey.process.kill()
        valkey.process.wait()
        await redis.aclose()
        valkey.start()
        redis = redis_client(url)
        await drain(redis, history)
        await purchases(Ledger(redis, make_settings(tmp_path)), 3)
        await drain(redis, history)
        assert len(set(await history_of(history))) == 15 and await journal_length(redis) == 0
        assert await clean_audit(redis, history) == 15
    finally:
        await redis.aclose()
        valkey.stop()


async def test_gifts_refused_past_the_archive_backlog_bound(
    start_system: SystemFactory, history: psycopg.AsyncConnection[Any]
) -> None:
    """Past GIFTING_ARCHIVE_BACKLOG_MAX unarchived entries a gift is rejected `archive_backlog` (no coin moves,
    /readyz shows the backlog); once archived, a new gift settles."""
    system = await start_system(archive_backlog_max=3)
    for _ in range(4):
        await system.grant("v1", 100)
    room = await system.open_room("c1")
    client = await system.connect("v1")
    result = await client.result(await client.gift(room, "rose", 1))
    assert (result["status"], result["reason"]) == ("rejected", "archive_backlog"), result
    assert (await system.http.get("/readyz")).json()["archive_backlog"] == 4
    assert await system.redis.hget(keys.coins(keys.part_of_user("v1")), keys.account("v1")) == "400"
    await drain(system.redis, history)
    result = await client.result(await client.gift(room, "rose", 1))
    assert result["status"] == "settled", result
    assert (await system.http.get("/readyz")).json()["archive_backlog"] == 1


async def test_legs_and_daily_report(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], database_url: str, tmp_path: Path
) -> None:
    """Each archived transfer's legs land in `legs` (their sums equal Valkey's balances); `gifting report DAY`
    prints that day's totals per kind and ledger from the daily_totals view."""
    settings = make_settings(tmp_path)
    ledger = Ledger(redis, settings)
    await purchases(ledger, 3)
    await gifts(ledger, settings, 3, coins=10)
    await drain(redis, history)
    sums = await (
        await history.execute(
            "SELECT ledger, account, sum(amount) FROM (SELECT ledger, credit AS account, amount FROM legs "
            "UNION ALL SELECT ledger, debit, -amount FROM legs) AS moves GROUP BY ledger, account"
        )
    ).fetchall()
    for ledger_name in rules.LEDGERS:  # every partition's balances, added up (system accounts have a row in each)
        stored: dict[str, int] = {}
        for part in partitions.all_tags():
            for account, value in (await redis.hgetall(dict(keys.ledgers(part))[ledger_name])).items():
                stored[account] = stored.get(account, 0) + int(value)
        assert {a: int(s) for lg, a, s in sums if lg == ledger_name and s} == {a: v for a, v in stored.items() if v}
    ms = (await (await history.execute("SELECT max(ms) FROM journal")).fetchone() or [0])[0]
    day = datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()
    env = {**archiver_env("redis://127.0.0.1:1/0", database_url, tmp_path)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gifting.cli", "report", day, env=env, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), WAIT_S)
    assert process.returncode == 0, err.decode()
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in out.decode().splitlines()[2:]}
    assert rows[("purchase", "coins")] == ["3", "3000"]
    assert rows[("gift", "coins")] == ["3", "30"]
    # A gift's diamonds are in its own entry when its creator shares the viewer's partition, else in its credit.
    diamonds = [rows.get((kind, "diamonds"), ["0", "0"]) for kind in ("gift", "gift_received")]
    assert [sum(int(r[i]) for r in diamonds) for i in (0, 1)] == [
        3,
        3 * rules.split_gift(10, settings.creator_share_bps).diamonds,
    ]


async def test_report_rejects_a_bad_day(database_url: str, tmp_path: Path) -> None:
    """`gifting report` with something that is not a day exits 2 and says what it expected."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gifting.cli", "report", "yesterday",
        env=archiver_env("redis://127.0.0.1:1/0", database_url, tmp_path), cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), WAIT_S)
    assert process.returncode == 2 and "expected a day as YYYY-MM-DD" in err.decode()
