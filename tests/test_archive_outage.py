"""PostgreSQL down for a while, then back: gifts keep settling, the archive backlog shows in /readyz and in the
metric, both archivers (the journal's and the records') retry and then catch up, and the web process's one
history reader connects again; nothing lost or duplicated."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gifting import keys
from gifting.embedded_pg import EmbeddedPostgres
from gifting.history.schema import migrate
from gifting.ledger import partitions
from gifting.ledger.audit import run_audit
from gifting.ledger.backlog import journal_lengths
from gifting.ledger.store import Ledger
from tests.conftest import System, SystemFactory
from tests.test_archive import journal_length
from tests.test_archive_records import buy
from workers.archiver import run_archiver

WAIT_S = 30.0
GIFTS = 12
RETRIES_WHILE_DOWN = 4  # failed rounds (both archivers together) before PostgreSQL comes back


async def journal_backlog_metric(system: System) -> float:
    """The worker's gauges of the partitions' journal lengths, as GET /metrics shows them (one process: one
    registry): the longest, as /readyz's archive_backlog."""
    assert system.worker is not None
    await system.worker.observe_state()
    text = (await system.http.get("/metrics")).text
    journals = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "gifting_stream_length" and sample.labels.get("stream", "").endswith(":journal")
    ]
    assert len(journals) == partitions.count(), "no gifting_stream_length sample for each partition's journal"
    return max(journals)


async def wait_until(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    """Poll (other tasks archive: there is no event to wait on) until `check` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not await check():
        assert loop.time() < deadline, f"not {what} within {WAIT_S} s"
        await asyncio.sleep(0.05)


async def test_archivers_catch_up_after_postgres_was_down_for_a_while(
    start_system: SystemFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While PostgreSQL is down gifts settle, a purchase is made, the archivers retry, and the backlog is the same
    in /readyz and the metric; back up, the journal and the purchase move once, both show 0, audit clean."""
    caplog.set_level(logging.WARNING, logger="workers.archiver")
    server = EmbeddedPostgres(tmp_path / "pg", announce=False)
    url = server.start()
    migrate(url)
    system = await start_system(
        database_url=url, purchase_hot_s=0, archive_batch_entries=5, archive_idle_ms=10, archive_retry_max_s=0.2
    )
    stop = asyncio.Event()
    archiving = asyncio.create_task(run_archiver(system.redis, url, system.settings, stop))
    try:
        await system.grant("v1", 1000)
        room = await system.open_room("c1")
        await wait_until("archived", lambda: _journal_empty(system))
        server.stop()
        client = await system.connect("v1")
        for _ in range(GIFTS):
            assert (await client.result(await client.gift(room, "rose", 1)))["status"] == "settled"
        purchase = await buy(Ledger(system.redis, system.settings), "v2")
        await wait_until("retried", lambda: _retried(caplog, RETRIES_WHILE_DOWN))
        backlog = (await system.http.get("/readyz")).json()["archive_backlog"]
        assert backlog == max((await journal_lengths(system.redis, partitions.all_tags())).values()) > 0
        assert await journal_backlog_metric(system) == backlog
        listed = await system.http.get("/v1/wallet/purchases", headers=system.auth("v2"))
        assert listed.status_code == 503 and listed.json()["error"]["code"] == "history_unavailable", listed.text
        server.start()
        await wait_until("caught up", lambda: _caught_up(system, purchase))
        assert (await system.http.get("/readyz")).json()["archive_backlog"] == 0
        assert await journal_backlog_metric(system) == 0
        listed = await system.http.get("/v1/wallet/purchases", headers=system.auth("v2"))
        assert [p["purchase_id"] for p in listed.json()["purchases"]] == [purchase], listed.text
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            report = await run_audit(system.redis, archive=conn)
            assert report.clean, report.summary()
            ids = [row[0] for row in await (await conn.execute("SELECT id FROM purchases")).fetchall()]
        assert ids == [purchase]
    finally:
        stop.set()
        await asyncio.wait_for(archiving, WAIT_S)
        server.stop()


async def _journal_empty(system: System) -> bool:
    return await journal_length(system.redis) == 0


async def _retried(caplog: pytest.LogCaptureFixture, rounds: int) -> bool:
    return sum("retrying" in record.getMessage() for record in caplog.records) >= rounds


async def _caught_up(system: System, purchase: str) -> bool:
    journal = await journal_length(system.redis)
    return journal == 0 and not await system.redis.exists(keys.purchase_record(purchase))
