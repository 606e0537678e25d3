"""The shipped catalog: it loads, its ids are sound, prices span the range, and bigger bundles are better value."""

from __future__ import annotations

import copy
import itertools
from fractions import Fraction
from importlib import resources
from typing import Any

import orjson
import pytest

from gifting.catalog.model import ID_PATTERN, Catalog, CatalogError, load_default


def raw_catalog() -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(resources.files("gifting.catalog").joinpath("catalog.json").read_bytes())
    return data


def test_default_catalog_loads() -> None:
    """The packaged catalog loads, with gifts and bundles, every one in USD cents for bundles."""
    catalog = load_default()
    assert len(catalog.gifts) >= 10 and len(catalog.bundles) >= 5
    assert {b.currency for b in catalog.bundles.values()} == {"USD"}
    assert catalog.gifts["rose"].coins == 1


def test_ids_are_unique_and_well_formed() -> None:
    """No gift or bundle id repeats in the file, and every id matches [a-z0-9_]{1,40}."""
    data = raw_catalog()
    gift_ids = [g["id"] for g in data["gifts"]]
    bundle_ids = [b["id"] for b in data["bundles"]]
    assert len(gift_ids) == len(set(gift_ids)) and len(bundle_ids) == len(set(bundle_ids))
    assert all(ID_PATTERN.fullmatch(i) for i in gift_ids + bundle_ids)


def test_gifts_span_one_coin_to_tens_of_thousands() -> None:
    """The cheapest gift costs 1 coin and the dearest tens of thousands; every price is a positive int."""
    coins = [g.coins for g in load_default().gifts.values()]
    assert all(type(c) is int and c > 0 for c in coins)
    assert min(coins) == 1
    assert 10_000 <= max(coins) < 100_000


def test_bundles_give_strictly_more_coins_per_cent_as_they_grow() -> None:
    """Sorted by price, each bundle has more coins and more coins per cent than the one before."""
    bundles = sorted(load_default().bundles.values(), key=lambda b: b.price_minor)
    assert (bundles[0].coins, bundles[0].price_minor) == (65, 99)
    assert (bundles[-1].coins, bundles[-1].price_minor) == (16500, 24999)
    for smaller, larger in itertools.pairwise(bundles):
        assert larger.coins > smaller.coins
        assert Fraction(larger.coins, larger.price_minor) > Fraction(smaller.coins, smaller.price_minor), (
            smaller.id,
            larger.id,
        )


def test_lists_are_sorted_and_round_trip() -> None:
    """gift_list is by price, bundle_list by price, and both load back to the same catalog."""
    catalog = load_default()
    gifts, bundles = catalog.gift_list(), catalog.bundle_list()
    assert [g["coins"] for g in gifts] == sorted(g["coins"] for g in gifts)
    assert [b["price_minor"] for b in bundles] == sorted(b["price_minor"] for b in bundles)
    assert Catalog.from_dict({"gifts": gifts, "bundles": bundles}) == catalog


@pytest.mark.parametrize("kind", ["gifts", "bundles"])
def test_duplicate_id_is_rejected(kind: str) -> None:
    """A catalog with a repeated gift or bundle id does not load."""
    data = raw_catalog()
    data[kind].append(copy.deepcopy(data[kind][0]))
    with pytest.raises(CatalogError, match="duplicate"):
        Catalog.from_dict(data)


@pytest.mark.parametrize("bad_id", ["", "Rose", "rose-red", "x" * 41, "rose\n"])
def test_bad_gift_id_is_rejected(bad_id: str) -> None:
    """A gift id outside [a-z0-9_]{1,40} does not load, and the error names it."""
    data = raw_catalog()
    data["gifts"][0]["id"] = bad_id
    with pytest.raises(CatalogError, match="gift id"):
        Catalog.from_dict(data)


@pytest.mark.parametrize("coins", [0, -1, True, 1.5, "5", 1_000_001])
def test_bad_gift_price_is_rejected(coins: object) -> None:
    """A gift price that is not an int in 1..1_000_000 does not load, and the error names the gift."""
    data = raw_catalog()
    data["gifts"][0]["coins"] = coins
    with pytest.raises(CatalogError, match="rose"):
        Catalog.from_dict(data)


@pytest.mark.parametrize(("field", "value"), [("coins", 0), ("coins", 10_000_001), ("price_minor", 0)])
def test_bad_bundle_amount_is_rejected(field: str, value: int) -> None:
    """A bundle with zero or too many coins, or a zero price, does not load, and the error names the bundle."""
    data = raw_catalog()
    data["bundles"][0][field] = value
    with pytest.raises(CatalogError, match="coins_65"):
        Catalog.from_dict(data)
