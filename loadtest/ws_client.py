"""A websocket session for locust users: websockets' sync client plus one greenlet that reads every frame.

Only for use inside locust (gevent monkey-patched): never the asyncio API there. Two things keep gevent and
websockets friends:

- `max_queue=None`: the client never stops reading the socket. With the default (16 frames), a socket
  closed while frames sit unread aborts the whole locust process in libev's epoll assertion.
- One reader greenlet per session drains every frame as it arrives and hands it to the user's handler, so
  the handler sees frames in order and can check them (loadtest/scenarios/feed.py).

Measurements go to locust's statistics with `report()` (request type `WS`).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
import msgpack
import orjson
from gevent.event import AsyncResult
from locust import events
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.sync.client import ClientConnection, connect

log = logging.getLogger("loadtest")

REQUEST_TYPE = "WS"
CODECS = {"json": "gifting.v1.json", "msgpack": "gifting.v1.msgpack"}
CLOSE_TIMEOUT_S = 2.0
READER_JOIN_S = 3.0
# Close codes that ask the client to reconnect elsewhere (docs/PROTOCOL.md): not a failure.
RESTART_CODES = frozenset({1001, 1012})  # going away; service restart (CloseCode.SERVICE_RESTART)

Message = dict[str, Any]
Handler = Callable[[Message, float], None]  # (message, perf_counter() when it was read)


class ClientError(Exception):
    """A check failed: what the server sent is not what the protocol promises."""


def report(name: str, seconds: float = 0.0, problem: str | BaseException | None = None, length: int = 0) -> None:
    """One entry in locust's statistics: a latency (seconds) and, if `problem`, a failure."""
    exception: BaseException | None
    exception = ClientError(problem) if isinstance(problem, str) else problem
    events.request.fire(
        request_type=REQUEST_TYPE,
        name=name,
        response_time=seconds * 1000.0,
        response_length=length,
        exception=exception,
        context={},
    )


class WsSession:
    """One websocket connection to /v1/ws. `handler` runs in the reader greenlet for every server message."""

    _refs = itertools.count(1)

    def __init__(self, ws_url: str, token: str, handler: Handler, codec: str = "json") -> None:
        self.url = f"{ws_url}?token={token}"
        self.handler = handler
        self.codec = codec
        self.ws: ClientConnection | None = None
        self.reader: gevent.Greenlet | None = None
        self.closing = False
        self.welcome: Message = {}
        self.close_code: int | None = None
        self.restart_requested = False  # the server closed with a RESTART_CODES code: reconnect, resume
        self._waiters: dict[str, AsyncResult] = {}

    # lifecycle ---------------------------------------------------------------------------------------------

    def connect(self, timeout_s: float, quiet: bool = False) -> Message:
        """Open the socket and read `welcome`: reported as `connect`. Raises on failure (reported too, unless
        `quiet`: a reconnect during a deploy retries, and only its final outcome counts)."""
        started = time.perf_counter()
        try:
            # Entered by hand (closed in close()): the context-manager protocol is what every websockets
            # version supports without a deprecation warning (connect() as a plain call warns since 17.1).
            self.ws = connect(
                self.url,
                subprotocols=[CODECS[self.codec]],  # type: ignore[list-item]
                max_queue=None,
                compression=None,
                proxy=None,
                open_timeout=timeout_s,
                close_timeout=CLOSE_TIMEOUT_S,
            ).__enter__()
            welcome = self._decode(self.ws.recv(timeout=timeout_s))
            if welcome.get("type") != "welcome":
                raise ClientError(f"expected welcome, got {welcome}")
        except BaseException as exc:
            if not quiet:
                report("connect", time.perf_counter() - started, exc if isinstance(exc, Exception) else None)
            self._abandon()
            raise
        report("connect", time.perf_counter() - started)
        self.welcome = welcome
        self.reader = gevent.spawn(self._read)
        return welcome

    def close(self) -> None:
        """Close cleanly (code 1000) and wait for the reader to finish."""
        self.closing = True
        for waiter in self._waiters.values():
            if not waiter.ready():
                waiter.set_exception(ClientError("session closed"))
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception as exc:  # the peer may be gone already
                log.debug("close: %s", exc)
        if self.reader is not None and not self.reader.dead:
            self.reader.join(timeout=READER_JOIN_S)
            if not self.reader.dead:
                self.reader.kill(block=False)

    def _abandon(self) -> None:
        self.closing = True
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception as exc:
                log.debug("abandon: %s", exc)

    @property
    def open(self) -> bool:
        return self.ws is not None and not self.closing and self.reader is not None and not self.reader.dead

    # messages ----------------------------------------------------------------------------------------------

    def send(self, message: Message) -> None:
        if self.ws is None:
            raise ClientError("not connected")
        if self.codec == "msgpack":
            self.ws.send(msgpack.packb(message, use_bin_type=True))
        else:
            self.ws.send(orjson.dumps(message).decode())

    def call(self, message: Message, timeout_s: float) -> Message:
        """Send a message with a fresh `ref` and wait for the reply carrying it (joined, left, pong, error)."""
        ref = f"r{next(self._refs)}"
        waiter: AsyncResult = AsyncResult()
        self._waiters[ref] = waiter
        try:
            self.send({**message, "ref": ref})
            reply: Message = waiter.get(timeout=timeout_s)
            return reply
        except gevent.Timeout:
            raise ClientError(f"no reply to {message.get('type')} within {timeout_s:g} s") from None
        finally:
            self._waiters.pop(ref, None)

    def _decode(self, raw: str | bytes) -> Message:
        if self.codec == "msgpack" and isinstance(raw, bytes):
            message = msgpack.unpackb(raw, raw=False)
        else:
            message = orjson.loads(raw)
        if not isinstance(message, dict):
            raise ClientError(f"server sent a non-object: {message!r}")
        return message

    def _closed_by_server(self, exc: ConnectionClosed) -> None:
        """A restart close is counted as `server restart` (a success) for the user to reconnect; any other loss
        of the socket is a failure."""
        self.close_code = exc.rcvd.code if exc.rcvd else None
        if self.closing:
            return
        if self.close_code in RESTART_CODES:
            self.restart_requested = True
            report("server restart")
        elif isinstance(exc, ConnectionClosedOK):
            report("connection lost", 0.0, f"server closed the socket: {exc}")
        else:
            report("connection lost", 0.0, f"{exc}")

    def _read(self) -> None:
        ws = self.ws
        assert ws is not None
        try:
            while True:
                raw = ws.recv()
                now = time.perf_counter()
                try:
                    message = self._decode(raw)
                    self.handler(message, now)
                except Exception as exc:
                    log.exception("handling a server message failed")
                    report("client error", 0.0, f"{type(exc).__name__}: {exc}")
                    continue
                ref = message.get("ref")
                if ref is not None:
                    waiter = self._waiters.get(ref)
                    if waiter is not None and not waiter.ready():
                        waiter.set(message)
        except ConnectionClosed as exc:
            self._closed_by_server(exc)
        except Exception as exc:  # a socket error after close(), or a bug: say it, never die silently
            if not self.closing:
                report("connection lost", 0.0, f"{type(exc).__name__}: {exc}")
        finally:
            for waiter in self._waiters.values():
                if not waiter.ready():
                    waiter.set_exception(ClientError("connection closed"))
