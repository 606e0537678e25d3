"""Sponsored gifts: a brand's campaign budget pays for gifts viewers send free, through the same gift path."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis

from gifting import clock, keys
from gifting.gifts import GiftRequest
from gifting.history import journal
from gifting.ledger import partitions
from gifting.ledger.audit import run_audit
from gifting.ledger.campaigns import Campaigns
from gifting.live.hub import fresh_viewer_total
from gifting.rooms.store import announce_fields, history_events
from tests.conftest import System, SystemFactory, gift_id, run_worker

WAIT_S = 30.0
COFFEE = 10  # coins of the catalog's coffee, the sponsored gift of these tests


async def audit_clean(redis: aioredis.Redis) -> None:
    report = await run_audit(redis)
    assert report.clean, report.summary()


async def create(system: System, brand: str = "brand1", **fields: Any) -> dict[str, Any]:
    body = {"name": "Coffee week", "gift": "coffee", "end_ms": clock.now_ms() + 3_600_000} | fields
    response = await system.http.post("/v1/campaigns", headers=system.auth(brand, "brand"), json=body)
    assert response.status_code == 201, response.text
    campaign: dict[str, Any] = response.json()["campaign"]
    return campaign


async def fund(system: System, campaign: str, coins: int, brand: str = "brand1", key: str | None = None) -> Any:
    return await system.http.post(
        f"/v1/campaigns/{campaign}/fund",
        headers={**system.auth(brand, "brand"), "Idempotency-Key": key or gift_id()},
        json={"coins": coins},
    )


async def funded_campaign(system: System, coins: int, brand: str = "brand1", **fields: Any) -> str:
    await system.grant(brand, coins)
    campaign = await create(system, brand, **fields)
    response = await fund(system, campaign["id"], coins, brand)
    assert response.status_code == 200, response.text
    assert response.json()["campaign"]["budget"] == coins
    return str(campaign["id"])


async def send(
    system: System, room: str, campaign: str, viewer: str = "v1", gift: str = "coffee", gid: str | None = None
) -> dict[str, Any]:
    response = await system.http.post(
        f"/v1/rooms/{room}/gifts",
        headers=system.auth(viewer),
        json={"gift": gift, "count": 1, "gift_id": gid or gift_id(), "campaign": campaign},
    )
    assert response.status_code in (200, 422), response.text
    result: dict[str, Any] = response.json()
    return result


async def report(system: System, campaign: str, brand: str = "brand1") -> dict[str, Any]:
    response = await system.http.get(f"/v1/campaigns/{campaign}", headers=system.auth(brand, "brand"))
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()["campaign"]
    return view


@pytest.mark.cluster
async def test_a_sponsored_gift_is_free_for_the_viewer_and_pays_the_creator_as_a_paid_one(system: System) -> None:
    """The budget pays the coins, the creator earns the diamonds of a paid gift, the room sees the sponsor."""
    campaign = await funded_campaign(system, 100)
    room = await system.open_room("c1")
    watcher = await system.connect("w1")
    assert (await watcher.join(room))["type"] == "joined"
    result = await send(system, room, campaign)
    assert result["status"] == "settled", result
    assert await system.wallet("v1") == {"coins": 0, "diamonds": 0}
    assert (await system.wallet("c1"))["diamonds"] == COFFEE * system.settings.creator_share_bps // 10_000
    message = await watcher.wait_for(lambda m: any(e.get("kind") == "gift" for e in m.get("events", [])))
    event = next(e for e in message["events"] if e["kind"] == "gift")
    assert event["sponsor"] == "brand1" and event["gift"] == "coffee" and event["coins"] == COFFEE
    view = await report(system, campaign)
    assert view["budget"] == 100 - COFFEE
    assert view["report"] | {"impressions": 0} == {
        "funded": 100, "spent": COFFEE, "sends": 1, "impressions": 0, "returned": 0, "creators_reached": 1,
        "budget_left": 100 - COFFEE,
    }  # fmt: skip
    await audit_clean(system.redis)


async def test_a_resent_sponsored_gift_is_settled_once(system: System) -> None:
    """The same gift id twice: one debit of the budget, the same outcome for both."""
    campaign = await funded_campaign(system, 100)
    room = await system.open_room("c1")
    gid = gift_id()
    first, second = await send(system, room, campaign, gid=gid), await send(system, room, campaign, gid=gid)
    assert first["status"] == second["status"] == "settled"
    assert (await report(system, campaign))["budget"] == 100 - COFFEE
    await audit_clean(system.redis)


async def test_a_send_the_budget_cannot_cover_is_rejected_and_moves_nothing(system: System) -> None:
    """With 15 coins left, one 10-coin gift settles and the next is rejected budget_exhausted."""
    campaign = await funded_campaign(system, 15)
    room = await system.open_room("c1")
    assert (await send(system, room, campaign))["status"] == "settled"
    result = await send(system, room, campaign, viewer="v2")
    assert (result["status"], result["reason"]) == ("rejected", "budget_exhausted")
    assert (await report(system, campaign))["budget"] == 5
    await audit_clean(system.redis)


async def test_outside_the_window_a_send_is_rejected(system: System) -> None:
    """Before the start: campaign_not_started; after the brand ends it: campaign_ended. Nothing moves."""
    later = await funded_campaign(system, 100, start_ms=clock.now_ms() + 600_000)
    room = await system.open_room("c1")
    assert (await send(system, room, later))["reason"] == "campaign_not_started"
    ended = await funded_campaign(system, 100)
    response = await system.http.post(f"/v1/campaigns/{ended}/end", headers=system.auth("brand1", "brand"))
    assert response.status_code == 200 and response.json()["returned"] == 100, response.text
    assert (await send(system, room, ended))["reason"] == "campaign_ended"
    assert await system.wallet("c1") == {"coins": 0, "diamonds": 0}
    await audit_clean(system.redis)


async def test_beyond_the_per_viewer_daily_limit_a_send_is_rejected(system: System) -> None:
    """viewer_day_max 2: the third gift of one viewer that day is rejected; another viewer still sends."""
    campaign = await funded_campaign(system, 100, viewer_day_max=2)
    room = await system.open_room("c1")
    assert [(await send(system, room, campaign))["status"] for _ in range(2)] == ["settled", "settled"]
    assert (await send(system, room, campaign))["reason"] == "sponsor_viewer_limit"
    assert (await send(system, room, campaign, viewer="v2"))["status"] == "settled"
    assert (await report(system, campaign))["budget"] == 100 - 3 * COFFEE
    await audit_clean(system.redis)


async def test_beyond_the_per_room_limit_a_send_is_rejected(system: System) -> None:
    """room_max 1: the second gift in one room is rejected, whoever sends it."""
    campaign = await funded_campaign(system, 100, room_max=1)
    room = await system.open_room("c1")
    assert (await send(system, room, campaign))["status"] == "settled"
    assert (await send(system, room, campaign, viewer="v2"))["reason"] == "sponsor_room_limit"
    await audit_clean(system.redis)


async def test_a_room_the_campaign_does_not_target_is_rejected(system: System) -> None:
    """A campaign for creator c2 only: a send in c1's room is rejected, one in c2's settles."""
    campaign = await funded_campaign(system, 100, creators=["c2"])
    room1, room2 = await system.open_room("c1"), await system.open_room("c2")
    assert (await send(system, room1, campaign))["reason"] == "campaign_not_targeted"
    assert (await send(system, room2, campaign))["status"] == "settled"
    listed = (await system.http.get(f"/v1/rooms/{room1}/campaigns")).json()["campaigns"]
    assert listed == []
    listed = (await system.http.get(f"/v1/rooms/{room2}/campaigns")).json()["campaigns"]
    assert [c["id"] for c in listed] == [campaign] and listed[0]["sponsored_by"] == "brand1"


async def test_the_brand_cannot_send_its_own_sponsored_gift(system: System) -> None:
    """The brand sending its own campaign's gift is rejected sponsor_self; so is a campaign naming the brand
    as a target creator."""
    campaign = await funded_campaign(system, 100)
    room = await system.open_room("c1")
    assert (await send(system, room, campaign, viewer="brand1"))["reason"] == "sponsor_self"
    response = await system.http.post(
        "/v1/campaigns",
        headers=system.auth("brand1", "brand"),
        json={"name": "Me", "gift": "coffee", "end_ms": clock.now_ms() + 60_000, "creators": ["brand1"]},
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "sponsor_self"
    assert (await report(system, campaign))["budget"] == 100


async def test_another_gift_than_the_campaigns_is_rejected(system: System) -> None:
    """Naming the campaign with another gift: not_sponsored_gift; an unknown campaign: unknown_campaign."""
    campaign = await funded_campaign(system, 100)
    room = await system.open_room("c1")
    assert (await send(system, room, campaign, gift="rose"))["reason"] == "not_sponsored_gift"
    assert (await send(system, room, "c_0123456789abcdef"))["reason"] == "unknown_campaign"
    assert (await report(system, campaign))["budget"] == 100


@pytest.mark.cluster
async def test_the_unspent_budget_returns_to_the_brand_once_at_the_end(system: System) -> None:
    """Past its end the worker's sweep returns what is left to the brand; closing again returns nothing."""
    campaign = await funded_campaign(system, 100)
    room = await system.open_room("c1")
    assert (await send(system, room, campaign))["status"] == "settled"
    await system.redis.hset(keys.campaign(campaign), "end_ms", clock.now_ms())  # the end comes now
    await system.redis.zadd(keys.campaigns_open(keys.campaign_part(campaign)), {campaign: clock.now_ms()})
    deadline = time.monotonic() + WAIT_S
    while (await report(system, campaign))["status"] != "closed":
        assert time.monotonic() < deadline, "the sweep did not close the campaign"
        await asyncio.sleep(0.05)
    assert (await system.wallet("brand1"))["coins"] == 100 - COFFEE
    assert await Campaigns(system.redis, system.settings).close(campaign) == ("already_closed", 100 - COFFEE)
    assert (await system.wallet("brand1"))["coins"] == 100 - COFFEE
    view = await report(system, campaign)
    assert (view["budget"], view["report"]["returned"]) == (0, 100 - COFFEE)
    await audit_clean(system.redis)


