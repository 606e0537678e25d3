"""A web process that missed a catalog change's pub/sub message does not keep selling from its stale catalog: it
catches up after re-subscribing and at every version check, and a purchase reads its bundle from Valkey."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from gifting import keys
from tests.conftest import System, SystemFactory, gift_id

CAUGHT_UP_WITHIN_S = 10.0


async def change_quietly(system: System, table: str, item: dict[str, Any]) -> None:
    """An admin change whose pub/sub message every process missed: stored and versioned, never announced."""
    await system.redis.hset(table, item["id"], orjson.dumps(item))
    await system.redis.incr(keys.CATALOG_VERSION)


async def rose_coins(system: System) -> int:
    gifts = (await system.http.get("/v1/catalog/gifts")).json()["gifts"]
    coins: int = next(g["coins"] for g in gifts if g["id"] == "rose")
    return coins


async def wait_for_rose_at(system: System, coins: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CAUGHT_UP_WITHIN_S
    while await rose_coins(system) != coins:
        assert loop.time() < deadline, "the process kept its stale catalog"
        await asyncio.sleep(0.05)


async def buy(system: System, bundle: str) -> Any:
    return await system.http.post(
        "/v1/wallet/purchases",
        headers={**system.auth("v1"), "Idempotency-Key": gift_id()},
        json={"bundle_id": bundle, "payment_token": "tok_sandbox_ok"},
    )


RETIRED_16500 = {"id": "coins_16500", "coins": 16500, "price_minor": 24999, "currency": "USD", "retired": True}
REPRICED_65 = {"id": "coins_65", "coins": 65, "price_minor": 149, "currency": "USD", "retired": False}
ROSE_AT_3 = {"id": "rose", "name": "Rose", "coins": 3, "asset": "rose.svg", "tier": "basic", "retired": False}


async def test_a_purchase_reads_its_bundle_from_the_store(start_system: SystemFactory) -> None:
    """A bundle retired or repriced behind this process's back is refused or charged at the stored price."""
    system = await start_system(sync_check_interval_s=3600.0)
    await change_quietly(system, keys.CATALOG_BUNDLES, RETIRED_16500)
    await change_quietly(system, keys.CATALOG_BUNDLES, REPRICED_65)
    retired = await buy(system, "coins_16500")
    assert retired.status_code == 404 and retired.json()["error"]["code"] == "unknown_bundle"
    repriced = await buy(system, "coins_65")
    assert repriced.status_code == 201 and repriced.json()["purchase"]["price_minor"] == 149
    assert (await system.wallet("v1"))["coins"] == 65


async def test_a_missed_change_is_caught_up_on_resubscribe(start_system: SystemFactory) -> None:
    """With the hub's pub/sub connection dropped, a re-subscribe compares the catalog version at once."""
    system = await start_system(sync_check_interval_s=3600.0)
    await change_quietly(system, keys.CATALOG_GIFTS, ROSE_AT_3)
    await asyncio.sleep(0.3)  # nothing announced it: the process still shows the old price
    assert await rose_coins(system) == 1
    await system.redis.client_kill_filter(_type="pubsub")
    await wait_for_rose_at(system, 3)


async def test_a_missed_change_is_caught_up_periodically(start_system: SystemFactory) -> None:
    """Without any pub/sub message, the version check every GIFTING_SYNC_CHECK_INTERVAL_S reloads the catalog."""
    system = await start_system(sync_check_interval_s=0.2)
    await change_quietly(system, keys.CATALOG_GIFTS, ROSE_AT_3)
    await wait_for_rose_at(system, 3)


async def test_second_process_stops_selling_after_a_reprice_and_retire_under_pubsub_kills(
    start_system: SystemFactory,
) -> None:
    """Pub/sub clients killed during an admin reprice and retire: the other process refuses the retired bundle at
    once and shows the new price once it is back."""
    first = await start_system(sync_check_interval_s=3600.0)
    second = await start_system(worker=False, sync_check_interval_s=3600.0)
    admin = first.auth("admin", "admin")
    await first.redis.client_kill_filter(_type="pubsub")
    body = {"name": "Rose", "coins": 3, "asset": "rose.svg", "tier": "basic"}
    assert (await first.http.put("/v1/admin/gifts/rose", headers=admin, json=body)).status_code == 200
    assert (await first.http.post("/v1/admin/bundles/coins_16500/retire", headers=admin)).status_code == 200
    refused = await buy(second, "coins_16500")
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "unknown_bundle"
    await wait_for_rose_at(second, 3)
