"""Payouts: pending withdrawals go to the payout provider; the paid are posted, the failed and the timed out
voided (withdraw.lua, exactly once). Run by the settlement worker's housekeeping loop (workers/settlement.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from gifting import clock, keys, metrics
from gifting.config import Settings
from gifting.ledger import partitions
from gifting.ledger.store import Ledger, LedgerError
from gifting.payments import Payout, PayoutProvider

log = logging.getLogger(__name__)


class Payouts:
    """Which pending withdrawal to ask about next, and when to ask a `processing` one again."""

    def __init__(self, ledger: Ledger, settings: Settings, provider: PayoutProvider) -> None:
        self.ledger = ledger
        self.settings = settings
        self.provider = provider
        self._offsets: dict[str, int] = {}  # partition -> where its next page of pending withdrawals starts
        self._next_part = 0  # the partition the next run starts at (rotates, so each gets its turn first)
        self._retry: dict[str, tuple[float, float]] = {}  # withdrawal id -> (ask again at, delay), monotonic s

    async def run(self) -> int:
        """Send a page of pending withdrawals to the payout provider: post the paid, void the failed and the
        timed out. Returns how many were resolved.

        Fair: each run takes the next page of each ledger partition's pending withdrawals (GIFTING_PAYOUTS_PER_RUN_MAX
        shared among the partitions, wrapping around; see `_page`), so every pending withdrawal is reached, and one the
        provider keeps `processing` is asked again only after its own doubling delay (up to GIFTING_PAYOUT_RETRY_S_MAX),
        so no creator's withdrawals hold back the others'. Durable first: the page's partitions are fsynced (WAITAOF)
        before any of it reaches the provider, so a payout is never made for a debit Valkey could still lose; if that
        wait fails, nothing is sent this run. The provider gets the withdrawal id as its idempotency key. post/void are
        exactly-once in withdraw.lua, so two workers racing on one withdrawal cannot both win.
        """
        page = await self._page()
        if not page:
            return 0
        parts = {keys.part_of_user(keys.scoped_user(w)) for w in page}
        await self.ledger.durable_parts(self.settings.waitaof_timeout_ms, parts)
        resolved = 0
        async with self.ledger.group_commit():  # one fsync for the page's posts and voids
            for withdrawal_id in page:
                decision = await self._decision(withdrawal_id)
                if decision is None:
                    continue
                mode, reason = decision
                try:
                    await self.ledger.resolve_withdrawal(withdrawal_id, mode, reason)
                    resolved += 1
                    metrics.payouts.labels(outcome=mode).inc()
                    log.info("withdrawal %s: %s %s", withdrawal_id, mode, reason)
                except LedgerError as exc:
                    log.info("withdrawal %s: %s", withdrawal_id, exc.message)
                self._retry.pop(withdrawal_id, None)
        return resolved

    async def _page(self) -> list[str]:
        """The next page of each partition's pending withdrawals by deadline (after its last page, its first
        again): an equal share of GIFTING_PAYOUTS_PER_RUN_MAX each, at least one. With more partitions than that,
        a run reaches that many partitions, starting where the last run stopped, so a busy partition never holds
        back another's creators."""
        tags = partitions.all_tags()
        total = self.settings.payouts_per_run_max
        size = max(1, total // len(tags))
        page: list[str] = []
        for i in range(min(len(tags), total)):
            part = tags[(self._next_part + i) % len(tags)]
            offset = self._offsets.get(part, 0)
            ids = await self.ledger.pending_withdrawals(part, size, offset)
            self._offsets[part] = offset + size if len(ids) == size else 0
            page += ids
        self._next_part = (self._next_part + min(len(tags), total)) % len(tags)
        now = time.monotonic()
        retry_s_max = self.settings.payout_retry_s_max
        self._retry = {w: r for w, r in self._retry.items() if r[0] > now - retry_s_max}  # bounded
        return page

    async def _decision(self, withdrawal_id: str) -> tuple[str, str] | None:
        """post or void (with a reason) a pending withdrawal, or None: not pending, processing, or waiting."""
        withdrawal = await self.ledger.withdrawal(withdrawal_id)
        if withdrawal is None or withdrawal["status"] != "pending":
            return None
        if clock.now_ms() >= withdrawal["deadline_ms"]:
            return "void", "timeout"
        now = time.monotonic()
        ask_at, delay_s = self._retry.get(withdrawal_id, (0.0, 0.0))
        if ask_at > now:
            return None
        payout = await self._ask_provider(withdrawal)
        if payout.status == "processing":
            delay_s = min(max(2 * delay_s, self.settings.payout_interval_ms / 1000), self.settings.payout_retry_s_max)
            self._retry[withdrawal_id] = (now + delay_s, delay_s)
            return None
        return ("post", "") if payout.status == "paid" else ("void", payout.reason)

    async def _ask_provider(self, withdrawal: dict[str, Any]) -> Payout:
        """The provider's answer, bounded in time. A provider that hangs or fails is `processing`: asked again
        after the backoff, with the same withdrawal id (its idempotency key), so an interrupted call that did pay
        is answered `paid` then."""
        withdrawal_id = withdrawal["withdrawal_id"]
        call = self.provider.payout(
            withdrawal_id, withdrawal["user"], withdrawal["diamonds"], withdrawal["payout_account"]
        )
        try:
            return await asyncio.wait_for(call, self.settings.payout_call_timeout_ms / 1000)
        except TimeoutError:
            log.warning("withdrawal %s: payout provider did not answer in time", withdrawal_id)
        except Exception:  # the provider's own failure must not stop settlement; it is retried
            log.exception("withdrawal %s: payout provider failed", withdrawal_id)
        return Payout("processing")
