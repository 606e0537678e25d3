"""Valkey keeps only what is hot: the archiver's second job, after each journal batch.

Statements. A user's statement is a list in Valkey that only grew; now each row has a fixed seq (its place in
the statement: statement_base(partition)[account] + its index in the list). In the same PostgreSQL transaction as a
journal batch, the archiver copies the new rows of every account the batch touched into `statements` (as
Valkey holds them: copying is cheaper and exacter than rebuilding rows from the legs) and moves the account's
`statement_cursor`. Only after that commit does statement_trim.lua drop rows from Valkey: never one PostgreSQL
lacks, never one of the newest GIFTING_STATEMENT_HOT_ROWS. A crash between commit and trim leaves rows in
both stores, which is harmless (a reader takes each seq from one store by the base) and repaired at restart
(`recover`: the accounts of the last committed batch are trimmed again).

Top-gifter boards. Each creator the batch paid keeps its top GIFTING_TOP_GIFTERS_KEPT gifters per board.

Earnings by hour (for the withdrawal hold). Each creator the batch paid keeps only the hours still within
GIFTING_DIAMOND_HOLD_S: withdraw.lua counts no older hour, so dropping them changes nothing it decides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis.asyncio as aioredis

from gifting import keys
from gifting.clock import hour_number, now_ms
from gifting.ledger import rules
from gifting.ledger.store import load_script

log = logging.getLogger(__name__)
ACCOUNTS_PER_CALL = 500  # accounts per statement_tail / statement_trim call (one Valkey call each, one partition)
# New statement rows copied per account per batch at most, so that catching up after a long PostgreSQL outage
# stays a bounded transaction; the rest stay in Valkey (read from there) until a batch with the account's next
# transfer moves them.
ROWS_PER_ACCOUNT_MAX = 10_000


@dataclass
class HotState:
    """The archiver's hot-state trimming of one ledger partition (its journal's batches name only its accounts).
    `archive` runs inside the journal batch's transaction; `trim` after its commit, on what that commit holds
    (`committed`)."""

    redis: aioredis.Redis
    statement_rows: int  # GIFTING_STATEMENT_HOT_ROWS
    top_gifters: int  # GIFTING_TOP_GIFTERS_KEPT
    hold_s: int  # GIFTING_DIAMOND_HOLD_S
    part: str  # the partition's tag: its statement bases, and the accounts it holds
    committed: dict[str, int] = field(default_factory=dict)  # account -> rows PostgreSQL holds after the batch
    creators: dict[str, int] = field(default_factory=dict)  # creator account -> newest gift of the batch (ms)

    def __post_init__(self) -> None:
        self._tail = self.redis.register_script(load_script("statement_tail.lua"))
        self._trim = self.redis.register_script(load_script("statement_trim.lua"))

    async def archive(
        self, conn: psycopg.AsyncConnection[Any], batch: tuple[int, int], legs: list[tuple[int, rules.Leg]]
    ) -> None:
        """Copy the new statement rows of every user account in `legs` ((ms, leg) of the batch) to PostgreSQL;
        called inside the batch's transaction, whose journal cursor becomes `batch`."""
        self.committed, self.creators = {}, {}
        accounts = sorted({a for _ms, leg in legs for a in (leg.debit, leg.credit) if self._holds(a)})
        for ms, leg in legs:
            if leg.ledger == "diamonds" and self._holds(leg.credit):
                self.creators[leg.credit] = max(ms, self.creators.get(leg.credit, 0))
        for chunk in partition_chunks(accounts):
            await self._archive_chunk(conn, batch, chunk)

    def _holds(self, account: str) -> bool:
        """A user account of this partition (a leg naming another partition's is the audit's finding: its rows
        are not this partition's to move, and its keys are in another slot)."""
        return rules.is_user_account(account) and keys.part_of(account) == self.part

    async def _archive_chunk(
        self, conn: psycopg.AsyncConnection[Any], batch: tuple[int, int], accounts: list[str]
    ) -> None:
        rows = await (
            await conn.execute("SELECT account, upto FROM statement_cursor WHERE account = ANY(%s)", (accounts,))
        ).fetchall()
        held = {account: int(upto) for account, upto in rows}
        args = [ROWS_PER_ACCOUNT_MAX, *(x for a in accounts for x in (a, held.get(a, 0)))]
        tails = await self._tail(
            keys=[keys.statement_base(self.part), *map(keys.account_statement, accounts)], args=args
        )
        moved: dict[str, int] = {}
        async with conn.cursor().copy("COPY statements (account, seq, line) FROM STDIN") as copy:
            for account, (_base, lines) in zip(accounts, tails, strict=True):
                upto = held.get(account, 0)
                for i, line in enumerate(lines):
                    await copy.write_row((account, upto + i, line))
                if lines:
                    moved[account] = upto + len(lines)
        if moved:
            await conn.execute(
                "INSERT INTO statement_cursor (account, upto, batch_ms, batch_seq)"
                " SELECT unnest(%s::text[]), unnest(%s::bigint[]), %s, %s"
                " ON CONFLICT (account) DO UPDATE"
                " SET upto = EXCLUDED.upto, batch_ms = EXCLUDED.batch_ms, batch_seq = EXCLUDED.batch_seq",
                (list(moved), list(moved.values()), *batch),
            )
        self.committed |= {a: held.get(a, 0) for a in accounts} | moved

    async def trim(self) -> int:
        """After the batch's commit: drop from Valkey what PostgreSQL now holds beyond the newest rows, and each
        paid creator's boards beyond the top gifters. Returns the statement rows dropped."""
        dropped = await self.trim_statements(self.committed)
        async with self.redis.pipeline(transaction=False) as pipe:
            for creator, ms in self.creators.items():
                for board in keys.account_top_boards(creator, ms):
                    pipe.zremrangebyrank(board, 0, -self.top_gifters - 1)
                pipe.hkeys(keys.account_earned(creator))
            replies = await pipe.execute()
        await self._trim_earned(replies[3::4])
        self.committed, self.creators = {}, {}
        return dropped

    async def _trim_earned(self, hours_by_creator: list[list[str]]) -> None:
        """Drop each paid creator's earnings of hours before the hold (withdraw.lua's cutoff only moves on)."""
        cutoff = hour_number(now_ms() - self.hold_s * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for creator, hours in zip(self.creators, hours_by_creator, strict=True):
                old = [hour for hour in hours if int(hour) < cutoff]
                if old:
                    pipe.hdel(keys.account_earned(creator), *old)
            await pipe.execute()

    async def trim_statements(self, committed: dict[str, int]) -> int:
        dropped = 0
        for chunk in partition_chunks(list(committed)):
            args = [self.statement_rows, *(x for a in chunk for x in (a, committed[a]))]
            dropped += int(
                await self._trim(keys=[keys.statement_base(self.part), *map(keys.account_statement, chunk)], args=args)
            )
        return dropped

    async def recover(self, conn: psycopg.AsyncConnection[Any], batch: tuple[int, int] | None) -> int:
        """At start: trim again the accounts of the last committed batch (a crash may have come before). Batch ids
        are per journal stream, so another partition's batch may share it: only this partition's accounts."""
        if batch is None:
            return 0
        rows = await (
            await conn.execute(
                "SELECT account, upto FROM statement_cursor WHERE (batch_ms, batch_seq) = (%s, %s)", batch
            )
        ).fetchall()
        await conn.commit()
        return await self.trim_statements({account: int(upto) for account, upto in rows if self._holds(account)})


def partition_chunks(accounts: list[str]) -> list[list[str]]:
    """`accounts` in chunks of at most ACCOUNTS_PER_CALL, each of one ledger partition (a script's keys share one
    slot), in their order within each partition."""
    by_part: dict[str, list[str]] = {}
    for account in accounts:
        by_part.setdefault(keys.part_of(account), []).append(account)
    return [
        group[first : first + ACCOUNTS_PER_CALL]
        for group in by_part.values()
        for first in range(0, len(group), ACCOUNTS_PER_CALL)
    ]
