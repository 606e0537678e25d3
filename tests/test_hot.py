"""Valkey keeps only what is hot: statements keep their newest rows (older ones in PostgreSQL, read through one
cursor with no gap or duplicate, also while the archiver runs), top-gifter boards keep their top gifters, and a
crash between PostgreSQL's commit and Valkey's trim loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import random
import signal
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis

from gifting import clock, keys
from gifting.config import Settings
from gifting.errors import GiftingError
from gifting.history import hot, journal
from gifting.history.hot import HotState
from gifting.history.reader import ArchiveReader
from gifting.history.statements import Statements
from gifting.ledger import partitions, rules
from gifting.ledger.audit import run_audit
from gifting.ledger.store import GiftToSettle, Ledger
from tests.conftest import SystemFactory, make_settings
from tests.test_archive import (
    archiver_env,
    history_of,
    journal_length,
    start_archiver,
    wait_archived,
    wait_archived_more,
)
from workers.archiver import Archiver

PART = keys.part_of_user("v1")  # the partition of the viewer whose batches the crash test archives by hand
STREAM = keys.journal(PART)
SEEDS = 6  # random statements paged per property test


async def fund(redis: aioredis.Redis, users: list[str], coins: int) -> None:
    """Coins for each user, the way a grant is journalled (the audit accepts it)."""
    for user in users:
        async with redis.pipeline(transaction=True) as pipe:
            part = keys.part_of_user(user)
            pipe.hincrby(keys.coins(part), keys.account(user), coins)
            pipe.hincrby(keys.coins(part), keys.SYS_COIN_ISSUANCE, -coins)
            legs = f"coins sys:coin_issuance u:{user} {coins}"
            pipe.xadd(keys.journal(part), {"kind": "purchase", "id": f"grant:{uuid.uuid4()}", "legs": legs})
            await pipe.execute()


async def gift_batches(ledger: Ledger, settings: Settings, senders: list[str], creator: str, batches: int) -> None:
    """`batches` settled batches (one journal entry each), one 10-coin gift per sender in each."""
    split = rules.split_gift(10, settings.creator_share_bps)
    for _ in range(batches):
        batch = [
            GiftToSettle(str(uuid.uuid4()), s, creator, split.coins, split.diamonds, "fp", "", "r1", "rose", 1)
            for s in senders
        ]
        assert all(o.settled for o in await ledger.settle(batch))


async def full_statement(redis: aioredis.Redis, user: str) -> list[str]:
    """Every row of a statement not yet trimmed (before any archiving: the whole statement)."""
    assert not await redis.hget(keys.statement_base(keys.part_of_user(user)), keys.account(user))
    rows: list[str] = await redis.lrange(keys.statement(user), 0, -1)
    return rows


async def read_all(
    statements: Statements, user: str, page_sizes: list[int], cursor: int | None = None
) -> list[dict[str, Any]]:
    """Every page below `cursor` (None: from the newest on), with the given page sizes in turn."""
    items, n = [], 0
    while True:
        page, next_cursor = await statements.page(user, cursor, page_sizes[n % len(page_sizes)])
        items += page
        n += 1
        if next_cursor is None:
            return items
        cursor = int(next_cursor)


def expected(rows: list[str]) -> list[dict[str, Any]]:
    return [rules.parse_statement_row(seq, row) for seq, row in reversed(list(enumerate(rows)))]


async def archive_all(archiver: Archiver) -> None:
    while await archiver.step():
        pass


async def test_statements_keep_their_newest_rows_and_postgres_the_rest(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], database_url: str, tmp_path: Path
) -> None:
    """After archiving, each statement holds its newest GIFTING_STATEMENT_HOT_ROWS rows in Valkey, PostgreSQL holds
    every older one under the same seq, nothing is in neither, and the audit is clean."""
    settings = make_settings(tmp_path, statement_hot_rows=4, archive_batch_entries=3)
    ledger, viewers = Ledger(redis, settings), [f"v{i}" for i in range(5)]
    await fund(redis, viewers, 1000)
    await gift_batches(ledger, settings, viewers, "c1", 9)
    before = {u: await full_statement(redis, u) for u in [*viewers, "c1"]}
    archiver = Archiver(redis, database_url, settings)
    await archive_all(archiver)
    await archiver.close()
    for user, rows in before.items():
        account = keys.account(user)
        base = int(await redis.hget(keys.statement_base(keys.part_of_user(user)), account) or 0)
        assert await redis.lrange(keys.statement(user), 0, -1) == rows[base:]
        assert len(rows) - base == 4, (user, len(rows), base)
        archived = await (
            await history.execute("SELECT seq, line FROM statements WHERE account = %s ORDER BY seq", (account,))
        ).fetchall()
        assert [line for _seq, line in archived] == rows and [seq for seq, _ in archived] == list(range(len(rows)))
    report = await run_audit(redis, archive=history)
    assert report.clean, report.summary()


@pytest.mark.parametrize("seed", range(SEEDS))
async def test_pages_cross_the_boundary_exactly_while_archiving(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], database_url: str, tmp_path: Path, seed: int
) -> None:
    """Any statement length, page size and hot window: the pages, read while the archiver moves rows
    concurrently, are the whole statement newest first, each row once."""
    rnd = random.Random(seed)
    hot_rows, batches = rnd.randint(0, 7), rnd.randint(1, 25)
    settings = make_settings(tmp_path, statement_hot_rows=hot_rows, archive_batch_entries=1)
    ledger = Ledger(redis, settings)
    await fund(redis, ["v1", "v2"], 10_000)
    await gift_batches(ledger, settings, ["v1", "v2"], "c1", batches)
    rows = await full_statement(redis, "c1")
    sizes = [rnd.randint(1, 9) for _ in range(5)]
    reader_history = ArchiveReader(database_url)
    statements = Statements(redis, reader_history)
    archiver = Archiver(redis, database_url, settings)
    try:
        archiving = asyncio.create_task(archive_all(archiver))
        reads = [await read_all(statements, "c1", sizes) for _ in range(3)]
        await archiving
        reads.append(await read_all(statements, "c1", sizes))
    finally:
        await archiver.close()
        await reader_history.close()
    assert all(read == expected(rows) for read in reads), (hot_rows, batches, sizes)
    assert await redis.llen(keys.statement("c1")) == min(hot_rows, len(rows))


@pytest.mark.parametrize("seed", range(SEEDS))
async def test_pages_below_a_cursor_stay_exact_while_gifts_settle_and_archive(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], database_url: str, tmp_path: Path, seed: int
) -> None:
    """With gifts settling and the archiver running at once, pages below a cursor are exactly the rows below it,
    each once; afterwards the whole statement reads without a gap or a repeat."""
    rnd = random.Random(seed)
    settings = make_settings(tmp_path, statement_hot_rows=rnd.randint(0, 5), archive_batch_entries=1)
    ledger = Ledger(redis, settings)
    await fund(redis, ["v1", "v2"], 10_000)
    await gift_batches(ledger, settings, ["v1", "v2"], "c1", rnd.randint(1, 15))
    rows = await full_statement(redis, "c1")
    sizes, more = [rnd.randint(1, 9) for _ in range(5)], rnd.randint(1, 15)
    statements = Statements(redis, ArchiveReader(database_url))
    archiver = Archiver(redis, database_url, settings)

    async def archive_until(settling: asyncio.Task[None]) -> None:
        while True:
            count = await archiver.step()
            if not count and settling.done():
                return
            if not count:
                await asyncio.sleep(0.001)  # nothing new yet: a turn for the settling task

    try:
        settling = asyncio.create_task(gift_batches(ledger, settings, ["v1", "v2"], "c1", more))
        archiving = asyncio.create_task(archive_until(settling))
        reads = [await read_all(statements, "c1", sizes, len(rows)) for _ in range(3)]
        await asyncio.gather(settling, archiving)
        whole = await read_all(statements, "c1", sizes)
    finally:
        await archiver.close()
        assert statements.history is not None
        await statements.history.close()
    assert all(read == expected(rows) for read in reads), (settings.statement_hot_rows, sizes)
    assert [int(item["id"]) for item in whole] == list(range(len(rows) + 2 * more - 1, -1, -1))
    assert whole[2 * more :] == expected(rows)


@pytest.mark.cluster
async def test_crash_between_commit_and_trim_loses_and_duplicates_nothing(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], database_url: str, tmp_path: Path
) -> None:
    """Rows committed in PostgreSQL but not yet trimmed (the archiver died in between) read once; a restarted
    archiver trims them; PostgreSQL holds each row once."""
    settings = make_settings(tmp_path, statement_hot_rows=2)
    ledger = Ledger(redis, settings)
    await fund(redis, ["v1"], 1000)
    await gift_batches(ledger, settings, ["v1"], "c1", 6)
    rows = await full_statement(redis, "v1")
    hot = HotState(redis, settings.statement_hot_rows, settings.top_gifters_kept, settings.diamond_hold_s, PART)
    count, _upto = await journal.archive_batch(redis, history, STREAM, 100, hot)  # committed; then "killed -9"
    assert count == 7 and await redis.llen(keys.statement("v1")) == len(rows)
    statements = Statements(redis, ArchiveReader(database_url))
    assert await read_all(statements, "v1", [3]) == expected(rows)
    archiver = Archiver(redis, database_url, settings)  # the restart: it trims before anything
    await archive_all(archiver)
    await archiver.close()
    assert await journal_length(redis) == 0
    assert await redis.lrange(keys.statement("v1"), 0, -1) == rows[-2:]
    assert await read_all(statements, "v1", [3]) == expected(rows)
    assert statements.history is not None
    await statements.history.close()
    stored = await (await history.execute("SELECT count(*), count(DISTINCT (account, seq)) FROM statements")).fetchone()
    assert stored is not None and stored[0] == stored[1] == len(rows) + len(await full_archived(history, "c1"))
    report = await run_audit(redis, archive=history)
    assert report.clean, report.summary()


@pytest.mark.cluster
async def test_archiver_killed_mid_batch_keeps_every_statement_row_once(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], valkey_url: str, database_url: str, tmp_path: Path
) -> None:
    """`gifting archive` killed -9 as soon as it commits a batch, five times, then left to finish: every
    statement reads whole, each row once, Valkey keeps the newest rows, the audit is clean."""
    settings = make_settings(tmp_path)
    users = ["v1", "v2", "c1"]
    await fund(redis, users[:2], 10_000)
    await gift_batches(Ledger(redis, settings), settings, users[:2], "c1", 45)
    before = {user: await full_statement(redis, user) for user in users}
    env = archiver_env(valkey_url, database_url, tmp_path) | {"GIFTING_STATEMENT_HOT_ROWS": "2"}
    process = await start_archiver(env)
    try:
        for _ in range(5):
            await wait_archived_more(history, len(await history_of(history)))
            process.send_signal(signal.SIGKILL)
            await process.wait()
            process = await start_archiver(env)
        await wait_archived(redis, history, 47)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)
    statements = Statements(redis, ArchiveReader(database_url))
    for user, rows in before.items():
        assert await read_all(statements, user, [7]) == expected(rows)
        assert await full_archived(history, user) == rows
        assert await redis.lrange(keys.statement(user), 0, -1) == rows[-2:]
    assert statements.history is not None
    await statements.history.close()
    report = await run_audit(redis, archive=history)
    assert report.clean, report.summary()


async def full_archived(conn: psycopg.AsyncConnection[Any], user: str) -> list[str]:
    found = await (
        await conn.execute("SELECT line FROM statements WHERE account = %s ORDER BY seq", (keys.account(user),))
    ).fetchall()
    return [line for (line,) in found]


async def test_rows_per_account_per_batch_are_bounded(
    redis: aioredis.Redis,
    history: psycopg.AsyncConnection[Any],
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch copies at most ROWS_PER_ACCOUNT_MAX new rows of an account; the rest stay in Valkey (read as
    before) and move with the account's next transfers."""
    monkeypatch.setattr(hot, "ROWS_PER_ACCOUNT_MAX", 3)
    settings = make_settings(tmp_path, statement_hot_rows=1)
    ledger, statements = Ledger(redis, settings), Statements(redis, ArchiveReader(database_url))
    await fund(redis, ["v1"], 1000)
    await gift_batches(ledger, settings, ["v1"] * 8, "c1", 1)  # eight rows in one journal entry
    rows = await full_statement(redis, "v1")
    archiver = Archiver(redis, database_url, settings)
    await archive_all(archiver)
    assert await full_archived(history, "v1") == rows[:3] and await redis.llen(keys.statement("v1")) == 5
    assert await read_all(statements, "v1", [2]) == expected(rows)
    for _ in range(3):  # each later batch of v1's carries three more
        await gift_batches(ledger, settings, ["v1"], "c1", 1)
        await archive_all(archiver)
    await archiver.close()
    rows = await full_archived(history, "v1")
    assert len(rows) == 11 and await redis.lrange(keys.statement("v1"), 0, -1) == rows[-1:]
    assert await read_all(statements, "v1", [4]) == expected(rows)
    assert statements.history is not None
    await statements.history.close()


