"""The ledger's Redis adapter: runs the Lua scripts and reads balances. Rules live in rules.py."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gifting import keys
from gifting.ledger import rules

log = logging.getLogger(__name__)


def load_script(name: str) -> str:
    return resources.files("gifting").joinpath(f"ledger/{name}").read_text()


@dataclass(frozen=True, slots=True)
class GiftToSettle:
    """One gift as the worker hands it to settle.lua: amounts already computed by rules.split_gift."""

    gift_id: str
    viewer: str
    creator: str
    coins: int
    diamonds: int
    fingerprint: str
    reject: str  # a reason decided before the ledger (room not live, ...), or ""
    room: str
    gift: str
    count: int


class DurabilityError(RuntimeError):
    """Valkey did not confirm the AOF fsync in time: nothing may be announced yet."""


class Ledger:
    def __init__(self, redis: aioredis.Redis, creator_share_bps: int, idempotency_ttl_s: int) -> None:
        self.redis = redis
        self.creator_share_bps = creator_share_bps
        self.idempotency_ttl_s = idempotency_ttl_s
        self._settle = redis.register_script(load_script("settle.lua"))
        self._purchase = redis.register_script(load_script("purchase.lua"))
        self.waitaof_supported: bool | None = None  # learned on first use

    async def settle(self, gifts: list[GiftToSettle]) -> list[rules.GiftOutcome]:
        """Settle a batch in one atomic Lua call; resends get their stored outcome (replay=True)."""
        if not gifts:
            return []
        keys_ = [keys.LEDGER_COINS, keys.LEDGER_DIAMONDS, keys.LEDGER_JOURNAL]
        keys_.extend(keys.gift_record(g.gift_id) for g in gifts)
        args: list[Any] = [int(time.time() * 1000), self.idempotency_ttl_s, self.creator_share_bps]
        for g in gifts:
            args += [g.gift_id, keys.account(g.viewer), keys.account(g.creator), g.coins, g.diamonds]
            args += [g.fingerprint, g.reject, g.room, g.gift, g.count]
        flat = await self._settle(keys=keys_, args=args)
        assert len(flat) == 4 * len(gifts), "settle.lua returns 4 values per gift"
        outcomes = []
        for i, g in enumerate(gifts):
            status, reason, coins, replay = flat[4 * i : 4 * i + 4]
            outcomes.append(rules.GiftOutcome(g.gift_id, status, reason, int(coins), bool(int(replay))))
        return outcomes

    async def durable(self, timeout_ms: int) -> None:
        """Group commit: wait until everything written so far is fsynced to the AOF (WAITAOF 1 0)."""
        if self.waitaof_supported is False:
            return
        try:
            local, _replicas = await self.redis.execute_command("WAITAOF", 1, 0, timeout_ms)
        except ResponseError as exc:
            if self.waitaof_supported is None:
                self.waitaof_supported = False
                log.warning("durability: WAITAOF unavailable (%s); settled gifts are not fsync-confirmed", exc)
                return
            raise
        self.waitaof_supported = True
        if int(local) < 1:
            raise DurabilityError(f"WAITAOF: AOF fsync not confirmed within {timeout_ms} ms")

    async def purchase(
        self,
        user: str,
        idempotency_key: str,
        fingerprint: str,
        status: str,
        record: dict[str, Any],
        coins: int,
        bundle: str,
        price_minor: int,
        currency: str,
        charge_id: str,
    ) -> tuple[dict[str, Any], bool, bool]:
        """Record a purchase outcome once. Returns (stored record, fingerprint matches, replay)."""
        assert status in ("paid", "declined") and coins > 0
        result = await self._purchase(
            keys=[keys.LEDGER_COINS, keys.LEDGER_JOURNAL, keys.purchase_record(user, idempotency_key)],
            args=[
                orjson.dumps(record).decode(),
                fingerprint,
                status,
                keys.account(user),
                coins,
                int(time.time() * 1000),
                self.idempotency_ttl_s,
                bundle,
                price_minor,
                currency,
                charge_id,
            ],
        )
        stored, stored_fp, replay = result
        return orjson.loads(stored), stored_fp == fingerprint, bool(int(replay))

    async def purchase_record(self, user: str, idempotency_key: str) -> tuple[dict[str, Any], str] | None:
        """A stored purchase outcome and its fingerprint, if the key was used before."""
        raw = await self.redis.get(keys.purchase_record(user, idempotency_key))
        if raw is None:
            return None
        fp, _, record = raw.partition("|")
        return orjson.loads(record), fp

    async def gift_outcome(self, gift_id: str) -> rules.GiftOutcome | None:
        raw = await self.redis.get(keys.gift_record(gift_id))
        return None if raw is None else rules.parse_gift_record(gift_id, raw, replay=True)

    async def wallet(self, user: str) -> dict[str, int]:
        account = keys.account(user)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.LEDGER_COINS, account)
            pipe.hget(keys.LEDGER_DIAMONDS, account)
            coins, diamonds = await pipe.execute()
        return {"coins": int(coins or 0), "diamonds": int(diamonds or 0)}
