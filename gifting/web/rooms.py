"""HTTP handlers of rooms: open, list, end, gifts, leaderboards, goals, summaries, pools and pledges."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gifting import auth
from gifting.outage import STORE_UNAVAILABLE
from gifting.rooms.pools import cancel_pool, get_pool, open_pool, pool_view
from gifting.rooms.store import GOAL_DIAMONDS_MAX, GOAL_TARGET_MAX, LIVE_PAGE_MAX, TOP_LIMIT_MAX, TOP_PERIODS
from gifting.web.http import (
    STATUS,
    ApiError,
    identify,
    json_body,
    json_response,
    rejected_status,
    store_unavailable_response,
)
from gifting.wire import protocol
from gifting.wire.messages import GiftResult, PledgeResult

LIVE_PAGE_DEFAULT = 50


# Rooms -------------------------------------------------------------------------------------------------


async def open_room(request: Request) -> Response:
    identity = identify(request)
    if not identity.can_create:
        raise ApiError("forbidden", "only creators can go live")
    body = await json_body(request)
    title = body.get("title")
    chars_max = request.app.state.settings.room_title_chars_max
    if not isinstance(title, str) or not 1 <= len(title.strip()) <= chars_max:
        raise ApiError("bad_title", f"title: expected 1..{chars_max} characters")
    info = await request.app.state.rooms.open(identity.user, identity.name, title.strip())
    return json_response(info.to_dict(), 201)


async def overlay_token(request: Request) -> Response:
    """A read-only token for the caller's stream overlay (auth.mint_overlay): the overlay link carries this,
    never the creator's own token."""
    identity = identify(request)
    if not identity.can_create:
        raise ApiError("forbidden", "only creators have an overlay")
    ttl_s = request.app.state.settings.overlay_token_ttl_s
    token = auth.mint_overlay(request.app.state.secret, identity.user, ttl_s)
    return json_response(
        {"token": token, "creator": identity.user, "expires_at_ms": (int(time.time()) + ttl_s) * 1000}, 201
    )


async def list_rooms(request: Request) -> Response:
    """Live rooms, newest first, a page at a time: `?limit=` 1..100 (default 50), `?cursor=` a next_cursor."""
    raw_limit = request.query_params.get("limit", str(LIVE_PAGE_DEFAULT))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= LIVE_PAGE_MAX:
        raise ApiError("bad_limit", f"limit: expected an integer in 1..{LIVE_PAGE_MAX}")
    try:
        rooms, next_cursor = await request.app.state.rooms.live(int(raw_limit), request.query_params.get("cursor"))
    except ValueError as exc:
        raise ApiError("bad_cursor", str(exc)) from None
    return json_response({"rooms": [r.to_dict() for r in rooms], "next_cursor": next_cursor})


async def creator_live_room(request: Request) -> Response:
    """The creator's live room, or null: pages find a creator's stream here, not by scanning the lobby."""
    creator = request.path_params["creator"]
    if not auth.USER_ID_PATTERN.fullmatch(creator):
        raise ApiError("bad_creator", "creator: expected a user id ([A-Za-z0-9_.@-]{1,64})")
    info = await request.app.state.rooms.creator_live(creator)
    return json_response({"room": info.to_dict() if info else None})


async def get_room(request: Request) -> Response:
    room = _room_param(request)
    return json_response((await request.app.state.rooms.get(room)).to_dict())


async def end_room(request: Request) -> Response:
    identity = identify(request)
    room = _room_param(request)
    info = await request.app.state.rooms.end(room, identity.user, identity.role == "admin")
    return json_response(info.to_dict())


