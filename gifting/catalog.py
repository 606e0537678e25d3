"""The gift and coin-bundle catalog: pure data, loaded from the JSON file shipped in the package."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import orjson

ID_PATTERN = re.compile(r"^[a-z0-9_]{1,40}$")
GIFT_COINS_MAX = 1_000_000  # a single gift costs at most this many coins
BUNDLE_COINS_MAX = 10_000_000


class CatalogError(ValueError):
    """The catalog file is inconsistent; the message names the entry."""


@dataclass(frozen=True, slots=True)
class Gift:
    id: str
    name: str
    coins: int  # price of one gift, in coins
    asset: str
    tier: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Bundle:
    id: str
    coins: int
    price_minor: int  # price in minor currency units (cents)
    currency: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Catalog:
    gifts: dict[str, Gift]
    bundles: dict[str, Bundle]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Catalog:
        gifts = [Gift(**g) for g in data["gifts"]]
        bundles = [Bundle(**b) for b in data["bundles"]]
        for g in gifts:
            _check_id("gift", g.id)
            _check_amount(f"gift {g.id!r} coins", g.coins, GIFT_COINS_MAX)
        for b in bundles:
            _check_id("bundle", b.id)
            _check_amount(f"bundle {b.id!r} coins", b.coins, BUNDLE_COINS_MAX)
            _check_amount(f"bundle {b.id!r} price_minor", b.price_minor, 10**9)
        catalog = cls({g.id: g for g in gifts}, {b.id: b for b in bundles})
        if len(catalog.gifts) != len(gifts) or len(catalog.bundles) != len(bundles):
            raise CatalogError("catalog: duplicate gift or bundle id")
        return catalog

    def gift_list(self) -> list[dict[str, Any]]:
        return [g.to_dict() for g in sorted(self.gifts.values(), key=lambda g: (g.coins, g.id))]

    def bundle_list(self) -> list[dict[str, Any]]:
        return [b.to_dict() for b in sorted(self.bundles.values(), key=lambda b: (b.price_minor, b.id))]


def _check_id(kind: str, value: str) -> None:
    if not ID_PATTERN.match(value):
        raise CatalogError(f"{kind} id: expected [a-z0-9_]{{1,40}}, got {value!r}")


def _check_amount(what: str, value: object, maximum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= maximum:
        raise CatalogError(f"{what}: expected an integer in 1..{maximum}, got {value!r}")


def load_default() -> Catalog:
    """The catalog shipped with the package (gifting/data/catalog.json)."""
    raw = resources.files("gifting").joinpath("data/catalog.json").read_bytes()
    return Catalog.from_dict(orjson.loads(raw))
