"""Wallet HTTP handlers: balances, purchases, withdrawals, statements, spending limits, session earnings."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gifting import keys
from gifting.auth import Identity
from gifting.clock import now_ms
from gifting.ledger import rules
from gifting.payments import PAYOUT_OK, charge_key
from gifting.web.http import STATUS, ApiError, identify, json_body, json_response

IDEMPOTENCY_KEY_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
PAYOUT_ACCOUNT_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
LIST_LIMIT_MAX = 200
DIAMONDS_MAX = 10**12  # a withdrawal request above this is absurd, not merely over the balance
SPEND_LIMIT_COINS_MAX = 10**9


def idempotency_key(request: Request) -> str:
    key = request.headers.get("idempotency-key", "")
    if not IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
        raise ApiError("idempotency_key_required", "header Idempotency-Key: expected [A-Za-z0-9_.:-]{1,64}")
    return key


def positive_int(value: object, name: str, maximum: int) -> int:
    """Amounts are integers: a float, string, bool, zero, negative or absurd value is `bad_amount`."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum:
        raise ApiError("bad_amount", f"{name}: expected an integer in 1..{maximum}, got {value!r}")
    return value


def list_limit(request: Request, default: int = 50) -> int:
    raw = request.query_params.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= LIST_LIMIT_MAX:
        raise ApiError("bad_limit", f"limit: expected an integer in 1..{LIST_LIMIT_MAX}")
    return int(raw)


def require_creator(request: Request) -> Identity:
    identity = identify(request)
    if not identity.can_create:
        raise ApiError("forbidden", "creators only")
    return identity


async def wallet(request: Request) -> Response:
    identity = identify(request)
    balances = await request.app.state.ledger.wallet(identity.user)
    body: dict[str, Any] = {"user": identity.user, **balances}
    if balances["coins"] < 0:
        body["debt_coins"] = -balances["coins"]  # after a chargeback: gifting is blocked until repaid
    return json_response(body)


# Purchases -----------------------------------------------------------------------------------------------


async def purchase(request: Request) -> Response:
    """Buy a coin bundle. Idempotent by the Idempotency-Key header: a retry returns the original result."""
    identity = identify(request)
    state = request.app.state
    key = idempotency_key(request)
    body = await json_body(request)
    bundle_id, payment_token = body.get("bundle_id"), body.get("payment_token")
    if not isinstance(bundle_id, str) or not isinstance(payment_token, str) or len(payment_token) > 256:
        raise ApiError("bad_request", 'expected {"bundle_id": str, "payment_token": str}')
    purchase_id = keys.purchase_id(identity.user, key)
    fingerprint = rules.fingerprint(bundle_id, payment_token)
    existing = await state.ledger.purchase_record(purchase_id, owner=identity.user)
    if existing is not None:
        return await _purchase_response(state, identity, existing[0], existing[1] == fingerprint, replay=True)
    bundle = await state.catalogs.bundle(bundle_id)
    if bundle is None or bundle.retired:
        raise ApiError("unknown_bundle", f"no bundle {bundle_id!r}; see GET /v1/catalog/bundles")
    charge = await state.payments.charge(  # PaymentError (invalid_payment_token): 400, nothing charged
        charge_key(purchase_id, bundle.price_minor, bundle.currency, fingerprint),
        identity.user,
        bundle.price_minor,
        bundle.currency,
        payment_token,
    )
    record = {
        "purchase_id": purchase_id,
        "bundle_id": bundle.id,
        "coins": bundle.coins,
        "price_minor": bundle.price_minor,
        "currency": bundle.currency,
        "status": charge.status,
        "reason": charge.decline_reason or None,
        "charge_id": charge.charge_id,
        "provider": state.payments.name,
        "ts": now_ms(),
    }
    stored, same, replay = await state.ledger.purchase(
        identity.user, purchase_id, fingerprint, charge.status, record, bundle.coins
    )
    return await _purchase_response(state, identity, stored, same, replay)


async def _purchase_response(
    state: Any, identity: Identity, record: dict[str, Any], same_request: bool, replay: bool
) -> Response:
    if not same_request:
        raise ApiError("idempotency_key_conflict", "Idempotency-Key was used for a different purchase")
    balances = await state.ledger.wallet(identity.user)
    body = {"purchase": record, "wallet": balances, "replay": replay}
    if record["status"] == "declined":
        body["error"] = {"code": "payment_declined", "message": f"payment declined: {record.get('reason')}"}
        return json_response(body, STATUS["payment_declined"])
    return json_response(body, 200 if replay else 201)


