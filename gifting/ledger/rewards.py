"""Reward coins earned by taking part: the budget's funding and each accrual, through rewards.lua. Rules (legs,
ids, caps, the streak) live in rules.py; why it works this way: docs/REWARDS.md.

Each accrual is one transfer on the `rewards` ledger (sys:rewards_budget -> the viewer), idempotent by its id
(rules.reward_id: kind, viewer, period), all or nothing against the budget and the two daily caps. A refused
accrual moves nothing and is not recorded, so the same period may still pay if tried again once it fits.

The budget is one placed account, so its fundings, accrual records, daily totals and streaks live in its own
partition (keys.rewards_part()), where rewards.lua decides every accrual. A viewer of another partition is paid
in two steps: the script debits the budget to sys:transit and writes an outbox credit (sys:transit -> the
viewer, with the statement row); Ledger.apply_credits then applies it in the viewer's partition, once by the
accrual's id (a crash in between leaves the outbox entry to the settlement worker's redrive).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gifting import keys
from gifting.clock import now_ms, utc_day
from gifting.config import Settings
from gifting.ledger import rules
from gifting.ledger.store import Ledger, LedgerError, load_script_with

log = logging.getLogger(__name__)

ACCRUALS_PER_CALL = 200  # accruals decided by one rewards.lua call (one round trip; ~10 ms of Valkey at most here)
STREAK_ATTEMPTS_MAX = 5  # a streak claim re-reads the stored streak if it changed in between (rare: one user)
FUNDING_COINS_MAX = 10**12
DAY_MS = 86_400_000
FIRST_GIFT_MEMO_MAX = 200_000  # viewers remembered as paid today per process (~20 MB); past it, forgotten

REFUSALS = {
    "rewards_budget_exhausted": "the rewards budget is empty; nothing was paid",
    "reward_viewer_cap": "today's reward coins for this viewer are used up (GIFTING_REWARD_VIEWER_DAY_COINS_MAX)",
    "reward_platform_cap": "today's reward coins for the platform are used up (GIFTING_REWARD_DAY_COINS_MAX)",
    "reward_not_earned": "watch a live room first: the streak bonus needs a watch period today",
    "reward_already_claimed": "today's streak bonus was already claimed",
    "rewards_disabled": "this reward is switched off (its GIFTING_REWARD_* setting is 0)",
    "archive_backlog": "too many journal entries wait for the archiver (GIFTING_ARCHIVE_BACKLOG_MAX); retry later",
}


@dataclass(frozen=True, slots=True)
class Accrual:
    """What one accrual did: 'ok' (paid now), 'replay' (paid earlier), or a refusal code (nothing moved)."""

    transfer_id: str
    status: str
    coins: int

    @property
    def paid(self) -> bool:
        return self.status in ("ok", "replay")


@dataclass(frozen=True, slots=True)
class Grant:
    """One accrual to decide: `coins` to `user` for `period`; a streak claim also carries the stored streak as
    read and the one to store."""

    user: str
    period: str
    coins: int
    streak: tuple[str, str] = ("", "")


class Rewards:
    def __init__(self, redis: aioredis.Redis, settings: Settings, ledger: Ledger) -> None:
        self.redis = redis
        self.settings = settings
        self.ledger = ledger
        self._script = redis.register_script(load_script_with("rewards.lua", "legs.lua"))
        self._first_gift_day = ""
        self._first_gift_done: set[str] = set()  # viewers paid (or capped) the first-gift reward that day

    async def fund(self, admin: str, idempotency_key: str, coins: int) -> tuple[int, bool]:
        """An admin funds the rewards budget, once per key. Returns (budget after, replay)."""
        assert 0 < coins <= FUNDING_COINS_MAX
        part = keys.rewards_part()
        funding_id = "rewards_funding:" + keys.user_scoped_id(admin, idempotency_key)
        fp = rules.fingerprint(coins)
        placed = rules.place_legs(rules.reward_funding_legs(coins), part)
        assert list(placed) == [part], placed  # issuance is shared, the budget placed here: all local
        status, _detail = await self._script(
            keys=[keys.rewards(part), keys.journal(part), keys.rewards_fundings(part)],
            args=["fund", funding_id, now_ms(), rules.encode_legs(placed[part]), f"{coins}|{fp}", fp],
        )
        if status == "conflict":
            raise LedgerError("idempotency_key_conflict", "Idempotency-Key was used for a different funding")
        await self.ledger.committed(part)
        return await self.budget(), status == "replay"

    async def budget(self) -> int:
        return int(await self.redis.hget(keys.rewards(keys.rewards_part()), keys.SYS_REWARDS_BUDGET) or 0)

    def _accrual_call(self, kind: str, grants: list[Grant], now: int) -> tuple[list[str], list[str], list[Any]]:
        """rewards.lua's accrual ids, KEYS and ARGV for accruals of one kind on the UTC day of `now`."""
        s, day, part = self.settings, utc_day(now), keys.rewards_part()
        records = keys.reward_records(part, day)
        keys_ = [keys.rewards(part), keys.journal(part), records, keys.rewards_earned_on(part, day)]
        keys_ += [keys.rewards_streaks(part), keys.outbox(part)]
        # From the real clock, not `now` (a period's time): a record outlives its last write by the TTL, and ids
        # name their day or period, so no retry of an id comes after its record is gone.
        expire_at = now_ms() // 1000 + rules.REWARD_DAY_TTL_S
        args: list[Any] = ["accrue", now, keys.SYS_REWARDS_BUDGET, s.reward_viewer_day_coins_max]
        args += [s.reward_day_coins_max, expire_at, kind, day]
        ids, statements = [], {}  # statement key -> its index in KEYS
        for g in grants:
            transfer_id = rules.reward_id(kind, g.user, g.period)
            placed = rules.place_legs(rules.reward_legs(g.user, g.coins), part)
            row = rules.statement_row(now, "reward_" + kind, "rewards", g.coins, keys.SYS_REWARDS_BUDGET, transfer_id)
            owed = rules.reward_credits(transfer_id, kind, g.user, placed, part, row, now)
            dest, credit = rules.outbox_fields(owed) or ("", "")
            stmt = 0
            if not owed:  # the viewer lives here: the script writes its row
                statement = keys.statement(g.user)
                if statement not in statements:
                    keys_.append(statement)
                    statements[statement] = len(keys_)  # 1-based, as Lua's KEYS
                stmt = statements[statement]
            fields = [transfer_id, g.coins, rules.encode_legs(placed[part]), "" if owed else row, stmt]
            fields += [f"{g.coins}|{kind}", keys.account(g.user), *g.streak, keys.rewards_watch_field(g.user)]
            args.append(rules.US.join(map(str, (*fields, dest, credit))))
            ids.append(transfer_id)
        return ids, keys_, args

    async def _decide(self, kind: str, grants: list[Grant], now: int) -> tuple[list[Accrual], str]:
        """The budget partition's step of these accruals (one rewards.lua call): their outcomes and the outbox
        entry owing the credits of viewers of other partitions ('' for none). Nothing is durable yet."""
        ids, keys_, args = self._accrual_call(kind, grants, now)
        outbox_id, *statuses = await self._script(keys=keys_, args=args)
        return [Accrual(i, st, g.coins) for i, st, g in zip(ids, statuses, grants, strict=True)], outbox_id

    async def archive_full(self) -> bool:
        """Whether accruals are refused now: past GIFTING_ARCHIVE_BACKLOG_MAX in the budget's partition (the one
        debited), like every debit of a budget (rules.archive_backlog_reject). A refused accrual is not recorded:
        the same id pays once there is room."""
        journal_entries = int(await self.redis.xlen(keys.journal(keys.rewards_part())))
        return rules.archive_backlog_reject(journal_entries, self.settings.archive_backlog_max) is not None

    async def accrue(self, kind: str, user: str, period: str, coins: int, now: int | None = None) -> Accrual:
        """One accrual, durable before it returns (the viewer's credit too, unless it is left to the redrive)."""
        if await self.archive_full():
            return Accrual(rules.reward_id(kind, user, period), "archive_backlog", coins)
        (outcome,), outbox_id = await self._decide(kind, [Grant(user, period, coins)], now or now_ms())
        if outcome.status == "ok":
            await self._deliver([outbox_id])
        return outcome

    async def _deliver(self, outbox_ids: list[str]) -> None:
        """After accruals were paid: make them durable in the budget's partition, then apply the credits owed to
        viewers of other partitions (best effort: one that fails stays in the outbox for the redrive). The
        order matters: a credit applied before its debit is durable could outlive it."""
        owed, part = [i for i in outbox_ids if i], keys.rewards_part()
        if not owed:
            await self.ledger.committed(part)
            return
        # Not committed(): inside a group_commit() block it would put the wait off, and the credit must not go first.
        await self.ledger.durable(self.settings.waitaof_timeout_ms, part)
        await self.ledger.apply_credits(part, owed)

    async def accrue_watch(self, users: list[str], period: int) -> list[Accrual]:
        """Watch period `period` (numbered from the epoch in GIFTING_REWARD_WATCH_PERIOD_S) for each viewer the
        hub saw watching through it. Another hub (or a second call) accruing the same period for the same viewer
        moves nothing: the id is the same."""
        coins = self.settings.reward_watch_coins
        if coins <= 0 or not users:
            return []
        now = period * self.settings.reward_watch_period_s * 1000  # the period's day, not the call's
        return await self._accrue_many("watch", users, str(period), coins, now)

    async def _accrue_many(self, kind: str, users: list[str], period: str, coins: int, now: int) -> list[Accrual]:
        """One accrual per user, ACCRUALS_PER_CALL per script call, one durability wait for all."""
        if await self.archive_full():
            return [Accrual(rules.reward_id(kind, user, period), "archive_backlog", coins) for user in users]
        outcomes: list[Accrual] = []
        outbox_ids: list[str] = []
        for start in range(0, len(users), ACCRUALS_PER_CALL):
            grants = [Grant(user, period, coins) for user in users[start : start + ACCRUALS_PER_CALL]]
            decided, outbox_id = await self._decide(kind, grants, now)
            outcomes += decided
            outbox_ids.append(outbox_id)
        if any(o.status == "ok" for o in outcomes):
            await self._deliver(outbox_ids)
        return outcomes

    async def first_gifts(self, users: set[str], now: int | None = None) -> list[Accrual]:
        """The first-gift-of-the-day reward of each viewer whose gift just settled. Settlement calls this for
        every batch, so it must cost next to nothing once a viewer is paid: this process remembers who was
        paid (or capped) today, and one round trip finds the others already paid and whether the budget can
        pay at all (an empty budget, the default, costs that round trip and no script call)."""
        coins = self.settings.reward_first_gift_coins
        if coins <= 0 or not users:
            return []
        now = now or now_ms()
        day = utc_day(now)
        if self._first_gift_day != day or len(self._first_gift_done) > FIRST_GIFT_MEMO_MAX:
            self._first_gift_day, self._first_gift_done = day, set()
        fresh = sorted(users - self._first_gift_done)
        if not fresh:
            return []
        part = keys.rewards_part()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.reward_records(part, day), [rules.reward_id("first_gift", u, day) for u in fresh])
            pipe.hget(keys.rewards(part), keys.SYS_REWARDS_BUDGET)
            done, budget = await pipe.execute()
        self._first_gift_done.update(u for u, d in zip(fresh, done, strict=True) if d is not None)
        if int(budget or 0) < coins:
            return []  # nothing could pay: not remembered, a later batch tries again
        todo = [u for u, d in zip(fresh, done, strict=True) if d is None]
        outcomes = await self._accrue_many("first_gift", todo, day, coins, now)
        settled = ("ok", "replay", "reward_viewer_cap")  # final for the day: no need to try again
        self._first_gift_done.update(u for u, o in zip(todo, outcomes, strict=True) if o.status in settled)
        return outcomes

    async def claim_streak(self, user: str) -> dict[str, Any]:
        """The daily streak bonus: once per UTC day, after at least one watch period that day; it grows by
        GIFTING_REWARD_STREAK_COINS per consecutive day claimed, up to GIFTING_REWARD_STREAK_DAYS_MAX days."""
        s = self.settings
        if s.reward_streak_coins <= 0:
            raise LedgerError("rewards_disabled", REFUSALS["rewards_disabled"])
        if await self.archive_full():
            raise LedgerError("archive_backlog", REFUSALS["archive_backlog"])
        for _attempt in range(STREAK_ATTEMPTS_MAX):
            now = now_ms()
            day, yesterday = utc_day(now), utc_day(now - DAY_MS)
            stored = await self.redis.hget(keys.rewards_streaks(keys.rewards_part()), keys.account(user))
            streak, stored_now = rules.streak_after(stored, day, yesterday)
            coins = rules.streak_coins(streak, s.reward_streak_coins, s.reward_streak_days_max)
            grant = Grant(user, day, coins, (stored or "", stored_now))
            (outcome,), outbox_id = await self._decide("streak", [grant], now)
            status, transfer_id = outcome.status, outcome.transfer_id
            if status == "stale":
                continue
            if status == "replay":
                raise LedgerError("reward_already_claimed", REFUSALS["reward_already_claimed"])
            if status == "not_watched":
                raise LedgerError("reward_not_earned", REFUSALS["reward_not_earned"])
            if status != "ok":
                raise LedgerError(status, REFUSALS.get(status, status))
            await self._deliver([outbox_id])
            return {"transfer_id": transfer_id, "streak_days": streak, "coins": coins}
        raise LedgerError("busy", "the streak changed concurrently too often; retry")

    async def summary(self, user: str) -> dict[str, Any]:
        """What the wallet's reward panel shows: balance, earned today against the caps, the streak."""
        now = now_ms()
        day, account, part = utc_day(now), keys.account(user), keys.rewards_part()
        async with self.redis.pipeline(transaction=False) as pipe:  # two partitions: the viewer's and the budget's
            pipe.hget(keys.rewards(keys.part_of(account)), account)
            pipe.hmget(keys.rewards_earned_on(part, day), account, keys.rewards_watch_field(user))
            pipe.hget(keys.rewards_streaks(part), account)
            pipe.hexists(keys.reward_records(part, day), rules.reward_id("streak", user, day))
            balance, (earned, watched), streak, claimed = await pipe.execute()
        last, _, count = (streak or "").partition(" ")
        s = self.settings
        return {
            "reward_coins": int(balance or 0),
            "earned_today": int(earned or 0),
            "watch_periods_today": int(watched or 0),
            "viewer_day_coins_max": s.reward_viewer_day_coins_max,
            "streak_days": int(count) if last in (day, utc_day(now - DAY_MS)) and count.isdigit() else 0,
            "streak_claimed_today": bool(claimed),
            "watch_period_s": s.reward_watch_period_s,
            "watch_coins": s.reward_watch_coins,
        }
