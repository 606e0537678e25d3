"""The ledger side of perks: perk.lua's caller. Builds every leg, row and key (rules.py, keys.py) and runs it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gifting import keys
from gifting.clock import now_ms, utc_day
from gifting.ledger import rules
from gifting.ledger.store import Ledger, load_script_with

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PerkOutcome:
    """What perk.lua decided for one purchase id; the same outcome answers every retry of it."""

    purchase_id: str
    status: str  # settled | rejected | conflict
    reason: str  # "" when settled
    coins: int  # the buyer's coin balance after
    replay: bool
    until_ms: int  # highlight: when it unpins; entrance: when the effect ends; ticket: 0
    paid_with: str = ""  # coins | rewards (rules.pays_with_rewards); "" when not settled

    @property
    def settled(self) -> bool:
        return self.status == "settled"


@dataclass(frozen=True, slots=True)
class PerkOrder:
    """One purchase as the caller checked it: who pays whom how much, for what."""

    purchase_id: str
    viewer: str
    creator: str
    kind: str  # rules.PERK_KINDS
    room: str  # where it was bought (a purchase is refused once the room's end began)
    coins: int
    duration_ms: int  # highlight: its pin; entrance: what it adds; ticket: 0
    grant_key: str  # entrances hash | the room's tickets hash | the purchase record
    fields: dict[str, str]  # kept in the record (perk, room, message, ...)


class PerkLedger:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._script = ledger.redis.register_script(load_script_with("perk.lua", "spend_cap.lua", "legs.lua"))

    async def buy(self, order: PerkOrder, fingerprint: str, record_ttl_s: int) -> PerkOutcome:
        """Pay for a perk once per purchase id, with reward coins when they cover it, else bought coins: the
        transfer, the spend cap and the grant in one call. Refused `archive_backlog` (recorded, nothing moves)
        past GIFTING_ARCHIVE_BACKLOG_MAX, like every debit."""
        s, now = self.ledger.settings, now_ms()
        split = rules.split_gift(order.coins, s.perk_creator_share_bps)
        viewer, creator = keys.account(order.viewer), keys.account(order.creator)
        legs = rules.encode_legs(rules.perk_legs(order.viewer, order.creator, split))
        reward_legs = rules.encode_legs(rules.perk_legs(order.viewer, order.creator, split, with_rewards=True))
        ref = order.purchase_id
        viewer_row = rules.statement_row(now, "perk_bought", "coins", -order.coins, creator, ref, order.kind)
        reward_row = rules.statement_row(now, "perk_bought", "rewards", -order.coins, creator, ref, order.kind)
        backlog = rules.archive_backlog_reject(
            int(await self.ledger.redis.xlen(keys.LEDGER_JOURNAL)), s.archive_backlog_max
        )
        creator_row = ""
        if split.diamonds > 0:
            creator_row = rules.statement_row(now, "perk_sold", "diamonds", split.diamonds, viewer, ref, order.kind)
        fields = {**order.fields, "creator": order.creator, "diamonds": str(split.diamonds)}
        keys_ = [keys.LEDGER_COINS, keys.LEDGER_DIAMONDS, keys.LEDGER_JOURNAL, keys.perk_purchase(ref)]
        keys_ += [keys.LEDGER_SPEND_LIMITS, keys.spent_on(utc_day(now)), keys.account_statement(viewer)]
        keys_ += [keys.account_statement(creator), order.grant_key, keys.room_ended(order.room), keys.LEDGER_REWARDS]
        args: list[Any] = ["buy", now, ref, fingerprint, viewer, order.coins, legs, viewer_row, creator_row]
        args += [s.daily_spend_coins_max, rules.SPENT_DAY_TTL_S, record_ttl_s, order.kind, order.duration_ms]
        args += [s.perk_creator_share_bps, reward_legs, reward_row, backlog or ""]
        args += [x for pair in fields.items() for x in pair]
        status, reason, balance, replay, until_ms, paid_with = await self._script(keys=keys_, args=args)
        await self.ledger.committed()
        log.info("perk %s %s by %s: %s %s %s", ref, order.kind, order.viewer, status, reason, paid_with)
        return PerkOutcome(ref, status, reason, int(balance), bool(int(replay)), int(until_ms), paid_with)

    async def refund(self, purchase_id: str, room: str) -> bool:
        """Reverse a settled ticket's chain, once (its record says refunded after): a reward-paid ticket gives
        back reward coins, never bought coins. Returns True if this call refunded it; False if it was not
        settled or already refunded (nothing moves)."""
        record = await self.ledger.redis.hgetall(keys.perk_purchase(purchase_id))
        if record.get("status") != "settled":
            return False
        now, coins, diamonds = now_ms(), int(record["coins"]), int(record["diamonds"])
        viewer_user, creator_user = record["viewer"].removeprefix(keys.ACCOUNT_PREFIX), record["creator"]
        split = rules.GiftSplit(coins, diamonds, coins - diamonds)
        paid_with = record.get("paid_with") or "coins"  # records from before reward-paid perks: coins
        with_rewards = paid_with == "rewards"
        legs = rules.encode_legs(rules.perk_refund_legs(viewer_user, creator_user, split, with_rewards))
        transfer = "perk_refund:" + purchase_id
        creator = keys.account(creator_user)
        viewer_row = rules.statement_row(now, "perk_refund", paid_with, coins, creator, purchase_id, record["kind"])
        creator_row = ""
        if diamonds > 0:
            creator_row = rules.statement_row(
                now, "perk_refund", "diamonds", -diamonds, record["viewer"], purchase_id, record["kind"]
            )
        keys_ = [keys.LEDGER_COINS, keys.LEDGER_DIAMONDS, keys.LEDGER_JOURNAL, keys.perk_purchase(purchase_id)]
        keys_ += [keys.room_tickets(room), keys.account_statement(record["viewer"]), keys.account_statement(creator)]
        keys_ += [keys.LEDGER_REWARDS]
        args = ["refund", now, purchase_id, transfer, record["viewer"], legs, viewer_row, creator_row, paid_with]
        status, _reason, _balance, _replay, _until, _paid_with = await self._script(keys=keys_, args=args)
        await self.ledger.committed()
        log.info("perk %s refunded in room %s: %s", purchase_id, room, status)
        return bool(status == "refunded")
