"""Contender (b), naive: a Starlette websocket endpoint on uvicorn; for each gift, `await ws.send_bytes()` to each
connection in turn.

    python -m loadtest.contenders.naive --port P --redis-url URL --room R

What one writes first: no coalescing, no encode-once-per-tick, no per-connection queue. Each gift from the
room's pub/sub channel becomes its own `{"type": "events", "room": R, "events": [event]}` message (encoded
once per gift, not per connection), sent with `await ws.send_bytes(...)` to every joined socket, inline in the
pub/sub reader (so a slow fan-out delays the next gift, as it would). uvicorn is configured exactly as
`gifting serve` configures it (gifting.app.server_config: permessage-deflate off, the same ping interval and
limits), except for the protocol class: stock websockets-sansio, of which the hub's HubWebSocketProtocol is a
subclass that only adds the direct socket this contender has no use for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from gifting.app import redis_client
from gifting.wire import protocol
from gifting.wire.messages import Events
from loadtest.contenders.common import SUBPROTOCOL, read_room_events, run_uvicorn


def make_app(redis_url: str, room: str) -> Starlette:
    sockets: set[WebSocket] = set()

    async def endpoint(ws: WebSocket) -> None:
        offered = list(ws.scope.get("subprotocols") or [])
        await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        join = orjson.loads(await ws.receive_text())
        await ws.send_text(orjson.dumps({"type": "joined", "room": join.get("room", room)}).decode())
        sockets.add(ws)
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
        finally:
            sockets.discard(ws)

    async def fan_out(events: list[dict[str, Any]]) -> None:
        for event in events:
            data = orjson.dumps(Events(room, [protocol.for_viewers(event)]).to_dict())
            for ws in list(sockets):
                try:
                    await ws.send_bytes(data)
                except Exception:
                    sockets.discard(ws)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = redis_client(redis_url)
        task = asyncio.get_running_loop().create_task(read_room_events(redis, room, fan_out))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await redis.aclose()

    return Starlette(routes=[WebSocketRoute("/v1/ws", endpoint)], lifespan=lifespan)


def main() -> None:
    run_uvicorn(make_app, __doc__ or "")


if __name__ == "__main__":
    main()
