"""The web process's reads of the history database: records past Valkey's hot windows.

The one home for them: a process opens one ArchiveReader (gifting/app.py), which the ledger, the rooms and
the statements share. One connection, opened on first use and shared under a lock: these reads are of old
records (statement pages, history pages, a refund of an old purchase), rare next to the hot path, which never
waits on PostgreSQL. PostgreSQL unreachable: the read fails `history_unavailable` (503) and the next one
connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import redis.asyncio as aioredis

from gifting.errors import GiftingError
from gifting.history import matches, pools, purchases, summaries, withdrawals

CONNECT_TIMEOUT_S = 5


class ArchiveReader:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(
                        self.database_url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True
                    )
                yield self._conn
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                await self.close()
                raise GiftingError("history_unavailable", f"the history database is unreachable: {exc}") from None

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await self._conn.close()
            self._conn = None

    async def statement_rows(self, account: str, low: int, high: int) -> list[tuple[int, str]]:
        """(seq, row) of the account's archived statement rows low..high-1, oldest first."""
        sql = "SELECT seq, line FROM statements WHERE account = %s AND seq >= %s AND seq < %s ORDER BY seq"
        async with self.connection() as conn:
            rows = await (await conn.execute(sql, (account, low, high))).fetchall()
        return [(int(seq), line) for seq, line in rows]

    async def purchase(self, purchase_id: str) -> dict[str, str] | None:
        async with self.connection() as conn:
            return await purchases.archived(conn, purchase_id)

    async def purchases_of(self, account: str, limit: int, exclude: set[str]) -> list[dict[str, str]]:
        async with self.connection() as conn:
            return await purchases.archived_of(conn, account, limit, exclude)

    async def restore_purchase(self, redis: aioredis.Redis, purchase_id: str) -> bool:
        async with self.connection() as conn:
            return await purchases.restore(redis, conn, purchase_id)

    async def withdrawal(self, withdrawal_id: str) -> dict[str, str] | None:
        async with self.connection() as conn:
            return await withdrawals.archived(conn, withdrawal_id)

    async def withdrawals_of(self, account: str, limit: int, exclude: set[str]) -> list[tuple[str, dict[str, str]]]:
        async with self.connection() as conn:
            return await withdrawals.archived_of(conn, account, limit, exclude)

    async def summary(self, room: str) -> dict[str, Any] | None:
        async with self.connection() as conn:
            return await summaries.archived(conn, room)

    async def sessions_of(self, creator: str, limit: int, exclude: set[str]) -> list[dict[str, Any]]:
        async with self.connection() as conn:
            return await summaries.archived_of(conn, creator, limit, exclude)

    async def pool(self, pool_id: str) -> dict[str, str] | None:
        async with self.connection() as conn:
            return await pools.archived(conn, pool_id)

    async def match(self, match_id: str) -> dict[str, str] | None:
        async with self.connection() as conn:
            return await matches.archived(conn, match_id)
