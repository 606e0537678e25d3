"""The hub: rooms -> connections, per-room tick coalescing, bounded per-connection output, resume by offset.

No HTTP framework here: a connection is an identity plus a way to write bytes and to close.

- Cross-process routing: one pub/sub channel per room, subscribed while this process has sockets in it,
  plus this process's own channel for gift results.
- Coalescing: events of a room are collected for one tick (GIFTING_TICK_MS) and sent as one `events`
  frame, encoded once per audience (creator, viewers) and codec, as a complete websocket frame.
- Output: on the direct path (gifting/live/direct.py) the hub writes that frame's bytes to each connection's
  transport itself, and the transport's write buffer is the connection's queue, bounded in bytes
  (GIFTING_WS_QUEUE_BYTES_MAX). A client that lets it overflow is closed with CLOSE_SLOW_CONSUMER and resumes
  by offset. Per room, the JSON viewers' transports are kept in one dict, so a tick of a big room is one loop
  of `write(frame)`. Without a direct socket (another ASGI server) a connection falls back to ASGI sends from
  a writer task, with the same bound.
- Resume: history offsets are dense, so a join with `since` replays exactly what was missed, or answers
  `recovered: false` with a snapshot. A gap in the live feed (a lost pub/sub connection) is filled from
  history before later events are delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Union

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from gifting import gifts, keys
from gifting.auth import Identity, revoked
from gifting.catalog.store import CatalogStore
from gifting.config import Settings
from gifting.ledger import rules
from gifting.ledger.store import Ledger
from gifting.live import coalesce
from gifting.outage import STORE_ERRORS, STORE_UNAVAILABLE
from gifting.revocations import Revocations
from gifting.rooms.pools import PoolOp, room_pools
from gifting.rooms.store import RoomStore, announced_events, history_events, top_entries
from gifting.wire import framing, protocol
from gifting.wire.messages import (
    CloseCode,
    ComboEnd,
    Error,
    EventKind,
    Events,
    GiftResult,
    Joined,
    Leaderboard,
    PledgeResult,
    Viewers,
)
from gifting.wire.protocol import Codec, ProtocolError

log = logging.getLogger(__name__)

# Close codes (documented in docs/PROTOCOL.md).
CLOSE_UNAUTHORIZED = CloseCode.UNAUTHORIZED
CLOSE_TOO_MANY_INVALID = CloseCode.TOO_MANY_INVALID
CLOSE_SLOW_CONSUMER = CloseCode.SLOW_CONSUMER
CLOSE_TOO_MANY_CONNECTIONS = CloseCode.TOO_MANY_CONNECTIONS
CLOSE_GOING_AWAY = CloseCode.GOING_AWAY
SLOW_CONSUMER_REASON = "slow consumer: outgoing queue full; reconnect and resume with since"

RECOVER_IDS_PER_CALL = 500  # outstanding gift ids looked up per round trip after the pub/sub feed came back
WAITER_TTL_S = 60.0  # a gift result not seen by then is dropped; the client resends the gift_id to learn it
BUCKET_IDLE_S = 120.0  # rate-limit state of a user idle this long is forgotten
MAINTENANCE_INTERVAL_S = 1.0
FALLBACK_CLOSE_S = 5.0  # the fallback's close handshake may wait on a peer that does not read: this long

CloseNow = Callable[[int, str], None]
SendFrame = Callable[[str | bytes], Awaitable[None]]
CloseSocket = Callable[[int, str], Awaitable[None]]
Waiter = Union["Connection", "asyncio.Future[dict[str, Any]]"]


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
        if self.close_now is not None:
            self.close_now(code, reason)
        else:
            assert self.fallback is not None
            self.fallback.shut(code, reason)


_background: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any]) -> None:
    """Run a fire-and-forget task, holding a reference so it is not garbage-collected mid-flight."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


