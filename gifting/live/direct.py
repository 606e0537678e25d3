"""uvicorn's websocket protocol, plus a direct socket for the hub (`server_config` installs it).

Why: through ASGI, every frame the hub sends to every connection is a `websocket.send` message that goes
through Starlette's and uvicorn's send paths, is encoded and framed once per connection, and needs a writer
task woken per connection per tick; at 2,000 viewers that was about 4x the CPU of writing the same bytes
(docs/BENCHMARKS.md, "Fan-out"). With this class, the websocket endpoint finds the connection itself in
`scope["extensions"]` and hands the hub its transport: the hub builds each tick's frame once and writes it to
every transport. Everything else stays with uvicorn and websockets' sans-I/O protocol: the handshake, reading
and parsing client frames, pings and pongs, and the close handshake the client starts.

Without this class (another ASGI server, or stock uvicorn) the endpoint falls back to ASGI sends
(gifting/live/hub.py `Fallback`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

EXTENSION = "gifting.direct_socket"

# After the hub closes a connection, its buffered frames and the close frame get this long to reach the peer;
# then the socket is aborted, so a peer that never reads cannot hold its buffer (up to
# GIFTING_WS_QUEUE_BYTES_MAX) and its socket forever.
CLOSE_FLUSH_S = 5.0


class HubWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol that offers itself to the app as a direct socket.

    `transport` takes complete, unmasked websocket frames (gifting.wire.framing.ws_frame); its write buffer is the
    connection's bounded queue. `close_now` is the hub's close.
    """

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # Prebuilt frames carry no extension bits: a connection that negotiated one (permessage-deflate, off
        # in server_config) gets no direct socket and takes the ASGI path.
        if self.handshake_initiated and not self.handshake_complete and not self.conn.extensions:
            extensions = self.scope.get("extensions")
            assert extensions is not None  # uvicorn sets websocket.http.response
            extensions[EXTENSION] = {"socket": self}

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # uvicorn keeps the handshake's request and response (websockets Headers) for the connection's
            # life; nothing reads them after the accept, and at 10,000 sockets they are worth dropping.
            self.request = self.response = None  # type: ignore[assignment]

    def close_now(self, code: int, reason: str) -> None:
        """The hub's close: the close frame goes after everything already buffered, the socket closes once
        the buffer has drained (aborted after CLOSE_FLUSH_S), and the app's `receive()` returns a disconnect
        at once, so the endpoint does not wait for a client that may never send again."""
        if self.close_sent or self.transport.is_closing():
            return
        self.close_sent = True
        self.stop_keepalive()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        if self.conn.state is State.OPEN:
            self.conn.send_close(code, reason)
            self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()
        # uvicorn's close timer: cancelled by connection_lost; it also keeps run_asgi from closing again.
        self.close_timer = self.loop.call_later(CLOSE_FLUSH_S, self.transport.abort)


# What HubWebSocketProtocol relies on in uvicorn's protocol and websockets' connection. uvicorn has no public
# API for these, so a release that renames one would otherwise show up as every socket silently taking the ASGI
# fallback, or as an AttributeError on the first close; `check_protocol` turns that into a refusal to start.
PROTOCOL_METHODS = ("handle_connect", "send", "stop_keepalive", "connection_lost")
PROTOCOL_ATTRIBUTES = ("conn", "transport", "queue", "loop", "close_sent", "close_timer")
PROTOCOL_FLAGS = ("handshake_initiated", "handshake_complete")
CONNECTION_MEMBERS = ("extensions", "state", "send_close", "data_to_send")


class ProtocolChanged(RuntimeError):
    """The installed uvicorn or websockets no longer has what the direct socket uses."""


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    """The throwaway config's app; never called."""


def check_protocol(protocol_class: type[HubWebSocketProtocol] = HubWebSocketProtocol) -> None:
    """Build one (unconnected) protocol as uvicorn would and check every member the direct socket uses;
    raise ProtocolChanged naming the missing ones."""
    missing = [f"{name}()" for name in PROTOCOL_METHODS if not callable(getattr(protocol_class, name, None))]
    config = uvicorn.Config(_no_app, ws=protocol_class, log_config=None, lifespan="off")
    config.load()
    loop = asyncio.new_event_loop()
    try:
        protocol = protocol_class(config=config, server_state=uvicorn.server.ServerState(), app_state={}, _loop=loop)
    finally:
        loop.close()
    missing += [name for name in PROTOCOL_ATTRIBUTES if not hasattr(protocol, name)]
    missing += [name for name in PROTOCOL_FLAGS if getattr(protocol, name, None) is not False]
    conn = getattr(protocol, "conn", None)
    if not isinstance(conn, ServerProtocol):
        missing.append(f"conn (a websockets ServerProtocol, found {type(conn).__name__})")
    else:
        missing += [f"conn.{name}" for name in CONNECTION_MEMBERS if not hasattr(conn, name)]
    if missing:
        raise ProtocolChanged(
            f"uvicorn {uvicorn.__version__}'s websockets-sansio protocol no longer has what gifting/live/direct.py "
            f"uses: {', '.join(missing)}; pin the previous uvicorn/websockets (pyproject.toml bounds) or adapt it"
        )


def direct_socket(scope: Any) -> HubWebSocketProtocol | None:
    """The connection's direct socket, if the server offers one (see the module docstring)."""
    offered = (scope.get("extensions") or {}).get(EXTENSION)
    socket = offered.get("socket") if isinstance(offered, dict) else None
    return socket if isinstance(socket, HubWebSocketProtocol) else None