async def purchase_history(request: Request) -> Response:
    identity = identify(request)
    purchases = await request.app.state.ledger.purchases(identity.user, list_limit(request))
    return json_response({"purchases": purchases})


# Withdrawals -----------------------------------------------------------------------------------------------


async def request_withdrawal(request: Request) -> Response:
    """Cash out diamonds: a pending transfer that the payout provider posts (paid) or voids (failed)."""
    identity = require_creator(request)
    key = idempotency_key(request)
    body = await json_body(request)
    diamonds = positive_int(body.get("diamonds"), "diamonds", DIAMONDS_MAX)
    payout_account = body.get("payout_account", PAYOUT_OK)
    if not isinstance(payout_account, str) or not PAYOUT_ACCOUNT_PATTERN.fullmatch(payout_account):
        raise ApiError("bad_payout_account", "payout_account: expected [A-Za-z0-9_.:-]{1,64}")
    ledger = request.app.state.ledger
    fingerprint = rules.fingerprint(diamonds, payout_account)
    withdrawal, replay = await ledger.request_withdrawal(
        identity.user, keys.withdrawal_id(identity.user, key), diamonds, payout_account, fingerprint
    )
    return json_response({"withdrawal": withdrawal, "replay": replay}, 200 if replay else 201)


async def list_withdrawals(request: Request) -> Response:
    identity = identify(request)
    items = await request.app.state.ledger.withdrawals(identity.user, list_limit(request))
    return json_response({"withdrawals": items})


# Statements, limits, sessions --------------------------------------------------------------------------------


async def transactions(request: Request) -> Response:
    """Every transfer of the caller, newest first: `?limit=` (1..200) and `?cursor=` from the previous page."""
    identity = identify(request)
    cursor = request.query_params.get("cursor")
    if cursor is not None and not re.fullmatch(r"\d{1,20}", cursor):
        raise ApiError("bad_cursor", "cursor: pass next_cursor from the previous page")
    page = request.app.state.statements.page  # newest rows from Valkey, older ones from PostgreSQL
    items, next_cursor = await page(identity.user, None if cursor is None else int(cursor), list_limit(request))
    return json_response({"transactions": items, "next_cursor": next_cursor})


async def get_limits(request: Request) -> Response:
    identity = identify(request)
    return json_response(await request.app.state.ledger.spend_limit(identity.user))


async def put_limits(request: Request) -> Response:
    """A viewer's own daily spend cap in coins (0 removes it); settlement enforces it atomically for gifts and
    pledges. Lowering applies at once; raising or removing after GIFTING_SPEND_LIMIT_COOLOFF_S."""
    identity = identify(request)
    body = await json_body(request)
    value = body.get("daily_spend_coins_max")
    if type(value) is not int or value != 0:  # false and 0.0 equal 0 but are not a cap
        value = positive_int(value, "daily_spend_coins_max", SPEND_LIMIT_COINS_MAX)
    await request.app.state.ledger.set_spend_limit(identity.user, value)
    return json_response(await request.app.state.ledger.spend_limit(identity.user))


async def sessions(request: Request) -> Response:
    """The creator's ended live sessions with their earnings, newest first."""
    identity = require_creator(request)
    return json_response({"sessions": await request.app.state.rooms.sessions(identity.user, list_limit(request))})


async def room_earnings(request: Request) -> Response:
    """One live session's totals so far (the room's creator or an admin)."""
    identity = identify(request)
    summary = await request.app.state.rooms.earnings(request.path_params["room"])
    if summary["creator"] != identity.user and identity.role != "admin":
        raise ApiError("forbidden", "only the room's creator sees its earnings")
    return json_response(summary)


routes = [
    Route("/v1/wallet", wallet),
    Route("/v1/wallet/purchases", purchase, methods=["POST"]),
    Route("/v1/wallet/purchases", purchase_history, methods=["GET"]),
    Route("/v1/wallet/withdrawals", request_withdrawal, methods=["POST"]),
    Route("/v1/wallet/withdrawals", list_withdrawals, methods=["GET"]),
    Route("/v1/wallet/transactions", transactions),
    Route("/v1/wallet/limits", get_limits, methods=["GET"]),
    Route("/v1/wallet/limits", put_limits, methods=["PUT"]),
    Route("/v1/wallet/sessions", sessions),
    Route("/v1/rooms/{room}/earnings", room_earnings),
]
