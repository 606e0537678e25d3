"""Perks bought with coins: highlighted messages, entrance effects and tickets to premium streams.

Every purchase is made in a live room and pays that room's creator like a gift (rules.perk_legs at
GIFTING_PERK_CREATOR_SHARE_BPS), once per (buyer, Idempotency-Key), counted against the daily spend cap.
- A highlighted message is pinned in the room for rules.highlight_pin_ms of its price. The room hears it as a
  `highlight` event carrying `until_ms`; clients unpin it at that instant, and a snapshot (`joined.pins`)
  never holds an expired pin, so it is unpinned exactly at expiry with no sweeper in between.
- An entrance effect runs `days` days (a purchase while one runs extends it); whenever its owner joins a room
  before it ends, the hub announces an `entrance` event (at most once per GIFTING_ENTRANCE_COOLDOWN_S per room).
  The hub reads the end time at each join, so an expired effect stops at once.
- A creator marks a live stream premium with a ticket price; from then on only the creator, admins and viewers
  holding a ticket may join it (`ticket_required` otherwise). Viewers already watching stay. A ticket is for
  one stream. If the stream ends within GIFTING_PREMIUM_REFUND_WINDOW_S of being marked premium it ended early:
  every ticket's chain is reversed in full (rules.ticket_refund_due), once each, as part of ending the room.

The grant is written by perk.lua with the transfer (one ledger call); a pin lives in the room's slot and is
written after it, by the purchase id: a retry of the same purchase writes it again and announces it once.

Partitions: a purchase, its grant (entrance effect, ticket) and a ticket's refund live in the BUYER's ledger
partition; the creator's diamonds go by outbox credit (ledger/perks.py). A join reads the joiner's partition;
a room's end marks every partition, then refunds the tickets of every partition (docs/SCALING.md).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import redis.asyncio as aioredis

from gifting import clock, keys
from gifting.auth import Identity
from gifting.catalog.perks import Perk, PerkCatalog
from gifting.config import Settings
from gifting.errors import GiftingError
from gifting.fanclubs import FanClubs
from gifting.ledger import partitions, rules
from gifting.ledger.perks import PerkLedger, PerkOrder, PerkOutcome
from gifting.ledger.store import Ledger
from gifting.rooms.store import RoomStore
from gifting.wire.messages import EntranceEvent, HighlightEvent

log = logging.getLogger(__name__)
TICKET_REFUNDS_MAX = 100_000  # tickets one ending room refunds (HSCAN pages); more would be a finding, not a loop


class PerkError(GiftingError):
    """A perk purchase or premium setting refused before any coin moved; `code` is in the HTTP status table."""


class Perks:
    def __init__(self, redis: aioredis.Redis, settings: Settings, rooms: RoomStore, ledger: Ledger) -> None:
        self.redis, self.settings, self.rooms = redis, settings, rooms
        self.catalog = PerkCatalog(redis)
        self.ledger = PerkLedger(ledger)
        self.fanclubs = FanClubs(redis, settings)

    # Buying -------------------------------------------------------------------------------------------

    async def buy(self, buyer: Identity, room: str, perk_id: str, key: str, message: str | None) -> dict[str, Any]:
        """Buy a catalog perk (highlight or entrance) in `room`; the outcome of the first call with this key."""
        perk = await self.catalog.get(perk_id)
        if perk is None or perk.retired:
            raise PerkError("unknown_perk", f"no perk {perk_id!r} on sale")
        creator = await self._live_creator(room, buyer.user)
        s = self.settings
        fields = {"perk": perk.id, "room": room, "name": buyer.name}
        if perk.kind == "highlight":
            fields["message"] = self._message(message)
            duration_ms, grant = (
                rules.highlight_pin_ms(perk.coins, s.highlight_pin_s_per_coin, s.highlight_pin_s_max),
                "",
            )
        else:
            duration_ms, grant = perk.days * 86_400_000, keys.perk_entrances(keys.part_of_user(buyer.user))
        purchase_id = keys.user_scoped_id(buyer.user, key)
        order = PerkOrder(purchase_id, buyer.user, creator, perk.kind, room, perk.coins, duration_ms,
                          grant or keys.perk_purchase(purchase_id), fields)  # fmt: skip
        outcome = await self.ledger.buy(
            order, rules.fingerprint(room, perk.id, perk.coins, message), s.idempotency_ttl_s
        )
        if outcome.settled and perk.kind == "highlight":
            await self._pin(room, outcome, buyer, perk, fields["message"])
        return self._result(outcome, perk.kind, perk.id)

    async def buy_ticket(self, buyer: Identity, room: str, coins_shown: int, key: str) -> dict[str, Any]:
        """Buy the ticket to `room`'s premium stream at the price the buyer saw (else `price_changed`)."""
        creator = await self._live_creator(room, buyer.user)
        price = int(await self.redis.hget(keys.room_meta(room), "premium_coins") or 0)
        if price == 0:
            raise PerkError("not_premium", f"room {room!r} is not a premium stream; anyone may join it")
        if coins_shown != price:
            raise PerkError("price_changed", f"the ticket costs {price} coins, not {coins_shown}")
        purchase_id = keys.user_scoped_id(buyer.user, key)
        tickets = keys.room_tickets(keys.part_of_user(buyer.user), room)  # the buyer's partition holds it
        order = PerkOrder(purchase_id, buyer.user, creator, "ticket", room, price, 0, tickets,
                          {"perk": "ticket", "room": room, "name": buyer.name})  # fmt: skip
        # A ticket's record is kept until its stream ends (0): a refund may come hours later.
        outcome = await self.ledger.buy(order, rules.fingerprint(room, "ticket", price), 0)
        return self._result(outcome, "ticket", "ticket")

    def _result(self, outcome: PerkOutcome, kind: str, perk: str) -> dict[str, Any]:
        if outcome.status == "conflict":
            raise PerkError("perk_id_conflict", "Idempotency-Key was used for a different perk purchase")
        return {"purchase_id": outcome.purchase_id, "perk": perk, "kind": kind, "status": outcome.status,
                "reason": outcome.reason or None, "coins": outcome.coins, "replay": outcome.replay,
                "until_ms": outcome.until_ms or None, "paid_with": outcome.paid_with or None}  # fmt: skip

    async def _live_creator(self, room: str, buyer: str) -> str:
        info = await self.rooms.get(room)
        if info.status != "live":
            raise PerkError("room_not_live", f"room {room!r} has ended")
        if info.creator == buyer:
            raise PerkError("self_perk", "a creator cannot buy perks in their own room (it would pay themselves)")
        return info.creator

    def _message(self, message: str | None) -> str:
        chars_max = self.settings.highlight_chars_max
        if not isinstance(message, str) or not 1 <= len(message.strip()) <= chars_max:
            raise PerkError("bad_message", f"message: expected 1..{chars_max} characters")
        return message.strip()

    # Highlighted messages -------------------------------------------------------------------------------

    async def _pin(self, room: str, outcome: PerkOutcome, buyer: Identity, perk: Perk, message: str) -> None:
        """Pin and announce a settled highlight, by its purchase id (a retry repeats both, harmlessly)."""
        event = HighlightEvent(outcome.purchase_id, buyer.user, buyer.name, message, perk.coins, outcome.until_ms)
        data = event.to_dict()
        if outcome.until_ms > clock.now_ms():
            # Expired pins are trimmed by the next pin; the set itself expires with the room (rooms.store.room_keys).
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(keys.room_pins(room), 0, clock.now_ms())
                pipe.zadd(keys.room_pins(room), {orjson.dumps(data).decode(): outcome.until_ms})
                await pipe.execute()
        await self.rooms.announce(room, [(f"highlight:{outcome.purchase_id}", data)])

    def read_pins(self, pipe: Any, room: str) -> None:
        """Queue the read of the room's pins still in force on `pipe` (the hub's join snapshot): their JSON, the
        longest-pinned first, at most GIFTING_HIGHLIGHT_PINS_MAX. An expired pin is skipped here and trimmed by
        the room's next pin, so a join only reads."""
        pins_max = self.settings.highlight_pins_max
        pipe.zrevrangebyscore(keys.room_pins(room), "+inf", clock.now_ms() + 1, start=0, num=pins_max)

    # Entrance effects ---------------------------------------------------------------------------------

    async def joined(self, room: str, creator: str, user: str, name: str) -> None:
        """After a viewer joined a room (the hub): a member's daily visit to the creator's club, and the
        viewer's entrance effect if it runs. The visit and the effect's end are one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.perk_entrances(keys.part_of_user(user)), keys.account(user))  # the joiner's partition
            await self.fanclubs.visit(creator, user, client=pipe)
            until_ms, _visit = await pipe.execute()
        await self.entrance(room, user, name, int(until_ms or 0))

    async def entrance(self, room: str, user: str, name: str, until_ms: int) -> bool:
        """Announce `user`'s entrance to `room` if their effect (paid until `until_ms`) runs now, once per
        cooldown bucket."""
        now = clock.now_ms()
        if until_ms <= now:
            return False
        bucket = now // (max(1, self.settings.entrance_cooldown_s) * 1000)
        await self.rooms.announce(room, [(f"entrance:{user}:{bucket}", EntranceEvent(user, name, until_ms).to_dict())])
        return True

    # Premium streams ----------------------------------------------------------------------------------

    async def set_premium(self, creator: Identity, room: str, coins: int) -> dict[str, Any]:
        """Mark the creator's live room premium at `coins` per ticket (or reprice it; the refund window keeps
        counting from the first marking)."""
        info = await self.rooms.get(room)
        if info.creator != creator.user and creator.role != "admin":
            raise PerkError("forbidden", "only the room's creator can make it premium")
        if info.status != "live":
            raise PerkError("room_not_live", f"room {room!r} has ended")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.room_meta(room), "premium_coins", coins)
            pipe.hsetnx(keys.room_meta(room), "premium_since_ms", clock.now_ms())
            pipe.hget(keys.room_meta(room), "premium_since_ms")
            *_, since = await pipe.execute()
        return {"room": room, "premium_coins": coins, "premium_since_ms": int(since)}

    async def may_join(self, room: str, meta: dict[str, str], identity: Identity) -> bool:
        """Whether `identity` may join a room with this meta: any room that is not premium; a premium one as
        its creator (or their overlay), an admin, with a ticket, or as an active member of the creator's fan club
        when the creator chose free entry for members."""
        creator = meta.get("creator", "")
        if not meta.get("premium_coins") or identity.role == "admin" or creator in (identity.user, identity.overlay_of):
            return True
        if await self.redis.hget(
            keys.room_tickets(keys.part_of_user(identity.user), room), keys.account(identity.user)
        ):
            return True
        club = await self.fanclubs.config(creator)
        return club is not None and club.free_premium and await self.fanclubs.active_member(creator, identity.user)


async def refund_tickets(rooms: RoomStore, room: str, ended_ms: int) -> int:
    """While a room ends (rooms.store.finish_end, after its pools are voided): close the room to perks in every
    partition, then, if it was a premium stream that ended early, refund every ticket, each once. Safe to
    repeat: a refunded ticket's record says so, and a credit is applied once by its id."""
    await close_to_perks(rooms, room, ended_ms)
    since = await rooms.redis.hget(keys.room_meta(room), "premium_since_ms")
    if since is None or not rules.ticket_refund_due(int(since), ended_ms, rooms.settings.premium_refund_window_s):
        return 0
    ledger, refunded = PerkLedger(rooms.ledger), 0
    owed: dict[str, list[str]] = {}
    holders = await ticket_holders(rooms.redis, room)
    async with rooms.ledger.group_commit():
        for part, purchase_id in holders:
            done, outbox_id = await ledger.refund(purchase_id, room)
            refunded += done
            owed.setdefault(part, []).extend([outbox_id] if outbox_id else [])
            await rooms.ledger.committed(part)
    for part, outbox_ids in owed.items():  # the creator's diamonds back, once the refunds are durable
        if outbox_ids:
            await rooms.ledger.apply_credits(part, outbox_ids)
    log.info("room %s ended %d ms after going premium: %d tickets refunded", room, ended_ms - int(since), refunded)
    return refunded


