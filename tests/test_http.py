"""gifting.web.http: one table maps every error code to the HTTP status it had when errors carried statuses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gifting.errors import GiftingError
from gifting.ledger.store import REVERSE_ERRORS, WITHDRAW_ERRORS
from gifting.rooms.pools import OPEN_REFUSALS
from gifting.web.http import STATUS, STATUS_DEFAULT, ApiError, NotFound, rejected_status, status_of
from gifting.wire.reasons import RejectReason

ROOT = Path(__file__).resolve().parent.parent
# The status each code had when every raise named its own (ApiError(status, ...), RoomError(..., status),
# LedgerError(..., status)); unknown_gift is 400 in a body and 404 as an admin's path (NotFound).
BEFORE = {
    **dict.fromkeys(("unauthorized", "token_expired", "token_revoked"), 401),
    **dict.fromkeys(("forbidden", "dev_host_refused", "token_scope"), 403),
    **dict.fromkeys(("not_found", "room_not_found", "unknown_bundle", "unknown_purchase", "unknown_pool"), 404),
    "unknown_withdrawal": 404,
    **dict.fromkeys(
        ("idempotency_key_conflict", "room_not_live", "already_live", "goal_active", "no_active_goal"), 409
    ),
    **dict.fromkeys(("too_many_pools", "too_many_open_pools", "pool_opener_coins", "pool_not_open"), 409),
    **dict.fromkeys(REVERSE_ERRORS, 409),
    **dict.fromkeys(WITHDRAW_ERRORS, 409),
    "withdrawal_not_pending": 409,
    **dict.fromkeys(("not_durable", "busy", "store_unavailable"), 503),
    **dict.fromkeys(("unknown_gift", "bad_deadline", "bad_json", "bad_title", "bad_room", "bad_count"), 400),
    **dict.fromkeys(("invalid_payment_token", "idempotency_key_required", "bad_pledge_id", "bad_gift_id"), 400),
}
RAISED = re.compile(
    r"(?:ApiError|NotFound|RoomError|LedgerError|AuthError|PaymentError|ProtocolError)\(\s*f?\"([a-z_{}]+)\""
)
# ProtocolError codes that only a websocket message can earn (an HTTP body is never a frame of a type).
WEBSOCKET_ONLY = ("frame_too_large", "unknown_type", "too_many_rooms")
LUA_CODE = re.compile(r"return \{'([a-z_]+)'")


@pytest.mark.parametrize(("code", "status"), sorted(BEFORE.items()))
def test_each_code_keeps_its_status(code: str, status: int) -> None:
    """The table gives every code the status its raise site gave it before."""
    assert status_of(GiftingError(code, "m")) == status


def test_every_code_raised_in_the_package_or_returned_by_a_script_has_a_known_status() -> None:
    """Each code a handler can meet is in STATUS, or is bad input (bad_*, 400): nothing reaches a fallback."""
    sources = [p.read_text() for p in (ROOT / "gifting").rglob("*.py")]
    codes = {c for text in sources for c in RAISED.findall(text)}
    for script in ("reverse.lua", "withdraw.lua"):  # their error codes become LedgerError codes
        codes |= set(LUA_CODE.findall((ROOT / "gifting" / "ledger" / script).read_text())) - {"ok"}
    codes |= set(OPEN_REFUSALS)
    codes = {c.replace("{kind}", kind) for c in codes for kind in ("gift", "bundle")}
    assert codes, "the scan found no codes"
    unknown = {c for c in codes if c not in STATUS and c not in BEFORE and not c.startswith("bad_")}
    assert unknown == set(WEBSOCKET_ONLY), unknown


def test_not_found_is_404_whatever_its_code() -> None:
    """An admin's unknown gift path is 404; the same code for a body's gift is bad input (400)."""
    assert status_of(NotFound("unknown_gift", "m")) == 404
    assert status_of(ApiError("unknown_gift", "m")) == STATUS_DEFAULT == 400


def test_immediate_rejections_are_429_when_retrying_may_succeed_else_422() -> None:
    """rate_limited and overloaded answer 429; other immediate gift rejections 422 (as before)."""
    assert rejected_status(RejectReason.RATE_LIMITED) == rejected_status("overloaded") == 429
    assert rejected_status("unknown_gift") == rejected_status("self_gift") == 422