async def send_gift(request: Request) -> Response:
    """For clients without a websocket: queue the gift and wait (bounded) for its settlement result."""
    identity = identify(request)
    state = request.app.state
    body = await json_body(request)
    body["type"], body["room"] = "gift", _room_param(request)
    message = protocol.parse_message(body, state.settings.gift_count_max)  # ProtocolError: 400
    assert isinstance(message, protocol.SendGift)
    future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    rejected = await state.hub.send_gift(identity, message, future)
    if rejected is not None and rejected["reason"] == STORE_UNAVAILABLE:
        return store_unavailable_response(state.settings.store_retry_after_s)
    if rejected is not None:
        return json_response(rejected, rejected_status(rejected["reason"]))
    pending = GiftResult(message.gift_id, "pending", None).to_dict()
    result, status = await _settled(future, state.settings.gift_result_timeout_ms, pending)
    return json_response(result, status)


async def leaderboard(request: Request) -> Response:
    """Top gifters: `?period=stream|day|week|all` (day and week: UTC, of the room's creator), `?limit=` 1..100."""
    room = _room_param(request)
    period = request.query_params.get("period", "stream")
    if period not in TOP_PERIODS:
        raise ApiError("bad_period", f"period: expected one of {', '.join(TOP_PERIODS)}")
    raw_limit = request.query_params.get("limit", "10")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= TOP_LIMIT_MAX:
        raise ApiError("bad_limit", f"limit: expected an integer in 1..{TOP_LIMIT_MAX}")
    top = await request.app.state.rooms.top(room, period, int(raw_limit))
    return json_response({"room": room, "period": period, "top": top})


async def set_goal(request: Request) -> Response:
    """The creator's LIVE goal: {"gift", "target"} (N of that gift) or {"diamonds"} (a diamond total)."""
    identity = identify(request)
    room = _room_param(request)
    body = await json_body(request)
    state = request.app.state
    if "diamonds" in body and "gift" not in body:
        gift, target = None, _goal_target(body.get("diamonds"), "diamonds", GOAL_DIAMONDS_MAX)
    elif "gift" in body and "diamonds" not in body:
        gift = body.get("gift")
        if not isinstance(gift, str) or state.catalogs.current.sendable(gift) is None:
            raise ApiError("unknown_gift", f"gift: no gift {gift!r} on sale")
        target = _goal_target(body.get("target"), "target", GOAL_TARGET_MAX)
    else:
        raise ApiError("bad_goal", 'expected {"gift": id, "target": n} or {"diamonds": n}')
    goal = await state.rooms.set_goal(room, identity.user, gift, target)
    return json_response({"goal": goal}, 201)


async def cancel_goal(request: Request) -> Response:
    identity = identify(request)
    return json_response({"goal": await request.app.state.rooms.cancel_goal(_room_param(request), identity.user)})