async def close_to_perks(rooms: RoomStore, room: str, ended_ms: int) -> None:
    """Mark the room's end in every partition (perk.lua refuses a purchase in the room once its buyer's partition
    holds the marker), so the ticket walk after it sees every ticket there will be. One pipeline."""
    ttl_s = rooms.settings.ended_room_ttl_s
    async with rooms.redis.pipeline(transaction=False) as pipe:
        for part in partitions.all_tags():
            pipe.hsetnx(keys.room_ended(part, room), "*", ended_ms)
            pipe.expire(keys.room_ended(part, room), ttl_s)
        await pipe.execute()


async def ticket_holders(redis: aioredis.Redis, room: str) -> list[tuple[str, str]]:
    """(partition, purchase id) of every unrefunded ticket to the room: each partition's tickets hash read in one
    pipeline (at most TICKET_REFUNDS_MAX in all: a room's tickets are bounded by its viewers)."""
    tags = partitions.all_tags()
    async with redis.pipeline(transaction=False) as pipe:
        for part in tags:
            pipe.hgetall(keys.room_tickets(part, room))
        replies = await pipe.execute()
    holders = [(part, pid) for part, tickets in zip(tags, replies, strict=True) for pid in tickets.values() if pid]
    assert len(holders) <= TICKET_REFUNDS_MAX, room
    return sorted(holders)
