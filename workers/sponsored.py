"""Sponsored gifts in the settlement worker: the same gift stream, a campaign's budget as the payer.

A gift request with a `campaign` travels like any gift (hub -> gifts stream -> this worker). The worker decides
what it can from the catalog, the room and the campaign record (rules.gift_reject, rules.sponsor_reject), then
sponsor.lua checks the window, the per-viewer daily and per-room limits and the budget atomically with the
debit, writing the same idempotency record a paid gift gets. Settled gifts are announced to their room with
`sponsor` (the brand's name); every sender gets its result, like a paid gift's.

Impressions (the brand's report) approximate the animation frames delivered: a settled sponsored gift counts the
room's viewers at that moment (the per-process counts every hub shares, keys.room_viewers, fresh ones only),
since each viewer connected to the room is sent one frame holding it (coalesced with others of its tick).

The sweep closes campaigns past their end: the unspent budget returns to the brand once (sponsor.lua 'close').

Partitions: a sponsored gift arrives on the gift stream of its campaign's partition (the payer's: gifts.stream_of)
and settles there; the creator's diamonds reach their partition as an outbox credit (ledger/campaigns.py). The
archive backlog is that partition's journal; the sender's coins and level are read in the sender's partition.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import orjson
import redis.asyncio as aioredis

from gifting import clock, keys, metrics, valkey
from gifting.catalog.store import CatalogStore
from gifting.config import Settings
from gifting.gifts import GiftRequest, gift_result
from gifting.ledger import rules
from gifting.ledger.campaigns import Campaigns, SponsoredSend
from gifting.live.hub import fresh_viewer_total
from gifting.rooms.store import RoomStore
from gifting.wire.messages import GiftEvent
from gifting.wire.reasons import RejectReason

log = logging.getLogger(__name__)
SWEEP_CAMPAIGNS_MAX = 100  # campaigns closed per sweep; the rest wait for the next one


class SponsoredGifts:
    def __init__(self, redis: aioredis.Redis, settings: Settings, catalogs: CatalogStore, rooms: RoomStore) -> None:
        self.redis = redis
        self.settings = settings
        self.catalogs = catalogs
        self.rooms = rooms
        self.campaigns = Campaigns(redis, settings)

    async def settle(self, requests: list[GiftRequest], entry_ids: list[str] | None = None) -> list[rules.GiftOutcome]:
        """Decide, settle (sponsor.lua), announce the settled ones and answer every sender. Past
        GIFTING_ARCHIVE_BACKLOG_MAX every send is rejected `archive_backlog` like a paid gift (one rule for every
        debit: rules.archive_backlog_reject); a resend of a settled one still answers its record."""
        campaigns, rooms, senders, journals = await self._read(requests)
        now, backlog_max = clock.now_ms(), self.settings.archive_backlog_max
        full = {part for part, n in journals.items() if rules.archive_backlog_reject(n, backlog_max) is not None}
        for part in sorted(full):
            log.error("archive backlog: %d journal entries in %s: refusing sponsored gifts", journals[part], part)
        sends = [
            self.prepare(
                r,
                campaigns.get(r.campaign),
                rooms.get(r.room),
                now,
                keys.campaign_part(r.campaign) in full,
                senders[r.sender][0],
            )
            for r in requests
        ]
        lifetime = {sender: spent for sender, (_coins, spent) in senders.items()}
        outcomes = await self.campaigns.send(sends)
        await self.publish(requests, sends, outcomes, campaigns, lifetime)
        fresh = [o for o in outcomes if not o.replay]  # counted like paid gifts (a resend is not counted twice)
        metrics.gifts_settled.inc(sum(o.settled for o in fresh))
        for o in fresh:
            if not o.settled:
                metrics.gifts_rejected.labels(reason=o.reason or o.status).inc()
        return outcomes

    async def _read(
        self, requests: list[GiftRequest]
    ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, Any]], dict[str, tuple[int, int]], dict[str, int]]:
        """Each campaign's record, each room's host, status and viewers, each sender's coins and lifetime spend
        (the result's balance, the level badge; in the sender's partition), and the length of each campaign
        partition's journal (the archive backlog of the partition debited), in one round trip."""
        ids, room_ids = sorted({r.campaign for r in requests}), sorted({r.room for r in requests})
        senders, parts = sorted({r.sender for r in requests}), sorted({keys.campaign_part(c) for c in ids})
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.hgetall(keys.campaign(cid))
            for room in room_ids:
                pipe.hmget(keys.room_meta(room), "creator", "status")
                pipe.hgetall(keys.room_viewers(room))
            for sender in senders:
                pipe.hget(keys.coins(keys.part_of_user(sender)), keys.account(sender))
                pipe.hget(keys.lifetime_spent(keys.part_of_user(sender)), keys.account(sender))
            for part in parts:
                pipe.xlen(keys.journal(part))
            replies = await pipe.execute()
        campaigns = {cid: record for cid, record in zip(ids, replies, strict=False) if record}
        now, max_age_ms = clock.now_ms(), self.settings.viewers_interval_ms * 3
        rooms: dict[str, dict[str, Any]] = {}
        for i, room in enumerate(room_ids):
            (creator, status), viewers = replies[len(ids) + 2 * i], replies[len(ids) + 2 * i + 1]
            if creator is not None:
                rooms[room] = {
                    "creator": creator,
                    "status": status,
                    "viewers": fresh_viewer_total(viewers, now, max_age_ms),
                }
        at = len(ids) + 2 * len(room_ids)
        coins, spent = replies[at : at + 2 * len(senders) : 2], replies[at + 1 : at + 2 * len(senders) : 2]
        balances = {s: (int(c or 0), int(v or 0)) for s, c, v in zip(senders, coins, spent, strict=True)}
        journals = {part: int(n) for part, n in zip(parts, replies[at + 2 * len(senders) :], strict=True)}
        return campaigns, rooms, balances, journals

    def prepare(
        self,
        request: GiftRequest,
        campaign: dict[str, str] | None,
        room: dict[str, Any] | None,
        now: int,
        archive_full: bool = False,
        viewer_coins: int = 0,
    ) -> SponsoredSend:
        """Everything but the window, limits and budget (sponsor.lua's): the gift, the room, the campaign, and
        whether the unarchived journal is past GIFTING_ARCHIVE_BACKLOG_MAX."""
        gift = self.catalogs.current.gifts.get(request.gift)
        host, status = (room["creator"], room["status"]) if room else ("", None)
        reject = rules.gift_reject(gift, None, status, host, request.sender) or rules.sponsor_reject(
            campaign, request.gift, request.room, host, request.sender, now
        )
        if archive_full and not reject:
            reject = RejectReason.ARCHIVE_BACKLOG
        coins = diamonds = 0
        if gift is not None and not reject:
            split = rules.split_gift(gift.coins * request.count, self.settings.creator_share_bps)
            coins, diamonds = split.coins, split.diamonds
        return SponsoredSend(
            gift_id=request.gift_id,
            campaign=request.campaign,
            viewer=request.sender,
            creator=host or "?",
            room=request.room,
            gift=request.gift,
            count=request.count,
            coins=coins,
            diamonds=diamonds,
            # The campaign is part of what the id stands for: the same id as a paid gift is a conflict.
            fingerprint=rules.fingerprint(request.sender, request.room, request.gift, request.count, request.campaign),
            reject=reject or "",
            impressions=room["viewers"] if room else 0,
            viewer_coins=viewer_coins,
        )

    async def publish(
        self,
        requests: list[GiftRequest],
        sends: list[SponsoredSend],
        outcomes: list[rules.GiftOutcome],
        campaigns: dict[str, dict[str, str]],
        lifetime: dict[str, int],
    ) -> None:
        """Room events (settled gifts only; announce.lua keeps each once) and every sender's result."""
        events: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
        results: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for request, send, outcome in zip(requests, sends, outcomes, strict=True):
            results[request.hub].append({**gift_result(outcome), "req": request.req})
            if outcome.settled:
                sponsor = campaigns.get(request.campaign, {}).get("brand_name", "")
                event = GiftEvent(
                    gift_id=request.gift_id, gift=request.gift, count=request.count, coins=send.coins,
                    diamonds=send.diamonds, sender=request.sender, sender_name=request.sender_name,
                    level=rules.level_for(lifetime.get(request.sender, 0)), ts=request.ts_ms, sponsor=sponsor,
                )  # fmt: skip
                events[request.room].append((request.gift_id, event.to_dict()))
        async with self.redis.pipeline(transaction=False) as pipe:
            for room, room_events in events.items():
                await self.rooms.announce(room, room_events, client=pipe)
            for hub, hub_results in results.items():
                if hub:
                    valkey.queue_publish(pipe, keys.hub_channel(hub), orjson.dumps(hub_results))
            await pipe.execute()

    async def sweep(self) -> int:
        """Close the campaigns past their end: each unspent budget returns to its brand, once."""
        closed = 0
        for cid in await self.campaigns.due(SWEEP_CAMPAIGNS_MAX):
            code, returned = await self.campaigns.close(cid)
            if code == "closed":
                closed += 1
                log.info("campaign %s ended: %d coins returned to its brand", cid, returned)
        return closed
