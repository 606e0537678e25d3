"""Sponsored-gift campaigns over HTTP: a brand creates and funds them and reads their report; an admin grants a
budget against an invoice; anyone lists the campaigns a room's viewers can send now (gifting/ledger/campaigns.py).
Sending a sponsored gift is a `gift` with a `campaign` (websocket, or POST /v1/rooms/{room}/gifts)."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gifting import clock
from gifting.auth import Identity
from gifting.ledger.campaigns import CampaignError, Campaigns, make_campaign
from gifting.web.http import ApiError, NotFound, identify, json_body, json_response, require_admin
from gifting.web.wallet import idempotency_key, positive_int
from gifting.wire import protocol

INVOICE_PATTERN = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")


def _campaigns(request: Request) -> Campaigns:
    campaigns: Campaigns = request.app.state.campaigns
    return campaigns


def _brand(request: Request) -> Identity:
    identity = identify(request)
    if identity.role != "brand":
        raise ApiError("forbidden", "brand tokens only (gifting token USER --role brand)")
    return identity


async def _owned(request: Request, identity: Identity) -> dict[str, str]:
    """The path's campaign, if the caller is its brand or an admin."""
    campaign_id = request.path_params["campaign"]
    try:
        record = await _campaigns(request).record(campaign_id)
    except CampaignError as exc:
        raise NotFound(exc.code, exc.message) from None
    if identity.role != "admin" and record["brand"] != identity.user:
        raise ApiError("forbidden", "only the campaign's brand or an admin")
    return record


async def create_campaign(request: Request) -> Response:
    """A brand creates a campaign (no budget yet: fund it next). Body: name, gift, art, start_ms, end_ms, rooms,
    creators, viewer_day_max, room_max (gifts; 0: no limit)."""
    identity = _brand(request)
    state = request.app.state
    record = make_campaign(
        await json_body(request), identity.user, identity.name, state.catalogs.current, state.settings, clock.now_ms()
    )
    return json_response({"campaign": await _campaigns(request).create(record)}, 201)


async def list_campaigns(request: Request) -> Response:
    """The brand's newest campaigns, each with its report."""
    identity = _brand(request)
    return json_response({"campaigns": await _campaigns(request).of_brand(identity.user)})


async def get_campaign(request: Request) -> Response:
    """A campaign and its report: sends, coins spent, creators reached, impressions, budget left."""
    record = await _owned(request, identify(request))
    return json_response({"campaign": await _campaigns(request).view(record["id"], report=True)})


async def fund_campaign(request: Request) -> Response:
    """The brand moves coins from its wallet into the budget. Idempotent by Idempotency-Key."""
    identity = _brand(request)
    record = await _owned(request, identity)
    key = idempotency_key(request)
    body = await json_body(request)
    coins = positive_int(body.get("coins"), "coins", request.app.state.settings.campaign_fund_coins_max)
    campaigns = _campaigns(request)
    await campaigns.fund(record["id"], coins, f"fund:{identity.user}:{key}", identity.user)
    return json_response({"campaign": await campaigns.view(record["id"], report=True)})


async def grant_campaign(request: Request) -> Response:
    """An admin grants a budget against an invoice (new coins, like a purchase). Idempotent by Idempotency-Key."""
    admin = require_admin(request)
    record = await _owned(request, admin)
    key = idempotency_key(request)
    body = await json_body(request)
    coins = positive_int(body.get("coins"), "coins", request.app.state.settings.campaign_fund_coins_max)
    invoice = body.get("invoice")
    if not isinstance(invoice, str) or not INVOICE_PATTERN.fullmatch(invoice):
        raise ApiError("bad_invoice", "invoice: expected the invoice reference, [A-Za-z0-9_.:/-]{1,64}")
    campaigns = _campaigns(request)
    await campaigns.fund(record["id"], coins, f"grant:{admin.user}:{key}", None, invoice)
    return json_response({"campaign": await campaigns.view(record["id"], report=True)})


async def end_campaign(request: Request) -> Response:
    """The brand or an admin ends a campaign now: its unspent budget returns to the brand, once."""
    record = await _owned(request, identify(request))
    campaigns = _campaigns(request)
    _code, returned = await campaigns.close(record["id"], early=True)
    view: dict[str, Any] = await campaigns.view(record["id"], report=True)
    return json_response({"campaign": view, "returned": returned})


async def room_campaigns(request: Request) -> Response:
    """The campaigns a viewer of this live room can send now, free (the watch page shows them)."""
    room = protocol.parse_room(request.path_params["room"])  # ProtocolError: 400
    info = await request.app.state.rooms.get(room)  # RoomError room_not_found: 404
    return json_response({"campaigns": await _campaigns(request).for_room(room, info.creator)})


routes = [
    Route("/v1/campaigns", create_campaign, methods=["POST"]),
    Route("/v1/campaigns", list_campaigns, methods=["GET"]),
    Route("/v1/campaigns/{campaign}", get_campaign, methods=["GET"]),
    Route("/v1/campaigns/{campaign}/fund", fund_campaign, methods=["POST"]),
    Route("/v1/campaigns/{campaign}/end", end_campaign, methods=["POST"]),
    Route("/v1/admin/campaigns/{campaign}/grant", grant_campaign, methods=["POST"]),
    Route("/v1/rooms/{room}/campaigns", room_campaigns, methods=["GET"]),
]
