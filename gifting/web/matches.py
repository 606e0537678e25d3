"""HTTP handlers of matches (gifting/rooms/matches.py) and of the multi-guest stage (gifting/rooms/stage.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gifting import auth
from gifting.rooms import recipients
from gifting.web.http import ApiError, identify, json_body, json_response
from gifting.wire import protocol

TOP_LIMIT_MAX = 100  # gifters in one answer of GET /v1/rooms/{room}/top


async def invite(request: Request) -> Response:
    """`{"opponent": user id, "duration_s"?, "gift"?, "partner"?, "opponent_partner"?}`: the caller's live room
    against the opponent's; with `gift`, only that gift scores; with both partners, a team match (2 v 2)."""
    identity = identify(request)
    body = await json_body(request)
    opponent, duration_s, gift = body.get("opponent"), body.get("duration_s"), body.get("gift")
    if not isinstance(opponent, str) or not auth.USER_ID_PATTERN.fullmatch(opponent):
        raise ApiError("bad_opponent", "opponent: expected a user id ([A-Za-z0-9_.@-]{1,64})")
    partners = [body.get("partner"), body.get("opponent_partner")]
    for name, partner in zip(("partner", "opponent_partner"), partners, strict=True):
        if partner is not None and (not isinstance(partner, str) or not auth.USER_ID_PATTERN.fullmatch(partner)):
            raise ApiError("bad_partner", f"{name}: expected a user id ([A-Za-z0-9_.@-]{{1,64}}), got {partner!r}")
    if duration_s is not None and (not isinstance(duration_s, int) or isinstance(duration_s, bool)):
        raise ApiError("bad_duration", f"duration_s: expected an integer number of seconds, got {duration_s!r}")
    if gift is not None and (not isinstance(gift, str) or gift not in request.app.state.catalogs.current.gifts):
        raise ApiError("unknown_gift", f"gift: expected a gift of the catalog, got {gift!r}")
    match = await request.app.state.matches.invite(identity.user, opponent, duration_s, gift, *partners)
    return json_response(match, 201)


async def answer(request: Request) -> Response:
    identity = identify(request)
    action = request.path_params["action"]
    if action not in ("accept", "decline"):
        raise ApiError("not_found", f"expected accept or decline, got {action!r}")
    match = await request.app.state.matches.answer(request.path_params["match"], identity.user, action == "accept")
    return json_response(match)


async def get_match(request: Request) -> Response:
    return json_response(await request.app.state.matches.view(request.path_params["match"]))


async def stage_invite(request: Request) -> Response:
    """`{"guest": user id}`: the room's creator invites a guest on stage."""
    identity = identify(request)
    guest = (await json_body(request)).get("guest")
    if not isinstance(guest, str) or not auth.USER_ID_PATTERN.fullmatch(guest):
        raise ApiError("bad_guest", "guest: expected a user id ([A-Za-z0-9_.@-]{1,64})")
    room = protocol.parse_room(request.path_params["room"])
    return json_response(await request.app.state.stage.invite(room, identity.user, guest), 201)


async def stage_accept(request: Request) -> Response:
    identity = identify(request)
    room = protocol.parse_room(request.path_params["room"])
    return json_response(await request.app.state.stage.accept(room, identity.user))


async def stage_leave(request: Request) -> Response:
    """`{"guest"?}`: a guest leaves (default: the caller), or the room's creator takes one off stage."""
    identity = identify(request)
    guest = (await json_body(request)).get("guest", identity.user)
    if not isinstance(guest, str) or not auth.USER_ID_PATTERN.fullmatch(guest):
        raise ApiError("bad_guest", "guest: expected a user id ([A-Za-z0-9_.@-]{1,64})")
    room = protocol.parse_room(request.path_params["room"])
    return json_response(await request.app.state.stage.leave(room, identity.user, guest))


async def recipient_top(request: Request) -> Response:
    """`?recipient=` (default: the host), `?limit=` 1..100: who gave that person on stage the most coins in this
    live session (kept once a guest has taken the room's stage; gifting/rooms/recipients.py)."""
    room = protocol.parse_room(request.path_params["room"])
    info = await request.app.state.rooms.get(room)  # room_not_found
    recipient = request.query_params.get("recipient", info.creator)
    if not auth.USER_ID_PATTERN.fullmatch(recipient):
        raise ApiError("bad_recipient", "recipient: expected a user id ([A-Za-z0-9_.@-]{1,64})")
    raw_limit = request.query_params.get("limit", "10")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= TOP_LIMIT_MAX:
        raise ApiError("bad_limit", f"limit: expected an integer in 1..{TOP_LIMIT_MAX}, got {raw_limit[:20]!r}")
    top = await recipients.recipient_top(request.app.state.redis, room, recipient, int(raw_limit))
    return json_response({"room": room, "recipient": recipient, "top": top})


async def get_stage(request: Request) -> Response:
    room = protocol.parse_room(request.path_params["room"])
    info = await request.app.state.rooms.get(room)
    return json_response({"room": room, "host": info.creator, "guests": await request.app.state.stage.guests(room)})


routes = [
    Route("/v1/rooms/{room}/stage", get_stage, methods=["GET"]),
    Route("/v1/rooms/{room}/top", recipient_top, methods=["GET"]),
    Route("/v1/rooms/{room}/stage/invites", stage_invite, methods=["POST"]),
    Route("/v1/rooms/{room}/stage/accept", stage_accept, methods=["POST"]),
    Route("/v1/rooms/{room}/stage/leave", stage_leave, methods=["POST"]),
    Route("/v1/matches", invite, methods=["POST"]),
    Route("/v1/matches/{match}", get_match, methods=["GET"]),
    Route("/v1/matches/{match}/{action}", answer, methods=["POST"]),
]
