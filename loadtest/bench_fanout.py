"""Fan-out benchmark: N websocket viewers in one room on one hub process, gifts at rate R from another process,
next to three contenders measured in the same run, on the same N and R.

    python loadtest/bench_fanout.py                   # the default plan (below), under ten minutes
    python loadtest/bench_fanout.py --conns 2000 --rate 500 --contenders hub,raw --sweep "" --big-conns 0
    python loadtest/bench_fanout.py --repeat 3 --json out.json --plots docs/img    # the figures in BENCHMARKS.md
    python loadtest/bench_fanout.py --contenders hub,hub-match --sweep "" --big-conns 0 --repeat 3  # a match's cost

Everything runs on 127.0.0.1 and is started here, each in its own process, and stopped at the end:

  Valkey   a private embedded valkey-server (gifting.embedded.EmbeddedValkey) in a temporary directory.
  server   the contender under test, alone in its process (its CPU time and RSS are read with psutil):
             hub       `python -m gifting.cli serve` (the real web process: uvicorn with the hub's direct
                       socket, gifting/live/direct.py; GIFTING_TICK_MS = --tick-ms, GIFTING_WS_QUEUE_BYTES_MAX
                       large so nobody is cut off).
             hub-match the same hub while the room plays a match: the source follows each gift with its
                       `match_score` (as the worker announces a match's scores with the gifts that made them);
                       viewers get one score per frame (gifting/live/coalesce.py). Not counted as events (no t0):
                       its cpu_us/event and cpu_us/frame against hub's, same run, are the score events' cost.
             raw       (a) the raw limit of the same work: loadtest/contenders/raw.py, one prebuilt frame per
                       tick written to every connection with transport.write (same tick as the hub).
             naive     (b) loadtest/contenders/naive.py: Starlette, `await ws.send_bytes()` per connection per gift.
             socketio  (c) loadtest/contenders/socketio_server.py: python-socketio AsyncServer on uvicorn,
                       `sio.emit("gift", event, room=R)` per gift.
  source   one process publishing R gifts/s the way the settlement worker does (RoomStore.announce ->
           announce.lua: history XADD + PUBLISH on the room's channel), paced on an absolute schedule (gifts
           that fall due together go in one announce call, as in a worker batch). Each event carries `t0`,
           the source's time.monotonic() just before its announce call (CLOCK_MONOTONIC is one clock for all
           processes of the machine).
           The input path is the same for every contender: the room's Valkey pub/sub channel.
  viewers  --client-procs processes (default: 2, or N/2500 for more), each holding its share of the N
           websocket connections (a lean asyncio client: frames are parsed by hand so the load generator
           leaves as much of the 2 cores as possible to the server). Every connection counts the frames and
           events it receives; every --latency-sample-th connection also records, for each event, receive
           time - t0 = gift -> animation latency (publish, pub/sub, tick wait, fan-out, client read).

Per point (contender, N, R): start the server, open a room (hub: POST /v1/rooms with a creator token), warm
it with a few connections, read RSS (0 connections), connect and join N viewers, read RSS (N idle), start
the source, skip --warmup-s, then measure for --window-s: the server's CPU time (user + system) over the
window, and what the viewers received inside it. A contender that cannot keep up is measured over the same
window: its backlog (gifts sent before the window's end x N - events received by then) and latency are
reported as they are.

Figures per point:
  frames/s, events/s   delivered to all sockets together, inside the window
  cpu_us/event         server CPU time in the window / events received by all sockets in the window
  p50/p99/max ms       gift -> animation latency of the events received in the window
  rss KiB/conn         (RSS after the window with N connections - RSS with 0 connections) / N
  backlog_s            undelivered events at the window's end per connection / R: how far behind it is
  ticks_kept           frames/s / the frames/s of a server that keeps its tick (coalescing servers) or sends
                       every gift (naive, socketio). Below 1 the server fell behind and coalesces more per
                       frame, which lowers its CPU per event: compare cpu_us/event only between points that
                       kept their ticks (cpu_us/frame is printed too).
  others               cores used by processes that are not this benchmark's during the window (the machine is
                       shared: every figure above assumes it is near 0; a point waits up to --quiet-wait-s for it)
  vs_X                 hub cpu_us/event / X's cpu_us/event (lower is better for the hub)

The default plan covers both target points: every contender at --conns 2000 and --rate 500 (the vs_* ratios
and p99_ms), the hub at each --sweep N for the latency-vs-connections figure, and the hub at --big-conns
10000 (with --big-rate gifts/s, default 1: at 500 gifts/s 10,000 sockets would need 200,000 frames/s, far
beyond one process on this 2-core machine and its load generator) for rss_kib_per_conn. The last line is one
parseable summary:

    RESULT fanout conns=2000 rate=500 tick_ms=50 cpu_us_per_event=... vs_raw=... vs_naive=... vs_socketio=...
           p99_ms=... rss_kib_per_conn=... rss_conns=10000

With --repeat K every point runs K times (rounds interleave the contenders) and each figure is the median.
Exit status: 0 when every point ran, 1 when a point failed (servers that would not start, viewers that
could not connect), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import contextlib
import ctypes
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import random
import re
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
from websockets.frames import apply_mask

REPO = Path(__file__).resolve().parent.parent
CORES = os.cpu_count() or 1
CONTENDERS = ("hub", "raw", "naive", "socketio", "hub-alt", "hub-match")
DEFAULT_CONTENDERS = ("hub", "raw", "naive", "socketio")
COLORS = {"hub": "#2b7bba", "hub-alt": "#2ca02c", "hub-match": "#d62728", "raw": "#555555", "naive": "#999999",
          "socketio": "#bbbbbb"}  # fmt: skip
# `gifting serve`; hub-alt imports gifting from --alt-hub-path first (A/B a change); hub-match is the hub while
# the room plays a match: every gift also makes a `match_score`, announced with it, as the worker does.
HUBS = ("hub", "hub-alt", "hub-match")
CONTENDER_MODULES = {
    "raw": "loadtest.contenders.raw",
    "naive": "loadtest.contenders.naive",
    "socketio": "loadtest.contenders.socketio_server",
}
SECRET = "bench-fanout-secret-" + "x" * 32
WS_PATH = "/v1/ws"
SOCKETIO_PATH = "/socket.io/?EIO=4&transport=websocket"
# Handshakes + joins in flight, all viewer processes together. The hub's Redis pool (redis-py's default, 100
# connections, raising when exhausted) fails a join when about 100 are in flight at once.
CONNECTS_IN_FLIGHT = 48
CONNECT_TIMEOUT_S = 300.0  # all viewers of a point connected and joined within this
JOIN_TIMEOUT_S = 30.0  # one connection: handshake + join answered
SERVER_START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
WARM_CONNS = 20
REPORT_GRACE_S = 0.3  # viewers report this long after the window (their last reads are done)
CONNS_PER_CLIENT_PROC = 2500
LATENCY_CONNS = 200  # connections that record latency (every N/200-th), by default
QUEUE_BYTES_MAX = 1 << 30  # hub: let nobody be cut off as a slow consumer during a measurement
T0_PATTERN = re.compile(rb'"t0":([0-9.]+)')
_PR_SET_PDEATHSIG = 1

# Targets from the issue (this machine kind: 2 cores, loopback; the load generator shares it).
TARGET_VS_RAW = 1.3
TARGET_VS_NAIVE = 0.33
TARGET_VS_SOCKETIO = 0.33
TARGET_P99_MS = 150.0
TARGET_RSS_KIB_PER_CONN = 25.0


def die_with_parent() -> None:
    """This process gets SIGTERM when its parent dies: a killed benchmark leaves no orphans."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Viewers: a lean websocket client --------------------------------------------------------------------------


