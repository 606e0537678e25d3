"""Contender (c), python-socketio: `socketio.AsyncServer` (ASGI) on uvicorn, emitting each gift to a room.

    python -m loadtest.contenders.socketio_server --port P --redis-url URL --room R

The way a Socket.IO application does it: a client connects over the websocket transport
(`/socket.io/?EIO=4&transport=websocket`), emits `join` with the room id and gets `joined`; each gift from
the room's pub/sub channel is `await sio.emit("gift", event, room=R)` (python-socketio encodes the packet once
per emit and queues it to each participant's engine.io socket, whose writer task sends it). uvicorn is
configured exactly as `gifting serve` configures it (gifting.app.server_config), except for the protocol class:
stock websockets-sansio, which the hub's HubWebSocketProtocol extends with a direct socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import socketio

from gifting.app import redis_client
from gifting.wire import protocol
from loadtest.contenders.common import read_room_events, run_uvicorn


def make_app(redis_url: str, room: str) -> Any:
    sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*", logger=False, engineio_logger=False)
    tasks: list[asyncio.Task[None]] = []

    @sio.on("join")  # type: ignore[untyped-decorator,misc]
    async def join(sid: str, room_id: Any) -> None:
        await sio.enter_room(sid, room)
        await sio.emit("joined", {"type": "joined", "room": room}, to=sid)

    async def fan_out(events: list[dict[str, Any]]) -> None:
        for event in events:
            await sio.emit("gift", protocol.for_viewers(event), room=room)

    async def startup() -> None:
        redis = redis_client(redis_url)
        tasks.append(asyncio.get_running_loop().create_task(read_room_events(redis, room, fan_out)))

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    return socketio.ASGIApp(sio, on_startup=startup, on_shutdown=shutdown)


def main() -> None:
    run_uvicorn(make_app, __doc__ or "")


if __name__ == "__main__":
    main()
