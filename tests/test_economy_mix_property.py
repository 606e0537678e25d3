"""Property test: the whole coin economy at once (issue 14). Sponsored gifts, perks (highlight, entrance), tickets
to a premium stream that ends early (refunding them), reward accruals, gifts paid with reward or bought coins,
purchases, refunds, chargebacks and retries of each, run concurrently against a real Valkey: the audit is clean
after every step and a model of balances and budgets agrees with the server.

It extends tests/test_rewards_property.py (its operations, model and per-step checks are reused as they are):
each step is a small batch (1-4) of operations run at once with asyncio.gather on the ledger's own entry points
(the Lua scripts the web app and worker call; a premium stream ends through rooms.store.finish_end, which
refunds its tickets). On top of that model's checks (bought plus reward coins per viewer, statements per
ledger, the rewards budget), this one checks: the campaign's budget is funded minus the sponsored gifts settled
(never below zero) and exactly zero in the budget once returned to the brand at the end, exactly once; the host
creator's diamonds are what its settled perks, tickets and sponsored gifts earned minus refunded tickets; each
viewer holds a ticket exactly when the model says. Bounded: 40 examples of up to 8 steps
(seconds; half of them unless GIFTING_TEST_LONG=1: tests/conftest.py property_settings).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import event, given
from hypothesis import strategies as st

from gifting import clock, keys
from gifting.catalog.model import load_default
from gifting.ledger import rules
from gifting.ledger.audit import run_audit
from gifting.ledger.campaigns import Campaigns, SponsoredSend, make_campaign
from gifting.ledger.perks import PerkLedger, PerkOrder
from gifting.ledger.rewards import Rewards
from gifting.ledger.store import Ledger
from gifting.rooms.store import RoomStore
from tests.conftest import property_settings
from tests.test_rewards_property import (
    EXAMPLES,
    MAX_OPS_PER_STEP,
    MAX_STEPS,
    PRICES,
    VIEWERS,
    Accrue,
    Budget,
    Buy,
    Fund,
    Gifts,
    Reverse,
    Run,
    ledgers,
)

__all__ = ["ledgers"]  # the fixture, shared with tests/test_rewards_property.py

SPONSORED_GIFT = "coffee"
CAMPAIGN_COINS = (25, 60)  # a budget of 2 or 6 sponsored coffees (10 coins each): storms exhaust it
PERK_PRICES = (10, 30)
TICKET_COINS = 20
ENTRANCE_DAYS = 1


@dataclass(frozen=True)
class Sponsored:
    viewer: int
    resend_of: int | None  # None: a fresh gift id; n: resend the (n+1)-th latest sponsored gift


@dataclass(frozen=True)
class FundCampaign:
    coins: int


@dataclass(frozen=True)
class Perk:
    viewer: int
    kind: str  # highlight | entrance
    coins: int
    retry_of: int | None  # None: a fresh purchase id; n: retry the (n+1)-th latest perk purchase


@dataclass(frozen=True)
class Ticket:
    viewer: int
    retry_of: int | None


@dataclass(frozen=True)
class EndPremium:
    """The premium stream ends early (within GIFTING_PREMIUM_REFUND_WINDOW_S): every ticket is refunded once; a
    new premium stream opens for later tickets."""


Op = Accrue | Fund | Gifts | Buy | Reverse | Sponsored | FundCampaign | Perk | Ticket | EndPremium


def scenarios() -> st.SearchStrategy[list[list[Op]]]:
    earlier = st.none() | st.integers(0, 3)
    viewer = st.integers(0, VIEWERS - 1)
    op: st.SearchStrategy[Op] = st.one_of(
        st.builds(Accrue, viewer=viewer, coins=st.integers(1, 25), retry_of=earlier),
        st.builds(Fund, coins=st.integers(1, 60)),
        st.builds(
            Gifts, viewer=viewer, prices=st.lists(st.sampled_from(PRICES), min_size=1, max_size=2).map(tuple),
            resend_of=earlier,
        ),
        st.builds(Buy, viewer=viewer, coins=st.sampled_from((20, 65)), retry_of=earlier),
        st.builds(Reverse, mode=st.sampled_from(("refund", "chargeback")), purchase=st.integers(0, 3)),
        st.builds(Sponsored, viewer=viewer, resend_of=earlier),
        st.builds(FundCampaign, coins=st.sampled_from(CAMPAIGN_COINS)),
        st.builds(
            Perk, viewer=viewer, kind=st.sampled_from(("highlight", "entrance")),
            coins=st.sampled_from(PERK_PRICES), retry_of=earlier,
        ),
        st.builds(Ticket, viewer=viewer, retry_of=earlier),
        st.just(EndPremium()),
    )  # fmt: skip
    return st.lists(st.lists(op, min_size=1, max_size=MAX_OPS_PER_STEP), min_size=1, max_size=MAX_STEPS)


@dataclass
class MixRun(Run):
    """Run, plus a campaign, a host creator's premium stream, perks and tickets, and their model."""

    perks: PerkLedger | None = None
    campaigns: Campaigns | None = None
    rooms: RoomStore | None = None
    campaign: str = ""
    room: str = ""  # the host's live (premium) room; a new one after each early end
    campaign_funded: int = 0
    campaign_spent: int = 0
    campaign_returned: int | None = None
    host_diamonds: int = 0
    sponsored: list[SponsoredSend] = field(default_factory=list)
    perk_orders: list[tuple[PerkOrder, str]] = field(default_factory=list)  # (order, fingerprint)
    # room -> viewer -> (purchase id, diamonds) of the tickets the model holds; rooms whose end completed
    tickets: dict[str, dict[str, tuple[str, int]]] = field(default_factory=lambda: defaultdict(dict))
    ended: set[str] = field(default_factory=set)
    ending: asyncio.Lock = field(default_factory=asyncio.Lock)  # one end at a time (one live room per creator)

    @property
    def host(self) -> str:
        return f"{self.prefix}host"

    async def open_premium(self) -> None:
        assert self.rooms is not None
        self.room = (await self.rooms.open(self.host, "Host", "Premium")).room
        await self.redis.hset(keys.room_meta(self.room), mapping={"premium_coins": TICKET_COINS,
                              "premium_since_ms": clock.now_ms()})  # fmt: skip

    async def run(self, op: Any) -> Any:
        if isinstance(op, Sponsored):
            return await self.send(op)
        if isinstance(op, FundCampaign):
            return await self.fund_campaign(op)
        if isinstance(op, Perk):
            return await self.buy_perk(op)
        if isinstance(op, Ticket):
            return await self.buy_ticket(op)
        if isinstance(op, EndPremium):
            return await self.end_premium()
        return await super().run(op)

    async def fund_campaign(self, op: FundCampaign) -> int:
        assert self.campaigns is not None
        budget = await self.campaigns.fund(self.campaign, op.coins, uuid.uuid4().hex, None, "inv-1")
        self.campaign_funded += op.coins
        return budget

    async def send(self, op: Sponsored) -> str:
        assert self.campaigns is not None
        if op.resend_of is not None and len(self.sponsored) > op.resend_of:
            send = self.sponsored[-1 - op.resend_of]
        else:
            viewer, room = self.viewer(op.viewer), self.room
            split = rules.split_gift(10, self.ledger.settings.creator_share_bps)
            fp = rules.fingerprint(viewer, room, SPONSORED_GIFT, 1, self.campaign)
            send = SponsoredSend(str(uuid.uuid4()), self.campaign, viewer, self.host, room, SPONSORED_GIFT, 1,
                                 split.coins, split.diamonds, fp, "", 1)  # fmt: skip
            self.sponsored.append(send)
        (outcome,) = await self.campaigns.send([send])
        event(f"sponsored {outcome.status} {outcome.reason} replay={outcome.replay}")
        if outcome.settled and not outcome.replay:
            self.campaign_spent += send.coins
            self.host_diamonds += send.diamonds
        return f"{outcome.status} {outcome.reason}"

    async def buy_perk(self, op: Perk) -> str:
        if op.retry_of is not None and len(self.perk_orders) > op.retry_of:
            order, fp = self.perk_orders[-1 - op.retry_of]
        else:
            viewer, ref = self.viewer(op.viewer), keys.user_scoped_id(self.viewer(op.viewer), uuid.uuid4().hex)
            duration_ms = 60_000 if op.kind == "highlight" else ENTRANCE_DAYS * 86_400_000
            grant = (
                keys.perk_purchase(ref) if op.kind == "highlight" else keys.perk_entrances(keys.part_of_user(viewer))
            )
            order = PerkOrder(ref, viewer, self.host, op.kind, self.room, op.coins, duration_ms, grant,
                              {"perk": op.kind, "room": self.room})  # fmt: skip
            fp = rules.fingerprint(self.room, op.kind, op.coins)
            self.perk_orders.append((order, fp))
        return await self.settle_perk(order, fp, self.ledger.settings.idempotency_ttl_s)

    async def buy_ticket(self, op: Ticket) -> str:
        viewer = self.viewer(op.viewer)
        held = self.tickets[self.room].get(viewer)
        tickets = keys.room_tickets(keys.part_of_user(viewer), self.room)  # the buyer's partition holds it
        if op.retry_of is not None and held:
            order = PerkOrder(held[0], viewer, self.host, "ticket", self.room, TICKET_COINS, 0,
                              tickets, {"perk": "ticket", "room": self.room})  # fmt: skip
        else:
            ref = keys.user_scoped_id(viewer, uuid.uuid4().hex)
            order = PerkOrder(ref, viewer, self.host, "ticket", self.room, TICKET_COINS, 0,
                              tickets, {"perk": "ticket", "room": self.room})  # fmt: skip
        return await self.settle_perk(order, rules.fingerprint(self.room, "ticket", TICKET_COINS), 0)

    async def settle_perk(self, order: PerkOrder, fp: str, ttl_s: int) -> str:
        assert self.perks is not None
        outcome = await self.perks.buy(order, fp, ttl_s)
        event(f"{order.kind} {outcome.status} {outcome.reason} {outcome.paid_with} replay={outcome.replay}")
        if outcome.settled and not outcome.replay:
            diamonds = rules.split_gift(order.coins, self.ledger.settings.perk_creator_share_bps).diamonds
            self.net[order.viewer] -= order.coins
            self.host_diamonds += diamonds
            if order.kind == "ticket":
                self.tickets[order.room][order.viewer] = (order.purchase_id, diamonds)
                if order.room in self.ended:  # settled before the end's mark, answered after its refunds
                    self.refunded(order.room)
        return f"{order.kind} {outcome.status} {outcome.reason} {outcome.paid_with}"

    async def end_premium(self) -> int:
        """End the stream early (rooms.store.finish_end refunds its tickets), then open the next one. A ticket
        settles only before the end's mark (perk.lua checks it), and the refunds come after the mark: so every
        ticket of the ended room the model holds, now or once its answer arrives, was refunded."""
        assert self.rooms is not None
        async with self.ending:
            ended = self.room
            await self.rooms.finish_end(ended)
            self.ended.add(ended)
            count = self.refunded(ended)
            await self.open_premium()
        return count

    def refunded(self, room: str) -> int:
        held = self.tickets.pop(room, {})
        for viewer, (_purchase, diamonds) in held.items():
            self.net[viewer] += TICKET_COINS
            self.host_diamonds -= diamonds
            event("ticket refunded")
        return len(held)

    async def check(self) -> None:
        await super().check()
        assert self.campaigns is not None
        budget = await self.campaigns.budget(self.campaign)
        if self.campaign_returned is None:
            assert budget == self.campaign_funded - self.campaign_spent >= 0, (budget, self.campaign_funded)
        else:
            assert budget == 0 and self.campaign_returned == self.campaign_funded - self.campaign_spent
        wallet = await self.ledger.wallet(self.host)
        assert wallet["diamonds"] == self.host_diamonds, (wallet, self.host_diamonds)
        for room in {self.room, *self.ended}:
            for i in range(VIEWERS):
                viewer = self.viewer(i)
                holds = await self.redis.hget(keys.room_tickets(keys.part_of_user(viewer), room), keys.account(viewer))
                held = self.tickets.get(room, {}).get(viewer)
                assert (holds or None) == (held[0] if held else None), (room, viewer, holds, held)