@dataclass
class Window:
    start: float = math.inf  # time.monotonic()
    end: float = math.inf


@dataclass
class ViewerStats:
    frames: int = 0  # data frames received inside the window
    events: int = 0  # events in them
    bytes: int = 0
    events_before_end: int = 0  # every event received before the window's end (for the backlog)
    closed_by_server: int = 0
    close_codes: dict[int, int] = field(default_factory=dict)
    latencies_ms: array.array[float] = field(default_factory=lambda: array.array("d"))


MERGED_PATTERN = re.compile(rb'"merged":(\d+)')
SUMMARY_PATTERN = re.compile(rb'"kind":"tick_summary","gifts":(\d+)')
READ_BUFFER_BYTES = 256 * 1024


def gifts_beyond_entries(data: bytearray, start: int, end: int) -> int:
    """The hub's viewers' frames merge cheap combo gifts (`merged`: how many gift messages one entry stands for)
    and summarise what does not fit in a frame (`tick_summary`, without t0): the gifts a frame carries beyond
    its entries with a t0."""
    extra = 0
    if data.find(b'"merged":', start, end) >= 0:
        extra += sum(int(k) - 1 for k in MERGED_PATTERN.findall(data, start, end))
    if data.find(b'"tick_summary"', start, end) >= 0:
        found = SUMMARY_PATTERN.findall(data, start, end)
        if found:
            extra += sum(int(k) for k in found)
        else:  # another key order: decode the frame
            message = orjson.loads(bytes(data[start:end]))
            extra += sum(int(e.get("gifts", 0)) for e in message.get("events", []) if e.get("kind") == "tick_summary")
    return extra


