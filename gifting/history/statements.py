"""A user's statement, a page at a time, from the newest row in Valkey back into PostgreSQL.

Every row has a seq: its place in the statement (0 = the first), the `id` the API shows. Valkey holds seqs base..
(keys.statement_base of the user's partition; the archiver moves the base only after PostgreSQL committed every row
below it), PostgreSQL holds seqs ..base-1 (and may still hold some above, until the archiver's trim). A page below the
cursor takes each seq from exactly one store, split at the base it read atomically with Valkey's rows: no gap, no row
twice, whatever the archiver does meanwhile. The cursor is the seq of the page's oldest row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from gifting import keys
from gifting.errors import GiftingError
from gifting.ledger import rules
from gifting.ledger.store import load_script

if TYPE_CHECKING:
    from gifting.history.reader import ArchiveReader

STATEMENT_PAGE_MAX = 200  # rows per page


class Statements:
    """Pages of users' statements across Valkey and PostgreSQL (`history`: the process's one reader of it; None:
    no history database configured, so nothing is archived and a page below Valkey's rows is an error)."""

    def __init__(self, redis: aioredis.Redis, history: ArchiveReader | None) -> None:
        self.redis, self.history = redis, history
        self._page = redis.register_script(load_script("statement_page.lua"))

    async def page(self, user: str, cursor: int | None, limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """The rows below `cursor` (None: the newest), newest first, and the next page's cursor (None: none)."""
        limit = max(1, min(limit, STATEMENT_PAGE_MAX))
        account = keys.account(user)
        base, high, hot = await self._page(
            keys=[keys.statement_base(keys.part_of_user(user)), keys.statement(user)],
            args=[account, -1 if cursor is None else cursor, limit],
        )
        base, high, low = int(base), int(high), max(0, int(high) - limit)
        rows = [(max(base, low) + i, row) for i, row in enumerate(hot)]
        if low < min(base, high):
            archived = await self._archived(account, low, min(base, high))
            rows = archived + rows
        items = [rules.parse_statement_row(seq, row) for seq, row in reversed(rows)]
        return items, (str(low) if low > 0 and items else None)

    async def _archived(self, account: str, low: int, high: int) -> list[tuple[int, str]]:
        if self.history is None:
            raise GiftingError("history_unavailable", "older statement rows are in PostgreSQL: GIFTING_DATABASE_URL")
        rows = await self.history.statement_rows(account, low, high)
        if [seq for seq, _row in rows] != list(range(low, high)):  # the archiver trims only what is committed
            raise GiftingError("history_unavailable", f"statement rows {low}..{high - 1} missing in PostgreSQL")
        return rows
