"""Bounds on what one HTTP client may hold of a web process: body bytes, time to send a request, connections.

uvicorn bounds header bytes (`h11_max_incomplete_event_size`) and idle time between requests
(`timeout_keep_alive`); it has no deadline for a request's head (its keep-alive timer stops at the first byte,
so a client sending one header line a second holds the connection forever, and a fresh connection that sends
nothing has no timer at all), no cap on connections from one address, and it reads a request body only as
the app asks for it. `BoundedH11Protocol` adds the first two at the protocol level; `bounded_body` refuses a
body over its limit on its `Content-Length` without reading it, and stops reading a streamed one at the limit.
Every bound is a setting (gifting/config.py) and is documented in docs/PROTOCOL.md.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True, slots=True)
class ConnectionBounds:
    header_timeout_s: float  # a request's line and headers must arrive within this, from connect or last answer
    connections_max: int  # per process, websockets included; 0: no cap
    connections_per_address_max: int  # per client address; 0: no cap


def error_bytes(status: int, reason: str, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 answer with the API's error envelope that closes the connection."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


def http_protocol(bounds: ConnectionBounds) -> type[H11Protocol]:
    """uvicorn's `http` option: the bounded protocol with its own per-address counts (one class per server)."""
    attributes = {"bounds": bounds, "open_by_address": {}}
    return type("BoundedH11Protocol", (BoundedH11Protocol,), attributes)


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for each request head and connection caps.

    Over a cap, the connection gets 503 `too_many_connections` at once and is closed; past the deadline it is
    closed. A connection that becomes a websocket hands its place in the per-address count to the websocket
    protocol, which gives it back when the socket closes.
    """

    bounds: ClassVar[ConnectionBounds]
    open_by_address: ClassVar[dict[str, int]]
    _address: str = ""
    _counted: bool = False
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._address = self.client[0] if self.client else ""
        refusal = self._refusal()
        if refusal is not None:
            transport.write(error_bytes(503, "Service Unavailable", "too_many_connections", refusal))
            transport.close()
            return
        self.open_by_address[self._address] = self.open_by_address.get(self._address, 0) + 1
        self._counted = True
        self._arm_head_timer()

    def _refusal(self) -> str | None:
        bounds = self.bounds
        if bounds.connections_max and len(self.connections) > bounds.connections_max:
            return f"this server holds its limit of {bounds.connections_max} connections; retry later"
        per_address = bounds.connections_per_address_max
        if per_address and self.open_by_address.get(self._address, 0) >= per_address:
            return f"{per_address} connections from one address is the limit; close one first"
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self._release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request's head is complete
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()  # the next request's head gets the same deadline

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._disarm_head_timer()
        super().handle_websocket_upgrade(event)
        websocket = self.transport.get_protocol()
        if websocket is not self:
            # This protocol hears no more of the transport: the websocket protocol's connection_lost releases it.
            websocket.connection_lost = functools.partial(_release_then, self, websocket.connection_lost)  # type: ignore[method-assign]

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            left = self.open_by_address.get(self._address, 1) - 1
            if left > 0:
                self.open_by_address[self._address] = left
            else:
                self.open_by_address.pop(self._address, None)

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.bounds.header_timeout_s, self._head_timeout)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def _release_then(owner: BoundedH11Protocol, connection_lost: Any, exc: Exception | None) -> None:
    owner._release()
    connection_lost(exc)


async def bounded_body(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, bytes_max: int, timeout_s: float
) -> None:
    """Call `app` with the request's body read in full beforehand, if it fits in `bytes_max` and arrives within
    `timeout_s`; else answer 413 `body_too_large` (on the declared `Content-Length` alone, or as soon as a
    streamed body passes the limit) or 408 `request_timeout`, and read no more of it."""
    declared = dict(scope["headers"]).get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > bytes_max:
        await _refuse(send, 413, "body_too_large", f"request body of {int(declared)} bytes; the limit is {bytes_max}")
        return
    try:
        async with asyncio.timeout(timeout_s):
            first = await _read_body(receive, bytes_max)
    except TimeoutError:
        await _refuse(send, 408, "request_timeout", f"the request body did not arrive within {timeout_s:g} s")
        return
    if first is None:
        await _refuse(send, 413, "body_too_large", f"request body over the limit of {bytes_max} bytes")
        return
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return first

    await app(scope, replay, send)


async def _read_body(receive: Receive, bytes_max: int) -> Message | None:
    """The whole body as one `http.request` message (a disconnect as it came); None once it passes `bytes_max`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return message
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > bytes_max:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.append((b"connection", b"close"))  # the rest of the body is never read: the connection cannot be reused
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