async def test_funding_is_idempotent_and_needs_the_coins(system: System) -> None:
    """A funding repeated with its key moves coins once; more than the brand holds is insufficient_coins."""
    await system.grant("brand1", 50)
    campaign = (await create(system))["id"]
    first, again = await fund(system, campaign, 30, key="k1"), await fund(system, campaign, 30, key="k1")
    assert first.status_code == again.status_code == 200 and again.json()["campaign"]["budget"] == 30
    short = await fund(system, campaign, 30)
    assert short.status_code == 409 and short.json()["error"]["code"] == "insufficient_coins"
    conflict = await fund(system, campaign, 5, key="k1")
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_key_conflict"
    assert (await system.wallet("brand1"))["coins"] == 20
    await audit_clean(system.redis)


async def test_an_admin_grants_a_budget_against_an_invoice(system: System) -> None:
    """An admin grant is new coins into the budget, once per key; a brand cannot grant."""
    campaign = (await create(system))["id"]
    path, body = f"/v1/admin/campaigns/{campaign}/grant", {"coins": 500, "invoice": "INV-2026-0042"}
    admin = {**system.auth("admin1", "admin"), "Idempotency-Key": "g1"}
    for _ in range(2):
        response = await system.http.post(path, headers=admin, json=body)
        assert response.status_code == 200 and response.json()["campaign"]["budget"] == 500, response.text
    brand = {**system.auth("brand1", "brand"), "Idempotency-Key": "g2"}
    assert (await system.http.post(path, headers=brand, json=body)).status_code == 403
    await audit_clean(system.redis)