@dataclass(eq=False)
class Room:
    id: str
    creator: str = ""
    conns: set[Connection] = field(default_factory=set)  # everyone in the room: direct | general
    # JSON viewers on a direct socket, past their first tick: a tick writes one frame to all of these
    direct: dict[Connection, asyncio.WriteTransport] = field(default_factory=dict)
    general: set[Connection] = field(default_factory=set)  # the others (creator, msgpack, fallback, joining)
    joining: dict[Connection, list[dict[str, Any]]] = field(default_factory=dict)  # live events held per joiner
    floors: dict[Connection, int] = field(default_factory=dict)  # offset a fresh joiner already has, until a tick
    pending: list[dict[str, Any]] = field(default_factory=list)  # events for the next tick
    last_offset: int = -1  # last offset taken from the live feed; -1: not known yet
    filling: bool = False  # a gap is being filled from history
    held: list[dict[str, Any]] = field(default_factory=list)  # live events that arrived while filling
    ephemeral: list[dict[str, Any]] = field(default_factory=list)  # events without offset for the next tick
    combos: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)  # id -> (ends at, last gift)
    viewers: int = 0  # approximate, across all web processes
    gifted: bool = False  # gifts arrived since the top gifters were last pushed
    top: list[dict[str, Any]] = field(default_factory=list)  # the top gifters last pushed


