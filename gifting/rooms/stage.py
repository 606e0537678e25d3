"""Multi-guest rooms: the host invites guests on stage; a gift may name one of them as its recipient.

The stage is one hash under the room's tag (guest -> joined_at_ms). Settlement reads it for every batch with a
gift that names a recipient, so a guest who leaves stops being a valid recipient from the next batch on: a gift
to them is rejected `recipient_not_on_stage`, and nothing moves.
"""

from __future__ import annotations

import uuid
from typing import Any

import redis.asyncio as aioredis

from gifting import clock, keys
from gifting.config import Settings
from gifting.errors import GiftingError
from gifting.rooms.store import RoomStore
from gifting.wire.messages import Stage

# Take the stage. KEYS: 1 stage, 2 invites, 3 room meta. ARGV: 1 guest, 2 now ms, 3 guests max.
# Returns 'ok', 'no_invite', 'expired', 'full' or 'not_live'.
ACCEPT = """
if redis.call('HGET', KEYS[3], 'status') ~= 'live' then return 'not_live' end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 'ok' end
local deadline = redis.call('HGET', KEYS[2], ARGV[1])
if not deadline then return 'no_invite' end
redis.call('HDEL', KEYS[2], ARGV[1])
if tonumber(ARGV[2]) > tonumber(deadline) then return 'expired' end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 'full' end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], 'staged', '1') -- from now on settlement keeps top gifters per recipient
return 'ok'
"""

ACCEPT_ERRORS = {
    "not_live": ("room_not_live", "the room is not live"),
    "no_invite": ("no_stage_invite", "you have no pending invite to this stage"),
    "expired": ("no_stage_invite", "the stage invite expired"),
    "full": ("too_many_guests", "the stage is full"),
}


class StageError(GiftingError):
    """A stage invite, accept or leave was refused; `code` goes on the wire (status: gifting/web/http.py)."""


class StageStore:
    def __init__(self, redis: aioredis.Redis, settings: Settings, rooms: RoomStore) -> None:
        self.redis = redis
        self.settings = settings
        self.rooms = rooms
        self._accept = redis.register_script(ACCEPT)

    async def guests(self, room: str) -> list[str]:
        return sorted(await self.redis.hkeys(keys.room_stage(room)))

    async def invite(self, room: str, host: str, guest: str) -> dict[str, Any]:
        """The room's creator invites `guest` on stage (accepted within GIFTING_STAGE_INVITE_TIMEOUT_S)."""
        info = await self.rooms.get(room)
        if info.creator != host:
            raise StageError("forbidden", "only the room's creator invites guests on stage")
        if info.status != "live":
            raise StageError("room_not_live", f"room {room!r} is not live")
        if guest == host:
            raise StageError("bad_guest", "the host is always on stage")
        max_guests = self.settings.stage_guests_max
        if len(await self.guests(room)) >= max_guests:
            raise StageError("too_many_guests", f"the stage holds at most {max_guests} guests")
        deadline_ms = clock.now_ms() + 1000 * self.settings.stage_invite_timeout_s
        await self.redis.hset(keys.room_stage_invites(room), guest, deadline_ms)
        return {"room": room, "guest": guest, "deadline_ms": deadline_ms}

    async def accept(self, room: str, guest: str) -> dict[str, Any]:
        """The invited user takes the stage; at most GIFTING_STAGE_GUESTS_MAX guests, checked atomically."""
        stage_keys = [keys.room_stage(room), keys.room_stage_invites(room), keys.room_meta(room)]
        outcome = await self._accept(keys=stage_keys, args=[guest, clock.now_ms(), self.settings.stage_guests_max])
        if outcome in ACCEPT_ERRORS:
            raise StageError(*ACCEPT_ERRORS[outcome])
        return await self._changed(room)

    async def leave(self, room: str, user: str, guest: str) -> dict[str, Any]:
        """A guest leaves the stage, or the host takes them off: gifts to them are rejected from now on."""
        info = await self.rooms.get(room)
        if user not in (guest, info.creator):
            raise StageError("forbidden", "only the guest or the room's creator takes a guest off stage")
        if not await self.redis.hdel(keys.room_stage(room), guest):
            raise StageError("not_on_stage", f"{guest!r} is not on this room's stage")
        return await self._changed(room)

    async def _changed(self, room: str) -> dict[str, Any]:
        guests = await self.guests(room)
        await self.rooms.announce(room, [(f"stage:{uuid.uuid4().hex}", Stage(guests).to_dict())])
        return {"room": room, "guests": guests}
