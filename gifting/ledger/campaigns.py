"""Sponsored-gift campaigns: the record a brand creates, its budget (a coin account), and sponsor.lua's adapter.

A campaign names one catalog gift that viewers may send free between `start_ms` and `end_ms`, optionally only in
some rooms or to some creators, within a per-viewer daily limit and a per-room limit (both in gifts; 0: none).
Its budget `sys:campaign:<id>` is funded from the brand's coins or by an admin grant against an invoice; each
sponsored gift is debited from it atomically with its limits (sponsor.lua); when the campaign closes, what is
left returns to the brand's coins once. The money rules are in ledger/rules.py; this module moves no coin itself.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gifting import keys, valkey
from gifting.auth import USER_ID_PATTERN
from gifting.catalog.model import Catalog
from gifting.clock import hour_number, now_ms, utc_day
from gifting.config import Settings
from gifting.ledger import rules
from gifting.ledger.store import Ledger, LedgerError, load_script_with

CLOSE_ATTEMPTS_MAX = 20  # retries of a close whose budget moved between its read and its script
VIEWER_DAY_TTL_S = 2 * 86400  # a day's per-viewer counts outlive the day by one, for late batches
NAME_CHARS_MAX = 64
ART_CHARS_MAX = 200
LIMIT_MAX = 1_000_000  # per-viewer and per-room limits, gifts: larger is a typo, not a policy
REPORT_FIELDS = ("funded", "spent", "sends", "impressions", "returned")


class CampaignError(LedgerError):
    """A campaign request refused; `code` goes on the wire (HTTP status: gifting/web/http.py). Nothing moved.
    A LedgerError, so the worker's loop retries a sweep that met one (`busy`) instead of stopping."""


@dataclass(frozen=True, slots=True)
class SponsoredSend:
    """One sponsored gift as the worker hands it to sponsor.lua (amounts from rules.split_gift)."""

    gift_id: str
    campaign: str
    viewer: str
    creator: str
    room: str
    gift: str
    count: int
    coins: int
    diamonds: int
    fingerprint: str
    reject: str  # decided before the ledger (rules.gift_reject, rules.sponsor_reject), or ""
    impressions: int  # the room's viewers when it settled: each is shown the gift's animation (approximate)


def _int(body: dict[str, Any], name: str, low: int, high: int, default: int | None = None) -> int:
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise CampaignError("bad_campaign", f"{name}: expected an integer in {low}..{high}, got {value!r}")
    return value


def _ids(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and USER_ID_PATTERN.fullmatch(v) for v in value):
        raise CampaignError("bad_campaign", f"{name}: expected a list of ids ([A-Za-z0-9_.@-]{{1,64}} each)")
    return list(dict.fromkeys(value))


def make_campaign(
    body: dict[str, Any], brand: str, brand_name: str, catalog: Catalog, settings: Settings, now: int
) -> dict[str, str]:
    """The stored record of a new campaign, from a brand's request. Raises CampaignError for bad input."""
    name = body.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= NAME_CHARS_MAX:
        raise CampaignError("bad_campaign", f"name: expected 1..{NAME_CHARS_MAX} characters")
    art = body.get("art", "")
    if not isinstance(art, str) or len(art) > ART_CHARS_MAX:
        raise CampaignError("bad_campaign", f"art: expected a URL or asset name of at most {ART_CHARS_MAX} characters")
    gift_id = body.get("gift")
    gift = catalog.sendable(gift_id) if isinstance(gift_id, str) else None
    if gift is None:
        raise CampaignError("unknown_gift", f"gift: no gift {str(body.get('gift'))[:40]!r} on sale")
    start = _int(body, "start_ms", 0, 2**53, default=now)
    end = _int(body, "end_ms", start + 1, start + settings.campaign_duration_s_max * 1000)
    if end <= now:
        raise CampaignError("bad_campaign", "end_ms: expected a time in the future")
    rooms, creators = _ids(body, "rooms"), _ids(body, "creators")
    if len(rooms) + len(creators) > settings.campaign_targets_max:
        raise CampaignError("bad_campaign", f"rooms + creators: at most {settings.campaign_targets_max} targets")
    if brand in creators:
        raise CampaignError("sponsor_self", "a campaign cannot target its own brand as a creator")
    return {
        "id": "c_" + secrets.token_hex(8), "brand": brand, "brand_name": brand_name, "name": name,
        "gift": gift.id, "art": art or gift.asset, "start_ms": str(start), "end_ms": str(end),
        "rooms": " ".join(rooms), "creators": " ".join(creators),
        "viewer_day_max": str(_int(body, "viewer_day_max", 0, LIMIT_MAX, default=0)),
        "room_max": str(_int(body, "room_max", 0, LIMIT_MAX, default=0)),
        "status": "active", "created_ms": str(now), **dict.fromkeys(REPORT_FIELDS, "0"),
    }  # fmt: skip


