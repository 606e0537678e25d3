"""Rooms in Redis: open, end, read, list, and append events to a room's history (announce.lua)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from gifting import keys
from gifting.ledger.store import load_script


class RoomError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True, slots=True)
class RoomInfo:
    room: str
    creator: str
    creator_name: str
    title: str
    status: str  # live | ended
    epoch: str
    offset: int
    started_at_ms: int
    ended_at_ms: int | None

    @classmethod
    def from_meta(cls, room: str, meta: dict[str, str]) -> RoomInfo:
        return cls(
            room=room,
            creator=meta.get("creator", ""),
            creator_name=meta.get("creator_name", ""),
            title=meta.get("title", ""),
            status=meta.get("status", "ended"),
            epoch=meta.get("epoch", ""),
            offset=int(meta.get("offset", 0)),
            started_at_ms=int(meta.get("started_at_ms", 0)),
            ended_at_ms=int(meta["ended_at_ms"]) if meta.get("ended_at_ms") else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "creator": self.creator,
            "creator_name": self.creator_name,
            "title": self.title,
            "status": self.status,
            "epoch": self.epoch,
            "offset": self.offset,
            "started_at_ms": self.started_at_ms,
            "ended_at_ms": self.ended_at_ms,
        }


def new_room_id() -> str:
    return "r_" + secrets.token_urlsafe(9).replace("-", "x").replace("_", "y")


def new_epoch() -> str:
    return secrets.token_hex(4)


class RoomStore:
    def __init__(self, redis: aioredis.Redis, history_events_max: int, marker_ttl_s: int, ended_ttl_s: int) -> None:
        self.redis = redis
        self.history_events_max = history_events_max
        self.marker_ttl_s = marker_ttl_s
        self.ended_ttl_s = ended_ttl_s
        self._announce = redis.register_script(load_script("announce.lua"))

    async def open(self, creator: str, creator_name: str, title: str) -> RoomInfo:
        room = new_room_id()
        now_ms = int(time.time() * 1000)
        meta = {
            "creator": creator,
            "creator_name": creator_name,
            "title": title,
            "status": "live",
            "epoch": new_epoch(),
            "offset": "0",
            "started_at_ms": str(now_ms),
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.room_meta(room), mapping=meta)
            pipe.zadd(keys.ROOMS_LIVE, {room: now_ms})
            await pipe.execute()
        return RoomInfo.from_meta(room, meta)

    async def get(self, room: str) -> RoomInfo:
        meta = await self.redis.hgetall(keys.room_meta(room))
        if not meta:
            raise RoomError("room_not_found", f"no room {room!r}", 404)
        return RoomInfo.from_meta(room, meta)

    async def end(self, room: str, user: str, is_admin: bool) -> RoomInfo:
        info = await self.get(room)
        if info.creator != user and not is_admin:
            raise RoomError("forbidden", "only the room's creator can end it", 403)
        if info.status != "live":
            raise RoomError("room_not_live", f"room {room!r} has already ended", 409)
        now_ms = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.room_meta(room), mapping={"status": "ended", "ended_at_ms": str(now_ms)})
            pipe.zrem(keys.ROOMS_LIVE, room)
            pipe.expire(keys.room_meta(room), self.ended_ttl_s)
            pipe.expire(keys.room_history(room), self.ended_ttl_s)
            await pipe.execute()
        await self.announce(room, [("room_ended:" + room, {"kind": "room_ended", "ts": now_ms})])
        return await self.get(room)

    async def live(self, limit: int = 100) -> list[RoomInfo]:
        rooms = await self.redis.zrevrange(keys.ROOMS_LIVE, 0, limit - 1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for room in rooms:
                pipe.hgetall(keys.room_meta(room))
            metas = await pipe.execute()
        return [RoomInfo.from_meta(r, m) for r, m in zip(rooms, metas, strict=True) if m]

    async def announce(self, room: str, events: list[tuple[str, dict[str, Any]]], client: Any = None) -> Any:
        """Append events (dedupe id, event without offset) to the room's history once each, and publish them.

        With `client` a pipeline, the call is queued on it (the worker announces every room of a batch in one
        round trip).
        """
        return await self._announce(
            keys=[keys.room_meta(room), keys.room_history(room)] + [keys.room_announced(room, d) for d, _ in events],
            args=[
                keys.room_channel(room),
                self.history_events_max,
                self.marker_ttl_s,
                new_epoch(),
                *(orjson.dumps(event).decode() for _, event in events),
            ],
            client=client or self.redis,
        )
