"""The catalog in Redis: seeded from the shipped file once, changed by admins, reloaded by every process.

Web processes reload when the `catalog` channel announces a new version, and compare `catalog:version` after
every pub/sub re-subscribe and every GIFTING_SYNC_CHECK_INTERVAL_S (a missed message must not leave a process
selling from a stale catalog); a purchase reads its bundle from Valkey itself. The settlement worker compares
`catalog:version` once per batch. A gift is priced by the catalog the worker holds; the hub stamps each
gift with the price its own catalog showed, so a repriced gift is settled at the price the viewer saw or
rejected (`price_changed`), never charged more.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import redis.asyncio as aioredis

from gifting import keys
from gifting.catalog.model import Bundle, Catalog, CatalogError, Gift, load_default, make_bundle

log = logging.getLogger(__name__)


class CatalogStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.current = Catalog({}, {})
        self.version = -1

    async def load(self) -> Catalog:
        """Seed from the shipped file if this Valkey has no catalog yet, then read it."""
        if not await self.redis.exists(keys.CATALOG_VERSION):
            shipped = load_default()
            async with self.redis.pipeline(transaction=True) as pipe:
                for gift in shipped.gifts.values():
                    pipe.hsetnx(keys.CATALOG_GIFTS, gift.id, orjson.dumps(gift.to_dict()))
                for bundle in shipped.bundles.values():
                    pipe.hsetnx(keys.CATALOG_BUNDLES, bundle.id, orjson.dumps(bundle.to_dict()))
                pipe.setnx(keys.CATALOG_VERSION, 1)
                await pipe.execute()
        await self.refresh()
        return self.current

    async def refresh(self) -> bool:
        """Re-read the catalog if its version changed. Returns True if it did."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.CATALOG_VERSION)
            pipe.hgetall(keys.CATALOG_GIFTS)
            pipe.hgetall(keys.CATALOG_BUNDLES)
            version, gifts, bundles = await pipe.execute()
        version = int(version or 0)
        if version == self.version:
            return False
        try:
            self.current = Catalog.from_dict(
                {
                    "gifts": [orjson.loads(g) for g in gifts.values()],
                    "bundles": [orjson.loads(b) for b in bundles.values()],
                }
            )
        except (CatalogError, orjson.JSONDecodeError) as exc:
            log.error("catalog version %s is invalid (%s); keeping version %s", version, exc, self.version)
            return False
        self.version = version
        log.info("catalog version %d: %d gifts, %d bundles", version, len(gifts), len(bundles))
        return True

    async def refresh_if_stale(self) -> None:
        """One GET; the full read only when the version moved (the worker calls this once per batch)."""
        if int(await self.redis.get(keys.CATALOG_VERSION) or 0) != self.version:
            await self.refresh()

    async def bundle(self, bundle_id: str) -> Bundle | None:
        """The bundle as Valkey holds it now, not as this process last loaded it: a purchase charges real money,
        so it never sells a bundle retired or repriced by a catalog change this process has not seen yet."""
        raw = await self.redis.hget(keys.CATALOG_BUNDLES, bundle_id)
        if raw is None:
            return None
        try:
            return make_bundle(orjson.loads(raw))
        except (CatalogError, orjson.JSONDecodeError) as exc:
            log.error("catalog bundle %r is invalid (%s)", bundle_id, exc)
            return None

    async def put_gift(self, gift: Gift) -> Gift:
        await self._write(keys.CATALOG_GIFTS, gift.id, gift.to_dict())
        return gift

    async def put_bundle(self, bundle: Bundle) -> Bundle:
        await self._write(keys.CATALOG_BUNDLES, bundle.id, bundle.to_dict())
        return bundle

    async def _write(self, hash_key: str, item_id: str, data: dict[str, Any]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(hash_key, item_id, orjson.dumps(data))
            pipe.incr(keys.CATALOG_VERSION)
            _, version = await pipe.execute()
        await self.redis.publish(keys.CATALOG_CHANNEL, version)
        await self.refresh()
