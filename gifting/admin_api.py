"""Admin HTTP handlers (admin token): the catalog. Changes reach every process without a restart."""

from __future__ import annotations

import dataclasses

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gifting.api import ApiError, json_body, json_response, require_admin
from gifting.catalog import CatalogError, make_bundle, make_gift


async def put_gift(request: Request) -> Response:
    """Add a gift or change it (reprice, rename). Body: {name, coins, asset, tier}."""
    require_admin(request)
    body = await json_body(request)
    try:
        gift = make_gift({**body, "id": request.path_params["gift"], "retired": False})
    except CatalogError as exc:
        raise ApiError(400, "bad_gift", str(exc)) from None
    await request.app.state.catalogs.put_gift(gift)
    return json_response(gift.to_dict())


async def retire_gift(request: Request) -> Response:
    """Retire a gift: it leaves the catalog listing and any gift of it is rejected (gift_retired)."""
    require_admin(request)
    store = request.app.state.catalogs
    await store.refresh()
    gift = store.current.gifts.get(request.path_params["gift"])
    if gift is None:
        raise ApiError(404, "unknown_gift", f"no gift {request.path_params['gift']!r}")
    retired = dataclasses.replace(gift, retired=True)
    await store.put_gift(retired)
    return json_response(retired.to_dict())


async def put_bundle(request: Request) -> Response:
    """Add a coin bundle or change it. Body: {coins, price_minor, currency}."""
    require_admin(request)
    body = await json_body(request)
    try:
        bundle = make_bundle({**body, "id": request.path_params["bundle"], "retired": False})
    except CatalogError as exc:
        raise ApiError(400, "bad_bundle", str(exc)) from None
    await request.app.state.catalogs.put_bundle(bundle)
    return json_response(bundle.to_dict())


async def retire_bundle(request: Request) -> Response:
    require_admin(request)
    store = request.app.state.catalogs
    await store.refresh()
    bundle = store.current.bundles.get(request.path_params["bundle"])
    if bundle is None:
        raise ApiError(404, "unknown_bundle", f"no bundle {request.path_params['bundle']!r}")
    retired = dataclasses.replace(bundle, retired=True)
    await store.put_bundle(retired)
    return json_response(retired.to_dict())


async def reverse_purchase(request: Request) -> Response:
    """Refund (coins must be unspent) or charge back (may leave a debt) a paid purchase, once."""
    require_admin(request)
    mode = request.path_params["mode"]
    if mode not in ("refund", "chargeback"):
        raise ApiError(404, "not_found", "expected /refund or /chargeback")
    ledger = request.app.state.ledger
    balance = await ledger.reverse(request.path_params["purchase"], mode)
    await ledger.durable(request.app.state.settings.waitaof_timeout_ms)
    record, _ = await ledger.purchase_record(request.path_params["purchase"])
    return json_response({"purchase": record, "coins": balance})


async def resolve_withdrawal(request: Request) -> Response:
    """Manually post (paid) or void (failed; diamonds return) a pending withdrawal, exactly once."""
    require_admin(request)
    action = request.path_params["action"]
    if action not in ("post", "void"):
        raise ApiError(404, "not_found", "expected /post or /void")
    ledger = request.app.state.ledger
    withdrawal = await ledger.resolve_withdrawal(request.path_params["withdrawal"], action, "voided_by_admin")
    await ledger.durable(request.app.state.settings.waitaof_timeout_ms)
    return json_response({"withdrawal": withdrawal})


routes = [
    Route("/v1/admin/purchases/{purchase}/{mode}", reverse_purchase, methods=["POST"]),
    Route("/v1/admin/withdrawals/{withdrawal}/{action}", resolve_withdrawal, methods=["POST"]),
    Route("/v1/admin/gifts/{gift}", put_gift, methods=["PUT"]),
    Route("/v1/admin/gifts/{gift}/retire", retire_gift, methods=["POST"]),
    Route("/v1/admin/bundles/{bundle}", put_bundle, methods=["PUT"]),
    Route("/v1/admin/bundles/{bundle}/retire", retire_bundle, methods=["POST"]),
]
