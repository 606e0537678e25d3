"""HTTP handlers of perks (gifting/perks.py): the perk catalog, buying perks and tickets, premium streams."""

from __future__ import annotations

import dataclasses

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gifting.catalog.model import CatalogError
from gifting.catalog.perks import make_perk
from gifting.perks import Perks
from gifting.web.http import ApiError, NotFound, identify, json_body, json_response, rejected_status, require_admin
from gifting.web.rooms import _room_param
from gifting.web.wallet import idempotency_key, positive_int


def _perks(request: Request) -> Perks:
    perks: Perks = request.app.state.hub.perks
    return perks


async def list_perks(request: Request) -> Response:
    perks = await _perks(request).catalog.all()
    return json_response({"perks": [p.to_dict() for p in perks if not p.retired]})


async def put_perk(request: Request) -> Response:
    """Add a perk or change it. Body: {kind, name, coins, days}; `bad_perk` for anything out of bounds."""
    require_admin(request)
    body = await json_body(request)
    try:
        perk = make_perk({**body, "id": request.path_params["perk"], "retired": False})
    except CatalogError as exc:
        raise ApiError("bad_perk", str(exc)) from None
    return json_response((await _perks(request).catalog.put(perk)).to_dict())


async def retire_perk(request: Request) -> Response:
    """Retire a perk: it leaves the listing and cannot be bought (`unknown_perk`); what was bought runs on."""
    require_admin(request)
    catalog = _perks(request).catalog
    perk = await catalog.get(request.path_params["perk"])
    if perk is None:
        raise NotFound("unknown_perk", f"no perk {request.path_params['perk']!r}")
    return json_response((await catalog.put(dataclasses.replace(perk, retired=True))).to_dict())


async def buy_perk(request: Request) -> Response:
    """Buy a catalog perk in a live room. Body: {perk, message (highlight only)}; Idempotency-Key."""
    identity = identify(request)
    room, key = _room_param(request), idempotency_key(request)
    body = await json_body(request)
    perk = body.get("perk")
    if not isinstance(perk, str):
        raise ApiError("bad_perk", f"perk: expected a perk id, got {perk!r}")
    message = body.get("message")
    result = await _perks(request).buy(identity, room, perk, key, message if isinstance(message, str) else None)
    return _answer(result)


async def buy_ticket(request: Request) -> Response:
    """Buy the ticket to a premium stream. Body: {coins: the price as shown}; Idempotency-Key."""
    identity = identify(request)
    room, key = _room_param(request), idempotency_key(request)
    body = await json_body(request)
    coins = positive_int(body.get("coins"), "coins", request.app.state.settings.ticket_coins_max)
    return _answer(await _perks(request).buy_ticket(identity, room, coins, key))


async def set_premium(request: Request) -> Response:
    """The room's creator marks the live stream premium. Body: {coins: the ticket price}."""
    identity = identify(request)
    room = _room_param(request)
    body = await json_body(request)
    coins_max = request.app.state.settings.ticket_coins_max
    coins = body.get("coins")
    if type(coins) is not int or not 1 <= coins <= coins_max:
        raise ApiError("bad_price", f"coins: expected an integer ticket price in 1..{coins_max}, got {coins!r}")
    return json_response(await _perks(request).set_premium(identity, room, coins))


def _answer(result: dict[str, object]) -> Response:
    """200 for a settled purchase (a replay too), 422 with the same body for a rejected one."""
    if result["status"] == "rejected":
        return json_response(result, rejected_status(str(result["reason"])))
    return json_response(result)


routes = [
    Route("/v1/catalog/perks", list_perks),
    Route("/v1/admin/perks/{perk}", put_perk, methods=["PUT"]),
    Route("/v1/admin/perks/{perk}/retire", retire_perk, methods=["POST"]),
    Route("/v1/rooms/{room}/perks", buy_perk, methods=["POST"]),
    Route("/v1/rooms/{room}/ticket", buy_ticket, methods=["POST"]),
    Route("/v1/rooms/{room}/premium", set_premium, methods=["POST"]),
]