async def test_bad_campaign_requests_get_clear_codes(system: System) -> None:
    """A viewer cannot create a campaign; bad windows, gifts, limits and amounts are refused with codes."""
    now = clock.now_ms()
    viewer = await system.http.post("/v1/campaigns", headers=system.auth("v1"), json={})
    assert viewer.status_code == 403
    bad = [
        ({"name": "x", "gift": "coffee", "end_ms": now - 1}, "bad_campaign"),
        ({"name": "x", "gift": "coffee", "end_ms": now + 10**12}, "bad_campaign"),
        ({"name": "x", "gift": "nope", "end_ms": now + 60_000}, "unknown_gift"),
        ({"name": "x", "gift": "coffee", "end_ms": now + 60_000, "viewer_day_max": -1}, "bad_campaign"),
        ({"name": "x", "gift": "coffee", "end_ms": now + 60_000, "rooms": ["a b"]}, "bad_campaign"),
        ({"name": "", "gift": "coffee", "end_ms": now + 60_000}, "bad_campaign"),
    ]
    for body, code in bad:
        response = await system.http.post("/v1/campaigns", headers=system.auth("brand1", "brand"), json=body)
        assert response.status_code == 400 and response.json()["error"]["code"] == code, (body, response.text)
    campaign = (await create(system))["id"]
    zero = await fund(system, campaign, 0)
    assert zero.status_code == 400 and zero.json()["error"]["code"] == "bad_amount"
    other = await fund(system, campaign, 1, brand="brand2")
    assert other.status_code == 403
    missing = await system.http.get("/v1/campaigns/c_0123456789abcdef", headers=system.auth("brand1", "brand"))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_campaign"


