"""Pooled gifts: viewers pledge coins toward one expensive gift; it completes at its price or voids at its
deadline. Opening a pool moves no money (the web process does it); pledges and expiry are ledger operations,
so they travel through the gift stream to the settlement worker like gifts do (pool.lua), with the same
crash guarantees: idempotent by pledge id, announced exactly once.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from gifting import keys
from gifting.catalog import Catalog
from gifting.config import Settings
from gifting.rooms import RoomError, RoomStore

POOL_FIELD = "p"  # the stream entry field of a pool operation (gifts use "g")


@dataclass(frozen=True, slots=True)
class PoolOp:
    """A pledge, or the expiry of a pool past its deadline, as it travels through the gift stream."""

    op: str  # pledge | expire
    pool: str
    pledge_id: str = ""
    coins: int = 0
    sender: str = ""
    sender_name: str = ""
    hub: str = ""
    req: int = 0  # the hub's number for this request (see GiftRequest.req)

    def to_entry(self) -> dict[str, bytes]:
        return {POOL_FIELD: orjson.dumps(asdict(self))}

    @classmethod
    def from_entry(cls, fields: dict[str, str]) -> PoolOp:
        try:
            op = cls(**orjson.loads(fields[POOL_FIELD]))
        except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"not a pool operation entry: {exc}") from None
        if op.op not in ("pledge", "expire") or not isinstance(op.pool, str):
            raise ValueError(f"not a pool operation entry: {fields[POOL_FIELD]!r}")
        if op.op == "pledge" and not (isinstance(op.coins, int) and op.coins > 0 and isinstance(op.sender, str)):
            raise ValueError(f"not a pool operation entry: bad pledge {fields[POOL_FIELD]!r}")
        return op


def pool_view(raw: str | dict[str, Any]) -> dict[str, Any]:
    """A pool as clients see it (pool.lua's snapshot, or the stored hash)."""
    data: dict[str, Any] = orjson.loads(raw) if isinstance(raw, str) else dict(raw)
    contributors = data.get("contributors") or []
    if isinstance(contributors, str):
        contributors = orjson.loads(contributors)
    if isinstance(contributors, dict):  # Lua's cjson writes an empty list as {}
        contributors = []
    return {
        "id": data["id"],
        "room": data["room"],
        "gift": data["gift"],
        "price": int(data["price"]),
        "pledged": int(data["pledged"]),
        "status": data["status"],
        "deadline_ms": int(data["deadline_ms"]),
        "contributors": contributors,
    }


async def open_pool(
    redis: aioredis.Redis, rooms: RoomStore, settings: Settings, catalog: Catalog, room: str, starter: str,
    gift_id: str, deadline_s: object,
) -> dict[str, Any]:  # fmt: skip
    """Open a pool in a live room for a gift on sale. Raises RoomError with a code for each refusal."""
    gift = catalog.sendable(gift_id)
    if gift is None:
        raise RoomError("unknown_gift", f"no gift {gift_id!r} on sale")
    low, high = settings.pool_deadline_s_min, settings.pool_deadline_s_max
    if not isinstance(deadline_s, int) or isinstance(deadline_s, bool) or not low <= deadline_s <= high:
        raise RoomError("bad_deadline", f"deadline_s: expected an integer in {low}..{high}")
    info = await rooms.get(room)
    if info.status != "live":
        raise RoomError("room_not_live", f"room {room!r} is not live", 409)
    open_ids = await redis.smembers(keys.room_pools(room))
    if open_ids:
        statuses = [await redis.hget(keys.pool(pid), "status") for pid in open_ids]
        closed = [pid for pid, status in zip(open_ids, statuses, strict=True) if status != "open"]
        if closed:
            await redis.srem(keys.room_pools(room), *closed)
        if len(open_ids) - len(closed) >= settings.pools_per_room_max:
            raise RoomError("too_many_pools", f"a room may have {settings.pools_per_room_max} open pools", 409)
    pool_id = "p_" + secrets.token_hex(8)
    deadline_ms = int(time.time() * 1000) + deadline_s * 1000
    record = {
        "id": pool_id, "room": room, "creator": info.creator, "gift": gift.id, "price": gift.coins,
        "bps": settings.creator_share_bps, "pledged": 0, "status": "open", "deadline_ms": deadline_ms,
        "starter": starter, "contributors": "[]",
    }  # fmt: skip
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.pool(pool_id), mapping=record)
        pipe.zadd(keys.POOLS_OPEN, {pool_id: deadline_ms})
        pipe.sadd(keys.room_pools(room), pool_id)
        await pipe.execute()
    view = pool_view(record)
    await rooms.announce(room, [(f"pool:{pool_id}:opened", {"kind": "pool_progress", "pool": view})])
    return view


async def get_pool(redis: aioredis.Redis, pool_id: str) -> dict[str, Any] | None:
    raw = await redis.hgetall(keys.pool(pool_id))
    return pool_view(raw) if raw else None


async def room_pools(redis: aioredis.Redis, room: str) -> list[dict[str, Any]]:
    """The room's open pools (for the join snapshot)."""
    pools = [await get_pool(redis, pid) for pid in await redis.smembers(keys.room_pools(room))]
    return sorted((p for p in pools if p and p["status"] == "open"), key=lambda p: p["deadline_ms"])
