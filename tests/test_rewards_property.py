"""Property test: reward accruals, gifts paid with reward or bought coins, purchases, refunds, chargebacks and
retries of each, run concurrently against a real Valkey, keep the ledger consistent after every step.

Hypothesis draws a scenario: steps, each a small batch (1-4) of operations run at once with asyncio.gather on
the ledger's own entry points (the Lua scripts the web app and worker call): accruals (fresh, or a retry of an
earlier id), budget fundings, gifts (fresh or resent, alone or two in one settlement batch, so reward and bought
coins are chosen within one script call), purchases, refunds and chargebacks (possibly of one purchase twice).

After every step: `run_audit` is clean (reward coins moved only budget -> viewer -> spent, budget never
negative, caps kept, every ledger sums to zero), and a model agrees with the server: for each viewer, bought
plus reward coins equal what the answered outcomes add up to, reward coins are never below zero, the budget is
funded minus accrued, a retried accrual or resent gift moves nothing, and each viewer's statement rows sum, per
ledger, to its balances (reward coins and bought coins never mix). Bounded: 60 examples of up to 8 steps
(a few seconds; half of them unless GIFTING_TEST_LONG=1: tests/conftest.py property_settings).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import event, given, note
from hypothesis import strategies as st

from gifting import keys
from gifting.ledger import rules
from gifting.ledger.audit import run_audit
from gifting.ledger.rewards import Rewards
from gifting.ledger.store import GiftToSettle, Ledger, LedgerError
from tests.conftest import make_settings, property_settings

VIEWERS = 2
PRICES = (1, 10, 30)
BUNDLE_COINS = (20, 65)
MAX_STEPS = 8
MAX_OPS_PER_STEP = 4
EXAMPLES = itertools.count(1)
VIEWER_DAY_MAX = 60
DAY_MAX = 10**6


@dataclass(frozen=True)
class Accrue:
    viewer: int
    coins: int
    retry_of: int | None  # None: a fresh id; n: the id of the (n+1)-th latest accrual


@dataclass(frozen=True)
class Fund:
    coins: int


@dataclass(frozen=True)
class Gifts:
    viewer: int
    prices: tuple[int, ...]  # one settlement batch: one gift, or two of the same viewer
    resend_of: int | None  # None: fresh gift ids; n: resend the (n+1)-th latest gift batch


@dataclass(frozen=True)
class Buy:
    viewer: int
    coins: int
    retry_of: int | None


@dataclass(frozen=True)
class Reverse:
    mode: str
    purchase: int  # the (n+1)-th latest purchase


Op = Accrue | Fund | Gifts | Buy | Reverse


def scenarios() -> st.SearchStrategy[list[list[Op]]]:
    earlier = st.none() | st.integers(0, 5)
    viewer = st.integers(0, VIEWERS - 1)
    op: st.SearchStrategy[Op] = st.one_of(
        st.builds(Accrue, viewer=viewer, coins=st.integers(1, 25), retry_of=earlier),
        st.builds(Fund, coins=st.integers(1, 60)),
        st.builds(
            Gifts, viewer=viewer, prices=st.lists(st.sampled_from(PRICES), min_size=1, max_size=2).map(tuple),
            resend_of=earlier,
        ),
        st.builds(Buy, viewer=viewer, coins=st.sampled_from(BUNDLE_COINS), retry_of=earlier),
        st.builds(Reverse, mode=st.sampled_from(("refund", "chargeback")), purchase=st.integers(0, 5)),
    )  # fmt: skip
    return st.lists(st.lists(op, min_size=1, max_size=MAX_OPS_PER_STEP), min_size=1, max_size=MAX_STEPS)


@dataclass
class Budget:
    """Reward coins funded and accrued over every example of the test (the budget is one account)."""

    funded: int = 0
    accrued: int = 0


@dataclass
class Run:
    """One example: its own users, and the model of what the answered outcomes moved."""

    redis: aioredis.Redis
    ledger: Ledger
    rewards: Rewards
    prefix: str
    budget: Budget
    net: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # viewer -> coins + reward coins
    charged_back: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    accruals: list[tuple[str, str, int]] = field(default_factory=list)  # (viewer, period, coins)
    gift_batches: list[list[GiftToSettle]] = field(default_factory=list)
    purchases: list[tuple[str, str, int]] = field(default_factory=list)  # (viewer, purchase id, coins)

    def viewer(self, i: int) -> str:
        return f"{self.prefix}v{i}"

    async def step(self, ops: list[Op]) -> None:
        answers = await asyncio.gather(*(self.run(op) for op in ops))
        note(f"step {ops} -> {answers}")
        report = await run_audit(self.redis)
        assert report.clean, report.summary()
        await self.check()

    async def run(self, op: Op) -> Any:
        if isinstance(op, Accrue):
            return await self.accrue(op)
        if isinstance(op, Fund):
            budget, _replay = await self.rewards.fund("boss", uuid.uuid4().hex, op.coins)
            self.budget.funded += op.coins
            return budget
        if isinstance(op, Gifts):
            return await self.gifts(op)
        if isinstance(op, Buy):
            return await self.buy(op)
        return await self.reverse(op)

    async def accrue(self, op: Accrue) -> str:
        if op.retry_of is not None and len(self.accruals) > op.retry_of:
            user, period, coins = self.accruals[-1 - op.retry_of]
        else:
            user, period, coins = self.viewer(op.viewer), uuid.uuid4().hex, op.coins
            self.accruals.append((user, period, coins))
        outcome = await self.rewards.accrue("watch", user, period, coins)
        event(f"accrual {outcome.status}")
        if outcome.status == "ok":
            self.net[user] += coins
            self.budget.accrued += coins
        return outcome.status

    async def gifts(self, op: Gifts) -> list[str]:
        if op.resend_of is not None and len(self.gift_batches) > op.resend_of:
            batch = self.gift_batches[-1 - op.resend_of]
        else:
            viewer, creator = self.viewer(op.viewer), f"{self.prefix}c"
            batch = []
            for price in op.prices:
                split = rules.split_gift(price, 5000)
                gift_id, fp = str(uuid.uuid4()), rules.fingerprint(viewer, price)
                batch.append(GiftToSettle(gift_id, viewer, creator, price, split.diamonds, fp, "", "room", "gift", 1))
            self.gift_batches.append(batch)
        outcomes = await self.ledger.settle(batch, durable_timeout_ms=1000)
        for gift, outcome in zip(batch, outcomes, strict=True):
            event(f"gift {outcome.status} {outcome.reason} replay={outcome.replay}")
            if outcome.settled and not outcome.replay:
                self.net[gift.viewer] -= gift.coins
        return [f"{o.status}{'(replay)' if o.replay else ''}" for o in outcomes]

    async def buy(self, op: Buy) -> str:
        if op.retry_of is not None and len(self.purchases) > op.retry_of:
            user, pid, coins = self.purchases[-1 - op.retry_of]
        else:
            user, pid, coins = (
                self.viewer(op.viewer),
                keys.purchase_id(self.viewer(op.viewer), uuid.uuid4().hex),
                op.coins,
            )
            self.purchases.append((user, pid, coins))
        fp = rules.fingerprint(pid, coins)
        _record, _same, replay = await self.ledger.purchase(user, pid, fp, "paid", {"coins": coins}, coins)
        if not replay:
            self.net[user] += coins
        return "replay" if replay else "paid"

    async def reverse(self, op: Reverse) -> str:
        if len(self.purchases) <= op.purchase:
            return "none"
        user, pid, coins = self.purchases[-1 - op.purchase]
        try:
            await self.ledger.reverse(pid, op.mode)
        except LedgerError as exc:
            event(f"{op.mode} refused {exc.code}")
            return exc.code
        self.net[user] -= coins
        if op.mode == "chargeback":
            self.charged_back[user] += coins
        event(f"{op.mode} ok")
        return "ok"

    async def check(self) -> None:
        assert await self.rewards.budget() == self.budget.funded - self.budget.accrued >= 0
        for i in range(VIEWERS):
            user = self.viewer(i)
            wallet = await self.ledger.wallet(user)
            assert wallet["reward_coins"] >= 0, (user, wallet)
            assert wallet["coins"] >= -self.charged_back[user], (user, wallet)
            assert wallet["coins"] + wallet["reward_coins"] == self.net[user], (user, wallet, self.net[user])
            rows = await self.redis.lrange(keys.statement(user), 0, -1)
            by_ledger: dict[str, int] = defaultdict(int)
            for n, row in enumerate(rows):
                item = rules.parse_statement_row(n, row)
                by_ledger[item["ledger"]] += item["amount"]
            assert by_ledger["rewards"] == wallet["reward_coins"], (user, dict(by_ledger), wallet)
            if any("\tgift_sent\trewards\t" in row for row in rows):
                event("a gift paid with reward coins")
            assert by_ledger["coins"] == wallet["coins"], (user, dict(by_ledger), wallet)


@pytest.fixture
async def ledgers(redis: aioredis.Redis, tmp_path: Path) -> tuple[Ledger, Rewards, Budget]:
    s = make_settings(tmp_path, reward_viewer_day_coins_max=VIEWER_DAY_MAX, reward_day_coins_max=DAY_MAX)
    ledger = Ledger(redis, s)
    return ledger, Rewards(redis, s, ledger), Budget()


@pytest.mark.timeout(600)  # passes in seconds; hypothesis may shrink a failure for longer
@property_settings(60)  # full count under GIFTING_TEST_LONG=1 (tests/conftest.py)
@given(scenario=scenarios())
async def test_rewards_gifts_purchases_and_reversals_keep_the_ledger_consistent(
    redis: aioredis.Redis, ledgers: tuple[Ledger, Rewards, Budget], scenario: list[list[Op]]
) -> None:
    """Concurrent accruals, reward- and coin-paid gifts, purchases, reversals and retries: audit clean, model true."""
    ledger, rewards, budget = ledgers
    run = Run(redis, ledger, rewards, f"r{next(EXAMPLES)}", budget)
    await rewards.fund("boss", f"start-{run.prefix}", 50)
    budget.funded += 50
    # A start so that early gifts can settle: reward coins for one viewer, bought coins for the other.
    await run.accrue(Accrue(0, 20, None))
    await run.buy(Buy(1, 20, None))
    for ops in scenario:
        await run.step(ops)