def campaign_view(record: dict[str, str], budget: int, creators_reached: int | None = None) -> dict[str, Any]:
    """A campaign as the API shows it; with `creators_reached`, the brand's report too."""
    view: dict[str, Any] = {
        "id": record["id"], "brand": record["brand"], "brand_name": record["brand_name"], "name": record["name"],
        "gift": record["gift"], "art": record["art"], "sponsored_by": record["brand_name"],
        "start_ms": int(record["start_ms"]), "end_ms": int(record["end_ms"]),
        "rooms": record["rooms"].split(), "creators": record["creators"].split(),
        "viewer_day_max": int(record["viewer_day_max"]), "room_max": int(record["room_max"]),
        "status": record["status"], "budget": budget,
    }  # fmt: skip
    if creators_reached is not None:
        report = {f: int(record.get(f, "0")) for f in REPORT_FIELDS}
        view["report"] = report | {"creators_reached": creators_reached, "budget_left": budget}
    return view


class Campaigns:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.ledger = Ledger(redis, settings)
        self.script = redis.register_script(load_script_with("sponsor.lua", "legs.lua"))

    async def create(self, record: dict[str, str]) -> dict[str, Any]:
        """Store a new campaign (no money moves: it is funded separately) unless too many are open."""
        if await self.redis.zcard(keys.CAMPAIGNS_OPEN) >= self.settings.campaigns_open_max:
            raise CampaignError("too_many_campaigns", f"{self.settings.campaigns_open_max} campaigns are open")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.campaign(record["id"]), mapping=record)
            pipe.zadd(keys.CAMPAIGNS_OPEN, {record["id"]: int(record["end_ms"])})
            pipe.rpush(keys.brand_campaigns(record["brand"]), record["id"])
            await pipe.execute()
        await self.ledger.committed()
        return campaign_view(record, 0)

    async def record(self, campaign_id: str) -> dict[str, str]:
        """The stored campaign; CampaignError unknown_campaign (404) when there is none."""
        record: dict[str, str] = await self.redis.hgetall(keys.campaign(campaign_id)) if campaign_id else {}
        if not record:
            raise CampaignError("unknown_campaign", f"no campaign {campaign_id[:40]!r}")
        return record

    async def budget(self, campaign_id: str) -> int:
        return int(await self.redis.hget(keys.LEDGER_COINS, keys.campaign_account(campaign_id)) or 0)

    async def view(self, campaign_id: str, report: bool = False) -> dict[str, Any]:
        """The campaign with its budget (and report), read in one transaction: a send settling between two reads
        would make the report not add up (funded = spent + budget left + returned)."""
        if not campaign_id:
            await self.record(campaign_id)  # unknown_campaign
        async with self.redis.pipeline(transaction=True) as pipe:  # one slot: {ledger}
            pipe.hgetall(keys.campaign(campaign_id))
            pipe.hget(keys.LEDGER_COINS, keys.campaign_account(campaign_id))
            pipe.scard(keys.campaign_creators(campaign_id))
            record, budget, reached = await pipe.execute()
        if not record:
            raise CampaignError("unknown_campaign", f"no campaign {campaign_id[:40]!r}")
        return campaign_view(record, int(budget or 0), reached if report else None)

    async def of_brand(self, brand: str) -> list[dict[str, Any]]:
        """The brand's newest campaigns (GIFTING_CAMPAIGNS_LISTED_MAX), newest first, with their reports."""
        ids = await self.redis.lrange(keys.brand_campaigns(brand), -self.settings.campaigns_listed_max, -1)
        return [await self.view(cid, report=True) for cid in reversed(ids)]

    async def for_room(self, room: str, creator: str) -> list[dict[str, Any]]:
        """The campaigns a viewer of `room` (hosted by `creator`) can send now: running and targeting it."""
        now = now_ms()
        ids = await self.redis.zrangebyscore(
            keys.CAMPAIGNS_OPEN, now + 1, "+inf", start=0, num=self.settings.campaigns_listed_max
        )
        found = []
        for cid in ids:
            record = await self.redis.hgetall(keys.campaign(cid))
            reason = rules.sponsor_reject(record or None, record.get("gift", ""), room, creator, "", now)
            if reason is None:
                found.append(campaign_view(record, await self.budget(cid)))
        return found

    async def fund(self, campaign_id: str, coins: int, funding_id: str, brand: str | None, invoice: str = "") -> int:
        """Move `coins` into the budget: from the brand's coins, or (brand None) an admin grant against `invoice`.
        Idempotent by `funding_id`. Returns the budget after."""
        record = await self.record(campaign_id)
        now, grant, budget_account = now_ms(), brand is None, keys.campaign_account(campaign_id)
        legs = rules.encode_legs(rules.campaign_funding_legs(campaign_id, coins, brand))
        payer = keys.account(brand) if brand is not None else ""
        row = rules.statement_row(now, "campaign_fund", "coins", -coins, budget_account, funding_id)
        code, budget = await self.script(
            keys=[
                keys.LEDGER_COINS, keys.LEDGER_JOURNAL, keys.campaign(campaign_id), keys.campaign_funding(funding_id),
                keys.statement(brand) if brand is not None else keys.campaign_funding(funding_id),
            ],
            args=[
                "fund", now, funding_id, rules.fingerprint(campaign_id, coins, payer, invoice), payer, coins, legs, row,
                "campaign_grant" if grant else "campaign_fund", campaign_id, invoice, budget_account,
            ],
        )  # fmt: skip
        if code not in ("ok", "replay"):
            raise CampaignError(code, FUND_ERRORS[code].format(id=campaign_id, brand=record["brand"]))
        await self.ledger.committed()
        return int(budget)

    async def close(self, campaign_id: str, early: bool = False) -> tuple[str, int]:
        """Close the campaign and return its unspent budget to the brand, exactly once. Returns (code, coins
        returned): closed, already_closed, or not_ended (its end has not come and `early` is False)."""
        record = await self.record(campaign_id)
        budget_account = keys.campaign_account(campaign_id)
        for _attempt in range(CLOSE_ATTEMPTS_MAX):
            now, budget = now_ms(), await self.budget(campaign_id)
            legs = rules.encode_legs(rules.campaign_return_legs(campaign_id, record["brand"], budget))
            row = rules.statement_row(now, "campaign_return", "coins", budget, budget_account, campaign_id)
            code, returned = await self.script(
                keys=[
                    keys.LEDGER_COINS, keys.LEDGER_JOURNAL, keys.campaign(campaign_id), keys.CAMPAIGNS_OPEN,
                    keys.statement(record["brand"]),
                ],
                args=["close", now, campaign_id, budget_account, budget, legs, row, "1" if early else "0",
                      f"campaign_return:{campaign_id}"],
            )  # fmt: skip
            if code != "stale":
                await self.ledger.committed()
                return code, int(returned)
        raise CampaignError("busy", f"campaign {campaign_id} budget changed concurrently too often; retry")

    async def due(self, limit: int) -> list[str]:
        """Campaigns past their end and not yet closed, oldest end first."""
        ids: list[str] = await self.redis.zrangebyscore(keys.CAMPAIGNS_OPEN, "-inf", now_ms(), start=0, num=limit)
        return ids

    async def send(self, sends: list[SponsoredSend]) -> list[rules.GiftOutcome]:
        """Settle sponsored gifts, one sponsor.lua call each in one pipeline, then one durability wait."""
        if not sends:
            return []
        now = now_ms()
        await self.redis.script_load(self.script.script)  # by sha in the pipeline below: load it first
        async with self.redis.pipeline(transaction=False) as pipe:
            for g in sends:
                keys_, args = self._send_call(g, now)
                valkey.queue_evalsha(pipe, self.script.sha, keys_, args)
            replies = await pipe.execute()
        outcomes = [
            rules.GiftOutcome(g.gift_id, status, reason, int(balance), bool(int(replay)))
            for g, (status, reason, balance, replay) in zip(sends, replies, strict=True)
        ]
        await self.ledger.committed()
        return outcomes

    def _send_call(self, g: SponsoredSend, now: int) -> tuple[list[str], list[Any]]:
        """sponsor.lua's KEYS and ARGV for one sponsored gift."""
        s = self.settings
        buckets, expire_at = rules.record_buckets(now // 1000, s.idempotency_ttl_s)
        rejected, rejected_expire_at = rules.record_buckets(now // 1000, s.rejected_gift_ttl_s)
        creator, viewer = keys.account(g.creator), keys.account(g.viewer)
        legs = row = ""
        if not g.reject:
            split = rules.GiftSplit(g.coins, g.diamonds, g.coins - g.diamonds)
            legs = rules.encode_legs(rules.sponsored_gift_legs(g.campaign, g.creator, split))
            row = rules.statement_row(
                now, "gift_received", "diamonds", g.diamonds, viewer, g.gift_id, g.gift, str(g.count)
            )
        keys_ = [
            keys.LEDGER_COINS, keys.LEDGER_DIAMONDS, keys.LEDGER_JOURNAL, keys.campaign(g.campaign),
            keys.campaign_viewer_day(g.campaign, utc_day(now)), keys.campaign_rooms(g.campaign),
            keys.campaign_creators(g.campaign), keys.account_statement(creator), keys.account_earned(creator),
            *map(keys.gift_records, buckets), *map(keys.rejected_gift_records, rejected),
        ]  # fmt: skip
        args: list[Any] = [
            "send", now, g.gift_id, g.fingerprint, g.reject, viewer, creator, keys.campaign_account(g.campaign),
            g.coins, g.diamonds, g.count, legs, g.room, g.gift, s.creator_share_bps, row, len(buckets), len(rejected),
            expire_at, rejected_expire_at, hour_number(now), VIEWER_DAY_TTL_S, g.impressions, g.campaign,
        ]  # fmt: skip
        return keys_, args


FUND_ERRORS = {
    "idempotency_key_conflict": "Idempotency-Key was used for a different funding",
    "campaign_closed": "campaign {id} has ended; its budget was returned to {brand}",
    "insufficient_coins": "not enough coins to fund the budget; buy coins first",
}
