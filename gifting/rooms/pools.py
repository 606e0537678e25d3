"""Pooled gifts: viewers pledge coins toward one expensive gift; it completes at its price or voids at its
deadline. Opening a pool moves no money (the web process does it); pledges and expiry are ledger operations,
so they travel through the gift stream to the settlement worker like gifts do (pool.lua), with the same
crash guarantees: idempotent by pledge id, announced exactly once.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from gifting import clock, keys
from gifting.catalog.model import Catalog
from gifting.config import Settings
from gifting.ledger import partitions, rules
from gifting.ledger.store import Ledger
from gifting.rooms.store import RoomError, RoomStore, not_durable_is_retry
from gifting.wire.messages import POOL_CLOSED_KINDS, Error, PledgeResult, PoolClosed, PoolProgress

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
        raise RoomError("room_not_live", f"room {room!r} is not live")
    # The pool lives in its creator's partition (with the escrow, the creator's diamonds and boards); its id
    # names that partition, so whoever holds only the id finds it.
    pool_id = rules.pool_id(
        partitions.of_account(keys.account(info.creator)), secrets.token_hex(rules.POOL_TOKEN_BYTES)
    )
    deadline_ms = clock.now_ms() + deadline_s * 1000
    record = {
        "id": pool_id, "room": room, "creator": info.creator, "gift": gift.id, "price": gift.coins,
        "bps": settings.creator_share_bps, "pledged": 0, "status": "open", "deadline_ms": deadline_ms,
        "starter": starter, "contributors": "[]",
    }  # fmt: skip
    # The caps and the room's end are checked in the same atomic step that opens the pool, so concurrent opens
    # cannot pass a cap together and no pool opens in a room whose end has begun.
    reason, opened = await Ledger(redis, settings).pool_open(room, starter, record)
    if reason or opened is None:
        raise RoomError(reason, OPEN_REFUSALS[reason].format(s=settings, room=room))
    view = pool_view(opened)
    await rooms.announce(room, [(f"pool:{pool_id}:opened", PoolProgress(view).to_dict())])
    return view


OPEN_REFUSALS = {
    "room_not_live": "room {room!r} is not live",
    "too_many_pools": "a room may have {s.pools_per_room_max} open pools; wait for one to close",
    "too_many_open_pools": "one user may have {s.pools_per_user_max} open pools; cancel yours or wait for it",
    "pool_opener_coins": "opening a pool takes at least {s.pool_open_coins_min} coins in the wallet",
}


def closing_event(view: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The room event of a pool voided for good (expired, cancelled, or voided at its room's end), derived from
    its durable status, so whoever sees the status announces it (announce.lua keeps it once per pool)."""
    kind = POOL_CLOSED_KINDS.get(view["status"])
    return (f"pool:{view['id']}:{view['status']}", PoolClosed(kind, view).to_dict()) if kind else None


async def cancel_pool(
    redis: aioredis.Redis, rooms: RoomStore, ledger: Ledger, pool_id: str, user: str, is_admin: bool
) -> dict[str, Any]:
    """Its opener, the room's creator or an admin cancels an open pool: every pledge goes back.

    Repeating a cancel of a cancelled pool answers it again and announces it again if that was lost (a crash
    between the ledger step and the announcement); announce.lua keeps it once."""
    part = rules.pool_part(pool_id)
    starter, creator, status = (
        await redis.hmget(keys.pool(part, pool_id), "starter", "creator", "status") if part else (None,) * 3
    )
    if status is None:
        raise RoomError("unknown_pool", f"no pool {pool_id!r}")
    if user not in (starter, creator) and not is_admin:
        raise RoomError("forbidden", "only the pool's opener, the room's creator or an admin cancels it")
    async with not_durable_is_retry():  # announce only what is durable
        status, _reason, _balance, _replay, pool = await ledger.pool_op("cancel", pool_id)
    if pool is None or pool["status"] != "cancelled":
        current = pool["status"] if pool else "gone"
        raise RoomError("pool_not_open", f"pool {pool_id!r} is {current}, not open")
    view = pool_view(pool)
    event = closing_event(view)
    assert event is not None
    await rooms.announce(view["room"], [event])
    return view


async def get_pool(redis: aioredis.Redis, pool_id: str) -> dict[str, Any] | None:
    part = rules.pool_part(pool_id)
    raw = await redis.hgetall(keys.pool(part, pool_id)) if part else None
    return pool_view(raw) if raw else None


async def room_pools(redis: aioredis.Redis, room: str) -> list[dict[str, Any]]:
    """The room's open pools (for the join snapshot), in its creator's partition."""
    creator = await redis.hget(keys.room_meta(room), "creator")
    if not creator:
        return []
    ids = await redis.smembers(keys.room_pools(keys.part_of_user(creator), room))
    pools = [await get_pool(redis, pid) for pid in ids]
    return sorted((p for p in pools if p and p["status"] == "open"), key=lambda p: p["deadline_ms"])


def pledge_result(op: PoolOp, status: str, reason: str, balance: int, view: dict[str, Any] | None) -> dict[str, Any]:
    """What the pledger is told: the outcome and the pool, or an error for a pledge id reused with other fields."""
    if status == "conflict":
        message = "pledge_id was already used for a different pledge; use a new one"
        return Error("pledge_id_conflict", message, pledge_id=op.pledge_id).to_dict()
    return PledgeResult(op.pledge_id, status, reason or None, True, view, balance).to_dict()
