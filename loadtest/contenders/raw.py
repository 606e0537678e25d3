"""Contender (a), the raw limit: a minimal asyncio websocket server that, each tick, builds ONE frame holding that
tick's events and writes the same bytes to every connection with `transport.write`.

    python -m loadtest.contenders.raw --port P --redis-url URL --room R [--tick-ms 50]

The same work as the hub, and nothing else: the same input (the room's pub/sub channel), the same frame
content (`{"type": "events", "room": R, "events": [...], "from", "to"}`: the viewers' frame shaped by the same
big-room policy, gifting/live/coalesce.py; orjson, one text frame), the same tick. No per-connection queue, task,
framework or protocol object: one `transport.write` per connection per tick. A client sends
`{"type": "join", ...}` once and gets `{"type": "joined", ...}`; pings and closes are answered, anything else
is ignored. Not a server to use: no limits, no auth, no backpressure.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

from gifting.app import redis_client
from gifting.config import Settings
from gifting.live import coalesce
from gifting.wire.messages import Events
from loadtest.contenders.common import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    SUBPROTOCOL,
    arguments,
    raise_nofile_limit,
    read_room_events,
    serve_until_signalled,
    ws_accept_key,
    ws_frame,
)

HEADERS_BYTES_MAX = 16384


class RawServer:
    def __init__(self, room: str, tick_ms: int) -> None:
        self.room = room
        self.settings = Settings.from_env({})
        self.tick_s = tick_ms / 1000
        self.transports: set[asyncio.Transport] = set()
        self.pending: list[dict[str, Any]] = []
        self.frames_written = 0

    def viewers_frame(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """The same frame the hub builds for viewers (live/room.py LiveRoom.frame): the big-room policy applied."""
        s = self.settings
        body = coalesce.for_viewers_frame(events, s.big_gift_coins, s.frame_events_max, None, s.merged_gifts_max)
        covered = coalesce.offsets_covered(events)
        return Events(self.room, body, *(covered or (None, None))).to_dict()

    def on_events(self, events: list[dict[str, Any]]) -> None:
        self.pending.extend(events)

    async def tick(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.tick_s
            delay = next_at - loop.time()
            if delay < 0:
                next_at, delay = loop.time(), 0
            await asyncio.sleep(delay)
            if not self.pending:
                continue
            events, self.pending = self.pending, []
            frame = ws_frame(orjson.dumps(self.viewers_frame(events)))
            for transport in self.transports:
                transport.write(frame)
            self.frames_written += len(self.transports)


class RawConnection(asyncio.Protocol):
    def __init__(self, server: RawServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server.transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.open and not self._handshake():
            return
        self._frames()

    def _handshake(self) -> bool:
        assert self.transport is not None
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > HEADERS_BYTES_MAX:
                self.transport.close()
            return False
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        key = headers.get("sec-websocket-key", "").encode()
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        lines = [
            b"HTTP/1.1 101 Switching Protocols",
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Accept: " + ws_accept_key(key),
        ]
        if SUBPROTOCOL in offered:
            lines.append(b"Sec-WebSocket-Protocol: " + SUBPROTOCOL.encode())
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")
        self.open = True
        return True

    def _frames(self) -> None:
        """Client frames are small and masked; only join, ping, pong and close matter."""
        assert self.transport is not None
        buf = self.buf
        while len(buf) >= 2:
            opcode, length, pos = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, pos = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, pos = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < pos + 4 + length:
                return
            mask = bytes(buf[pos : pos + 4])
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(buf[pos + 4 : pos + 4 + length]))
            del buf[: pos + 4 + length]
            if opcode in (OP_TEXT, OP_BINARY):
                with contextlib.suppress(orjson.JSONDecodeError):
                    message = orjson.loads(payload)
                    if isinstance(message, dict) and message.get("type") == "join":
                        joined = {"type": "joined", "room": self.server.room}
                        self.transport.write(ws_frame(orjson.dumps(joined)))
                        self.server.transports.add(self.transport)
            elif opcode == OP_PING:
                self.transport.write(ws_frame(payload, OP_PONG))
            elif opcode == OP_CLOSE:
                self.server.transports.discard(self.transport)
                self.transport.write(ws_frame(payload[:2], OP_CLOSE))
                self.transport.close()
                return


async def main() -> None:
    args = arguments(__doc__ or "")
    raise_nofile_limit()
    redis = redis_client(args.redis_url)
    server = RawServer(args.room, args.tick_ms)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(lambda: RawConnection(server), args.host, args.port, backlog=4096)
    tasks = [loop.create_task(read_room_events(redis, args.room, server.on_events)), loop.create_task(server.tick())]

    async def stop() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        listener.close()
        for transport in list(server.transports):
            transport.abort()
        await redis.aclose()
        print(f"raw: {server.frames_written} frames written", flush=True)

    await serve_until_signalled(lambda: None, stop)


if __name__ == "__main__":
    asyncio.run(main())
