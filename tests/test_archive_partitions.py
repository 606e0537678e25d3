"""The archiver on a partitioned ledger: it walks every partition's journal, each with its own cursor; archived
entries are keyed by (partition, stream id) (the same id in two partitions is two entries); `credits` rows give
their legs; the audit over the archive and Valkey stays clean and names the partition of a gap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis

from gifting import keys
from gifting.history import journal
from gifting.ledger import partitions, rules
from gifting.ledger.audit import run_audit
from tests.conftest import make_settings
from tests.test_audit_partitions import apply, grant, in_flight, pay_gift, users_in_distinct_partitions
from workers.archiver import Archiver

pytestmark = pytest.mark.cluster  # on a standalone Valkey and on a Valkey Cluster (tests/conftest.py)


async def cross_partition_history(redis: aioredis.Redis) -> tuple[str, str, str]:
    """Grants, gifts across partitions (credited and in flight) and a few more grants: entries in three journals.
    Returns the viewer's, the creator's and a third partition."""
    viewer, creator, other = users_in_distinct_partitions(3)
    for i in range(3):
        await apply(redis, keys.part_of_user(creator), await pay_gift(redis, viewer, creator, f"g{i}"))
        await grant(redis, other, f"o{i}", 10)
    await in_flight(redis, keys.part_of_user(viewer), await pay_gift(redis, viewer, creator, "g-flying"))
    return keys.part_of_user(viewer), keys.part_of_user(creator), keys.part_of_user(other)


async def test_archiver_walks_every_partition_with_its_own_cursor(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], database_url: str, tmp_path: Path
) -> None:
    """One archiver moves every partition's journal to PostgreSQL, each under its partition, each cursor at its
    own stream's newest id; Valkey's journals are then empty and the audit over both stores is clean."""
    parts = await cross_partition_history(redis)
    ends = {part: (await redis.xrevrange(keys.journal(part), count=1))[0][0] for part in parts}
    counts = {part: await redis.xlen(keys.journal(part)) for part in parts}
    archiver = Archiver(redis, database_url, make_settings(tmp_path, archive_batch_entries=2))
    try:
        while await archiver.step():
            pass
    finally:
        await archiver.close()
    rows = await (await history.execute("SELECT stream, part, count(*) FROM journal GROUP BY 1, 2")).fetchall()
    assert {stream: (part, n) for stream, part, n in rows} == {
        keys.journal(p): (partitions.all_tags().index(p), counts[p]) for p in parts
    }
    for part in parts:
        assert await journal.cursor(history, keys.journal(part)) == journal.parse_id(ends[part])
        assert await redis.xlen(keys.journal(part)) == 0
    report = await run_audit(redis, archive=history)
    assert report.clean, report.summary()
    assert report.archived == report.entries == sum(counts.values())


async def test_credits_rows_archive_their_legs_under_their_own_ids(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """A `credits` entry's legs land in `legs` under each credit's id and kind, in the creator's partition."""
    _, creator_part, _ = await cross_partition_history(redis)
    stream = keys.journal(creator_part)
    while (await journal.archive_batch(redis, history, stream, 10))[0]:
        pass
    rows = await (
        await history.execute("SELECT transfer, kind, ledger, amount, part FROM legs WHERE stream = %s", (stream,))
    ).fetchall()
    part = partitions.all_tags().index(creator_part)
    assert sorted(rows) == [(f"g{i}", "gift_received", "diamonds", 50, part) for i in range(3)]


async def test_the_same_stream_id_in_two_partitions_is_two_archived_entries(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any]
) -> None:
    """Stream ids are per partition: entries with equal ids in two partitions are both archived, keyed by
    (partition, id), and each is read back only with its own partition."""
    first, second = partitions.all_tags()[:2]
    legs = rules.encode_legs(rules.purchase_legs("someone", 1))
    for part in (first, second):
        await redis.xadd(keys.journal(part), {"kind": "purchase", "id": f"grant:{part}", "legs": legs}, id="5-1")
        assert (await journal.archive_batch(redis, history, keys.journal(part), 10))[0] == 1
    rows = await (await history.execute("SELECT part, ms, seq FROM journal ORDER BY part")).fetchall()
    assert rows == [(0, 5, 1), (1, 5, 1)]
    for part in (first, second):
        archived = await journal.archived_entries(history, keys.journal(part), None, None, True)
        assert [(entry_id, fields["id"]) for entry_id, fields in archived] == [("5-1", f"grant:{part}")]


async def test_a_gap_in_one_partition_is_named_with_its_stream(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], database_url: str, tmp_path: Path
) -> None:
    """An archived entry deleted from PostgreSQL is a gap named with its partition's journal; the others are
    whole."""
    viewer_part, _, other_part = await cross_partition_history(redis)
    archiver = Archiver(redis, database_url, make_settings(tmp_path))
    try:
        await archiver.step()
    finally:
        await archiver.close()
    await history.execute(
        "DELETE FROM journal WHERE stream = %s AND fields->>'id' = 'grant:o1'", (keys.journal(other_part),)
    )
    report = await run_audit(redis, archive=history)
    gaps = [f for f in report.findings if "in neither store" in f]
    assert gaps == [
        f"journal {keys.journal(other_part)}: the stream gave out 3 entries, the archive and Valkey hold 2 "
        "(2 archived): 1 entries in neither store"
    ], report.summary()
    assert not any(keys.journal(viewer_part) in f for f in report.findings), report.summary()
