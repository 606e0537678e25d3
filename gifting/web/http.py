"""HTTP plumbing shared by every handler: JSON in and out, the caller's identity, and errors.

Every error a handler lets through is a `GiftingError` (a domain error, or the web layer's own `ApiError`); the
one handler below answers `{"error": {"code", "message"}}` with the status STATUS gives its code. Domain errors
carry no status: this table is the only place a code meets HTTP.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gifting import auth, metrics
from gifting.auth import Identity
from gifting.errors import GiftingError
from gifting.outage import STORE_UNAVAILABLE, STORE_UNAVAILABLE_MESSAGE
from gifting.wire.reasons import RETRIABLE

log = logging.getLogger(__name__)

# The HTTP status of every error code a route answers with (docs/PROTOCOL.md, HTTP API). A code missing here
# answers STATUS_DEFAULT; tests/test_http.py checks that every code raised in gifting/ (and every error code a
# ledger script returns) is here.
_CODES_BY_STATUS: dict[int, tuple[str, ...]] = {
    401: ("unauthorized", "token_expired", "token_revoked"),
    402: ("payment_declined",),
    403: ("forbidden", "dev_host_refused", "token_scope", "ticket_required"),
    404: ("not_found", "room_not_found", "unknown_bundle", "unknown_purchase", "unknown_withdrawal", "unknown_pool",
          "match_not_found", "unknown_campaign", "unknown_perk"),
    409: (
        # Purchases and withdrawals (gifting/ledger/store.py, their scripts).
        "idempotency_key_conflict", "purchase_not_paid", "already_reversed", "coins_spent", "below_minimum",
        "daily_cap_exceeded", "insufficient_diamonds", "diamonds_on_hold", "too_many_pending_withdrawals",
        "withdrawal_not_pending",
        # Rooms, goals, pools (gifting/rooms/).
        "already_live", "room_not_live", "goal_active", "no_active_goal", "too_many_pools", "too_many_open_pools",
        "pool_opener_coins", "pool_not_open",
        # Stage (gifting/rooms/stage.py).
        "no_stage_invite", "too_many_guests", "not_on_stage",
        # Matches (gifting/rooms/matches.py).
        "opponent_not_live", "already_in_match", "invite_not_pending", "invite_expired", "partner_not_live",
        # Sponsored-gift campaigns (gifting/ledger/campaigns.py, sponsor.lua).
        "campaign_closed", "too_many_campaigns", "insufficient_coins",
        # Perks (gifting/perks.py).
        "self_perk", "not_premium", "price_changed", "perk_id_conflict",
        # A gift or pledge id already used for another one (the worker's answer).
        "gift_id_conflict", "pledge_id_conflict",
        # Reward coins (gifting/ledger/rewards.py, rewards.lua).
        "rewards_budget_exhausted", "reward_viewer_cap", "reward_platform_cap", "reward_not_earned",
        "reward_already_claimed", "rewards_disabled",
    ),
    503: ("not_durable", "busy", STORE_UNAVAILABLE, "archive_backlog", "history_unavailable"),
}  # fmt: skip
STATUS: dict[str, int] = {code: status for status, codes in _CODES_BY_STATUS.items() for code in codes}
# Bad input: every `bad_*` code, `unknown_gift` (a body naming a gift not on sale), `invalid_payment_token`,
# `idempotency_key_required` and the websocket's message codes a route shares (bad_room, bad_count, ...).
STATUS_DEFAULT = 400


class ApiError(GiftingError):
    """A request the web layer itself refuses (its shape, its caller); the status comes from STATUS."""


class NotFound(ApiError):
    """The resource the request's path names does not exist: 404 whatever the code (an admin's
    `unknown_gift` is a missing path resource, where a goal's `unknown_gift` in the body is bad input)."""


def status_of(exc: GiftingError) -> int:
    return 404 if isinstance(exc, NotFound) else STATUS.get(exc.code, STATUS_DEFAULT)


def rejected_status(reason: str) -> int:
    """A gift or pledge the hub rejected at once (its `*_result` is the body): 429 when retrying later may
    succeed (rate_limited, overloaded), 422 otherwise."""
    return 429 if reason in RETRIABLE else 422


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def error_response(status: int, code: str, message: str) -> Response:
    return json_response({"error": {"code": code, "message": message}}, status)


async def gifting_error_handler(request: Request, exc: Exception) -> Response:
    """Every route, for any GiftingError it lets through (registered in gifting/app.py)."""
    assert isinstance(exc, GiftingError)
    return error_response(status_of(exc), exc.code, exc.message)


def store_unavailable_response(retry_after_s: int, **extra: Any) -> Response:
    """503 `store_unavailable` with Retry-After: Valkey is unreachable, and this request may not have happened
    (or, rarely, happened without its answer): repeat it with the same ids or Idempotency-Key."""
    body = {**extra, "error": {"code": STORE_UNAVAILABLE, "message": STORE_UNAVAILABLE_MESSAGE}}
    response = json_response(body, STATUS[STORE_UNAVAILABLE])
    response.headers["Retry-After"] = str(retry_after_s)
    return response


async def store_error_handler(request: Request, exc: Exception) -> Response:
    """Every route, for any of outage.STORE_ERRORS it lets through (registered in gifting/app.py)."""
    log.warning("%s %s: store unavailable: %r", request.method, request.url.path, exc)
    metrics.store_errors.labels(component="http").inc()
    return store_unavailable_response(request.app.state.settings.store_retry_after_s)


def require_admin(request: Request) -> Identity:
    identity = identify(request)
    if identity.role != "admin":
        raise ApiError("forbidden", "admin only")
    return identity


def identify(request: Request) -> Identity:
    """The caller, from a full-power token: an overlay token (read-only, websocket feed only) is refused.
    Raises auth.AuthError (401) for a missing, bad, expired or revoked token."""
    token = auth.bearer(request.headers.get("authorization")) or request.query_params.get("token")
    identity = auth.verify(request.app.state.secret, token, request.app.state.hub.revocations.not_before)
    if identity.overlay_of is not None:
        raise ApiError("token_scope", "an overlay token only reads its creator's room feed over the websocket")
    return identity


async def json_body(request: Request) -> dict[str, Any]:
    body = await request.body()  # at most GIFTING_HTTP_BODY_BYTES_MAX: gifting/web/edge.py refused a larger one unread
    try:
        data = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise ApiError("bad_json", f"request body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError("bad_json", f"expected a JSON object, got {type(data).__name__}")
    return data
