"""The archiver: moves one journal stream's entries from Valkey to PostgreSQL, exactly once, oldest first.

`gifting archive` runs it (its own Procfile line; `gifting dev` starts it too). Each round commits one batch
in PostgreSQL (gifting/history/journal.archive_batch), then trims what is committed from Valkey. While
PostgreSQL or Valkey is unreachable it retries with a doubling pause (up to GIFTING_ARCHIVE_RETRY_MAX_S); the
entries wait in Valkey's journal meanwhile, and nothing is trimmed that PostgreSQL has not committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg
import redis.asyncio as aioredis
import redis.exceptions

from gifting import keys
from gifting.config import Settings
from gifting.history import journal
from gifting.history.hot import HotState

log = logging.getLogger(__name__)
RETRY_FIRST_S = 0.1
CONNECT_TIMEOUT_S = 5


class Archiver:
    """Archives `stream` (one journal stream: the unit a partitioned ledger runs one archiver per)."""

    def __init__(self, redis: aioredis.Redis, database_url: str, settings: Settings, stream: str) -> None:
        self.redis, self.database_url, self.settings, self.stream = redis, database_url, settings, stream
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.archived = 0  # entries this process committed to PostgreSQL
        self.hot = HotState(redis, settings.statement_hot_rows, settings.top_gifters_kept, settings.diamond_hold_s)

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = await psycopg.AsyncConnection.connect(
                self.database_url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True
            )
            # A restart between commit and trim leaves committed entries in Valkey: trim them before anything.
            upto = await journal.cursor(self.conn, self.stream)
            await journal.trim_archived(self.redis, self.stream, upto)
            await self.hot.recover(self.conn, upto)
        return self.conn

    async def step(self) -> int:
        """One batch: commit it in PostgreSQL, then trim it from Valkey. Returns the entries archived."""
        conn = await self._connection()
        batch = self.settings.archive_batch_entries
        count, upto = await journal.archive_batch(self.redis, conn, self.stream, batch, self.hot)
        if count:  # statements first: an empty journal then means everything archived is trimmed
            await self.hot.trim()
            await journal.trim_archived(self.redis, self.stream, upto)
            self.archived += count
        return count

    async def run(self, stop: asyncio.Event) -> None:
        pause_s = RETRY_FIRST_S
        while not stop.is_set():
            try:
                count = await self.step()
                pause_s = RETRY_FIRST_S
            except (psycopg.OperationalError, psycopg.InterfaceError, redis.exceptions.ConnectionError, OSError) as exc:
                log.warning("archiver %s: %s; retrying in %.1f s", self.stream, exc, pause_s)
                await self.close()
                await _sleep_unless(stop, pause_s)
                pause_s = min(pause_s * 2, self.settings.archive_retry_max_s)
                continue
            if count < self.settings.archive_batch_entries:
                await _sleep_unless(stop, self.settings.archive_idle_ms / 1000)
        await self.close()

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await self.conn.close()
            self.conn = None


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run_archiver(redis: aioredis.Redis, database_url: str, settings: Settings, stop: asyncio.Event) -> None:
    from workers.records_archiver import RecordArchiver  # the records past their hot windows, alongside

    await asyncio.gather(
        Archiver(redis, database_url, settings, keys.LEDGER_JOURNAL).run(stop),
        RecordArchiver(redis, database_url, settings).run(stop),
    )
