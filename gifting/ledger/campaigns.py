"""Sponsored-gift campaigns: the record a brand creates, its budget (a coin account), and sponsor.lua's adapter.

A campaign names one catalog gift that viewers may send free between `start_ms` and `end_ms`, optionally only in
some rooms or to some creators, within a per-viewer daily limit and a per-room limit (both in gifts; 0: none).
Its budget `sys:campaign:<id>` is funded from the brand's coins or by an admin grant against an invoice; each
sponsored gift is debited from it atomically with its limits (sponsor.lua); when the campaign closes, what is
left returns to the brand's coins once. The money rules are in ledger/rules.py; this module moves no coin itself.

Partitions (docs/SCALING.md): a campaign's id is drawn until its budget account falls in its brand's ledger
partition (`new_campaign_id`), so the record, counters, fundings, the brand's coins and the budget share one
partition and funding and the return are each one local script (no funding can be in flight while the campaign
closes). A sponsored gift is settled there too (the hub queues it on that partition's stream); the creator's
diamonds, statement row and earned hour go to the creator's partition as an outbox credit when it is another.
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
from gifting.ledger import partitions, rules
from gifting.ledger.remote_part import place
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
    viewer_coins: int = 0  # the viewer's coin balance (their own partition): what the result shows


ID_TRIES_MAX = 100_000  # draws of a campaign id in its brand's partition (about GIFTING_LEDGER_PARTITIONS needed)


def new_campaign_id(brand: str) -> str:
    """A fresh campaign id whose budget account lives in the brand's partition (see the module's doc)."""
    want = partitions.of_account(keys.account(brand))
    for _ in range(ID_TRIES_MAX):
        candidate = "c_" + secrets.token_hex(8)
        if partitions.of_account(keys.campaign_account(candidate)) == want:
            return candidate
    raise AssertionError(f"no campaign id in partition {want} after {ID_TRIES_MAX} draws")


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
        "id": new_campaign_id(brand), "brand": brand, "brand_name": brand_name, "name": name,
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
        """Store a new campaign (no money moves: it is funded separately) unless too many are open (over every
        partition: GIFTING_CAMPAIGNS_OPEN_MAX is the platform's bound)."""
        if await self.open_count() >= self.settings.campaigns_open_max:
            raise CampaignError("too_many_campaigns", f"{self.settings.campaigns_open_max} campaigns are open")
        part = keys.campaign_part(record["id"])
        assert part == keys.part_of_user(record["brand"]), record  # new_campaign_id: the brand's partition
        async with self.redis.pipeline(transaction=True) as pipe:  # one slot: the brand's partition
            pipe.hset(keys.campaign(record["id"]), mapping=record)
            pipe.zadd(keys.campaigns_open(part), {record["id"]: int(record["end_ms"])})
            pipe.rpush(keys.brand_campaigns(record["brand"]), record["id"])
            await pipe.execute()
        await self.ledger.committed(part)
        return campaign_view(record, 0)

    async def open_count(self) -> int:
        """Open campaigns over every partition (one pipeline)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for part in partitions.all_tags():
                pipe.zcard(keys.campaigns_open(part))
            return sum(await pipe.execute())

    async def record(self, campaign_id: str) -> dict[str, str]:
        """The stored campaign; CampaignError unknown_campaign (404) when there is none."""
        record: dict[str, str] = await self.redis.hgetall(keys.campaign(campaign_id)) if campaign_id else {}
        if not record:
            raise CampaignError("unknown_campaign", f"no campaign {campaign_id[:40]!r}")
        return record

    async def budget(self, campaign_id: str) -> int:
        part = keys.campaign_part(campaign_id)
        return int(await self.redis.hget(keys.coins(part), keys.campaign_account(campaign_id)) or 0)

    async def view(self, campaign_id: str, report: bool = False) -> dict[str, Any]:
        """The campaign with its budget (and report), read in one transaction: a send settling between two reads
        would make the report not add up (funded = spent + budget left + returned)."""
        if not campaign_id:
            await self.record(campaign_id)  # unknown_campaign
        part = keys.campaign_part(campaign_id)
        async with self.redis.pipeline(transaction=True) as pipe:  # one slot: the campaign's partition
            pipe.hgetall(keys.campaign(campaign_id))
            pipe.hget(keys.coins(part), keys.campaign_account(campaign_id))
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
        """The campaigns a viewer of `room` (hosted by `creator`) can send now: running and targeting it. Every
        partition's open campaigns in one pipeline, then their records and budgets in another."""
        now, listed_max = now_ms(), self.settings.campaigns_listed_max
        async with self.redis.pipeline(transaction=False) as pipe:
            for part in partitions.all_tags():
                pipe.zrangebyscore(keys.campaigns_open(part), now + 1, "+inf", start=0, num=listed_max, withscores=True)
            running = [(end, cid) for part_ids in await pipe.execute() for cid, end in part_ids]
        ids = [cid for _end, cid in sorted(running)[:listed_max]]  # the ones ending soonest, as on one partition
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.hgetall(keys.campaign(cid))
                pipe.hget(keys.coins(keys.campaign_part(cid)), keys.campaign_account(cid))
            replies = await pipe.execute()
        found = []
        for record, budget in zip(replies[::2], replies[1::2], strict=True):
            reason = rules.sponsor_reject(record or None, record.get("gift", ""), room, creator, "", now)
            if reason is None:
                found.append(campaign_view(record, int(budget or 0)))
        return found

    async def fund(self, campaign_id: str, coins: int, funding_id: str, brand: str | None, invoice: str = "") -> int:
        """Move `coins` into the budget: from the brand's coins, or (brand None) an admin grant against `invoice`.
        Idempotent by `funding_id`. Returns the budget after. Local to the campaign's partition: the brand's
        coins live there too (new_campaign_id)."""
        record = await self.record(campaign_id)
        if brand is not None and brand != record["brand"]:
            raise CampaignError("forbidden", f"campaign {campaign_id} belongs to another brand")
        part = keys.campaign_part(campaign_id)
        now, grant, budget_account = now_ms(), brand is None, keys.campaign_account(campaign_id)
        placed = rules.place_legs(rules.campaign_funding_legs(campaign_id, coins, brand), part)
        assert list(placed) == [part], placed  # one partition: the brand's coins and the budget
        legs = rules.encode_legs(placed[part])
        payer = keys.account(brand) if brand is not None else ""
        row = rules.statement_row(now, "campaign_fund", "coins", -coins, budget_account, funding_id)
        code, budget = await self.script(
            keys=[
                keys.coins(part), keys.journal(part), keys.campaign(campaign_id),
                keys.campaign_funding(campaign_id, funding_id),
                keys.statement(brand) if brand is not None else keys.campaign_funding(campaign_id, funding_id),
            ],
            args=[
                "fund", now, funding_id, rules.fingerprint(campaign_id, coins, payer, invoice), payer, coins, legs, row,
                "campaign_grant" if grant else "campaign_fund", campaign_id, invoice, budget_account,
            ],
        )  # fmt: skip
        if code not in ("ok", "replay"):
            raise CampaignError(code, FUND_ERRORS[code].format(id=campaign_id, brand=record["brand"]))
        await self.ledger.committed(part)
        return int(budget)

    async def close(self, campaign_id: str, early: bool = False) -> tuple[str, int]:
        """Close the campaign and return its unspent budget to the brand, exactly once (one local script: the
        brand's coins share the budget's partition). Returns (code, coins returned): closed, already_closed, or
        not_ended (its end has not come and `early` is False)."""
        record = await self.record(campaign_id)
        part, budget_account = keys.campaign_part(campaign_id), keys.campaign_account(campaign_id)
        for _attempt in range(CLOSE_ATTEMPTS_MAX):
            now, budget = now_ms(), await self.budget(campaign_id)
            placed = rules.place_legs(rules.campaign_return_legs(campaign_id, record["brand"], budget), part)
            assert set(placed) <= {part}, placed
            legs = rules.encode_legs(placed.get(part, []))
            row = rules.statement_row(now, "campaign_return", "coins", budget, budget_account, campaign_id)
            code, returned = await self.script(
                keys=[
                    keys.coins(part), keys.journal(part), keys.campaign(campaign_id), keys.campaigns_open(part),
                    keys.statement(record["brand"]),
                ],
                args=["close", now, campaign_id, budget_account, budget, legs, row, "1" if early else "0",
                      f"campaign_return:{campaign_id}"],
            )  # fmt: skip
            if code != "stale":
                await self.ledger.committed(part)
                return code, int(returned)
        raise CampaignError("busy", f"campaign {campaign_id} budget changed concurrently too often; retry")

    async def due(self, limit: int) -> list[str]:
        """Campaigns past their end and not yet closed, oldest end first, over every partition."""
        now = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for part in partitions.all_tags():
                pipe.zrangebyscore(keys.campaigns_open(part), "-inf", now, start=0, num=limit, withscores=True)
            found = [pair for part_ids in await pipe.execute() for pair in part_ids]
        return [cid for cid, _end in sorted(found, key=lambda pair: (pair[1], pair[0]))[:limit]]

    async def send(self, sends: list[SponsoredSend]) -> list[rules.GiftOutcome]:
        """Settle sponsored gifts (send_step), then apply the creators' credits of other partitions
        (Ledger.apply_credits: best effort, the settlement worker's outbox redrive finishes what fails)."""
        outcomes, owed = await self.send_step(sends)
        for part, outbox_ids in owed.items():  # only once the debits are durable: a credit never outruns its debit
            await self.ledger.apply_credits(part, outbox_ids)
        return outcomes

    async def send_step(self, sends: list[SponsoredSend]) -> tuple[list[rules.GiftOutcome], dict[str, list[str]]]:
        """The source step alone: one sponsor.lua call per gift in one pipeline, then one durability wait. Returns
        the outcomes and the outbox entries written, by campaign partition (tests stop here to crash between the
        two steps)."""
        if not sends:
            return [], {}
        now = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for g in sends:
                keys_, args = self._send_call(g, now)
                await valkey.queue_script(pipe, self.script, keys_, args)
            replies = await pipe.execute()
        async with self.ledger.group_commit():  # one wait per campaign partition written
            for part in sorted({keys.campaign_part(g.campaign) for g in sends}):
                await self.ledger.committed(part)
        outcomes = [
            rules.GiftOutcome(g.gift_id, status, reason, int(balance), bool(int(replay)))
            for g, (status, reason, balance, replay, _outbox) in zip(sends, replies, strict=True)
        ]
        owed: dict[str, list[str]] = {}
        for g, reply in zip(sends, replies, strict=True):
            if reply[4]:
                owed.setdefault(keys.campaign_part(g.campaign), []).append(reply[4])
        return outcomes, owed

    def _send_call(self, g: SponsoredSend, now: int) -> tuple[list[str], list[Any]]:
        """sponsor.lua's KEYS and ARGV for one sponsored gift (all in the campaign's partition)."""
        s, part = self.settings, keys.campaign_part(g.campaign)
        buckets, expire_at = rules.record_buckets(now // 1000, s.idempotency_ttl_s)
        rejected, rejected_expire_at = rules.record_buckets(now // 1000, s.rejected_gift_ttl_s)
        creator, viewer = keys.account(g.creator), keys.account(g.viewer)
        legs = row = dest = credit = ""
        local_creator = keys.part_of(creator) == part
        if not g.reject:
            split = rules.GiftSplit(g.coins, g.diamonds, g.coins - g.diamonds)
            row = rules.statement_row(
                now, "gift_received", "diamonds", g.diamonds, viewer, g.gift_id, g.gift, str(g.count)
            )
            placed = place(
                rules.sponsored_gift_legs(g.campaign, g.creator, split), part, creator, g.gift_id, "gift_received",
                row if g.diamonds > 0 else "", g.diamonds, now, g.room, g.gift, g.count,
            )  # fmt: skip
            legs, dest, credit = placed.local_legs, placed.dest, placed.credit
            row = row if local_creator else ""
        unused = keys.campaign(g.campaign)  # stands for the creator's keys when they live in another partition
        keys_ = [
            keys.coins(part), keys.diamonds(part), keys.journal(part), keys.campaign(g.campaign),
            keys.campaign_viewer_day(g.campaign, utc_day(now)), keys.campaign_rooms(g.campaign),
            keys.campaign_creators(g.campaign),
            keys.account_statement(creator) if local_creator else unused,
            keys.account_earned(creator) if local_creator else unused, keys.outbox(part),
            *(keys.gift_records(part, b) for b in buckets), *(keys.rejected_gift_records(part, b) for b in rejected),
        ]  # fmt: skip
        args: list[Any] = [
            "send", now, g.gift_id, g.fingerprint, g.reject, viewer, creator, keys.campaign_account(g.campaign),
            g.coins, g.diamonds, g.count, legs, g.room, g.gift, s.creator_share_bps, row, len(buckets), len(rejected),
            expire_at, rejected_expire_at, hour_number(now), VIEWER_DAY_TTL_S, g.impressions, g.campaign, dest,
            credit, g.viewer_coins,
        ]  # fmt: skip
        return keys_, args


FUND_ERRORS = {
    "idempotency_key_conflict": "Idempotency-Key was used for a different funding",
    "campaign_closed": "campaign {id} has ended; its budget was returned to {brand}",
    "insufficient_coins": "not enough coins to fund the budget; buy coins first",
}
