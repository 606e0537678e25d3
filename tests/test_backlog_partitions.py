"""The partitioned streams' backlogs (gifting/ledger/backlog.py): the archive backlog bound per debited partition,
the on-call answers per partition (backlog, dead-letters, replay) and the oldest outbox entry's age gauge."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from gifting import keys, ops
from gifting.ledger import backlog, partitions
from gifting.web.service import journal_backlog
from gifting.wire.reasons import RejectReason
from tests.conftest import make_settings

pytestmark = pytest.mark.cluster  # on a standalone Valkey and on a Valkey Cluster (tests/conftest.py)


async def fill(redis: aioredis.Redis, stream: str, entries: int) -> list[str]:
    return [await redis.xadd(stream, {"n": str(i)}) for i in range(entries)]


async def test_the_backlog_bound_is_the_debited_partitions_journal(redis: aioredis.Redis) -> None:
    """Past the bound in one partition's journal, a debit of that partition is refused and one of another is not;
    the longest journal is what /readyz reports."""
    full, other = partitions.all_tags()[2], partitions.all_tags()[5]
    await fill(redis, keys.journal(full), 4)
    await fill(redis, keys.journal(other), 1)
    lengths = await backlog.journal_lengths(redis, [full, other, full])
    assert lengths == {full: 4, other: 1}
    assert backlog.backlog_reject(lengths, full, 3) == RejectReason.ARCHIVE_BACKLOG
    assert backlog.backlog_reject(lengths, other, 3) is None
    assert backlog.backlog_reject(lengths, full, 0) is None  # 0: no bound
    assert await journal_backlog(redis) == 4


async def test_ops_backlog_sums_the_partitions_and_names_those_holding_entries(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    """`gifting backlog` shows each stream kind summed, its longest partition and the partitions holding any, the
    oldest outbox entry's age and the pending withdrawals of every partition."""
    first, second = partitions.all_tags()[0], partitions.all_tags()[-1]
    await fill(redis, keys.gifts_stream(first), 2)
    await fill(redis, keys.gifts_stream(second), 3)
    await fill(redis, keys.journal(second), 1)
    await redis.xadd(keys.outbox(first), {second: "x"}, id="1000-0")
    await redis.zadd(keys.withdrawals_pending(second), {"w:a:1": 1})
    answer = await ops.backlog(redis, make_settings(tmp_path))
    assert answer["gifts"]["stream"] == "{ledger:*}:gifts"
    assert (answer["gifts"]["length"], answer["gifts"]["max"]) == (5, 3)
    assert answer["gifts"]["partitions"] == {first: 2, second: 3}
    assert answer["journal"]["partitions"] == {second: 1} and answer["dead_letters"]["length"] == 0
    assert answer["outbox"]["length"] == 1 and answer["outbox"]["oldest_age_ms"] > 0
    assert answer["withdrawals_pending"] == 1


async def test_dead_letters_of_every_partition_are_named_and_replayed_to_their_own_stream_once(
    redis: aioredis.Redis,
) -> None:
    """Dead letters of two partitions are listed as 'PARTITION/ID'; replay moves each back to its own partition's
    gift stream, once; an id naming no partition is answered, not guessed."""
    first, second = partitions.all_tags()[1], partitions.all_tags()[3]
    a = await redis.xadd(keys.gifts_dead_letter(first), {"g": "a", "entry_id": "1-0", "error": "boom", "ts": "5"})
    b = await redis.xadd(keys.gifts_dead_letter(second), {"g": "b", "entry_id": "2-0", "error": "boom", "ts": "6"})
    listed = await ops.dead_letters(redis, 20)
    assert listed["total"] == 2
    assert [(e["id"], e["fields"], e["ts"]) for e in listed["entries"]] == [
        (f"{first}/{a}", {"g": "a"}, 5),
        (f"{second}/{b}", {"g": "b"}, 6),
    ]
    assert (await ops.dead_letters(redis, 1))["entries"][0]["id"] == f"{first}/{a}"
    assert await ops.replay(redis, [f"{first}/{a}", "{ledger:nope}/1-0"]) == {
        "replayed": 1,
        "entries": {f"{first}/{a}": "replayed", "{ledger:nope}/1-0": "unknown_partition"},
    }
    assert (await ops.replay(redis, None))["entries"] == {f"{second}/{b}": "replayed"}
    assert (await ops.replay(redis, None))["replayed"] == 0
    assert [f for _, f in await redis.xrange(keys.gifts_stream(first))] == [{"g": "a"}]
    assert [f for _, f in await redis.xrange(keys.gifts_stream(second))] == [{"g": "b"}]


async def test_the_oldest_outbox_entry_age_gauge(redis: aioredis.Redis) -> None:
    """observe() sets the age of the oldest outbox entry of any partition (0 with none)."""
    tags = partitions.all_tags()
    await backlog.observe(redis)
    assert REGISTRY.get_sample_value("gifting_outbox_oldest_age_seconds") == 0
    await redis.xadd(keys.outbox(tags[1]), {tags[0]: "x"}, id="1000-0")
    await redis.xadd(keys.outbox(tags[2]), {tags[0]: "x"})
    await backlog.observe(redis)
    age = REGISTRY.get_sample_value("gifting_outbox_oldest_age_seconds")
    assert age is not None and age > 0