class Viewer(asyncio.BufferedProtocol):
    """One websocket connection: handshake, join, then count what arrives. Frames are parsed here by hand, in
    place in one preallocated read buffer (server frames are unmasked; the client's own frames are masked, as
    RFC 6455 requires): the load generator shares the 2 cores with the server, so it must be cheap."""

    def __init__(
        self, host: str, port: int, path: str, room: str, socketio: bool, sample: bool, stats: ViewerStats, win: Window
    ) -> None:
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            + ("" if socketio else "Sec-WebSocket-Protocol: gifting.v1.json\r\n")
            + "\r\n"
        ).encode()
        self.room = room
        self.socketio = socketio
        self.sample = sample
        self.stats = stats
        self.win = win
        self.transport: asyncio.Transport | None = None
        self.handshaking = True
        self.joined = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buffer = bytearray(READ_BUFFER_BYTES)
        self.filled = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost before joining: {exc}"))

    def send(self, payload: bytes, opcode: int = 0x1) -> None:
        assert self.transport is not None
        mask = random.randbytes(4)
        n = len(payload)
        # Client frames here are short: a 7-bit or 16-bit length.
        header = bytes((0x80 | opcode, 0x80 | n)) if n < 126 else bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
        self.transport.write(header + mask + apply_mask(payload, mask))

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.filled == len(self.buffer):  # one frame larger than the buffer: make room
            self.buffer.extend(bytes(len(self.buffer)))
        return memoryview(self.buffer)[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self.filled += nbytes
        data = self.buffer
        pos = 0
        if self.handshaking:
            end = data.find(b"\r\n\r\n", 0, self.filled)
            if end < 0:
                return
            status = bytes(data[: data.find(b"\r\n")])
            if b" 101 " not in status:
                self._fail(f"handshake refused: {status.decode('latin-1')}")
                return
            self.handshaking, pos = False, end + 4
            if not self.socketio:
                self.send(b'{"type":"join","room":"' + self.room.encode() + b'"}')
        pos = self._frames(data, pos, self.filled)
        if pos:  # keep the partial frame at the front (the buffer is never resized while the loop holds a view)
            rest = self.filled - pos
            if rest:
                data[:rest] = data[pos : self.filled]
            self.filled = rest

    def _frames(self, data: bytearray, pos: int, n: int) -> int:
        """Handle every whole frame in data[pos:n]; returns where the first incomplete one starts."""
        now = time.monotonic()
        win, stats = self.win, self.stats
        while n - pos >= 2:
            length, start = data[pos + 1] & 0x7F, pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length, start = int.from_bytes(data[pos + 2 : pos + 4], "big"), pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, start = int.from_bytes(data[pos + 2 : pos + 10], "big"), pos + 10
            end = start + length
            if end > n:
                break
            opcode = data[pos] & 0x0F
            if opcode in (0x1, 0x2):
                if not self.joined:
                    self._setup(bytes(data[start:end]))
                elif self.socketio and length == 1:
                    if data[start] == 0x32:  # engine.io ping "2" -> pong "3"
                        self.send(b"3")
                elif now < win.end:
                    if self.sample:
                        t0s = T0_PATTERN.findall(data, start, end)
                        events = len(t0s)
                        if now >= win.start:
                            stats.latencies_ms.extend([(now - float(t)) * 1000.0 for t in t0s])
                    else:
                        events = data.count(b'"t0"', start, end)
                    if not self.socketio:
                        events += gifts_beyond_entries(data, start, end)
                    stats.events_before_end += events
                    if now >= win.start:
                        stats.frames += 1
                        stats.events += events
                        stats.bytes += end - pos
            elif opcode == 0x9:  # ping -> pong
                self.send(bytes(data[start:end]), 0xA)
            elif opcode == 0x8:
                code = int.from_bytes(data[start : start + 2], "big") if length >= 2 else 1005
                stats.closed_by_server += 1
                stats.close_codes[code] = stats.close_codes.get(code, 0) + 1
                with contextlib.suppress(Exception):
                    self.send(bytes(data[start : start + 2]), 0x8)
                self._fail(f"closed by the server with {code}")
                return n
            pos = end
        return pos

    def _setup(self, message: bytes) -> None:
        """Messages before `joined`: gifting JSON (welcome, joined) or engine.io/socket.io packets."""
        if not self.socketio:
            if b'"joined"' in message:
                self._joined()
            elif b'"error"' in message:
                self._fail(f"join refused: {message[:200]!r}")
            return
        if message.startswith(b"0{"):  # engine.io open -> socket.io connect to the default namespace
            self.send(b"40")
        elif message.startswith(b"40"):  # connected -> join the room
            self.send(b'42["join","' + self.room.encode() + b'"]')
        elif message.startswith(b'42["joined"'):
            self._joined()
        elif message == b"2":
            self.send(b"3")

    def _joined(self) -> None:
        self.joined = True
        if not self.ready.done():
            self.ready.set_result(None)

    def _fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.close()


@dataclass
class ViewerSpec:
    host: str
    port: int
    room: str
    contender: str
    first: int  # index of this process's first connection (user ids, sampling)
    count: int
    latency_sample: int
    in_flight: int = CONNECTS_IN_FLIGHT


async def _open_viewers(spec: ViewerSpec, stats: ViewerStats, win: Window) -> tuple[list[asyncio.Transport], list[str]]:
    from gifting import auth

    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(spec.in_flight)
    socketio = spec.contender == "socketio"
    transports: list[asyncio.Transport] = []
    errors: list[str] = []

    async def one(i: int) -> None:
        if socketio:
            path = SOCKETIO_PATH
        elif spec.contender in HUBS:
            path = f"{WS_PATH}?token={auth.mint(SECRET, f'v{i}', 'viewer', f'Viewer {i}', 86400)}"
        else:
            path = WS_PATH
        sample = spec.latency_sample > 0 and i % spec.latency_sample == 0
        async with gate:
            try:
                transport, viewer = await loop.create_connection(
                    lambda: Viewer(spec.host, spec.port, path, spec.room, socketio, sample, stats, win),
                    spec.host,
                    spec.port,
                )
                transports.append(transport)
                await asyncio.wait_for(viewer.ready, JOIN_TIMEOUT_S)
            except (OSError, ConnectionError, TimeoutError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(one(i) for i in range(spec.first, spec.first + spec.count)))
    return transports, errors


def viewer_process(pipe: multiprocessing.connection.Connection, spec: ViewerSpec) -> None:
    """A viewer process: connect its share, say ("ready", ...), take ("window", start, end), report ("stats",
    ...) after the window, and close everything on ("stop",) (or when the parent goes away)."""
    die_with_parent()
    raise_nofile_limit()

    async def run() -> None:
        stats, win = ViewerStats(), Window()
        started = time.monotonic()
        transports, errors = await _open_viewers(spec, stats, win)
        pipe.send(("ready", spec.count - len(errors), errors[:5], time.monotonic() - started))
        reported = False
        try:
            while True:
                if pipe.poll():
                    message = pipe.recv()
                    if message[0] == "window":
                        win.start, win.end = message[1], message[2]
                    elif message[0] == "stop":
                        return
                if not reported and time.monotonic() > win.end + REPORT_GRACE_S:
                    reported = True
                    pipe.send(("stats", stats, process_cpu_s()))
                await asyncio.sleep(0.02)
        finally:
            for transport in transports:
                transport.abort()

    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError, EOFError):
        asyncio.run(run())


def process_cpu_s(pid: int | None = None) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


# The gift source -------------------------------------------------------------------------------------------


@dataclass
class SourceSpec:
    redis_url: str
    room: str
    rate: float
    senders: int
    start: float  # time.monotonic()
    stop: float
    match: str = ""  # the room plays this match: each gift is followed by its match_score (no t0: not counted)


def source_process(pipe: multiprocessing.connection.Connection, spec: SourceSpec) -> None:
    """Publish gifts at `rate` per second from `start` to `stop` exactly as the settlement worker announces them;
    send back the t0 of every gift."""
    die_with_parent()

    async def run() -> array.array[float]:
        from gifting.app import redis_client
        from gifting.config import Settings
        from gifting.rooms.store import RoomStore

        redis = redis_client(spec.redis_url)
        rooms = RoomStore(redis, Settings.from_env({}))
        sent = array.array("d")
        calls = 0
        points = [0, 0]
        scores: list[tuple[str, dict[str, Any]]] = []
        try:
            await redis.ping()
            await asyncio.sleep(max(0.0, spec.start - time.monotonic()))
            while True:
                now = time.monotonic()
                if now >= spec.stop:
                    break
                due = int((now - spec.start) * spec.rate) + 1 - len(sent)
                if due <= 0:
                    next_at = spec.start + len(sent) / spec.rate
                    await asyncio.sleep(max(0.0, min(next_at - now, spec.stop - now)))
                    continue
                ms = int(time.time() * 1000)
                t0 = time.monotonic()
                batch = []
                for k in range(due):
                    gift_id = str(uuid.uuid4())
                    n = len(sent) + k
                    event = {
                        "kind": "gift",
                        "gift_id": gift_id,
                        "gift": "rose",
                        "count": 1,
                        "coins": 1,
                        "diamonds": 0,
                        "sender": f"u{n % spec.senders}",
                        "sender_name": f"User {n % spec.senders}",
                        "level": 1,
                        "ts": ms,
                        "t0": t0,
                    }
                    batch.append((f"gift:{gift_id}", event))
                    if spec.match:
                        points[n % 2] += 1
                        score = {"kind": "match_score", "match": spec.match, "gift_id": gift_id, "side": "ab"[n % 2],
                                 "points_a": points[0], "points_b": points[1]}  # fmt: skip
                        scores.append((f"match:{spec.match}:{gift_id}", score))
                # The worker announces a batch's gifts, then the scores they made, in one call.
                batch, scores = batch + scores, []
                await rooms.announce(spec.room, batch)
                calls += 1
                sent.extend([t0] * due)
        finally:
            await redis.aclose()
        return sent, calls

    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        sent, calls = asyncio.run(run())
        pipe.send(("sent", sent, calls, process_cpu_s()))


