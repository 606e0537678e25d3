"""HTTP handlers of fan clubs (gifting/fanclubs.py): the creator's choices, the member list, a club's view."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gifting.auth import USER_ID_PATTERN
from gifting.fanclubs import FanClubs
from gifting.web.http import ApiError, identify, json_body, json_response
from gifting.web.wallet import list_limit, require_creator


def _clubs(request: Request) -> FanClubs:
    clubs: FanClubs = request.app.state.hub.perks.fanclubs
    return clubs


async def put_fanclub(request: Request) -> Response:
    """The creator sets up or changes their club. Body: {membership_gift, member_gift (or null), free_premium}."""
    identity = require_creator(request)
    body = await json_body(request)
    config = await _clubs(request).configure(identity.user, body, request.app.state.catalogs.current)
    return json_response({"creator": identity.user, **config.to_dict()})


async def members(request: Request) -> Response:
    """The caller's club: its choices and its members with levels, the most points first."""
    identity = require_creator(request)
    clubs = _clubs(request)
    config = await clubs.config(identity.user)
    listed = await clubs.members(identity.user, list_limit(request))
    return json_response({"creator": identity.user, "config": config and config.to_dict(), "members": listed})


async def club(request: Request) -> Response:
    """A creator's club as a viewer sees it: its choices and, with a token, the caller's membership."""
    creator = request.path_params["creator"]
    if not USER_ID_PATTERN.fullmatch(creator):
        raise ApiError("bad_creator", f"creator: expected a user id, got {creator[:80]!r}")
    clubs = _clubs(request)
    config = await clubs.config(creator)
    token = request.headers.get("authorization") or request.query_params.get("token")
    membership = await clubs.membership(creator, identify(request).user) if token else None
    return json_response({"creator": creator, "config": config and config.to_dict(), "membership": membership})


routes = [
    Route("/v1/fanclub", put_fanclub, methods=["PUT"]),
    Route("/v1/fanclub/members", members),
    Route("/v1/creators/{creator}/fanclub", club),
]
