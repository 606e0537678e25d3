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

SESSIONS_KEPT = 1000  # ended-session summaries kept per creator


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
            pipe.expire(keys.room_stats(room), self.ended_ttl_s)
            await pipe.execute()
        await self.announce(room, [("room_ended:" + room, {"kind": "room_ended", "ts": now_ms})])
        # The session's earnings summary outlives the room (kept for the creator's history).
        summary = await self.earnings(room)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpush(keys.creator_sessions(info.creator), orjson.dumps(summary))
            pipe.ltrim(keys.creator_sessions(info.creator), 0, SESSIONS_KEPT - 1)
            await pipe.execute()
        return await self.get(room)

    async def sessions(self, creator: str, limit: int) -> list[dict[str, Any]]:
        """Summaries of the creator's ended live sessions, newest first."""
        return [orjson.loads(s) for s in await self.redis.lrange(keys.creator_sessions(creator), 0, limit - 1)]

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
        args: list[Any] = [keys.room_channel(room), self.history_events_max, self.marker_ttl_s, new_epoch()]
        for _, event in events:
            args += [orjson.dumps(event).decode(), event.get("coins", 0), event.get("diamonds", 0)]
        return await self._announce(
            keys=[keys.room_meta(room), keys.room_history(room), keys.room_stats(room)]
            + [keys.room_announced(room, dedupe_id) for dedupe_id, _ in events],
            args=args,
            client=client or self.redis,
        )

    async def earnings(self, room: str) -> dict[str, Any]:
        """The live session's totals: gifts, coins spent, diamonds earned, and duration."""
        info = await self.get(room)
        stats = await self.redis.hgetall(keys.room_stats(room))
        end_ms = info.ended_at_ms or int(time.time() * 1000)
        return {
            "room": room,
            "creator": info.creator,
            "status": info.status,
            "started_at_ms": info.started_at_ms,
            "ended_at_ms": info.ended_at_ms,
            "duration_s": max(0, (end_ms - info.started_at_ms) // 1000),
            "gifts": int(stats.get("gifts", 0)),
            "coins": int(stats.get("coins", 0)),
            "diamonds": int(stats.get("diamonds", 0)),
        }
