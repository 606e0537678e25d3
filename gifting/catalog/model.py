"""The gift and coin-bundle catalog: pure data, loaded from the JSON file shipped in the package."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import orjson

from gifting.errors import GiftingError

ID_PATTERN = re.compile(r"[a-z0-9_]{1,40}")
CURRENCY_PATTERN = re.compile(r"[A-Z]{3}")
GIFT_COINS_MAX = 1_000_000  # a single gift costs at most this many coins
BUNDLE_COINS_MAX = 10_000_000
PRICE_MINOR_MAX = 10**9  # minor currency units
TEXT_CHARS_MAX = 80


class CatalogError(GiftingError, ValueError):
    """The catalog file (or an admin's entry) is inconsistent; the message names the entry."""

    def __init__(self, message: str, code: str = "bad_catalog") -> None:
        super().__init__(code, message)


@dataclass(frozen=True, slots=True)
class Gift:
    id: str
    name: str
    coins: int  # price of one gift, in coins
    asset: str
    tier: str
    retired: bool = False  # retired gifts stay known (history, statements) but cannot be sent

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Bundle:
    id: str
    coins: int
    price_minor: int  # price in minor currency units (cents)
    currency: str
    retired: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Catalog:
    gifts: dict[str, Gift]
    bundles: dict[str, Bundle]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Catalog:
        gifts = [make_gift(g) for g in data["gifts"]]
        bundles = [make_bundle(b) for b in data["bundles"]]
        catalog = cls({g.id: g for g in gifts}, {b.id: b for b in bundles})
        if len(catalog.gifts) != len(gifts) or len(catalog.bundles) != len(bundles):
            raise CatalogError("catalog: duplicate gift or bundle id")
        return catalog

    def to_dict(self) -> dict[str, Any]:
        return {
            "gifts": [g.to_dict() for g in self.gifts.values()],
            "bundles": [b.to_dict() for b in self.bundles.values()],
        }

    def sendable(self, gift_id: str) -> Gift | None:
        gift = self.gifts.get(gift_id)
        return None if gift is None or gift.retired else gift

    def gift_list(self) -> list[dict[str, Any]]:
        """Gifts on sale, cheapest first."""
        live = (g for g in self.gifts.values() if not g.retired)
        return [g.to_dict() for g in sorted(live, key=lambda g: (g.coins, g.id))]

    def bundle_list(self) -> list[dict[str, Any]]:
        live = (b for b in self.bundles.values() if not b.retired)
        return [b.to_dict() for b in sorted(live, key=lambda b: (b.price_minor, b.id))]


def make_gift(data: dict[str, Any]) -> Gift:
    """A validated Gift from a dict (the catalog file, or an admin's request). Raises CatalogError."""
    try:
        gift = Gift(**data)
    except TypeError as exc:
        raise CatalogError(f"gift: expected fields id, name, coins, asset, tier[, retired]: {exc}") from None
    _check_id("gift", gift.id)
    _check_amount(f"gift {gift.id!r} coins", gift.coins, GIFT_COINS_MAX)
    _check_text(f"gift {gift.id!r}", gift.name, gift.asset, gift.tier)
    return gift


def make_bundle(data: dict[str, Any]) -> Bundle:
    try:
        bundle = Bundle(**data)
    except TypeError as exc:
        raise CatalogError(f"bundle: expected fields id, coins, price_minor, currency[, retired]: {exc}") from None
    _check_id("bundle", bundle.id)
    _check_amount(f"bundle {bundle.id!r} coins", bundle.coins, BUNDLE_COINS_MAX)
    _check_amount(f"bundle {bundle.id!r} price_minor", bundle.price_minor, PRICE_MINOR_MAX)
    if not isinstance(bundle.currency, str) or not CURRENCY_PATTERN.fullmatch(bundle.currency):
        raise CatalogError(f"bundle {bundle.id!r} currency: expected an ISO 4217 code, got {bundle.currency!r}")
    return bundle


def _check_text(what: str, *values: object) -> None:
    for value in values:
        if not isinstance(value, str) or not 1 <= len(value) <= TEXT_CHARS_MAX:
            raise CatalogError(f"{what}: name, asset and tier must be strings of 1..{TEXT_CHARS_MAX} characters")


def _check_id(kind: str, value: str) -> None:
    if not ID_PATTERN.fullmatch(value):
        raise CatalogError(f"{kind} id: expected [a-z0-9_]{{1,40}}, got {value!r}")


def _check_amount(what: str, value: object, maximum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= maximum:
        raise CatalogError(f"{what}: expected an integer in 1..{maximum}, got {value!r}")


def load_default() -> Catalog:
    """The catalog shipped with the package (gifting/catalog/catalog.json)."""
    raw = resources.files("gifting.catalog").joinpath("catalog.json").read_bytes()
    return Catalog.from_dict(orjson.loads(raw))
