"""The perk catalog: what coins buy besides gifts, priced in coins, edited by admins like the gift catalog.

Two kinds are sold from the catalog (a premium stream's ticket is priced by its creator instead, per stream):
- `highlight`: a message pinned in a room for a time that grows with the price (rules.highlight_pin_ms);
- `entrance`: an effect shown to a room when the viewer joins it, for `days` days from the purchase.

Every process reads the catalog from Valkey when it sells a perk (a purchase is rare next to a gift, and a
repriced perk must never be sold at its old price).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from gifting import keys
from gifting.catalog.model import ID_PATTERN, TEXT_CHARS_MAX, CatalogError

CATALOG_KINDS = ("highlight", "entrance")
PERK_COINS_MAX = 1_000_000  # one perk costs at most this many coins
ENTRANCE_DAYS_MAX = 365  # an entrance effect is sold for 1..365 days


@dataclass(frozen=True, slots=True)
class Perk:
    id: str
    kind: str  # highlight | entrance
    name: str
    coins: int  # the price, in coins
    days: int = 0  # entrance: how long it lasts, days; highlight: 0 (its pin time follows from the price)
    retired: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Seeded once into an installation without a perk catalog (admins change it from there).
SHIPPED = (
    Perk("highlight_small", "highlight", "Highlighted message", 50),
    Perk("highlight_big", "highlight", "Big highlighted message", 500),
    Perk("entrance_week", "entrance", "Entrance effect, 7 days", 300, days=7),
)


def make_perk(data: dict[str, Any]) -> Perk:
    """A perk from an admin's JSON; CatalogError `bad_perk` naming the field for anything out of bounds."""
    perk_id, kind, name = data.get("id"), data.get("kind"), data.get("name")
    coins, days = data.get("coins"), data.get("days", 0)
    if not isinstance(perk_id, str) or not ID_PATTERN.fullmatch(perk_id):
        raise CatalogError(f"perk id: expected [a-z0-9_]{{1,40}}, got {perk_id!r}", "bad_perk")
    if kind not in CATALOG_KINDS:
        raise CatalogError(f"perk {perk_id}: kind expected one of {CATALOG_KINDS}, got {kind!r}", "bad_perk")
    if not isinstance(name, str) or not 1 <= len(name) <= TEXT_CHARS_MAX:
        raise CatalogError(f"perk {perk_id}: name expected 1..{TEXT_CHARS_MAX} characters", "bad_perk")
    if type(coins) is not int or not 1 <= coins <= PERK_COINS_MAX:
        raise CatalogError(f"perk {perk_id}: coins expected an integer 1..{PERK_COINS_MAX}, got {coins!r}", "bad_perk")
    if kind == "entrance" and (type(days) is not int or not 1 <= days <= ENTRANCE_DAYS_MAX):
        raise CatalogError(f"perk {perk_id}: an entrance lasts 1..{ENTRANCE_DAYS_MAX} days, got {days!r}", "bad_perk")
    if kind == "highlight" and days != 0:
        raise CatalogError(f"perk {perk_id}: a highlight's duration follows from its price; days must be 0", "bad_perk")
    return Perk(perk_id, kind, name, coins, days, bool(data.get("retired", False)))


class PerkCatalog:
    """The perk catalog in Valkey (one hash), seeded from SHIPPED the first time it is read."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def all(self) -> list[Perk]:
        raw = await self.redis.hgetall(keys.PERK_CATALOG)
        if not raw:
            async with self.redis.pipeline(transaction=True) as pipe:
                for perk in SHIPPED:
                    pipe.hsetnx(keys.PERK_CATALOG, perk.id, orjson.dumps(perk.to_dict()))
                await pipe.execute()
            raw = await self.redis.hgetall(keys.PERK_CATALOG)
        return sorted((make_perk(orjson.loads(v)) for v in raw.values()), key=lambda p: (p.kind, p.coins, p.id))

    async def get(self, perk_id: str) -> Perk | None:
        """The perk as Valkey holds it now (None: unknown); retired perks are returned, marked."""
        perks = {p.id: p for p in await self.all()}
        return perks.get(perk_id)

    async def put(self, perk: Perk) -> Perk:
        await self.all()  # seed first, so an admin's first change does not hide the shipped perks
        await self.redis.hset(keys.PERK_CATALOG, perk.id, orjson.dumps(perk.to_dict()))
        return perk