class Hub:
    def __init__(self, redis: aioredis.Redis, settings: Settings, catalogs: CatalogStore) -> None:
        self.redis = redis
        self.settings = settings
        self.catalogs = catalogs
        self.room_store = RoomStore(redis, settings)
        self.id = secrets.token_hex(6)
        self.rooms: dict[str, Room] = {}
        # request id (gift_id, pledge_id) -> (registered at, [(request number, waiter)])
        self.waiters: dict[str, tuple[float, list[tuple[int, Waiter]]]] = {}
        self._requests = itertools.count(1)
        self.buckets: dict[str, tuple[float, float]] = {}  # user -> (tokens, last refill, monotonic s)
        self.backlog = 0  # unsettled gifts in the stream, refreshed once per maintenance interval
        self.pubsub = redis.pubsub(ignore_subscribe_messages=True)
        self._tasks: list[asyncio.Task[None]] = []
        self.revocations = Revocations(redis)
        self.users: dict[str, set[Connection]] = {}  # this process's connections per user (the per-user cap)

    async def start(self) -> None:
        await self.revocations.refresh()
        await self.pubsub.subscribe(keys.hub_channel(self.id), keys.CATALOG_CHANNEL, keys.AUTH_CHANNEL)
        loop = asyncio.get_running_loop()
        tasks = (self._read_pubsub(), self._tick(), self._maintain(), self._share_viewers(), self._push_top())
        self._tasks = [loop.create_task(t) for t in tasks]
        self._tasks.append(loop.create_task(self._check_versions()))

    async def stop(self) -> None:
        for conn in {c for room in self.rooms.values() for c in room.conns}:
            conn.shut(CLOSE_GOING_AWAY, "server shutting down")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()

    # Connections -----------------------------------------------------------------------------------------

    def connect(
        self, identity: Identity, codec: Codec, transport: asyncio.WriteTransport, close_now: CloseNow
    ) -> Connection:
        """A connection on a direct socket: the hub writes complete websocket frames to `transport`."""
        return self._register(Connection(identity, codec, self.settings.ws_queue_bytes_max, transport, close_now))

    def connect_fallback(self, identity: Identity, codec: Codec, send: SendFrame, close: CloseSocket) -> Connection:
        """A connection without a direct socket: ASGI sends from a writer task (see Fallback)."""
        fallback = Fallback(send, close)
        fallback.writer = asyncio.get_running_loop().create_task(fallback.run_writer())
        return self._register(Connection(identity, codec, self.settings.ws_queue_bytes_max, fallback=fallback))

    def connections_full(self, user: str) -> bool:
        """Whether `user` already has GIFTING_WS_CONNECTIONS_PER_USER_MAX sockets on this process."""
        return len(self.users.get(user, ())) >= self.settings.ws_connections_per_user_max

    def _register(self, conn: Connection) -> Connection:
        self.users.setdefault(conn.identity.user, set()).add(conn)
        return conn

    def close_unauthorized(self, conn: Connection, code: str, message: str) -> None:
        """Say why, then close with 4001: the token expired or was revoked while the socket was open."""
        if not conn.closed:
            conn.send_message(Error(code, message).to_dict())
            conn.shut(CLOSE_UNAUTHORIZED, code)

    def close_revoked(self, user: str) -> None:
        """Close `user`'s sockets opened with a token the revocation table now refuses."""
        not_before = self.revocations.not_before.get(user)
        for conn in list(self.users.get(user, ())):
            if revoked(conn.identity.issued_at, not_before):
                self.close_unauthorized(conn, "token_revoked", "token revoked: get a new one from the platform")

    async def disconnect(self, conn: Connection) -> None:
        conns = self.users.get(conn.identity.user)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self.users[conn.identity.user]
        for room_id in list(conn.rooms):
            await self.leave(conn, room_id)
        conn.closed = True
        if conn.fallback is not None:
            await conn.fallback.stop()

    async def join(self, conn: Connection, message: protocol.Join) -> None:
        """Subscribe first, then snapshot: every event after the snapshot reaches the joiner exactly once."""
        if message.room not in conn.rooms and len(conn.rooms) >= self.settings.ws_rooms_per_connection_max:
            raise ProtocolError(
                "too_many_rooms",
                f"a connection may join at most {self.settings.ws_rooms_per_connection_max} rooms",
                message.ref,
            )
        room = self.rooms.get(message.room)
        if room is None:
            room = self.rooms[message.room] = Room(message.room)
            try:
                await self.pubsub.subscribe(keys.room_channel(message.room))
            except BaseException:
                # Valkey unreachable: forget the room, or later joiners would find it and never subscribe.
                if not room.conns and self.rooms.get(message.room) is room:
                    del self.rooms[message.room]
                raise
        room.conns.add(conn)
        room.direct.pop(conn, None)  # a joiner takes the general path until its first tick (floors)
        room.general.add(conn)
        room.joining[conn] = []
        conn.rooms.add(message.room)
        try:
            joined, events = await self._snapshot(conn, room, message)
        except BaseException:
            room.joining.pop(conn, None)
            await self.leave(conn, message.room)
            raise
        held = room.joining.pop(conn, [])
        last = events[-1]["offset"] if events else joined["offset"]
        events += [e for e in held if e["offset"] > last]
        # Events already queued for the next tick may include some the join just delivered: the next flush
        # sends this connection only those above its floor.
        room.floors[conn] = events[-1]["offset"] if events else last
        conn.send_message(joined)
        if events:
            first, last = events[0]["offset"], events[-1]["offset"]
            conn.send_message(Events(room.id, self._audience(conn, room, events), first, last).to_dict())

    async def _snapshot(
        self, conn: Connection, room: Room, message: protocol.Join
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        since = message.since
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.room_meta(room.id))
            pipe.hgetall(keys.room_goal(room.id))
            meta, goal = await pipe.execute()
        if not meta:
            raise ProtocolError("room_not_found", f"no room {room.id!r}", message.ref)
        room.creator = meta.get("creator", "")
        offset, epoch = int(meta.get("offset", 0)), meta.get("epoch", "")
        missed = offset - since.offset if since is not None and since.epoch == epoch else -1
        replaying = 0 < missed <= self.settings.replay_events_max
        # History entries are announcements whose ids are the offsets of their last events, and the room's offset
        # is always an entry's end, so these ranges read just the entries that hold the wanted events, however
        # many events one announcement holds. Newer events are not read: they reach this socket live (it is
        # subscribed already) and are merged by offset.
        first = max(offset - self.settings.snapshot_events + 1, 0)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrevrange(keys.room_history(room.id), max=f"{offset}-0", min=f"{first}-0")
            if replaying:
                assert since is not None
                pipe.xrange(keys.room_history(room.id), min=f"{since.offset + 1}-0", max=f"{offset}-0")
            latest, *replay = await pipe.execute()
        latest_events = [e for e in history_events(latest[::-1]) if first <= e["offset"] <= offset]
        recent = self._audience(conn, room, latest_events)
        joined = Joined(
            room=room.id,
            epoch=epoch,
            offset=offset,
            status=meta.get("status", "ended"),
            title=meta.get("title", ""),
            creator=room.creator,
            creator_name=meta.get("creator_name", ""),
            # Live state, so a (re)joining client needs nothing else: approximate viewers, goal, top gifters.
            viewers=max(room.viewers, len(room.conns)),
            goal={**goal, "target": int(goal["target"]), "progress": int(goal["progress"])} if goal else None,
            top=room.top or await top_entries(self.redis, keys.room_top(room.id), self.settings.leaderboard_size),
            pools=await room_pools(self.redis, room.id),
            ref=message.ref,
        ).to_dict()
        if since is None:
            joined["recent"] = recent
            return joined, []
        events = [e for e in history_events(replay[0]) if since.offset < e["offset"] <= offset] if replaying else []
        # Recovered: nothing missed, or every missed event is still in history (at most GIFTING_REPLAY_EVENTS_MAX).
        recovered = missed == 0 or (replaying and len(events) == missed and events[0]["offset"] == since.offset + 1)
        joined["recovered"] = recovered
        if not recovered:
            # Missed too much, or history was lost: a fresh snapshot instead of a silent gap.
            joined["recent"] = recent
            return joined, []
        return joined, events

    async def leave(self, conn: Connection, room_id: str) -> None:
        conn.rooms.discard(room_id)
        room = self.rooms.get(room_id)
        if room is None:
            return
        room.conns.discard(conn)
        room.direct.pop(conn, None)
        room.general.discard(conn)
        room.joining.pop(conn, None)
        room.floors.pop(conn, None)
        if not room.conns:
            del self.rooms[room_id]
            with contextlib.suppress(RedisConnectionError):
                await self.pubsub.unsubscribe(keys.room_channel(room_id))

    # Gifts ---------------------------------------------------------------------------------------------

    def rate_limited(self, user: str) -> bool:
        """Token bucket per user in this process: GIFTING_GIFT_RATE_PER_S, bursts of GIFTING_GIFT_BURST."""
        now = time.monotonic()
        tokens, last = self.buckets.get(user, (float(self.settings.gift_burst), now))
        tokens = min(float(self.settings.gift_burst), tokens + (now - last) * self.settings.gift_rate_per_s)
        if tokens < 1.0:
            self.buckets[user] = (tokens, now)
            return True
        self.buckets[user] = (tokens - 1.0, now)
        return False

    def precheck(self, identity: Identity, gift: str) -> str | None:
        """Reasons the hub can give at once, without settlement (nothing is recorded; the id may be retried)."""
        reason = rules.catalog_reject(self.catalogs.current.gifts.get(gift))
        if reason is not None:
            return reason.value
        if self.backlog > self.settings.gift_backlog_max:
            return "overloaded"
        if self.rate_limited(identity.user):
            return "rate_limited"
        return None

    async def send_gift(
        self,
        identity: Identity,
        message: protocol.SendGift,
        waiter: Connection | asyncio.Future[dict[str, Any]],
    ) -> dict[str, Any] | None:
        """Queue a gift for settlement; its result reaches `waiter`. Returns an immediate rejection, if any."""
        reason = self.precheck(identity, message.gift)
        if reason is not None:
            return GiftResult(message.gift_id, "rejected", reason).to_dict()
        request = gifts.new_request(
            req=self._wait(message.gift_id, waiter),
            gift_id=message.gift_id,
            room=message.room,
            gift=message.gift,
            count=message.count,
            sender=identity.user,
            sender_name=identity.name,
            hub=self.id,
            # The price this viewer was shown: the client's, else this process's catalog. Settlement charges
            # exactly this or rejects the gift (price_changed); never more.
            price=message.price if message.price is not None else self.catalogs.current.gifts[message.gift].coins,
        )
        try:
            await gifts.enqueue(self.redis, request)
        except STORE_ERRORS as exc:
            self._unwait(message.gift_id, request.req)
            log.warning("gift %s: not queued, store unavailable: %r", message.gift_id, exc)
            return GiftResult(message.gift_id, "rejected", STORE_UNAVAILABLE).to_dict()
        return None

    async def send_pledge(
        self, identity: Identity, message: protocol.Pledge, waiter: Connection | asyncio.Future[dict[str, Any]]
    ) -> dict[str, Any] | None:
        """Queue a pledge for the worker (pool.lua); its result reaches `waiter` like a gift's."""
        if self.backlog > self.settings.gift_backlog_max or self.rate_limited(identity.user):
            reason = "overloaded" if self.backlog > self.settings.gift_backlog_max else "rate_limited"
            return PledgeResult(message.pledge_id, "rejected", reason).to_dict()
        req = self._wait(message.pledge_id, waiter)
        op = PoolOp(
            "pledge", message.pool, message.pledge_id, message.coins, identity.user, identity.name, self.id, req
        )
        try:
            await self.redis.xadd(keys.GIFTS_STREAM, op.to_entry())
        except STORE_ERRORS as exc:
            self._unwait(message.pledge_id, req)
            log.warning("pledge %s: not queued, store unavailable: %r", message.pledge_id, exc)
            return PledgeResult(message.pledge_id, "rejected", STORE_UNAVAILABLE).to_dict()
        return None

    def _wait(self, request_id: str, waiter: Waiter) -> int:
        """Register who waits for a request's result; the number travels with the request and comes back."""
        req = next(self._requests)
        _, waiting = self.waiters.setdefault(request_id, (time.monotonic(), []))
        waiting.append((req, waiter))
        return req

    def _unwait(self, request_id: str, req: int) -> None:
        """Forget one waiter: its request was answered without reaching the worker."""
        _, waiting = self.waiters.get(request_id, (0.0, []))
        waiting[:] = [(number, waiter) for number, waiter in waiting if number != req]
        if not waiting:
            self.waiters.pop(request_id, None)

    def _deliver_results(self, results: list[dict[str, Any]]) -> None:
        """Each request gets its own result: two sends of one gift_id (a resend, or a conflicting reuse) get
        their own answers, whatever order their stream entries took."""
        for result in results:
            request_id = result.get("gift_id") or result.get("pledge_id") or ""
            req = result.pop("req", None)
            _, waiting = self.waiters.get(request_id, (0.0, []))
            match = next((i for i, (number, _) in enumerate(waiting) if number == req), None)
            if match is None:
                continue  # its waiter timed out or disconnected; the client resends the id to learn the outcome
            _, waiter = waiting.pop(match)
            if not waiting:
                del self.waiters[request_id]
            if isinstance(waiter, Connection):
                waiter.send_message(result)
            elif not waiter.done():
                waiter.set_result(result)

    # Room events ---------------------------------------------------------------------------------------

    def _accept_events(self, room: Room, events: list[dict[str, Any]]) -> None:
        """Live events from pub/sub, in offset order. A jump in offsets means we missed some: fill from history."""
        if room.filling:
            room.held.extend(events)
            return
        for i, event in enumerate(events):
            offset = event["offset"]
            if offset <= room.last_offset:
                continue  # already delivered (replayed during a fill)
            if room.last_offset >= 0 and offset > room.last_offset + 1:
                room.filling = True
                room.held.extend(events[i:])
                spawn(self._fill_gap(room, room.last_offset, offset))
                return
            room.last_offset = offset
            room.pending.append(event)
            if event.get("kind") == EventKind.GIFT:
                room.gifted = True
                if "combo" in event:
                    room.combos[event["combo"]["id"]] = (time.monotonic() + self.settings.combo_window_ms / 1000, event)
            for held in room.joining.values():
                held.append(event)

    async def _fill_gap(self, room: Room, after: int, before: int) -> None:
        log.warning("room %s: live feed skipped offsets %d..%d; filling from history", room.id, after + 1, before - 1)
        missing: list[dict[str, Any]] = []
        try:
            # `before` starts an announcement, so the entries in the gap end at before - 1 at the latest.
            history = await self.redis.xrange(keys.room_history(room.id), min=f"{after + 1}-0", max=f"{before - 1}-0")
            missing = [e for e in history_events(history) if after < e["offset"] < before]
        except Exception:
            log.exception("room %s: could not fill the gap; clients will resume by offset", room.id)
        room.filling = False
        held, room.held = room.held, []
        if not missing or missing[0]["offset"] != after + 1:
            room.last_offset = -1  # history no longer has them; accept what follows (clients see the jump)
        self._accept_events(room, missing + held)

    def _audience(self, conn: Connection, room: Room, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if conn.identity.user == room.creator:
            return events
        return [protocol.for_viewers(e) for e in events]

    def flush(self) -> None:
        """One tick: every room with events sends them, encoded once per audience and codec, to every socket."""
        now = time.monotonic()
        for room in list(self.rooms.values()):
            self._end_combos(room, now)
            if room.pending or room.ephemeral:
                self._flush_room(room)

    def _flush_room(self, room: Room) -> None:
        events, room.pending = room.pending, []
        ephemeral, room.ephemeral = room.ephemeral, []
        floors, room.floors = room.floors, {}
        viewers_body, own = self._viewers_body(events, ephemeral)
        encoded: dict[tuple[bool, Codec], Encoded] = {}
        own_frames: dict[str, dict[str, Any]] = {}

        def once(creator: bool, codec: Codec) -> Encoded:
            out = encoded.get((creator, codec))
            if out is None:
                body = events + ephemeral if creator else viewers_body
                out = encoded[(creator, codec)] = Encoded.of(self._frame(room, events, body), codec)
            return out

        def own_frame(user: str) -> dict[str, Any]:
            """A sender whose gifts are in this tick's summary gets a copy that lists them (coalesce.py, 4)."""
            frame = own_frames.get(user)
            if frame is None:
                frame = own_frames[user] = self._frame(room, events, coalesce.own_copy(viewers_body, own[user]))
            return frame

        if room.direct:
            self._write_direct(room, once(False, Codec.JSON).frame, own, own_frame)
        for conn in room.general:
            if conn in room.joining or conn.closed:
                continue
            floor = floors.get(conn)
            if floor is not None and events and events[0]["offset"] <= floor:
                # A fresh joiner already has some of these: rare, so encoded for it alone.
                self._send(conn, room, [e for e in events if e["offset"] > floor], ephemeral)
                continue
            creator = conn.identity.user == room.creator
            if not creator and conn.identity.user in own:
                conn.send_message(own_frame(conn.identity.user))
                continue
            conn.write(once(creator, conn.codec))
        for conn in floors:  # past their first tick: JSON viewers on a direct socket join the one loop
            transport = conn.transport
            if transport is not None and conn in room.general and self._plain_viewer(room, conn):
                room.general.discard(conn)
                room.direct[conn] = transport

    @staticmethod
    def _plain_viewer(room: Room, conn: Connection) -> bool:
        """Gets the room's one JSON viewers' frame every tick: not the creator, not joining, not closed."""
        return (
            conn.codec is Codec.JSON
            and conn.identity.user != room.creator
            and conn not in room.joining
            and not conn.closed
        )

    def _write_direct(
        self,
        room: Room,
        frame: bytes,
        own: dict[str, list[str]],
        own_frame: Callable[[str], dict[str, Any]],
    ) -> None:
        """The same bytes to every JSON viewer of the room: Connection.write, inlined, for the big-room loop;
        a sender with gifts in the tick's summary gets its own copy (`own`: rare, so encoded for it alone)."""
        room_max = self.settings.ws_queue_bytes_max - len(frame)
        for conn, transport in room.direct.items():
            if own and conn.identity.user in own:
                conn.send_message(own_frame(conn.identity.user))
            elif transport.get_write_buffer_size() > room_max:
                conn.shut(CLOSE_SLOW_CONSUMER, SLOW_CONSUMER_REASON)  # leaves the room when its endpoint ends
            elif not transport.is_closing():
                transport.write(frame)

    def _viewers_body(
        self, events: list[dict[str, Any]], ephemeral: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
        """Viewers get the events shaped by the big-room policy (coalesce.py); the creator gets every event."""
        s = self.settings
        return coalesce.shape_for_viewers(events, s.big_gift_coins, s.frame_events_max, ephemeral, s.merged_gifts_max)

    def _frame(self, room: Room, events: list[dict[str, Any]], body: list[dict[str, Any]]) -> dict[str, Any]:
        """An `events` frame of `body`, saying which offsets of `events` it covers (also those merged away)."""
        covered = coalesce.offsets_covered(events)
        return Events(room.id, body, *(covered or (None, None))).to_dict()

    def _send(
        self, conn: Connection, room: Room, events: list[dict[str, Any]], ephemeral: list[dict[str, Any]]
    ) -> None:
        if not events and not ephemeral:
            return
        user = conn.identity.user
        if user == room.creator:
            body = events + ephemeral
        else:
            body, own = self._viewers_body(events, ephemeral)
            if user in own:
                body = coalesce.own_copy(body, own[user])
        conn.send_message(self._frame(room, events, body))

    def _end_combos(self, room: Room, now: float) -> None:
        """A combo not extended within the window ends: one `combo_end` (no offset) for the room."""
        ended = [combo_id for combo_id, (ends_at, _) in room.combos.items() if ends_at <= now]
        for combo_id in ended:
            _, last = room.combos.pop(combo_id)
            combo = {"id": combo_id, "count": last["combo"]["count"]}
            room.ephemeral.append(ComboEnd(combo, last["gift"], last["sender"], last.get("sender_name", "")).to_dict())

    # Background tasks ----------------------------------------------------------------------------------

    async def _read_pubsub(self) -> None:
        hub_channel = keys.hub_channel(self.id)
        resubscribed = False  # the feed broke: catalog and revocation messages may have been missed
        results_lost = False  # the feed broke: results published meanwhile never reach us
        while True:
            try:
                message = await self.pubsub.get_message(timeout=1.0)
            except (RedisConnectionError, OSError) as exc:
                log.warning("hub pub/sub: %s; reconnecting", exc)
                resubscribed = results_lost = True
                await asyncio.sleep(0.5)
                continue
            if resubscribed:  # messages published while we were away are lost: compare versions now
                resubscribed = False
                spawn(self._catch_up())
            if results_lost:
                # Resubscribed (the first read on the new connection answers its SUBSCRIBE): from here on results
                # arrive; those published before are read back from the ledger.
                results_lost = not await self._recover_results()
            if message is None or message.get("type") != "message":
                continue
            channel, data = message["channel"], message["data"]
            if channel == keys.CATALOG_CHANNEL:
                spawn(self.catalogs.refresh())
                continue
            if channel == keys.AUTH_CHANNEL:
                if (user := self.revocations.apply(data)) is not None:
                    self.close_revoked(user)
                continue
            try:  # results: a JSON list; a room: one announcement (rooms.announced_events)
                payload = orjson.loads(data) if channel == hub_channel else announced_events(data)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.error("hub pub/sub: undecodable message on %s", channel)
                continue
            if channel == hub_channel:
                self._deliver_results(payload)
            elif (room := self.rooms.get(channel.removeprefix("room:"))) is not None:
                self._accept_events(room, payload)

    async def _catch_up(self) -> None:
        """Reload the catalog and the revocation table if Valkey's versions moved (a pub/sub message may have
        been missed), and close sockets whose tokens a missed revocation refuses."""
        try:
            await self.catalogs.refresh_if_stale()
            if await self.revocations.refresh():
                for user in [u for u in self.users if u in self.revocations.not_before]:
                    self.close_revoked(user)
        except (RedisConnectionError, OSError) as exc:
            log.warning("version check: %s", exc)

    async def _check_versions(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sync_check_interval_s)
            await self._catch_up()

    async def _recover_results(self) -> bool:
        """Deliver the stored outcome of every gift still waiting for one (a gift not decided yet gets its result
        through pub/sub as usual). False if Valkey could not be read: try again later."""
        waiting = list(self.waiters)
        ledger = Ledger(self.redis, self.settings)
        try:
            for i in range(0, len(waiting), RECOVER_IDS_PER_CALL):
                outcomes = await ledger.gift_outcomes(waiting[i : i + RECOVER_IDS_PER_CALL])
                results = [
                    GiftResult(o.gift_id, o.status, o.reason or None, o.coins).to_dict() | {"req": req}
                    for o in outcomes.values()
                    for req, _ in self.waiters.get(o.gift_id, (0.0, []))[1]
                ]
                self._deliver_results(results)
        except STORE_ERRORS as exc:
            log.warning("hub: could not read back results lost with the pub/sub feed: %r", exc)
            return False
        if waiting:
            log.info("hub: pub/sub feed back; read back the results of %d waiting requests", len(waiting))
        return True

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        tick_s = self.settings.tick_ms / 1000
        next_at = loop.time()
        while True:
            next_at += tick_s
            delay = next_at - loop.time()
            if delay < 0:  # fell behind (a long stall): do not burst to catch up
                next_at, delay = loop.time(), 0
            await asyncio.sleep(delay)
            try:
                self.flush()
            except Exception:
                log.exception("hub tick failed")

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            now = time.monotonic()
            for gift_id in [g for g, (t, _) in self.waiters.items() if now - t > WAITER_TTL_S]:
                del self.waiters[gift_id]
            for user in [u for u, (_, t) in self.buckets.items() if now - t > BUCKET_IDLE_S]:
                del self.buckets[user]
            with contextlib.suppress(Exception):
                self.backlog = int(await self.redis.xlen(keys.GIFTS_STREAM))

    async def _share_viewers(self) -> None:
        """Approximate viewer counts: each process writes its own count per room (with a timestamp) and sums
        the fresh ones; one `viewers` event per room and interval, never one per join or leave."""
        interval_s = self.settings.viewers_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            rooms = list(self.rooms.values())
            if not rooms:
                continue
            now_ms = int(time.time() * 1000)
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for room in rooms:
                        pipe.hset(keys.room_viewers(room.id), self.id, f"{len(room.conns)} {now_ms}")
                        pipe.expire(keys.room_viewers(room.id), int(interval_s * 5) + 1)
                        pipe.hgetall(keys.room_viewers(room.id))
                    replies = await pipe.execute()
            except (RedisConnectionError, OSError) as exc:
                log.warning("viewer counts: %s", exc)
                continue
            for room, counts in zip(rooms, replies[2::3], strict=True):
                viewers = fresh_viewer_total(counts, now_ms, int(interval_s * 3000))
                if viewers != room.viewers:
                    room.viewers = viewers
                    room.ephemeral.append(Viewers(viewers).to_dict())

    async def _push_top(self) -> None:
        """Top gifters of the stream, pushed when they changed, at most once per interval per room."""
        while True:
            await asyncio.sleep(self.settings.leaderboard_interval_ms / 1000)
            for room in [r for r in self.rooms.values() if r.gifted]:
                room.gifted = False
                try:
                    top = await top_entries(self.redis, keys.room_top(room.id), self.settings.leaderboard_size)
                except (RedisConnectionError, OSError) as exc:
                    log.warning("top gifters: %s", exc)
                    continue
                if top != room.top and room.id in self.rooms:
                    room.top = top
                    room.ephemeral.append(Leaderboard(top).to_dict())


def fresh_viewer_total(counts: dict[str, str], now_ms: int, max_age_ms: int) -> int:
    """Sum of the per-process counts written within `max_age_ms` (a dead process's count ages out)."""
    total = 0
    for value in counts.values():
        count, _, written_ms = value.partition(" ")
        if count.isdigit() and written_ms.isdigit() and now_ms - int(written_ms) <= max_age_ms:
            total += int(count)
    return total
