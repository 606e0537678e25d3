"""Connection output: one client socket, and the bounded-bytes write of server messages to it.

A connection is an identity plus a way to write bytes and to close. On a direct socket (gifting/live/direct.py)
`transport` takes complete websocket frames and its write buffer is the connection's queue; without one, a
`Fallback` sends through ASGI from a writer task. Either way the queue is bounded in bytes
(GIFTING_WS_QUEUE_BYTES_MAX): a client that lets it overflow is closed with CLOSE_SLOW_CONSUMER and resumes by
offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gifting import metrics
from gifting.auth import Identity
from gifting.wire import framing, protocol
from gifting.wire.messages import CloseCode
from gifting.wire.protocol import Codec

# Close codes (gifting.wire.messages.CloseCode, documented in docs/PROTOCOL.md), by the names the hub uses.
CLOSE_UNAUTHORIZED = CloseCode.UNAUTHORIZED
CLOSE_TOO_MANY_INVALID = CloseCode.TOO_MANY_INVALID
CLOSE_SLOW_CONSUMER = CloseCode.SLOW_CONSUMER
CLOSE_TOO_MANY_CONNECTIONS = CloseCode.TOO_MANY_CONNECTIONS
CLOSE_GOING_AWAY = CloseCode.GOING_AWAY
SLOW_CONSUMER_REASON = "slow consumer: outgoing queue full; reconnect and resume with since"

FALLBACK_CLOSE_S = 5.0  # the fallback's close handshake may wait on a peer that does not read: this long

CloseNow = Callable[[int, str], None]
SendFrame = Callable[[str | bytes], Awaitable[None]]
CloseSocket = Callable[[int, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Encoded:
    """One server message, encoded once: `data` for an ASGI send (fallback), `frame` for a transport (direct)."""

    data: str | bytes
    frame: bytes

    @classmethod
    def of(cls, message: dict[str, Any], codec: Codec) -> Encoded:
        data = protocol.encode(message, codec)
        return cls(data, framing.ws_frame(data))


@dataclass(eq=False, slots=True)
class Fallback:
    """Output without a direct socket: one ASGI send per message, from a writer task, behind a byte-bounded
    queue. It costs a task wake-up and an ASGI message per connection per tick (docs/BENCHMARKS.md); it is
    here so the app still works on any ASGI server."""

    send: SendFrame
    close_socket: CloseSocket
    queue: deque[str | bytes] = field(default_factory=deque)
    queued_bytes: int = 0
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    shut_down: asyncio.Event = field(default_factory=asyncio.Event)  # set by shut(): the reader stops waiting
    writer: asyncio.Task[None] | None = None
    closing: asyncio.Task[None] | None = None  # the close handshake started by shut()

    def push(self, data: str | bytes) -> None:
        self.queue.append(data)
        self.queued_bytes += len(data)
        self.wakeup.set()

    async def run_writer(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.queue:
                data = self.queue.popleft()
                self.queued_bytes -= len(data)
                await self.send(data)

    def shut(self, code: int, reason: str) -> None:
        """Drop what is queued and close the socket (the writer may be stuck on a slow peer: cancelled)."""
        self.shut_down.set()
        self.queue.clear()
        self.queued_bytes = 0
        if self.writer is not None:
            self.writer.cancel()
        self.closing = asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.close_socket(code, reason), timeout=FALLBACK_CLOSE_S)

    async def stop(self) -> None:
        """Wait for the writer to stop and for a close we started (4002, 4008) to reach the client."""
        if self.writer is not None:
            self.writer.cancel()
        for task in (self.writer, self.closing):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


@dataclass(eq=False, slots=True)
class Connection:
    """One client socket: either a direct one (`transport` + `close_now`, gifting/live/direct.py) or a fallback."""

    identity: Identity
    codec: Codec
    queue_bytes_max: int
    transport: asyncio.WriteTransport | None = None  # takes complete websocket frames
    close_now: CloseNow | None = None
    fallback: Fallback | None = None
    rooms: set[str] = field(default_factory=set)
    closed: bool = False
    close_code: int | None = None
    # Watch rewards (gifting/live/watch_rewards.py): when the socket opened and last sent a message (monotonic s).
    connected_s: float = field(default_factory=time.monotonic)
    active_s: float = field(default_factory=time.monotonic)

    def write(self, out: Encoded) -> bool:
        """Send one message; False (and the connection closes with 4008) if it would overflow the byte limit."""
        if self.closed:
            return False
        transport = self.transport
        if transport is not None:
            if transport.is_closing():
                return False  # the peer went away; the endpoint is about to disconnect it
            if transport.get_write_buffer_size() + len(out.frame) > self.queue_bytes_max:
                self.shut(CLOSE_SLOW_CONSUMER, SLOW_CONSUMER_REASON)
                return False
            transport.write(out.frame)
            return True
        fallback = self.fallback
        assert fallback is not None, "a connection has a transport or a fallback"
        if fallback.queued_bytes + len(out.data) > self.queue_bytes_max:
            self.shut(CLOSE_SLOW_CONSUMER, SLOW_CONSUMER_REASON)
            return False
        fallback.push(out.data)
        return True

    def send_message(self, message: dict[str, Any]) -> bool:
        return self.write(Encoded.of(message, self.codec))

    def shut(self, code: int, reason: str) -> None:
        """Stop sending and close the socket with `code`; the endpoint's receive() then ends."""
        if self.closed:
            return
        self.closed, self.close_code = True, code
        metrics.ws_server_closes.labels(code=str(code)).inc()
        if self.close_now is not None:
            self.close_now(code, reason)
        else:
            assert self.fallback is not None
            self.fallback.shut(code, reason)
