"""Sponsored gifts and perks on ledger partitions: brand, viewer and creator in three different partitions.

The campaign lives in its brand's partition (funding and return are local); a sponsored gift and a perk settle in
the payer's partition and owe the creator's partition an outbox credit, applied once; each partition's ledgers
sum to zero, sys:transit ends at 0 and every outbox is empty.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gifting import clock, gifts, keys
from gifting.catalog.model import load_default
from gifting.catalog.store import CatalogStore
from gifting.config import Settings
from gifting.gifts import GiftRequest
from gifting.ledger import partitions, rules
from gifting.ledger.campaigns import Campaigns, SponsoredSend, make_campaign
from gifting.ledger.perks import PerkLedger, PerkOrder
from gifting.ledger.store import Ledger
from gifting.perks import refund_tickets
from gifting.rooms.store import RoomStore, history_events
from tests.conftest import gift_id, make_settings
from workers.sponsored import SponsoredGifts

COFFEE = 10  # coins of the catalog's coffee, the sponsored gift here
pytestmark = pytest.mark.cluster


def three_users() -> tuple[str, str, str]:
    """A brand, a viewer and a creator whose accounts live in three different partitions."""
    brand = "brand0"
    viewer = next(f"viewer{i}" for i in itertools.count() if _part(f"viewer{i}") != _part(brand))
    creator = next(
        f"creator{i}" for i in itertools.count() if _part(f"creator{i}") not in {_part(brand), _part(viewer)}
    )
    return brand, viewer, creator


def _part(user: str) -> int:
    return partitions.of_account(keys.account(user))


async def grant(redis: aioredis.Redis, user: str, coins: int) -> None:
    """Coins the way a purchase credits them (issuance -> user, in the user's partition, with its journal entry)."""
    part = keys.part_of_user(user)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hincrby(keys.coins(part), keys.account(user), coins)
        pipe.hincrby(keys.coins(part), keys.SYS_COIN_ISSUANCE, -coins)
        pipe.xadd(keys.journal(part), {"kind": "purchase", "id": f"grant:{gift_id()}",
                                       "legs": f"coins sys:coin_issuance u:{user} {coins}"})  # fmt: skip
        await pipe.execute()


async def balance(redis: aioredis.Redis, ledger: str, account: str) -> int:
    return int(await redis.hget(f"{keys.part_of(account)}:{ledger}", account) or 0)


async def assert_partitions_balanced(redis: aioredis.Redis) -> None:
    """Every ledger of every partition sums to zero, sys:transit is 0 in each, and no outbox holds an entry."""
    for part in partitions.all_tags():
        for ledger, balances_key in keys.ledgers(part):
            balances = {a: int(v) for a, v in (await redis.hgetall(balances_key)).items()}
            assert sum(balances.values()) == 0, (part, ledger, balances)
            assert balances.get(keys.SYS_TRANSIT, 0) == 0, (part, ledger, balances)
        assert await redis.xlen(keys.outbox(part)) == 0, part


def sponsored(settings: Settings, campaign: str, viewer: str, creator: str, room: str, gid: str) -> SponsoredSend:
    split = rules.split_gift(COFFEE, settings.creator_share_bps)
    return SponsoredSend(
        gift_id=gid, campaign=campaign, viewer=viewer, creator=creator, room=room, gift="coffee", count=1,
        coins=split.coins, diamonds=split.diamonds, fingerprint=rules.fingerprint(gid), reject="", impressions=3,
    )  # fmt: skip


def highlight_order(viewer: str, creator: str, room: str, key: str) -> PerkOrder:
    purchase = keys.user_scoped_id(viewer, key)
    fields = {"perk": "h", "room": room}
    return PerkOrder(purchase, viewer, creator, "highlight", room, 50, 60_000, keys.perk_purchase(purchase), fields)


async def new_campaign(campaigns: Campaigns, settings: Settings, brand: str) -> str:
    body: dict[str, Any] = {"name": "Coffee week", "gift": "coffee", "end_ms": clock.now_ms() + 3_600_000}
    record = make_campaign(body, brand, "Brand", load_default(), settings, clock.now_ms())
    await campaigns.create(record)
    return record["id"]


async def test_sponsored_gifts_across_three_partitions(redis: aioredis.Redis, tmp_path: Path) -> None:
    """Fund from the brand's coins, send sponsored gifts to exhaustion, return the rest: the brand's and the
    campaign's coins stay in the brand's partition, the creator's diamonds land once in theirs."""
    settings = make_settings(tmp_path)
    brand, viewer, creator = three_users()
    campaigns = Campaigns(redis, settings)
    await grant(redis, brand, 105)
    campaign = await new_campaign(campaigns, settings, brand)
    assert keys.campaign_part(campaign) == keys.part_of_user(brand)
    assert await campaigns.fund(campaign, 105, "f1", brand) == 105
    assert await campaigns.fund(campaign, 105, "f1", brand) == 105  # a replay moves nothing
    sends = [sponsored(settings, campaign, viewer, creator, "room1", f"g{i}") for i in range(11)]
    outcomes = await campaigns.send(sends)
    assert [o.status for o in outcomes] == ["settled"] * 10 + ["rejected"]
    assert outcomes[-1].reason == "budget_exhausted"
    assert await campaigns.send(sends[:3]) and [o.replay for o in await campaigns.send(sends[:3])] == [True] * 3
    split = rules.split_gift(COFFEE, settings.creator_share_bps)
    assert await balance(redis, "diamonds", keys.account(creator)) == 10 * split.diamonds
    assert await balance(redis, "coins", keys.campaign_account(campaign)) == 5
    assert await campaigns.close(campaign, early=True) == ("closed", 5)
    assert await campaigns.close(campaign, early=True) == ("already_closed", 5)
    assert await balance(redis, "coins", keys.account(brand)) == 5
    assert await balance(redis, "coins", keys.account(viewer)) == 0
    report = (await campaigns.view(campaign, report=True))["report"]
    assert report | {"impressions": 0} == {"funded": 105, "spent": 100, "sends": 10, "impressions": 0,
                                          "returned": 5, "creators_reached": 1, "budget_left": 0}  # fmt: skip
    assert await redis.llen(keys.statement(creator)) == (10 if split.diamonds else 0)
    await assert_partitions_balanced(redis)


async def test_a_crash_between_the_two_steps_of_a_sponsored_gift_neither_loses_nor_doubles(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    """The campaign's step settles and the process dies before the creator's credit: the redrive applies it once,
    and a late apply of the same entry moves nothing."""
    settings = make_settings(tmp_path)
    brand, viewer, creator = three_users()
    campaigns, ledger = Campaigns(redis, settings), Ledger(redis, settings)
    await grant(redis, brand, 30)
    campaign = await new_campaign(campaigns, settings, brand)
    await campaigns.fund(campaign, 30, "f1", brand)
    sends = [sponsored(settings, campaign, viewer, creator, "room1", f"g{i}") for i in range(3)]
    outcomes, owed = await campaigns.send_step(sends)
    part = keys.campaign_part(campaign)
    assert [o.status for o in outcomes] == ["settled"] * 3 and len(owed[part]) == 3
    assert await balance(redis, "diamonds", keys.account(creator)) == 0  # owed, in the campaign's outbox
    assert await ledger.redrive_outbox(part, 0) == 3
    for outbox_id in owed[part]:
        await ledger.apply_credits(part, [outbox_id])
    assert [o.replay for o in await campaigns.send(sends)] == [True] * 3  # a redelivery owes nothing again
    split = rules.split_gift(COFFEE, settings.creator_share_bps)
    assert await balance(redis, "diamonds", keys.account(creator)) == 3 * split.diamonds
    assert await redis.llen(keys.statement(creator)) == 3
    await assert_partitions_balanced(redis)


async def test_the_worker_settles_a_sponsored_gift_from_the_campaigns_partition(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    """workers/sponsored.py: the campaign's partition pays, the creator's is credited, the room hears the sponsor
    once, and the sender's result shows their own coins (read in their partition)."""
    settings = make_settings(tmp_path)
    brand, viewer, creator = three_users()
    campaigns, rooms, catalogs = Campaigns(redis, settings), RoomStore(redis, settings), CatalogStore(redis)
    await catalogs.load()
    await grant(redis, brand, 20)
    await grant(redis, viewer, 7)
    campaign = await new_campaign(campaigns, settings, brand)
    await campaigns.fund(campaign, 20, "f1", brand)
    await redis.hset(keys.room_meta("room1"), mapping={"creator": creator, "status": "live"})
    worker = SponsoredGifts(redis, settings, catalogs, rooms)
    await redis.script_load(rooms.announce_script.script)  # the settlement worker loads it at start
    request = GiftRequest("g1", "room1", "coffee", 1, viewer, "Viewer", "", ts_ms=clock.now_ms(), campaign=campaign)
    assert gifts.stream_of(request) == keys.gifts_stream(keys.part_of_user(brand))
    for _ in range(2):  # a redelivery answers the record and credits nothing twice
        (outcome,) = await worker.settle([request])
        assert (outcome.status, outcome.coins) == ("settled", 7)
    split = rules.split_gift(COFFEE, settings.creator_share_bps)
    assert await balance(redis, "diamonds", keys.account(creator)) == split.diamonds
    events = history_events(await redis.xrange(keys.room_history("room1")))
    assert [(e["kind"], e["sponsor"]) for e in events] == [("gift", "Brand")]
    await assert_partitions_balanced(redis)


async def test_perk_and_ticket_refund_across_partitions(redis: aioredis.Redis, tmp_path: Path) -> None:
    """A perk and a ticket bought in the viewer's partition pay the creator's partition once (even when the
    credit is left to the redrive, twice); the early-ended premium stream refunds the ticket in both."""
    settings = make_settings(tmp_path)
    _brand, viewer, creator = three_users()
    ledger, rooms = Ledger(redis, settings), RoomStore(redis, settings)
    perks = PerkLedger(ledger)
    await grant(redis, viewer, 200)
    room, part = "room1", keys.part_of_user(viewer)
    highlight = highlight_order(viewer, creator, room, "h1")
    outcome, outbox_id = await perks.buy_step(highlight, "fp-h1", 3600)
    assert outcome.settled and outbox_id  # the creator's part waits in the viewer's partition's outbox
    assert await balance(redis, "diamonds", keys.account(creator)) == 0
    assert await ledger.redrive_outbox(part, 0) == 1  # the process that bought it died: the redrive applies it
    await ledger.apply_credits(part, [outbox_id])  # and a late retry of the first step's apply moves nothing
    perk_diamonds = rules.split_gift(50, settings.perk_creator_share_bps).diamonds
    assert await balance(redis, "diamonds", keys.account(creator)) == perk_diamonds
    tickets = keys.room_tickets(part, room)
    ticket = PerkOrder(keys.user_scoped_id(viewer, "t1"), viewer, creator, "ticket", room, 30, 0, tickets,
                       {"perk": "ticket", "room": room})  # fmt: skip
    bought = await perks.buy(ticket, "fp-t1", 0)
    assert bought.settled and await redis.hget(tickets, keys.account(viewer)) == ticket.purchase_id
    ticket_diamonds = rules.split_gift(30, settings.perk_creator_share_bps).diamonds
    assert await balance(redis, "diamonds", keys.account(creator)) == perk_diamonds + ticket_diamonds
    now = clock.now_ms()
    await redis.hset(keys.room_meta(room), mapping={"creator": creator, "premium_coins": 30, "premium_since_ms": now})
    assert await refund_tickets(rooms, room, now + 1) == 1
    assert await refund_tickets(rooms, room, now + 1) == 0  # once
    assert await balance(redis, "coins", keys.account(viewer)) == 200 - 50
    assert await balance(redis, "diamonds", keys.account(creator)) == perk_diamonds
    refused = await perks.buy(
        highlight_order(viewer, creator, room, "h2"), "fp-h2", 3600
    )  # the room's end is marked in the buyer's partition too
    assert (refused.status, refused.reason) == ("rejected", "room_not_live")
    await assert_partitions_balanced(redis)


async def test_listing_counting_and_closing_walk_every_partition(redis: aioredis.Redis, tmp_path: Path) -> None:
    """Campaigns of brands in different partitions: a room lists both (ending soonest first), the open bound
    counts both, and the sweep's `due` finds both once they end."""
    settings = make_settings(tmp_path)
    first, second = "brand0", next(f"brand{i}" for i in itertools.count(1) if _part(f"brand{i}") != _part("brand0"))
    campaigns = Campaigns(redis, settings)
    ids = [await new_campaign(campaigns, settings, brand) for brand in (second, first)]
    assert keys.campaign_part(ids[0]) != keys.campaign_part(ids[1])
    assert await campaigns.open_count() == 2
    assert sorted(c["id"] for c in await campaigns.for_room("room1", "creator1")) == sorted(ids)
    assert await campaigns.due(10) == []
    for end, cid in enumerate(ids, start=1):
        await redis.hset(keys.campaign(cid), "end_ms", end)
        await redis.zadd(keys.campaigns_open(keys.campaign_part(cid)), {cid: end})
    assert await campaigns.due(10) == ids and await campaigns.for_room("room1", "creator1") == []
    assert [await campaigns.close(cid) for cid in ids] == [("closed", 0), ("closed", 0)]
    assert await campaigns.open_count() == 0


async def test_a_crash_between_the_two_steps_of_a_ticket_refund_neither_loses_nor_doubles(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    """The buyer's partition refunds the ticket and the process dies before the creator's debit: the redrive
    takes the diamonds back once; a second refund of the ticket moves nothing."""
    settings = make_settings(tmp_path)
    _brand, viewer, creator = three_users()
    ledger, perks = Ledger(redis, settings), PerkLedger(Ledger(redis, settings))
    await grant(redis, viewer, 30)
    room, part = "room1", keys.part_of_user(viewer)
    ticket = PerkOrder(keys.user_scoped_id(viewer, "t1"), viewer, creator, "ticket", room, 30, 0,
                       keys.room_tickets(part, room), {"perk": "ticket", "room": room})  # fmt: skip
    assert (await perks.buy(ticket, "fp-t1", 0)).settled
    refunded, outbox_id = await perks.refund(ticket.purchase_id, room)
    await ledger.committed(part)
    assert refunded and outbox_id
    assert await balance(redis, "coins", keys.account(viewer)) == 30  # the buyer's side is done
    assert await balance(redis, "diamonds", keys.account(creator)) > 0  # the creator's still owed back
    assert await ledger.redrive_outbox(part, 0) == 1
    assert await perks.refund(ticket.purchase_id, room) == (False, "")
    assert await ledger.redrive_outbox(part, 0) == 0
    assert await balance(redis, "diamonds", keys.account(creator)) == 0
    await assert_partitions_balanced(redis)
