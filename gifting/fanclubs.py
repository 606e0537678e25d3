"""Fan clubs: a viewer joins a creator's club by sending the creator's membership gift.

A creator sets up a club by choosing (PUT /v1/fanclub) its membership gift (any catalog gift), and the perks
members get: a member-only gift (a catalog gift only active members may send to the creator: others are
rejected `members_only` by settlement, for the record) and free entry to the creator's premium streams.
- Points: every coin a member gifts to the creator (the membership gift included) is a point, and a visit
  to the creator's room earns GIFTING_FANCLUB_VISIT_POINTS once per UTC day; the level follows from the points
  (rules.FAN_LEVEL_THRESHOLDS). Each activity is counted once by its marker (a gift id, a visit's day), so a
  redelivered gift adds nothing.
- Pause: a member with no activity for GIFTING_FANCLUB_PAUSE_S (7 days) is paused: the level is kept but the
  badge and the member perks stop until their next activity resumes them.
- Badge: a settled gift from an active member carries `fan: {"level"}` in the room and the creator's feed.
Nothing here moves money: joining is the membership gift, settled like any gift; the audit checks every
membership against its gift in the journal.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio as aioredis

from gifting import clock, keys, valkey
from gifting.catalog.model import Catalog
from gifting.config import Settings
from gifting.errors import GiftingError
from gifting.ledger import rules
from gifting.ledger.store import GiftToSettle

log = logging.getLogger(__name__)
FANCLUB_LUA = resources.files("gifting").joinpath("rooms/fanclub.lua").read_text()


class FanClubError(GiftingError):
    """A fan-club request refused; `code` is in the HTTP status table (or bad input, 400)."""


@dataclass(frozen=True, slots=True)
class ClubConfig:
    membership_gift: str
    member_gift: str  # "" none
    free_premium: bool

    def to_dict(self) -> dict[str, Any]:
        return {"membership_gift": self.membership_gift, "member_gift": self.member_gift or None,
                "free_premium": self.free_premium}  # fmt: skip


def parse_config(raw: dict[str, str]) -> ClubConfig | None:
    if not raw.get("membership_gift"):
        return None
    return ClubConfig(raw["membership_gift"], raw.get("member_gift", ""), raw.get("free_premium") == "1")


class FanClubs:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis, self.settings = redis, settings
        self._activity = redis.register_script(FANCLUB_LUA)

    # The creator's choices ------------------------------------------------------------------------------

    async def configure(self, creator: str, body: dict[str, Any], catalog: Catalog) -> ClubConfig:
        membership, member_gift, free = body.get("membership_gift"), body.get("member_gift"), body.get("free_premium")
        for name, gift in (("membership_gift", membership), ("member_gift", member_gift)):
            if gift is None and name == "member_gift":
                continue
            if not isinstance(gift, str) or catalog.sendable(gift) is None:
                raise FanClubError("unknown_gift", f"{name}: expected a gift on sale, got {gift!r}")
        if not isinstance(free, bool):
            raise FanClubError("bad_fanclub", f"free_premium: expected true or false, got {free!r}")
        if member_gift == membership:
            raise FanClubError("bad_fanclub", "the member-only gift cannot be the membership gift (none could join)")
        assert isinstance(membership, str)
        config = ClubConfig(membership, member_gift or "", free)
        await self.redis.hset(keys.fanclub(creator), mapping={"membership_gift": config.membership_gift,
                              "member_gift": config.member_gift, "free_premium": "1" if free else "0"})  # fmt: skip
        return config

    async def config(self, creator: str) -> ClubConfig | None:
        return parse_config(await self.redis.hgetall(keys.fanclub(creator)))

    # Membership -------------------------------------------------------------------------------------------

    async def membership(self, creator: str, user: str) -> dict[str, Any] | None:
        """A member's standing (None: not a member)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.fanclub_members(creator), user)
            pipe.zscore(keys.fanclub_points(creator), user)
            pipe.hget(keys.fanclub_active(creator), user)
            record, points, active = await pipe.execute()
        return None if record is None else self._member(user, record, points, active, clock.now_ms())

    def _member(self, user: str, record: str, points: float | None, active: str | None, now: int) -> dict[str, Any]:
        joined_ms, gift_id, name = record.split("|", 2)
        last = int(active or joined_ms)
        return {"user": user, "name": name, "level": rules.fan_level(int(points or 0)), "points": int(points or 0),
                "status": "active" if rules.fan_active(last, now, self.settings.fanclub_pause_s) else "paused",
                "joined_ms": int(joined_ms), "last_active_ms": last, "gift_id": gift_id}  # fmt: skip

    async def active_member(self, creator: str, user: str) -> bool:
        member = await self.membership(creator, user)
        return member is not None and member["status"] == "active"

    async def members(self, creator: str, limit: int) -> list[dict[str, Any]]:
        """The club's members with their levels, the most points first (`limit` of them)."""
        ranked = await self.redis.zrevrange(keys.fanclub_points(creator), 0, limit - 1, withscores=True)
        users = [user for user, _ in ranked]
        if not users:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.fanclub_members(creator), users)
            pipe.hmget(keys.fanclub_active(creator), users)
            records, active = await pipe.execute()
        now = clock.now_ms()
        return [self._member(u, r, p, a, now) for (u, p), r, a in zip(ranked, records, active, strict=True) if r]

    # Activity -------------------------------------------------------------------------------------------

    async def check_batch(self, batch: list[GiftToSettle]) -> list[GiftToSettle]:
        """Settlement, before the ledger: a creator's member-only gift from anyone but an active member of their
        club is rejected `members_only` (for the record, like every reason settlement decides)."""
        creators = sorted({g.creator for g in batch if not g.reject})
        if not creators:
            return batch
        async with self.redis.pipeline(transaction=False) as pipe:
            for creator in creators:
                pipe.hget(keys.fanclub(creator), "member_gift")
            member_gifts = dict(zip(creators, await pipe.execute(), strict=True))
        out = []
        for g in batch:
            member_gift = member_gifts.get(g.creator) or ""
            if not g.reject and member_gift and g.gift == member_gift:
                reason = rules.members_only_reject(g.gift, member_gift, await self.active_member(g.creator, g.viewer))
                if reason is not None:
                    g = dataclasses.replace(g, coins=0, diamonds=0, reject=reason)
            out.append(g)
        return out

    async def record_batch(self, settled: list[GiftToSettle], names: dict[str, str]) -> dict[str, dict[str, int]]:
        """Settlement, after the ledger: count each settled gift (a replay too: its marker counts it once) toward
        its sender's standing in its recipient's club; a membership gift makes a member. Returns gift id -> badge
        for the gifts from members. One round trip for the clubs, one for the gifts (pipelined)."""
        creators = sorted({g.creator for g in settled})
        if not creators:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for creator in creators:
                pipe.hget(keys.fanclub(creator), "membership_gift")
            membership_gifts = dict(zip(creators, await pipe.execute(), strict=True))
        counted = [g for g in settled if membership_gifts.get(g.creator) is not None]  # the others have no club
        if not counted:
            return {}
        now, ttl_s = clock.now_ms(), self.settings.idempotency_ttl_s
        async with self.redis.pipeline(transaction=False) as pipe:
            for g in counted:
                joins = "1" if g.gift == membership_gifts[g.creator] else "0"
                record = f"{now}|{g.gift_id}|{names.get(g.viewer) or g.viewer}"
                keys_ = [*self._club_keys(g.creator), keys.fanclub_counted(g.creator, g.gift_id)]
                await valkey.queue_script(pipe, self._activity, keys_, [g.viewer, now, g.coins, joins, record, ttl_s])
            replies = await pipe.execute()
        badges: dict[str, dict[str, int]] = {}
        for g, (member, points, joined) in zip(counted, replies, strict=True):
            if int(member):
                badges[g.gift_id] = {"level": rules.fan_level(int(float(points)))}
            if int(joined):
                log.info("gift %s: %s joined the fan club of %s", g.gift_id, g.viewer, g.creator)
        return badges

    async def visit(self, creator: str, user: str, client: Any = None) -> Any:
        """A member visited the creator's room: their daily visit points, once per UTC day; nothing for anyone
        else. With `client` a pipeline, the call is queued on it (its reply: [member, points, joined])."""
        now = clock.now_ms()
        keys_ = [*self._club_keys(creator), keys.fanclub_counted(creator, f"visit:{clock.utc_day(now)}:{user}")]
        args = [user, now, self.settings.fanclub_visit_points, "0", "", 2 * 86400]
        if client is not None:
            return await valkey.queue_script(client, self._activity, keys_, args)
        return await self._activity(keys=keys_, args=args)

    def _club_keys(self, creator: str) -> list[str]:
        return [keys.fanclub_members(creator), keys.fanclub_points(creator), keys.fanclub_active(creator)]
