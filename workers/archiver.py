"""The archiver: moves the journal streams' entries from Valkey to PostgreSQL, exactly once, oldest first.

`gifting archive` runs it (its own Procfile line; `gifting dev` starts it too). The unit is one journal stream,
a ledger partition's (keys.journal(part)): its own cursor in PostgreSQL, its own statements and boards to trim.
One archiver walks the partitions on one PostgreSQL connection: each round commits one batch of each partition
that has entries (gifting/history/journal.archive_batch), and after each commit trims what it committed from
that partition's journal in Valkey. Walking keeps one connection and one process however many partitions there
are (a batch is COPY-bound: a second process on the same PostgreSQL would mostly contend); `parts` lets a
deployment split them over several processes if PostgreSQL has the room. While
PostgreSQL or Valkey is unreachable it retries with a doubling pause (up to GIFTING_ARCHIVE_RETRY_MAX_S); the
entries wait in Valkey's journal meanwhile, and nothing is trimmed that PostgreSQL has not committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import psycopg
import redis.asyncio as aioredis
import redis.exceptions

from gifting import keys
from gifting.config import Settings
from gifting.history import journal
from gifting.history.hot import HotState
from gifting.ledger import partitions

log = logging.getLogger(__name__)
RETRY_FIRST_S = 0.1
CONNECT_TIMEOUT_S = 5


class Archiver:
    """Archives the journals of the partitions `parts` (tags; None: every partition), walking them in order."""

    def __init__(
        self, redis: aioredis.Redis, database_url: str, settings: Settings, parts: Sequence[str] | None = None
    ) -> None:
        self.redis, self.database_url, self.settings = redis, database_url, settings
        self.parts = tuple(partitions.all_tags() if parts is None else parts)
        self.name = f"journals of {len(self.parts)} partitions"
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.archived = 0  # entries this process committed to PostgreSQL
        s = settings
        self.hot = {
            p: HotState(redis, s.statement_hot_rows, s.top_gifters_kept, s.diamond_hold_s, p) for p in self.parts
        }

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = await psycopg.AsyncConnection.connect(
                self.database_url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True
            )
            # A restart between commit and trim leaves committed entries in Valkey: trim them before anything.
            for part in self.parts:
                upto = await journal.cursor(self.conn, keys.journal(part))
                await journal.trim_archived(self.redis, keys.journal(part), upto)
                await self.hot[part].recover(self.conn, upto)
        return self.conn

    async def step(self) -> int:
        """One batch of each partition: commit it in PostgreSQL, then trim it from Valkey. Returns the entries
        archived (at least GIFTING_ARCHIVE_BATCH_ENTRIES when some partition had a full batch waiting)."""
        total = 0
        for part in self.parts:
            total += await self.step_partition(part)
        return total

    async def step_partition(self, part: str) -> int:
        conn = await self._connection()
        stream, batch = keys.journal(part), self.settings.archive_batch_entries
        count, upto = await journal.archive_batch(self.redis, conn, stream, batch, self.hot[part])
        if count:  # statements first: an empty journal then means everything archived is trimmed
            await self.hot[part].trim()
            await journal.trim_archived(self.redis, stream, upto)
            self.archived += count
        return count

    async def run(self, stop: asyncio.Event) -> None:
        pause_s = RETRY_FIRST_S
        while not stop.is_set():
            try:
                count = await self.step()
                pause_s = RETRY_FIRST_S
            except (psycopg.OperationalError, psycopg.InterfaceError, redis.exceptions.ConnectionError, OSError) as exc:
                log.warning("archiver (%s): %s; retrying in %.1f s", self.name, exc, pause_s)
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
        Archiver(redis, database_url, settings).run(stop),
        RecordArchiver(redis, database_url, settings).run(stop),
    )