def _goal_target(value: object, name: str, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum:
        raise ApiError("bad_target", f"{name}: expected an integer in 1..{maximum}, got {value!r}")
    return value


async def summary(request: Request) -> Response:
    """The stream summary: stored when the stream ended, running totals while it is live. Earnings (diamonds)
    only for the room's creator and admins; anyone else gets the viewers' copy, as on the websocket."""
    data = await request.app.state.rooms.summary(_room_param(request))
    if not _sees_earnings(request, data["creator"]):
        data = protocol.for_viewers(data)
    return json_response(data)


def _sees_earnings(request: Request, creator: str) -> bool:
    """A valid token of the creator or an admin; no token (or a bad one) is just a viewer here."""
    token = auth.bearer(request.headers.get("authorization")) or request.query_params.get("token")
    try:
        identity = auth.verify(request.app.state.secret, token)
    except auth.AuthError:
        return False
    return identity.user == creator or identity.role == "admin"


async def start_pool(request: Request) -> Response:
    """Open a pool in the room for a gift: {"gift", "deadline_s"}. Viewers then pledge coins toward it."""
    identity = identify(request)
    body = await json_body(request)
    state = request.app.state
    gift = body.get("gift")
    if not isinstance(gift, str):
        raise ApiError("unknown_gift", "gift: expected a gift id")
    pool = await open_pool(
        state.redis, state.rooms, state.settings, state.catalogs.current, _room_param(request), identity.user,
        gift, body.get("deadline_s"),
    )  # fmt: skip
    return json_response({"pool": pool}, 201)


async def get_pool_handler(request: Request) -> Response:
    pool = await get_pool(request.app.state.redis, request.path_params["pool"])
    archive = request.app.state.ledger.archive
    if pool is None and archive is not None:  # closed longer ago than GIFTING_POOL_HOT_S: archived
        record = await archive.pool(request.path_params["pool"])
        pool = pool_view(record) if record else None
    if pool is None:
        raise ApiError("unknown_pool", f"no pool {request.path_params['pool']!r}")
    return json_response({"pool": pool})


async def cancel_pool_handler(request: Request) -> Response:
    """Cancel an open pool (its opener, the room's creator or an admin): every pledge goes back."""
    identity = identify(request)
    pool_id = request.path_params["pool"]
    if not protocol.POOL_ID_PATTERN.fullmatch(pool_id):
        raise ApiError("bad_pool", f"pool: expected a pool id, got {pool_id!r}")
    state = request.app.state
    pool = await cancel_pool(state.redis, state.rooms, state.ledger, pool_id, identity.user, identity.role == "admin")
    return json_response({"pool": pool})


async def pledge(request: Request) -> Response:
    """Pledge coins to a pool: {"coins", "pledge_id"}; waits (bounded) for the worker's result like a gift."""
    identity = identify(request)
    state = request.app.state
    body = await json_body(request)
    message = protocol.parse_pledge({**body, "pool": request.path_params["pool"]})  # ProtocolError: 400
    future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    rejected = await state.hub.send_pledge(identity, message, future)
    if rejected is not None and rejected["reason"] == STORE_UNAVAILABLE:
        return store_unavailable_response(state.settings.store_retry_after_s)
    if rejected is not None:
        return json_response(rejected, rejected_status(rejected["reason"]))
    pending = PledgeResult(message.pledge_id, "pending", None).to_dict()
    result, status = await _settled(future, state.settings.gift_result_timeout_ms, pending)
    return json_response(result, 422 if status == 200 and result["status"] == "rejected" else status)


async def _settled(
    future: asyncio.Future[dict[str, Any]], timeout_ms: int, pending: dict[str, Any]
) -> tuple[dict[str, Any], int]:
    """The worker's result for an HTTP request (200), an error from it (an id conflict: 409), or `pending`
    (202) past the timeout: the client resends the same id later to learn the outcome."""
    try:
        result = await asyncio.wait_for(future, timeout_ms / 1000)
    except TimeoutError:
        return pending, 202
    if result.get("type") == "error":
        return {"error": {"code": result["code"], "message": result["message"]}}, STATUS[result["code"]]
    return result, 200


def _room_param(request: Request) -> str:
    return protocol.parse_room(request.path_params["room"])  # ProtocolError: 400


routes = [
    Route("/v1/rooms", list_rooms, methods=["GET"]),
    Route("/v1/rooms", open_room, methods=["POST"]),
    Route("/v1/rooms/{room}", get_room),
    Route("/v1/creators/{creator}/live", creator_live_room),
    Route("/v1/overlay-tokens", overlay_token, methods=["POST"]),
    Route("/v1/rooms/{room}/end", end_room, methods=["POST"]),
    Route("/v1/rooms/{room}/gifts", send_gift, methods=["POST"]),
    Route("/v1/rooms/{room}/leaderboard", leaderboard),
    Route("/v1/rooms/{room}/goals", set_goal, methods=["POST"]),
    Route("/v1/rooms/{room}/goals", cancel_goal, methods=["DELETE"]),
    Route("/v1/rooms/{room}/summary", summary),
    Route("/v1/rooms/{room}/pools", start_pool, methods=["POST"]),
    Route("/v1/pools/{pool}", get_pool_handler),
    Route("/v1/pools/{pool}/pledges", pledge, methods=["POST"]),
    Route("/v1/pools/{pool}/cancel", cancel_pool_handler, methods=["POST"]),
]
