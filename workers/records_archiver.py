"""The records archiver: purchase records, resolved withdrawals, stream summaries, closed pools and ended matches
past their hot windows move to PostgreSQL (gifting/history/purchases.py, withdrawals.py, summaries.py, pools.py,
matches.py), in the archiver
process next to the journal's archiver, with its retries and pauses."""

from __future__ import annotations

from typing import Any

import psycopg
import redis.asyncio as aioredis

from gifting import clock
from gifting.config import Settings
from gifting.history import matches, pools, purchases, summaries, withdrawals
from workers.archiver import CONNECT_TIMEOUT_S, Archiver


class RecordArchiver(Archiver):
    def __init__(self, redis: aioredis.Redis, database_url: str, settings: Settings) -> None:
        super().__init__(redis, database_url, settings, ())
        self.name = "records"

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = await psycopg.AsyncConnection.connect(
                self.database_url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True
            )
        return self.conn

    async def step(self) -> int:
        """One batch of each kind of record past its hot window. Returns the records archived."""
        conn = await self._connection()
        batch, now = self.settings.archive_batch_entries, clock.now_ms()
        count = await purchases.archive_due(self.redis, conn, now - self.settings.purchase_hot_s * 1000, batch)
        count += await withdrawals.archive_due(self.redis, conn, now - self.settings.withdrawal_hot_s * 1000, batch)
        count += await summaries.archive_due(self.redis, conn, now - self.settings.summary_hot_s * 1000, batch)
        count += await pools.archive_due(self.redis, conn, now - self.settings.pool_hot_s * 1000, batch)
        count += await matches.archive_due(self.redis, conn, now - self.settings.match_hot_s * 1000, batch)
        self.archived += count
        return count