async def test_top_gifter_boards_keep_their_top_gifters(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], database_url: str, tmp_path: Path
) -> None:
    """After archiving, each of the creator's boards (all time, day, week) holds its GIFTING_TOP_GIFTERS_KEPT
    highest gifters, with their scores."""
    settings = make_settings(tmp_path, top_gifters_kept=3)
    ledger = Ledger(redis, settings)
    viewers = [f"v{i}" for i in range(8)]
    await fund(redis, viewers, 1000)
    for n, viewer in enumerate(viewers):  # v_n gifts n + 1 times: v7, v6, v5 are the top three
        await gift_batches(ledger, settings, [viewer], "c1", n + 1)
    boards = keys.account_top_boards(keys.account("c1"), await journal_last_ms(redis))
    before = [await redis.zrange(board, 0, 2, desc=True, withscores=True) for board in boards]
    archiver = Archiver(redis, database_url, settings)
    await archive_all(archiver)
    await archiver.close()
    for board, top in zip(boards, before, strict=True):
        assert await redis.zrange(board, 0, -1, desc=True, withscores=True) == top
        assert [member for member, _ in top] == ["u:v7", "u:v6", "u:v5"]


async def test_earnings_hours_before_the_hold_are_dropped(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], database_url: str, tmp_path: Path
) -> None:
    """After archiving, a paid creator's earnings by hour keep only the hours within GIFTING_DIAMOND_HOLD_S, so a
    withdrawal's hold is what it was and the hash does not grow by an hour forever."""
    settings = make_settings(tmp_path, diamond_hold_s=7200)
    now_hour = clock.hour_number(clock.now_ms())
    await redis.hset(keys.earned("c1"), mapping={str(now_hour - 5): 40, str(now_hour - 1): 30})
    await fund(redis, ["v1"], 1000)
    await gift_batches(Ledger(redis, settings), settings, ["v1"], "c1", 2)
    archiver = Archiver(redis, database_url, settings)
    await archive_all(archiver)
    await archiver.close()
    earned = await redis.hgetall(keys.earned("c1"))  # the hour may turn during the test: either hour holds the 10
    assert str(now_hour - 5) not in earned and earned.pop(str(now_hour - 1)) == "30", earned
    assert sum(map(int, earned.values())) == 10 and min(map(int, earned)) >= now_hour, earned


