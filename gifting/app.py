"""create_app(settings): the composition root. Owns the Redis client, hub, ledger, rooms and payments."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from gifting import logs, valkey
from gifting.catalog.store import CatalogStore
from gifting.config import Settings
from gifting.errors import GiftingError
from gifting.history.reader import ArchiveReader
from gifting.history.statements import Statements
from gifting.ledger.campaigns import Campaigns
from gifting.ledger.rewards import Rewards
from gifting.ledger.store import Ledger, claim_partition_count
from gifting.live.direct import HubWebSocketProtocol, check_protocol
from gifting.live.endpoint import websocket_endpoint
from gifting.live.hub import Hub
from gifting.live.watch_rewards import WatchRewards
from gifting.outage import STORE_ERRORS
from gifting.payments import PaymentProvider, SandboxProvider
from gifting.rooms.matches import MatchStore
from gifting.rooms.stage import StageStore
from gifting.rooms.store import RoomStore
from gifting.web import (
    admin,
    campaigns,
    edge,
    fanclubs,
    http,
    matches,
    openapi,
    pages,
    perks,
    rewards,
    rooms,
    service,
    wallet,
)

log = logging.getLogger(__name__)


def redis_client(url: str, connections_max: int = 100, wait_s: float = 10.0) -> aioredis.Redis:
    """A client for `url`, standalone or cluster as the server says (gifting/valkey.py, the one home for clients)."""
    return valkey.client(url, connections_max, wait_s)


def server_config(app: Any, settings: Settings, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    """uvicorn as every web process runs it (and the benchmark's contenders, so they are compared fairly; those
    pass `ws="websockets-sansio"`, the stock protocol this one extends, since they have no use for the hub's
    direct socket)."""
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "ws": HubWebSocketProtocol,  # websockets-sansio plus the hub's direct socket (gifting/live/direct.py)
        "ws_max_size": settings.ws_frame_bytes_hard_max,
        "ws_per_message_deflate": False,  # ~50 KiB per connection for frames this small: off
        "ws_ping_interval": settings.ws_ping_interval_s,
        "ws_ping_timeout": settings.ws_ping_interval_s,
        "lifespan": "on",
        "access_log": False,
        "timeout_graceful_shutdown": settings.shutdown_grace_s,  # a stuck socket must not hold a shutdown
        "http": edge.http_protocol(
            edge.ConnectionBounds(
                settings.http_header_timeout_s, settings.connections_max, settings.connections_per_address_max
            )
        ),
        "h11_max_incomplete_event_size": settings.http_header_bytes_max,
        "timeout_keep_alive": settings.http_idle_timeout_s,
    }
    logs.install(settings.secret)  # uvicorn logs request lines with their query strings (?token=...)
    if settings.log_format == "json":
        options["log_config"] = logs.UVICORN_JSON_CONFIG
    options |= overrides
    if options["ws"] is HubWebSocketProtocol:
        check_protocol()  # an upgraded uvicorn that lost what the direct socket uses stops here, loudly
    return uvicorn.Config(app, **options)


WS_PATH = "/v1/ws"


class GiftingApp(Starlette):
    """Starlette, with the websocket endpoint dispatched before the middleware stack.

    Each layer of that stack (error and exception middleware, router, route, the endpoint's wrapper) is a
    coroutine frame a websocket keeps alive for its whole life; at 10,000 sockets that is memory worth keeping
    (docs/BENCHMARKS.md). The endpoint needs none of them: it answers its own errors on the socket. HTTP and
    every other path go through the stack as usual.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == scope.get("root_path", "") + WS_PATH:
            scope["app"] = self  # what Starlette sets: the endpoint reads app.state
            await websocket_endpoint(WebSocket(scope, receive, send))
            return
        if scope["type"] == "http":
            s = self.state.settings  # every route's body is bounded (gifting/web/edge.py)
            await edge.bounded_body(
                super().__call__, scope, receive, send, s.http_body_bytes_max, s.http_header_timeout_s
            )
            return
        await super().__call__(scope, receive, send)


def _methods_at(request: Request) -> set[str]:
    """Every method some route serves at the request's path (Starlette's own Allow names one route's)."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.path_regex.fullmatch(request.url.path):
            methods |= route.methods or set()
    return methods


def create_app(settings: Settings, redis_url: str, secret: str, payments: PaymentProvider | None = None) -> Starlette:
    logs.install(secret)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = redis_client(redis_url, settings.redis_connections_max, settings.redis_wait_s)
        state = app.state
        state.settings, state.secret, state.redis = settings, secret, redis
        await claim_partition_count(redis, settings.ledger_partitions)
        state.catalogs = CatalogStore(redis)
        await state.catalogs.load()
        state.payments = payments or SandboxProvider()
        state.ledger = Ledger(redis, settings)
        # Records past their hot windows (statement rows, purchases, summaries, ...) are read from the history
        # database through this process's one reader; without one configured nothing is archived.
        state.archive = ArchiveReader(settings.database_url) if settings.database_url else None
        state.statements = Statements(redis, state.archive)
        state.rooms = RoomStore(redis, settings)
        state.ledger.archive = state.rooms.archive = state.archive
        state.matches = MatchStore(redis, settings, state.rooms)
        state.stage = StageStore(redis, settings, state.rooms)
        state.campaigns = Campaigns(redis, settings)
        state.hub = Hub(redis, settings, state.catalogs)
        await state.hub.start()
        state.rewards = Rewards(redis, settings, state.ledger)
        state.watch_rewards = WatchRewards(redis, settings, state.rewards, state.hub.users, {})
        state.watch_rewards.start()
        log.info("web process ready (hub %s)", state.hub.id)
        try:
            yield
        finally:
            await state.watch_rewards.stop()
            await state.hub.stop()
            if state.archive is not None:
                await state.archive.close()
            await redis.aclose()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        response = http.error_response(exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # Allow (RFC 9110): every method of the path, where routes split them by method
            response.headers["Allow"] = ", ".join(sorted(_methods_at(request)))
        return response

    routes = [
        *service.routes,
        *rooms.routes,
        *matches.routes,
        *wallet.routes,
        *rewards.routes,
        *admin.routes,
        *campaigns.routes,
        *perks.routes,
        *fanclubs.routes,
        *openapi.routes,
        WebSocketRoute(WS_PATH, websocket_endpoint),  # GiftingApp dispatches it first; listed for the router too
        *pages.routes,
    ]
    return GiftingApp(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            # Every domain error and the web layer's own: the status from its code (gifting/web/http.py STATUS).
            GiftingError: http.gifting_error_handler,
            HTTPException: http_error,
            # Valkey unreachable: 503 store_unavailable with Retry-After on every route (gifting/outage.py).
            **dict.fromkeys(STORE_ERRORS, http.store_error_handler),
        },
    )