# Servers ----------------------------------------------------------------------------------------------------


class Server:
    """The contender under test, in its own process."""

    def __init__(self, contender: str, redis_url: str, room: str, tick_ms: int, workdir: Path, hub_path: str) -> None:
        self.contender = contender
        self.port = free_port()
        self.log_path = workdir / f"{contender}-{self.port}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        first = hub_path if contender == "hub-alt" else ""
        env["PYTHONPATH"] = os.pathsep.join(p for p in (first, str(REPO), env.get("PYTHONPATH", "")) if p)
        if contender in HUBS:
            command = [sys.executable, "-m", "gifting.cli", "serve"]
            env.update(
                {
                    "REDIS_URL": redis_url,
                    "GIFTING_SECRET": SECRET,
                    "GIFTING_HOST": "127.0.0.1",
                    "GIFTING_PORT": str(self.port),
                    "GIFTING_DATA_DIR": str(workdir / "hub-data"),
                    "GIFTING_TICK_MS": str(tick_ms),
                    "GIFTING_WS_QUEUE_BYTES_MAX": str(QUEUE_BYTES_MAX),
                    "GIFTING_CONNECTIONS_MAX": "0",  # thousands of sockets from one loopback address
                    "GIFTING_CONNECTIONS_PER_ADDRESS_MAX": "0",
                    # Every point opens its room as the same creator, on a Valkey that keeps earlier rooms live.
                    "GIFTING_LIVE_ROOMS_PER_CREATOR_MAX": "1000000",
                }
            )
        else:
            command = [sys.executable, "-m", CONTENDER_MODULES[contender], "--port", str(self.port)]
            command += ["--redis-url", redis_url, "--room", room, "--tick-ms", str(tick_ms)]
        with open(self.log_path, "wb") as log:
            # `python -m` puts the working directory first on sys.path: hub-alt runs in its own tree.
            self.process = subprocess.Popen(
                command, env=env, cwd=first or REPO, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )
        self.ps = psutil.Process(self.process.pid)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.contender} exited with {self.process.returncode}; see {self.log_path}")
            try:
                if self.contender in HUBS:
                    with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=2) as response:
                        if response.status == 200:
                            return
                else:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.contender} did not listen within {SERVER_START_TIMEOUT_S} s; see {self.log_path}")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss_bytes(self) -> int:
        return int(self.ps.memory_info().rss)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def open_room_http(server: Server) -> str:
    """The hub's room, opened through the HTTP API with a creator's token."""
    from gifting import auth

    token = auth.mint(SECRET, "bench_creator", "creator", "Bench Creator", 86400)
    request = urllib.request.Request(
        f"{server.base_url}/v1/rooms",
        data=json.dumps({"title": "fan-out benchmark"}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        room: str = json.loads(response.read())["room"]
    return room


def open_room_direct(redis_url: str) -> str:
    """A room for a contender (no HTTP API there): opened in Valkey exactly as the API opens one."""
    from gifting.app import redis_client
    from gifting.config import Settings
    from gifting.rooms.store import RoomStore

    async def run() -> str:
        redis = redis_client(redis_url)
        try:
            # Every contender opens its room as the same creator, on a Valkey that may keep earlier rooms live.
            settings = Settings.from_env({}, live_rooms_per_creator_max=1_000_000)
            info = await RoomStore(redis, settings).open("bench_creator", "Bench Creator", "fan-out benchmark")
        finally:
            await redis.aclose()
        return info.room

    return asyncio.run(run())


def warm(server: Server, room: str, count: int) -> None:
    """A few connections that join and leave, so lazily built state is there before the 0-connection RSS."""
    spec = ViewerSpec("127.0.0.1", server.port, room, server.contender, 10**6, count, 0)

    async def run() -> None:
        transports, errors = await _open_viewers(spec, ViewerStats(), Window())
        for transport in transports:
            transport.close()
        if errors:
            raise RuntimeError(f"warm-up connections failed: {errors[:3]}")
        await asyncio.sleep(0.3)

    asyncio.run(run())


# One point ------------------------------------------------------------------------------------------------


@dataclass
class Point:
    contender: str
    conns: int
    rate: float
    tick_ms: int
    window_s: float
    connected: int = 0
    connect_s: float = 0.0
    frames_per_s: float = 0.0
    ticks_kept: float = 0.0  # frames/s / (N x non-empty ticks/s at this rate): below 1, the server's tick slipped
    events_per_s: float = 0.0
    mbytes_per_s: float = 0.0
    cpu_us_per_event: float = 0.0
    cpu_us_per_frame: float = 0.0
    bytes_per_frame: float = 0.0
    cpu_share: float = 0.0  # server CPU time / window (1.0 = one core)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    latency_samples: int = 0
    rss_base_mib: float = 0.0
    rss_idle_kib_per_conn: float = 0.0
    rss_kib_per_conn: float = 0.0
    gifts_sent_in_window: int = 0
    delivered_ratio: float = 0.0  # events received in the window / (gifts sent in the window x N)
    backlog_events: int = 0
    backlog_s: float = 0.0
    closed_by_server: int = 0
    viewers_cpu_share: float = 0.0
    source_cpu_share: float = 0.0
    valkey_cpu_share: float = 0.0
    source_calls: int = 0  # announce calls (gifts due together go in one call)
    machine_busy: float = 0.0  # all processes, share of the whole machine (1.0 = every core busy)
    other_cores: float = 0.0  # cores busy with processes not of this benchmark during the window
    error: str = ""


def run_point(
    contender: str,
    conns: int,
    rate: float,
    args: argparse.Namespace,
    valkey: psutil.Process,
    redis_url: str,
    workdir: Path,
) -> Point:
    point = Point(contender, conns, rate, args.tick_ms, args.window_s)
    ctx = multiprocessing.get_context("spawn")
    server: Server | None = None
    viewers: list[tuple[multiprocessing.process.BaseProcess, multiprocessing.connection.Connection]] = []
    source: tuple[multiprocessing.process.BaseProcess, multiprocessing.connection.Connection] | None = None
    profiler: subprocess.Popen[bytes] | None = None
    try:
        room = "" if contender in HUBS else open_room_direct(redis_url)
        server = Server(contender, redis_url, room, args.tick_ms, workdir, args.alt_hub_path)
        server.wait_ready()
        if contender in HUBS:
            room = open_room_http(server)
        warm(server, room, WARM_CONNS)
        time.sleep(0.5)
        rss_base = server.rss_bytes()
        point.rss_base_mib = rss_base / 2**20

        procs = args.client_procs or max(2, math.ceil(conns / CONNS_PER_CLIENT_PROC))
        sample = args.latency_sample or max(1, conns // LATENCY_CONNS)
        started = time.monotonic()
        for k in range(procs):
            first, count = conns * k // procs, conns * (k + 1) // procs - conns * k // procs
            spec = ViewerSpec(
                "127.0.0.1", server.port, room, contender, first, count, sample, max(4, CONNECTS_IN_FLIGHT // procs)
            )
            parent_end, child_end = ctx.Pipe()
            process = ctx.Process(target=viewer_process, args=(child_end, spec), daemon=True)
            process.start()
            viewers.append((process, parent_end))
        errors: list[str] = []
        for _, pipe in viewers:
            if not pipe.poll(CONNECT_TIMEOUT_S):
                raise RuntimeError(f"viewers did not connect within {CONNECT_TIMEOUT_S} s")
            _, connected, errs, _ = pipe.recv()
            point.connected += connected
            errors += errs
        point.connect_s = time.monotonic() - started
        if point.connected < conns:
            raise RuntimeError(f"only {point.connected} of {conns} viewers joined: {errors[:3]}")
        time.sleep(1.0)
        point.rss_idle_kib_per_conn = (server.rss_bytes() - rss_base) / 1024 / conns

        match_id = uuid.uuid4().hex if contender == "hub-match" else ""
        now = time.monotonic()
        src_start = now + 0.3
        win_start = src_start + args.warmup_s
        win_end = win_start + args.window_s
        for _, pipe in viewers:
            pipe.send(("window", win_start, win_end))
        parent_end, child_end = ctx.Pipe()
        process = ctx.Process(
            target=source_process,
            args=(child_end, SourceSpec(redis_url, room, rate, args.senders, src_start, win_end, match_id)),
            daemon=True,
        )
        process.start()
        source = (process, parent_end)

        time.sleep(max(0.0, win_start - time.monotonic()))
        cpu0, machine0, t0 = server.cpu_s(), psutil.cpu_times(), time.monotonic()
        viewer_cpu0 = sum(process_cpu_s(p.pid) for p, _ in viewers)
        valkey_cpu0, me0 = process_cpu_s(valkey.pid), process_cpu_s()
        if args.profile and contender in args.profile_contenders and conns == args.conns and rate == args.rate:
            profiler = start_profiler(server, args, workdir)
        time.sleep(max(0.0, win_end - time.monotonic()))
        cpu1, machine1, t1 = server.cpu_s(), psutil.cpu_times(), time.monotonic()
        viewer_cpu1 = sum(process_cpu_s(p.pid) for p, _ in viewers)
        valkey_cpu1, me1 = process_cpu_s(valkey.pid), process_cpu_s()
        point.rss_kib_per_conn = (server.rss_bytes() - rss_base) / 1024 / conns

        stats: list[ViewerStats] = []
        for _, pipe in viewers:
            if not pipe.poll(30):
                raise RuntimeError("a viewer process did not report")
            _, one, _ = pipe.recv()
            stats.append(one)
        if not source[1].poll(30):
            raise RuntimeError("the gift source did not report")
        _, sent, point.source_calls, source_cpu = source[1].recv()
        if profiler is not None:
            finish_profiler(profiler, args, contender, workdir)
            profiler = None

        elapsed = t1 - t0
        frames = sum(s.frames for s in stats)
        events = sum(s.events for s in stats)
        point.frames_per_s = frames / elapsed
        tick_s = args.tick_ms / 1000
        point.ticks_kept = point.frames_per_s / (conns * nominal_frames_per_conn(contender, rate, tick_s))
        point.events_per_s = events / elapsed
        point.mbytes_per_s = sum(s.bytes for s in stats) / elapsed / 1e6
        point.cpu_share = (cpu1 - cpu0) / elapsed
        point.cpu_us_per_event = (cpu1 - cpu0) * 1e6 / events if events else math.inf
        point.cpu_us_per_frame = (cpu1 - cpu0) * 1e6 / frames if frames else math.inf
        point.bytes_per_frame = sum(s.bytes for s in stats) / frames if frames else math.inf
        latencies = sorted(x for s in stats for x in s.latencies_ms)
        point.latency_samples = len(latencies)
        if latencies:
            point.p50_ms = percentile(latencies, 50)
            point.p99_ms = percentile(latencies, 99)
            point.max_ms = latencies[-1]
        in_window = sum(1 for t in sent if win_start <= t < win_end)
        point.gifts_sent_in_window = in_window
        point.delivered_ratio = events / (in_window * conns) if in_window else 0.0
        sent_before_end = sum(1 for t in sent if t < win_end)
        point.backlog_events = max(0, sent_before_end * conns - sum(s.events_before_end for s in stats))
        point.backlog_s = point.backlog_events / conns / rate
        point.closed_by_server = sum(s.closed_by_server for s in stats)
        point.viewers_cpu_share = (viewer_cpu1 - viewer_cpu0) / elapsed
        point.source_cpu_share = source_cpu / (win_end - src_start)
        point.valkey_cpu_share = (valkey_cpu1 - valkey_cpu0) / elapsed
        point.machine_busy = busy_share(machine0, machine1)
        ours = point.cpu_share + point.viewers_cpu_share + point.source_cpu_share + point.valkey_cpu_share
        ours += (me1 - me0) / elapsed
        point.other_cores = max(0.0, point.machine_busy * CORES - ours)
    except Exception as exc:
        point.error = f"{type(exc).__name__}: {exc}"
    finally:
        if profiler is not None:
            with contextlib.suppress(Exception):
                profiler.kill()
                profiler.wait(5)
        if source is not None:
            stop_child(*source)
        for _, pipe in viewers:
            with contextlib.suppress(Exception):
                pipe.send(("stop",))
        for process, pipe in viewers:
            stop_child(process, pipe)
        if server is not None:
            server.stop()
    return point


def busy_share(before: Any, after: Any) -> float:
    """Share of the machine busy between two psutil.cpu_times() readings (1.0: every core busy)."""
    fields = ("user", "system", "nice", "irq", "softirq", "steal")
    busy = sum(getattr(after, f) - getattr(before, f) for f in fields)
    total = sum(after) - sum(before)
    return float(busy / total) if total else 0.0


def wait_for_quiet(args: argparse.Namespace, own: list[psutil.Process]) -> float:
    """Cores used by processes that are not this benchmark's, over one second; while that is above
    --quiet-cores, wait (at most --quiet-wait-s): other work on the 2 cores skews every figure."""
    deadline = time.monotonic() + args.quiet_wait_s
    while True:
        before, own_before = psutil.cpu_times(), sum(process_cpu_s(p.pid) for p in own)
        time.sleep(1.0)
        other = busy_share(before, psutil.cpu_times()) * CORES
        other -= sum(process_cpu_s(p.pid) for p in own) - own_before
        if other <= args.quiet_cores or time.monotonic() > deadline:
            return max(0.0, other)
        print(f"  (other processes use {other:.2f} cores; waiting for a quieter machine)", flush=True)


def stop_child(process: multiprocessing.process.BaseProcess, pipe: multiprocessing.connection.Connection) -> None:
    process.join(10)
    if process.is_alive():
        process.terminate()
        process.join(5)
    if process.is_alive():
        process.kill()
        process.join()
    pipe.close()


def nominal_frames_per_conn(contender: str, rate: float, tick_s: float) -> float:
    """Frames per second one connection gets when the server keeps up: one per gift for naive and socketio;
    one per non-empty tick for the coalescing servers (gifts arriving at random: 1 - e^(-R x tick) of the ticks
    have one)."""
    if contender in ("naive", "socketio"):
        return rate
    return (1 - math.exp(-rate * tick_s)) / tick_s


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return math.nan
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


# Profiling -------------------------------------------------------------------------------------------------


def start_profiler(server: Server, args: argparse.Namespace, workdir: Path) -> subprocess.Popen[bytes] | None:
    """py-spy record on the server for the measurement window (sampling, --nonblocking: the server is not
    stopped to be sampled, its CPU figure stays honest)."""
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        print("  (--profile: py-spy is not installed: pip install py-spy)", flush=True)
        return None
    out = Path(args.profile) / f"{server.contender}.collapsed.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [str(exe), "record", "--nonblocking", "--format", "raw", "-r", "200", "-o", str(out)]
    command += ["-d", str(max(1, int(args.window_s - 1))), "-p", str(server.process.pid)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)


def finish_profiler(profiler: subprocess.Popen[bytes], args: argparse.Namespace, contender: str, workdir: Path) -> None:
    try:
        profiler.wait(30)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait()
    path = Path(args.profile) / f"{contender}.collapsed.txt"
    if path.exists():
        print(f"  profile of {contender}: {path}", flush=True)
        for line in summarize_profile(path, 15):
            print("    " + line, flush=True)


def summarize_profile(path: Path, top: int) -> list[str]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [re.sub(r" \(.*?/(site-packages|lib/python3\.\d+|main)/", " (", f) for f in stack.split(";")]
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        return ["(no samples)"]
    lines = [f"{total} samples; self% incl%  function"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * count / total:5.1f} {100 * inclusive[frame] / total:5.1f}  {frame}")
    return lines


# The plan, the report --------------------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[tuple[str, int, float]]:
    """Every point, once per round: the target point for each contender, then the hub sweep, then the big one."""
    points: list[tuple[str, int, float]] = [(c, args.conns, args.rate) for c in args.contenders]
    for contender in args.sweep_contenders:
        for conns in args.sweep:
            if (contender, conns, args.rate) not in points:
                points.append((contender, conns, args.rate))
    if args.big_conns:
        points += [(contender, args.big_conns, args.big_rate) for contender in args.big_contenders]
    return points


NUMERIC = [f for f in Point.__dataclass_fields__ if f not in ("contender", "conns", "rate", "tick_ms", "error")]


def median_point(runs: list[Point]) -> Point:
    good = [r for r in runs if not r.error] or runs
    merged = Point(good[0].contender, good[0].conns, good[0].rate, good[0].tick_ms, good[0].window_s)
    for name in NUMERIC:
        values = [getattr(r, name) for r in good]
        value = statistics.median(values)
        setattr(merged, name, type(getattr(good[0], name))(value))
    merged.error = "; ".join(sorted({r.error for r in runs if r.error}))
    return merged


def fmt(value: float, digits: int = 2) -> str:
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def print_point(p: Point, prefix: str = "") -> None:
    if p.error and not p.events_per_s:
        print(f"{prefix}{p.contender:8s} N={p.conns:<6d} R={p.rate:<6g} FAILED: {p.error}", flush=True)
        return
    print(
        f"{prefix}{p.contender:8s} N={p.conns:<6d} R={p.rate:<6g} frames/s={p.frames_per_s:9.0f} "
        f"events/s={p.events_per_s:10.0f} cpu_us/event={fmt(p.cpu_us_per_event, 3):>7s} "
        f"cpu_us/frame={fmt(p.cpu_us_per_frame, 1):>6s} cpu={p.cpu_share:4.2f} "
        f"p50/p99/max_ms={fmt(p.p50_ms, 1)}/{fmt(p.p99_ms, 1)}/{fmt(p.max_ms, 1)} "
        f"rss_kib/conn={p.rss_kib_per_conn:5.1f} (idle {p.rss_idle_kib_per_conn:4.1f}) ticks_kept={p.ticks_kept:4.2f} "
        f"delivered={p.delivered_ratio:5.3f} backlog_s={p.backlog_s:6.2f} "
        f"viewers_cpu={p.viewers_cpu_share:4.2f} busy={p.machine_busy:4.2f} others={p.other_cores:4.2f}"
        + (f" closed={p.closed_by_server}" if p.closed_by_server else "")
        + (f" ERROR {p.error}" if p.error else ""),
        flush=True,
    )


def table(points: list[Point]) -> str:
    header = (
        "| contender | N | gifts/s | frames/s | events/s | server CPU (cores) | CPU us/event | CPU us/frame | "
        "p50 ms | p99 ms | max ms | RSS KiB/conn | ticks kept | delivered | backlog s | others (cores) |"
    )
    rows = [header, "|" + " --- |" * 16]
    for p in points:
        rows.append(
            f"| {p.contender} | {p.conns} | {p.rate:g} | {p.frames_per_s:,.0f} | {p.events_per_s:,.0f} | "
            f"{p.cpu_share:.2f} | {fmt(p.cpu_us_per_event, 3)} | {fmt(p.cpu_us_per_frame, 1)} | "
            f"{fmt(p.p50_ms, 1)} | {fmt(p.p99_ms, 1)} | "
            f"{fmt(p.max_ms, 1)} | {p.rss_kib_per_conn:.1f} | {p.ticks_kept:.2f} | {p.delivered_ratio:.3f} | "
            f"{p.backlog_s:.2f} | {p.other_cores:.2f} |"
        )
    return "\n".join(rows)


def plots(points: list[Point], directory: Path, args: argparse.Namespace) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    # Latency percentiles against connections (the hub, and the other sweep contenders), at --rate.
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for contender in args.sweep_contenders:
        sweep = sorted(
            (p for p in points if p.contender == contender and p.rate == args.rate and not p.error),
            key=lambda p: p.conns,
        )
        if not sweep:
            continue
        xs = [p.conns for p in sweep]
        color = COLORS.get(contender, "black")
        for name, style in (("p50_ms", ":"), ("p99_ms", "-"), ("max_ms", "--")):
            ys = [getattr(p, name) for p in sweep]
            ax.plot(xs, ys, style, color=color, marker="o", markersize=4, label=f"{contender} {name[:-3]}")
    big = [p for p in points if p.conns == args.big_conns and p.rate == args.big_rate and not p.error]
    for p in big if args.big_rate != args.rate else []:
        for name, marker in (("p50_ms", "v"), ("p99_ms", "s"), ("max_ms", "^")):
            ax.plot([p.conns], [getattr(p, name)], marker, color=COLORS.get(p.contender, "black"), fillstyle="none")
        ax.annotate(
            f"{p.contender}, {p.rate:g} gift/s: p99 {p.p99_ms:,.0f} ms",
            (p.conns, p.p99_ms),
            fontsize=8,
            ha="right",
            va="bottom",
        )
    ax.axhline(TARGET_P99_MS, color="red", linewidth=0.8, label=f"p99 target {TARGET_P99_MS:g} ms")
    ax.set_xlabel("connections in the room")
    ax.set_ylabel("gift -> animation latency (ms)")
    ax.set_title(f"Latency vs connections ({args.rate:g} gifts/s, tick {args.tick_ms} ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = directory / "fanout_latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    # CPU per delivered event for each contender at the target point.
    target = [p for p in points if p.conns == args.conns and p.rate == args.rate and not p.error]
    target.sort(key=lambda p: CONTENDERS.index(p.contender) if p.contender in CONTENDERS else 99)
    if target:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        names = [p.contender for p in target]
        values = [p.cpu_us_per_event for p in target]
        bars = ax.bar(names, values, color=[COLORS.get(n, "#999999") for n in names])
        for bar, p in zip(bars, target, strict=True):
            ax.annotate(
                f"{p.cpu_us_per_event:.2f} us\n{p.events_per_s / 1e3:,.0f}k ev/s",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_yscale("log")
        ax.set_ylim(top=max(values) * 5)
        ax.set_ylabel("server CPU per delivered event (us, log)")
        ax.set_title(f"CPU per delivered event: {args.conns} connections, {args.rate:g} gifts/s")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        fig.tight_layout()
        path = directory / "fanout_cpu_per_event.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def sig(value: float) -> str:
    """Three significant digits ("-" when not measured)."""
    return "-" if math.isnan(value) or math.isinf(value) else f"{value:.3g}"


def ratio(a: Point | None, b: Point | None, figure: str = "cpu_us_per_event") -> float:
    if a is None or b is None or a.error or b.error:
        return math.nan
    over, under = float(getattr(a, figure)), float(getattr(b, figure))
    return math.nan if not under or math.isinf(under) else over / under


def parse_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_fanout", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conns", type=int, default=2000, help="N of the target point (default 2000)")
    parser.add_argument("--rate", type=float, default=500.0, help="R of the target point, gifts/s (default 500)")
    parser.add_argument("--tick-ms", type=int, default=50, help="hub and raw tick, ms (default 50: the hub default)")
    parser.add_argument(
        "--contenders", default=",".join(DEFAULT_CONTENDERS), help="at the target point (default: all but hub-alt)"
    )
    parser.add_argument("--sweep", default="250,500,1000", help="more N for the latency plot, at --rate ('' none)")
    parser.add_argument("--sweep-contenders", default="hub", help="who runs the sweep (default hub)")
    parser.add_argument("--big-conns", type=int, default=10000, help="the RSS point's N (default 10000; 0: none)")
    parser.add_argument("--big-rate", type=float, default=1.0, help="the RSS point's gifts/s (default 1)")
    parser.add_argument("--senders", type=int, default=1000, help="distinct gift senders, round robin (combos)")
    parser.add_argument("--big-contenders", default="hub", help="who runs the RSS point (default hub)")
    parser.add_argument("--window-s", type=float, default=10.0, help="measurement window per point (default 10)")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="gifts flow this long before the window")
    parser.add_argument("--repeat", type=int, default=1, help="run every point K times; figures are medians")
    parser.add_argument("--client-procs", type=int, default=0, help="viewer processes (default: N/2500, >= 2)")
    parser.add_argument(
        "--latency-sample", type=int, default=0, help="latency on every K-th connection (default: N/200, >= 1)"
    )
    parser.add_argument(
        "--alt-hub-path", default="", help="contender hub-alt: `gifting serve` with this directory first on PYTHONPATH"
    )
    parser.add_argument("--profile", default="", help="py-spy the target point's servers into this directory")
    parser.add_argument("--profile-contenders", default="hub", help="whom --profile samples (default hub)")
    parser.add_argument(
        "--quiet-cores", type=float, default=0.25, help="before a point, wait while others use more cores than this"
    )
    parser.add_argument("--quiet-wait-s", type=float, default=5.0, help="... but at most this long (default 5)")
    parser.add_argument("--workdir", default="", help="keep the servers' logs here (default: a temporary directory)")
    parser.add_argument("--json", default="", help="write every run's figures here")
    parser.add_argument("--plots", default="", help="write the PNG plots into this directory")
    parser.add_argument("--replot", default="", help="only redraw --plots from a --json file of an earlier run")
    args = parser.parse_args(argv)
    if args.replot:
        saved = json.loads(Path(args.replot).read_text())
        for name in ("conns", "rate", "tick_ms", "big_conns", "big_rate", "sweep_contenders"):
            setattr(args, name, saved["args"][name])
        for path in plots([Point(**p) for p in saved["medians"]], Path(args.plots or "."), args):
            print(f"plot: {path}")
        return 0
    args.contenders = parse_list(args.contenders)
    args.sweep_contenders = parse_list(args.sweep_contenders)
    args.big_contenders = parse_list(args.big_contenders)
    args.profile_contenders = parse_list(args.profile_contenders)
    args.sweep = [int(x) for x in parse_list(args.sweep)]
    if not set(args.contenders + args.sweep_contenders + args.big_contenders) <= set(CONTENDERS):
        parser.error(f"contenders are {', '.join(CONTENDERS)}")
    if args.conns < 1 or args.rate <= 0 or args.window_s <= 0 or args.repeat < 1 or args.tick_ms < 1:
        parser.error("--conns, --rate, --window-s, --repeat and --tick-ms must be positive")
    if "hub-alt" in args.contenders + args.sweep_contenders + args.big_contenders and not args.alt_hub_path:
        parser.error("hub-alt needs --alt-hub-path")
    if args.alt_hub_path:
        args.alt_hub_path = str(Path(args.alt_hub_path).resolve())

    raise_nofile_limit()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    biggest = max([args.conns, args.big_conns, *args.sweep])
    if soft < biggest + 1000:
        print(f"warning: RLIMIT_NOFILE is {soft}; {biggest} connections need more (ulimit -Hn)", file=sys.stderr)

    from gifting.embedded import EmbeddedValkey

    points = plan(args)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as info:
        cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    print(
        f"fan-out benchmark: {os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}, tick {args.tick_ms} ms, window {args.window_s:g} s, "
        f"{len(points)} points x {args.repeat}",
        flush=True,
    )
    runs: dict[tuple[str, int, float], list[Point]] = {p: [] for p in points}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        valkey = EmbeddedValkey(workdir / "valkey", announce=False)
        try:
            url = valkey.start()
            assert valkey.process is not None
            valkey_ps = psutil.Process(valkey.process.pid)
            for round_ in range(args.repeat):
                for contender, conns, rate in points:
                    other = wait_for_quiet(args, [valkey_ps, psutil.Process()])
                    if other > args.quiet_cores:
                        print(f"  (measuring anyway: other processes use {other:.2f} cores)", flush=True)
                    point = run_point(contender, conns, rate, args, valkey_ps, url, workdir)
                    runs[(contender, conns, rate)].append(point)
                    print_point(point, prefix=f"[{round_ + 1}/{args.repeat} {time.monotonic() - started:5.0f}s] ")
                    if point.error:
                        log = sorted(workdir.glob(f"{contender}-*.log"))
                        if log:
                            tail = log[-1].read_text(errors="replace").splitlines()[-5:]
                            print("    " + "\n    ".join(tail), flush=True)
        finally:
            valkey.stop()

    medians = {key: median_point(value) for key, value in runs.items()}
    print(f"\nmedians of {args.repeat} run(s); total {time.monotonic() - started:.0f} s", flush=True)
    print(table(list(medians.values())), flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": {k: v for k, v in vars(args).items()},
                    "machine": {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version()},
                    "runs": [asdict(p) for value in runs.values() for p in value],
                    "medians": [asdict(p) for p in medians.values()],
                },
                indent=1,
            )
        )
    if args.plots:
        for path in plots(list(medians.values()), Path(args.plots), args):
            print(f"plot: {path}", flush=True)

    def at(contender: str) -> Point | None:
        return medians.get((contender, args.conns, args.rate))

    hub = at("hub")
    big = medians.get(("hub", args.big_conns, args.big_rate)) if args.big_conns else None
    rss_point = big if big is not None and not big.error else hub
    if rss_point is not None and rss_point.error:
        rss_point = None
    vs = {c: ratio(hub, at(c)) for c in ("raw", "naive", "socketio")}
    p99 = hub.p99_ms if hub is not None and not hub.error else math.nan
    summary = {
        "conns": args.conns,
        "rate": f"{args.rate:g}",
        "tick_ms": args.tick_ms,
        "cpu_us_per_event": fmt(hub.cpu_us_per_event, 3) if hub is not None else "-",
        "vs_raw": sig(vs["raw"]),
        "vs_naive": sig(vs["naive"]),
        "vs_socketio": sig(vs["socketio"]),
        "p99_ms": fmt(p99, 1),
        "rss_kib_per_conn": fmt(rss_point.rss_kib_per_conn, 1) if rss_point is not None else "-",
        "rss_conns": rss_point.conns if rss_point is not None else 0,
        "runs": args.repeat,
    }
    checks = [
        ("vs_raw", vs["raw"], TARGET_VS_RAW),
        ("vs_naive", vs["naive"], TARGET_VS_NAIVE),
        ("vs_socketio", vs["socketio"], TARGET_VS_SOCKETIO),
        ("p99_ms", p99, TARGET_P99_MS),
        ("rss_kib_per_conn", rss_point.rss_kib_per_conn if rss_point else math.nan, TARGET_RSS_KIB_PER_CONN),
    ]
    match = at("hub-match")
    if match is not None and hub is not None:
        # The cost of a match's score events: the same gifts, each followed by its match_score, same run.
        per_frame = ratio(match, hub, "cpu_us_per_frame")
        per_gift = ratio(match, hub, "cpu_us_per_event")
        size = ratio(match, hub, "bytes_per_frame")
        print(f"match: cpu_us/frame x{sig(per_frame)}, cpu_us/gift x{sig(per_gift)}, bytes/frame x{sig(size)} "
              "(hub-match / hub)", flush=True)  # fmt: skip
        summary |= {"match_cpu_per_frame": sig(per_frame), "match_bytes_per_frame": sig(size)}
    for name, value, target in checks:
        verdict = "-" if math.isnan(value) else ("met" if value <= target else "MISSED")
        print(f"target {name} <= {target:g}: {sig(value)} {verdict}", flush=True)
    print("RESULT fanout " + " ".join(f"{k}={v}" for k, v in summary.items()), flush=True)
    failed = any(p.error for value in runs.values() for p in value)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