async def journal_last_ms(redis: aioredis.Redis) -> int:
    """The newest journal entry's time over every partition (the gifts' day and week boards follow it)."""
    newest = [await redis.xrevrange(keys.journal(part), count=1) for part in partitions.all_tags()]
    return max(journal.parse_id(entries[0][0])[0] for entries in newest if entries)


async def test_without_postgres_an_archived_page_is_a_clear_error(redis: aioredis.Redis) -> None:
    """A page that needs rows Valkey dropped, with no PostgreSQL configured, is `history_unavailable`."""
    await redis.rpush(keys.statement("v1"), rules.statement_row(1, "purchase", "coins", 5, "sys:coin_issuance", "p"))
    await redis.hset(keys.statement_base(PART), keys.account("v1"), 3)
    statements = Statements(redis, None)
    page, cursor = await statements.page("v1", None, 1)
    assert [item["id"] for item in page] == ["3"] and cursor == "3"
    with pytest.raises(GiftingError) as caught:
        await statements.page("v1", 3, 2)
    assert caught.value.code == "history_unavailable"


async def test_transactions_api_pages_across_both_stores(
    start_system: SystemFactory, history: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    """GET /v1/wallet/transactions pages from Valkey's newest rows into PostgreSQL with one cursor; a bad cursor
    is `bad_cursor`."""
    system = await start_system(worker=False, database_url=database_url, statement_hot_rows=3)
    ledger = Ledger(system.redis, system.settings)
    await fund(system.redis, ["v1"], 1000)
    await gift_batches(ledger, system.settings, ["v1"], "c1", 8)
    rows = await full_statement(system.redis, "v1")
    archiver = Archiver(system.redis, database_url, system.settings)
    await archive_all(archiver)
    await archiver.close()
    assert await system.redis.llen(keys.statement("v1")) == 3
    seen, params = [], {"limit": "2"}
    while True:
        response = await system.http.get("/v1/wallet/transactions", headers=system.auth("v1"), params=params)
        assert response.status_code == 200, response.text
        seen += response.json()["transactions"]
        if response.json()["next_cursor"] is None:
            break
        params = {"limit": "2", "cursor": response.json()["next_cursor"]}
    assert seen == expected(rows)
    bad = await system.http.get("/v1/wallet/transactions?cursor=-1", headers=system.auth("v1"))
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_cursor"
