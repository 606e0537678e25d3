"""Shared by the fan-out contenders (loadtest/bench_fanout.py): the input path, websocket bits, process setup.

Every contender is fed exactly like the hub: it SUBSCRIBEs to the room's Valkey channel (`room:<id>`) with the
same redis-py pub/sub client the hub uses (gifting.app.redis_client, `get_message(timeout=1.0)` in a loop) and
receives what announce.lua PUBLISHes: a JSON array of events, each with its `offset`. What differs is only
what happens after the payload is decoded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import logging
import resource
import signal
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from gifting import keys
from gifting.rooms.store import announced_events
from gifting.wire import framing

log = logging.getLogger("contender")

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA
SUBPROTOCOL = "gifting.v1.json"


def raise_nofile_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: 10,000 sockets need more than the usual 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--tick-ms", type=int, default=50)
    return parser.parse_args()


async def read_room_events(redis: aioredis.Redis, room: str, on_events: Callable[[list[dict[str, Any]]], Any]) -> None:
    """The hub's input path: one pub/sub channel per room; `on_events(events)` for each message (awaited when
    it returns an awaitable, so a contender that sends inline stalls its own input, as it would in real life)."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.room_channel(room))
    try:
        while True:
            try:
                message = await pubsub.get_message(timeout=1.0)
            except (RedisConnectionError, OSError) as exc:
                log.warning("pub/sub: %s; reconnecting", exc)
                await asyncio.sleep(0.5)
                continue
            if message is None or message.get("type") != "message":
                continue
            result = on_events(announced_events(message["data"]))
            if asyncio.iscoroutine(result):
                await result
    finally:
        with contextlib.suppress(Exception):
            await pubsub.aclose()


def ws_accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


def ws_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One unmasked (server -> client) frame, FIN set; JSON goes out as text, as the hub sends it."""
    return framing.frame_bytes(opcode, payload)


def run_uvicorn(make_app: Callable[[str, str], Any], description: str) -> None:
    """A uvicorn contender's main: `gifting serve`'s uvicorn configuration (gifting.app.server_config) with uvicorn's
    stock websockets-sansio protocol, which the hub's protocol class extends (they have no use for the hub's direct
    socket). The listen backlog and shutdown timeout only matter at start and stop."""
    import uvicorn  # here, not at the top: the raw contender needs none of uvicorn or Starlette

    from gifting.app import server_config
    from gifting.config import Settings

    args = arguments(description)
    raise_nofile_limit()
    config = server_config(
        make_app(args.redis_url, args.room), Settings.from_env({}, connections_max=0, connections_per_address_max=0),
        args.host, args.port,
        log_level="warning", backlog=4096, timeout_graceful_shutdown=2, ws="websockets-sansio",
    )  # fmt: skip
    uvicorn.Server(config).run()


async def serve_until_signalled(start: Callable[[], Any], stop: Callable[[], Any]) -> None:
    """Run until SIGTERM/SIGINT."""
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    result = start()
    if asyncio.iscoroutine(result):
        await result
    try:
        await done.wait()
    finally:
        result = stop()
        if asyncio.iscoroutine(result):
            await result
