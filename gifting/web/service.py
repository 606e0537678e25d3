"""The service's own HTTP routes: health, readiness, the catalog, and the dev token."""

from __future__ import annotations

from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gifting import auth, keys, metrics
from gifting.clock import now_ms
from gifting.ledger import partitions
from gifting.outage import STORE_ERRORS
from gifting.web import pages
from gifting.web.http import ApiError, json_response, store_unavailable_response

# Health ------------------------------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when Valkey answers and a settlement worker beat within GIFTING_HEARTBEAT_TTL_S. `archive_backlog`:
    journal entries in Valkey not yet archived to PostgreSQL, in the ledger partition with the most (past
    GIFTING_ARCHIVE_BACKLOG_MAX in a partition, its debits are refused)."""
    state = request.app.state
    try:
        await state.redis.ping()
        since_ms = now_ms() - state.settings.heartbeat_ttl_s * 1000
        workers = await state.redis.zcount(keys.WORKER_HEARTBEATS, since_ms, "+inf")
        backlog = await journal_backlog(state.redis)
    except STORE_ERRORS as exc:
        retry_after_s = state.settings.store_retry_after_s
        return store_unavailable_response(retry_after_s, status="unavailable", redis=f"unreachable: {exc}")
    except Exception as exc:
        return json_response({"status": "unavailable", "redis": f"unreachable: {exc}"}, 503)
    if workers == 0:
        return json_response({"status": "unavailable", "redis": "ok", "workers": 0, "archive_backlog": backlog}, 503)
    return json_response({"status": "ready", "redis": "ok", "workers": workers, "archive_backlog": backlog})


async def journal_backlog(redis: Redis) -> int:
    """The most journal entries waiting for the archiver in any ledger partition (each has its own bound)."""
    async with redis.pipeline(transaction=False) as pipe:
        for part in partitions.all_tags():
            pipe.xlen(keys.journal(part))
        lengths: list[int] = await pipe.execute()
    return max(lengths, default=0)


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus exposition of this process's metrics (docs/OPERATIONS.md, "Metrics")."""
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)


# Catalog --------------------------------------------------------------------------------------


async def catalog_gifts(request: Request) -> Response:
    return json_response({"gifts": request.app.state.catalogs.current.gift_list()})


async def catalog_bundles(request: Request) -> Response:
    return json_response({"bundles": request.app.state.catalogs.current.bundle_list()})


# Dev ---------------------------------------------------------------------------------------------------


async def dev_token(request: Request) -> Response:
    """Dev mode only: mint a demo token (the platform does this in production)."""
    state = request.app.state
    if not state.settings.dev_mode:
        raise ApiError("not_found", "dev endpoints are off (GIFTING_DEV is not set)")
    if not pages.loopback_host(request):  # DNS rebinding: another origin's page, its name resolving here
        raise ApiError("dev_host_refused", "dev endpoints answer only at localhost, 127.0.0.1 or [::1]")
    user, role = request.query_params.get("user", "demo_viewer"), request.query_params.get("role", "viewer")
    try:
        token = auth.mint(state.secret, user, role, request.query_params.get("name"), state.settings.token_ttl_s)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ApiError("bad_request", str(exc)) from None
    return json_response({"token": token, "user": user, "role": role})


routes = [
    Route("/healthz", healthz),
    Route("/readyz", readyz),
    Route("/metrics", metrics_endpoint),
    Route("/v1/catalog/gifts", catalog_gifts),
    Route("/v1/catalog/bundles", catalog_bundles),
    Route("/dev/token", dev_token),
]
