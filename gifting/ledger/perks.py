"""The ledger side of perks: perk.lua's caller. Builds every leg, row and key (rules.py, keys.py) and runs it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gifting import keys
from gifting.clock import now_ms, utc_day
from gifting.ledger import rules
from gifting.ledger.remote_part import place
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
        transfer, the spend cap and the grant in one call in the buyer's partition; the creator's part through
        its outbox when the creator lives in another (then applied: Ledger.apply_credits). Refused
        `archive_backlog` (recorded, nothing moves) past GIFTING_ARCHIVE_BACKLOG_MAX, like every debit."""
        outcome, outbox_id = await self.buy_step(order, fingerprint, record_ttl_s)
        if outbox_id:
            await self.ledger.apply_credits(keys.part_of_user(order.viewer), [outbox_id])
        return outcome

    async def buy_step(self, order: PerkOrder, fingerprint: str, record_ttl_s: int) -> tuple[PerkOutcome, str]:
        """buy's source step alone, durable: its outcome and the outbox entry it wrote ('' when none). Tests use
        it to stop between the two steps."""
        s, now, part = self.ledger.settings, now_ms(), keys.part_of_user(order.viewer)
        split = rules.split_gift(order.coins, s.perk_creator_share_bps)
        viewer, creator = keys.account(order.viewer), keys.account(order.creator)
        ref, local_creator = order.purchase_id, keys.part_of(creator) == part
        creator_row = ""
        if split.diamonds > 0:
            creator_row = rules.statement_row(now, "perk_sold", "diamonds", split.diamonds, viewer, ref, order.kind)
        placed = place(rules.perk_legs(order.viewer, order.creator, split), part, creator, ref, "perk_sold",
                       creator_row, 0, now, order.room)  # fmt: skip
        reward_placed = place(rules.perk_legs(order.viewer, order.creator, split, with_rewards=True), part, creator,
                              ref, "perk_sold", creator_row, 0, now, order.room)  # fmt: skip
        assert (placed.dest, placed.credit) == (reward_placed.dest, reward_placed.credit)  # the creator's part
        viewer_row = rules.statement_row(now, "perk_bought", "coins", -order.coins, creator, ref, order.kind)
        reward_row = rules.statement_row(now, "perk_bought", "rewards", -order.coins, creator, ref, order.kind)
        backlog = rules.archive_backlog_reject(
            int(await self.ledger.redis.xlen(keys.journal(part))), s.archive_backlog_max
        )
        fields = {**order.fields, "creator": order.creator, "diamonds": str(split.diamonds)}
        record = keys.perk_purchase(ref)
        keys_ = [keys.coins(part), keys.diamonds(part), keys.journal(part), record]
        keys_ += [keys.spend_limits(part), keys.spent_on(part, utc_day(now)), keys.account_statement(viewer)]
        keys_ += [keys.account_statement(creator) if local_creator else record, order.grant_key]
        keys_ += [keys.room_ended(part, order.room), keys.rewards(part), keys.outbox(part)]
        args: list[Any] = ["buy", now, ref, fingerprint, viewer, order.coins, placed.local_legs, viewer_row]
        args += [creator_row if local_creator else "", s.daily_spend_coins_max, rules.SPENT_DAY_TTL_S]
        args += [record_ttl_s, order.kind, order.duration_ms, s.perk_creator_share_bps, reward_placed.local_legs]
        args += [reward_row, backlog or "", placed.dest, placed.credit]
        args += [x for pair in fields.items() for x in pair]
        status, reason, balance, replay, until_ms, paid_with, outbox_id = await self._script(keys=keys_, args=args)
        await self.ledger.committed(part)
        log.info("perk %s %s by %s: %s %s %s", ref, order.kind, order.viewer, status, reason, paid_with)
        outcome = PerkOutcome(ref, status, reason, int(balance), bool(int(replay)), int(until_ms), paid_with)
        return outcome, outbox_id

    async def refund(self, purchase_id: str, room: str) -> tuple[bool, str]:
        """Reverse a settled ticket's chain, once (its record says refunded after), in the buyer's partition: a
        reward-paid ticket gives back reward coins, never bought coins; the creator gives the diamonds back
        through the outbox when in another partition. Returns (True if this call refunded it, the outbox entry
        written or ''); False if it was not settled or already refunded (nothing moves). Not durable yet: the
        caller waits (Ledger.committed of the buyer's partition) before it applies the outbox entry."""
        record = await self.ledger.redis.hgetall(keys.perk_purchase(purchase_id))
        if record.get("status") != "settled":
            return False, ""
        now, coins, diamonds = now_ms(), int(record["coins"]), int(record["diamonds"])
        viewer_user, creator_user = record["viewer"].removeprefix(keys.ACCOUNT_PREFIX), record["creator"]
        part, creator = keys.part_of_user(viewer_user), keys.account(creator_user)
        split = rules.GiftSplit(coins, diamonds, coins - diamonds)
        paid_with = record.get("paid_with") or "coins"  # records from before reward-paid perks: coins
        with_rewards = paid_with == "rewards"
        transfer = "perk_refund:" + purchase_id
        viewer_row = rules.statement_row(now, "perk_refund", paid_with, coins, creator, purchase_id, record["kind"])
        creator_row = ""
        if diamonds > 0:
            creator_row = rules.statement_row(
                now, "perk_refund", "diamonds", -diamonds, record["viewer"], purchase_id, record["kind"]
            )
        legs = rules.perk_refund_legs(viewer_user, creator_user, split, with_rewards)
        placed = place(legs, part, creator, transfer, "perk_refund", creator_row, 0, now, room)
        local_creator = not placed.remote and keys.part_of(creator) == part
        record_key = keys.perk_purchase(purchase_id)
        keys_ = [keys.coins(part), keys.diamonds(part), keys.journal(part), record_key]
        keys_ += [keys.room_tickets(part, room), keys.account_statement(record["viewer"])]
        keys_ += [keys.account_statement(creator) if local_creator else record_key, keys.rewards(part)]
        keys_ += [keys.outbox(part)]
        args = ["refund", now, purchase_id, transfer, record["viewer"], placed.local_legs, viewer_row]
        args += [creator_row if local_creator else "", paid_with, placed.dest, placed.credit]
        status, _reason, _balance, _replay, _until, _paid_with, outbox_id = await self._script(keys=keys_, args=args)
        log.info("perk %s refunded in room %s: %s", purchase_id, room, status)
        return status == "refunded", outbox_id
