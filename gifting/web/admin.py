"""Admin HTTP handlers (admin token): the catalog, reversals, withdrawals, token revocation. Changes reach every
process without a restart."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gifting.auth import USER_ID_PATTERN
from gifting.catalog.model import CatalogError, make_bundle, make_gift
from gifting.web.http import ApiError, NotFound, json_body, json_response, require_admin


async def put_gift(request: Request) -> Response:
    """Add a gift or change it (reprice, rename). Body: {name, coins, asset, tier}."""
    return await _put(request, "gift", make_gift, "put_gift")


async def put_bundle(request: Request) -> Response:
    """Add a coin bundle or change it. Body: {coins, price_minor, currency}."""
    return await _put(request, "bundle", make_bundle, "put_bundle")


async def retire_gift(request: Request) -> Response:
    """Retire a gift: it leaves the catalog listing and any gift of it is rejected (gift_retired)."""
    return await _retire(request, "gift", "gifts", "put_gift")


async def retire_bundle(request: Request) -> Response:
    """Retire a coin bundle: it leaves the listing and cannot be bought (unknown_bundle)."""
    return await _retire(request, "bundle", "bundles", "put_bundle")


async def _put(request: Request, kind: str, make: Callable[[dict[str, Any]], Any], store_method: str) -> Response:
    require_admin(request)
    body = await json_body(request)
    try:
        item = make({**body, "id": request.path_params[kind], "retired": False})
    except CatalogError as exc:
        raise ApiError(f"bad_{kind}", str(exc)) from None
    await getattr(request.app.state.catalogs, store_method)(item)
    return json_response(item.to_dict())


async def _retire(request: Request, kind: str, table: str, store_method: str) -> Response:
    require_admin(request)
    store = request.app.state.catalogs
    await store.refresh()
    item = getattr(store.current, table).get(request.path_params[kind])
    if item is None:
        raise NotFound(f"unknown_{kind}", f"no {kind} {request.path_params[kind]!r}")
    retired = dataclasses.replace(item, retired=True)
    await getattr(store, store_method)(retired)
    return json_response(retired.to_dict())


async def reverse_purchase(request: Request) -> Response:
    """Refund (coins must be unspent) or charge back (may leave a debt) a paid purchase, once."""
    require_admin(request)
    mode = request.path_params["mode"]
    if mode not in ("refund", "chargeback"):
        raise ApiError("not_found", "expected /refund or /chargeback")
    ledger = request.app.state.ledger
    balance = await ledger.reverse(request.path_params["purchase"], mode)
    record, _ = await ledger.purchase_record(request.path_params["purchase"])
    return json_response({"purchase": record, "coins": balance})


async def resolve_withdrawal(request: Request) -> Response:
    """Manually post (paid) or void (failed; diamonds return) a pending withdrawal, exactly once."""
    require_admin(request)
    action = request.path_params["action"]
    if action not in ("post", "void"):
        raise ApiError("not_found", "expected /post or /void")
    ledger = request.app.state.ledger
    withdrawal = await ledger.resolve_withdrawal(request.path_params["withdrawal"], action, "voided_by_admin")
    return json_response({"withdrawal": withdrawal})


async def revoke_tokens(request: Request) -> Response:
    """Revoke every token of a user issued up to this second: HTTP calls with them fail `token_revoked`, and
    the user's open sockets on every web process close with 4001 (pub/sub, with a periodic catch-up)."""
    require_admin(request)
    user = request.path_params["user"]
    if not USER_ID_PATTERN.fullmatch(user):
        raise ApiError("bad_user", f"user id: expected [A-Za-z0-9_.@-]{{1,64}}, got {user[:80]!r}")
    hub = request.app.state.hub
    not_before = await hub.revocations.revoke(user)
    hub.close_revoked(user)
    return json_response({"user": user, "not_before": not_before})


routes = [
    Route("/v1/admin/users/{user}/revoke-tokens", revoke_tokens, methods=["POST"]),
    Route("/v1/admin/purchases/{purchase}/{mode}", reverse_purchase, methods=["POST"]),
    Route("/v1/admin/withdrawals/{withdrawal}/{action}", resolve_withdrawal, methods=["POST"]),
    Route("/v1/admin/gifts/{gift}", put_gift, methods=["PUT"]),
    Route("/v1/admin/gifts/{gift}/retire", retire_gift, methods=["POST"]),
    Route("/v1/admin/bundles/{bundle}", put_bundle, methods=["PUT"]),
    Route("/v1/admin/bundles/{bundle}/retire", retire_bundle, methods=["POST"]),
]