@pytest.mark.cluster
async def test_a_storm_of_sponsored_sends_exhausts_the_budget_exactly(system: System, valkey_url: str) -> None:
    """60 concurrent sends against a budget for 25, settled by two workers at once (two consumers of the group):
    exactly 25 settle, the rest are rejected budget_exhausted, the budget ends at zero, the audit is clean."""
    campaign = await funded_campaign(system, 25 * COFFEE)
    room = await system.open_room("c1")
    async with run_worker(system.settings, valkey_url, consumer="second-worker"):
        results = await asyncio.gather(*(send(system, room, campaign, viewer=f"v{i}") for i in range(60)))
    statuses = [r["status"] for r in results]
    assert statuses.count("settled") == 25, statuses
    assert {r["reason"] for r in results if r["status"] == "rejected"} == {"budget_exhausted"}
    view = await report(system, campaign)
    assert (view["budget"], view["report"]["spent"], view["report"]["sends"]) == (0, 25 * COFFEE, 25)
    await audit_clean(system.redis)


async def test_the_audit_finds_a_budget_below_zero_or_moved_by_another_transfer(system: System) -> None:
    """A forged sponsored gift overdrawing a budget, and a transfer of another kind into one, are findings."""
    campaign = await funded_campaign(system, 10)
    budget = keys.campaign_account(campaign)
    forged = {
        "kind": "sponsored", "id": gift_id(), "campaign": campaign, "bps": "10000", "room": "r", "gift": "coffee",
        "count": "1",
        "legs": f"coins {budget} {keys.SYS_CREATOR_EARNINGS} 20|diamonds {keys.SYS_DIAMOND_ISSUANCE} u:c1 20",
    }  # fmt: skip
    stray = {"kind": "purchase", "id": "grant:stray", "legs": f"coins {keys.SYS_COIN_ISSUANCE} {budget} 5"}
    part = keys.campaign_part(campaign)  # forged in the budget's own partition, balances to match
    async with system.redis.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.journal(part), forged)  # type: ignore[arg-type]
        pipe.xadd(keys.journal(part), stray)
        pipe.hincrby(keys.coins(part), budget, -15)
        pipe.hincrby(keys.coins(part), keys.SYS_CREATOR_EARNINGS, 20)
        pipe.hincrby(keys.coins(part), keys.SYS_COIN_ISSUANCE, -5)
        pipe.hincrby(keys.diamonds(part), keys.SYS_DIAMOND_ISSUANCE, -20)
        pipe.hincrby(keys.diamonds(part), "u:c1", 20)
        await pipe.execute()
    findings = "\n".join((await run_audit(system.redis)).findings)
    assert f"campaign {campaign} budget below zero" in findings, findings
    assert "moves campaign budget" in findings and f"{budget}: budget -5 below zero" in findings, findings


@pytest.mark.cluster
async def test_ending_a_campaign_during_a_storm_splits_the_budget_exactly(system: System) -> None:
    """40 concurrent sends while the brand ends the campaign: spent + returned = funded, the budget ends at 0,
    every send after the end is rejected campaign_ended, and the audit is clean."""
    campaign = await funded_campaign(system, 30 * COFFEE)
    room = await system.open_room("c1")
    end = system.http.post(f"/v1/campaigns/{campaign}/end", headers=system.auth("brand1", "brand"))
    results = await asyncio.gather(*(send(system, room, campaign, viewer=f"v{i}") for i in range(40)), end)
    sends, ended = results[:-1], results[-1]
    assert ended.status_code == 200, ended.text
    settled = [r for r in sends if r["status"] == "settled"]
    assert {r["reason"] for r in sends if r["status"] != "settled"} <= {"campaign_ended", "budget_exhausted"}
    view = await report(system, campaign)
    r = view["report"]
    assert (view["status"], view["budget"], r["spent"]) == ("closed", 0, len(settled) * COFFEE)
    assert r["spent"] + r["returned"] == 30 * COFFEE == r["funded"]
    assert (await system.wallet("brand1"))["coins"] == r["returned"]
    await audit_clean(system.redis)