async def start(run: MixRun) -> None:
    """A start so that early operations can settle: reward coins for one viewer, bought coins for the other, a
    funded campaign and a live premium stream."""
    assert run.campaigns is not None
    await run.rewards.fund("boss", f"start-{run.prefix}", 50)
    run.budget.funded += 50
    await run.accrue(Accrue(0, 30, None))
    await run.buy(Buy(1, 65, None))
    await run.open_premium()
    body = {"name": "Mix", "gift": SPONSORED_GIFT, "end_ms": clock.now_ms() + 3_600_000}
    record = make_campaign(body, f"{run.prefix}brand", "Brand", load_default(), run.ledger.settings, clock.now_ms())
    run.campaign = record["id"]
    await run.campaigns.create(record)
    await run.fund_campaign(FundCampaign(CAMPAIGN_COINS[0]))


async def finish(run: MixRun) -> None:
    """The campaign ends: its unspent budget returns to the brand, once however often it is closed."""
    assert run.campaigns is not None
    closings = await asyncio.gather(*(run.campaigns.close(run.campaign, early=True) for _ in range(2)))
    assert sorted(code for code, _ in closings) == ["already_closed", "closed"], closings
    run.campaign_returned = sum(returned for code, returned in closings if code == "closed")
    brand = await run.ledger.wallet(f"{run.prefix}brand")
    assert brand["coins"] == run.campaign_returned
    report = await run_audit(run.redis)
    assert report.clean, report.summary()


@pytest.mark.timeout(600)  # passes in seconds; hypothesis may shrink a failure for longer
@property_settings(40)  # full count under GIFTING_TEST_LONG=1 (tests/conftest.py)
@given(scenario=scenarios())
async def test_the_whole_economy_mixed_keeps_the_ledger_consistent(
    redis: aioredis.Redis, ledgers: tuple[Ledger, Rewards, Budget], scenario: list[list[Op]]
) -> None:
    """Concurrent sponsored gifts, perks, tickets and an early end, accruals, gifts, purchases, reversals and
    retries: audit clean after every step, balances and budgets as modelled."""
    ledger, rewards, budget = ledgers
    run = MixRun(redis, ledger, rewards, f"m{next(EXAMPLES)}", budget)
    run.perks, run.campaigns, run.rooms = (
        PerkLedger(ledger),
        Campaigns(redis, ledger.settings),
        RoomStore(redis, ledger.settings),
    )
    await start(run)
    for ops in scenario:
        await run.step(ops)  # type: ignore[arg-type]  # MixRun.run takes every op, Run's and these
    await finish(run)
    await run.check()