async def test_a_redelivered_sponsored_gift_hits_its_record(system: System) -> None:
    """The worker settling the same stream entry twice (a crash before its ack): the second is a replay, the
    budget is debited once and the room shows the gift once."""
    campaign = await funded_campaign(system, 100)
    room = await system.open_room("c1")
    request = GiftRequest(gift_id(), room, "coffee", 1, "v1", "V1", hub="", ts_ms=clock.now_ms(), campaign=campaign)
    assert system.worker is not None
    first = await system.worker.sponsored.settle([request])
    again = await system.worker.sponsored.settle([request])
    assert (first[0].status, first[0].replay, again[0].status, again[0].replay) == ("settled", False, "settled", True)
    assert (await report(system, campaign))["budget"] == 100 - COFFEE
    events = history_events(await system.redis.xrange(keys.room_history(room)))
    assert [e["sponsor"] for e in events if e.get("gift_id") == request.gift_id] == ["brand1"]
    await audit_clean(system.redis)


async def test_bad_sponsored_sends_get_clear_codes(system: System) -> None:
    """A campaign id of the wrong shape, or a campaign with a recipient on stage, is bad_campaign (400)."""
    room = await system.open_room("c1")
    for extra in ({"campaign": "nope"}, {"campaign": "c_0123456789abcdef", "to": "g1"}, {"campaign": 7}):
        body = {"gift": "coffee", "count": 1, "gift_id": gift_id(), **extra}
        response = await system.http.post(f"/v1/rooms/{room}/gifts", headers=system.auth("v1"), json=body)
        assert response.status_code == 400 and response.json()["error"]["code"] == "bad_campaign", response.text


async def test_the_audit_reads_archived_budget_transfers(system: System, history: psycopg.AsyncConnection[Any]) -> None:
    """Fundings, sponsored gifts and the return archived into PostgreSQL: the audit over both stays clean."""
    campaign = await funded_campaign(system, 100)
    room = await system.open_room("c1")
    assert (await send(system, room, campaign))["status"] == "settled"
    response = await system.http.post(f"/v1/campaigns/{campaign}/end", headers=system.auth("brand1", "brand"))
    assert response.status_code == 200 and response.json()["returned"] == 100 - COFFEE
    for part in partitions.all_tags():  # the campaign's partition and the creator's (its credit)
        stream = keys.journal(part)
        while (await journal.archive_batch(system.redis, history, stream, 5))[0]:
            pass
        await journal.trim_archived(system.redis, stream, await journal.cursor(history, stream))
        assert await system.redis.xlen(stream) == 0
    report = await run_audit(system.redis, archive=history)
    assert report.clean and report.kinds["sponsored"] == 1 and report.kinds["campaign_return"] == 1, report.summary()


def test_a_sponsored_gift_never_continues_a_paid_combo() -> None:
    """The same sender's paid and sponsored coffee are separate combos, so no merged entry mixes who paid."""
    paid = {"kind": "gift", "sender": "v1", "gift": "coffee", "coins": 10, "count": 1, "gift_id": "a"}
    sponsored = paid | {"gift_id": "b", "sponsor": "Acme"}
    combo = [announce_fields(g["gift_id"], g).rsplit("\t", 1)[1] for g in (paid, sponsored)]
    assert combo == ["v1:coffee", "v1:coffee:sponsored"]


async def test_impressions_count_the_room_viewers_when_a_sponsored_gift_settles(start_system: SystemFactory) -> None:
    """Three sockets in the room (their count shared by the hub): one sponsored gift makes three impressions."""
    system = await start_system(viewers_interval_ms=500)  # counts stay fresh 1.5 s: room for a slow machine
    campaign = await funded_campaign(system, 100)
    room = await system.open_room("c1")
    for i in range(3):
        assert (await (await system.connect(f"w{i}")).join(room))["type"] == "joined"
    deadline = time.monotonic() + WAIT_S
    while fresh_viewer_total(await system.redis.hgetall(keys.room_viewers(room)), clock.now_ms(), 1500) != 3:
        assert time.monotonic() < deadline, "the hub did not share the room's viewer count"
        await asyncio.sleep(0.05)
    assert (await send(system, room, campaign))["status"] == "settled"
    assert (await report(system, campaign))["report"]["impressions"] == 3
