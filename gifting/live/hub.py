"""The hub: this process's sockets, pub/sub, timers and Valkey reads around the rooms' state machines.

The room itself (membership, floors for joiners, resume and gap arithmetic, combos, the tick's frames) is pure
code in gifting/live/room.py; the hub feeds it events (joins, live announcements, filled gaps, ticks, leaves) and
executes what it answers (fill a gap from history, write frames), as Centrifuge's Hub only tracks connections.

- Cross-process routing: one pub/sub channel per room, subscribed while this process has sockets in it,
  plus this process's own channel for gift results.
- Coalescing: events of a room are collected for one tick (GIFTING_TICK_MS) and sent as one `events`
  frame, encoded once per audience (creator, viewers) and codec, as a complete websocket frame.
- Output (gifting/live/output.py): on the direct path (gifting/live/direct.py) the hub writes that frame's bytes
  to each connection's transport itself, and the transport's write buffer is the connection's queue, bounded in
  bytes (GIFTING_WS_QUEUE_BYTES_MAX). A client that lets it overflow is closed with CLOSE_SLOW_CONSUMER and
  resumes by offset. Per room, the JSON viewers' transports are kept in one dict (`LiveRoom.shared`), so a tick
  of a big room is one loop of `write(frame)`. Without a direct socket (another ASGI server) a connection falls
  back to ASGI sends from a writer task, with the same bound.
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
from collections.abc import Coroutine
from typing import Any, Union

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from gifting import gifts, keys, metrics, valkey
from gifting.auth import Identity, revoked
from gifting.catalog.store import CatalogStore
from gifting.config import Settings
from gifting.ledger import rules
from gifting.ledger.store import Ledger
from gifting.live.fanout import RoomFanout
from gifting.live.output import (
    CLOSE_GOING_AWAY,
    CLOSE_SLOW_CONSUMER,
    CLOSE_UNAUTHORIZED,
    SLOW_CONSUMER_REASON,
    CloseNow,
    CloseSocket,
    Connection,
    Fallback,
    SendFrame,
)
from gifting.live.room import FillGap, LiveRoom, TickFrames, plan_join
from gifting.outage import STORE_ERRORS, STORE_UNAVAILABLE
from gifting.perks import Perks
from gifting.revocations import Revocations
from gifting.rooms.pools import PoolOp, open_pool, room_pools
from gifting.rooms.recipients import recipient_tops
from gifting.rooms.store import RoomStore, announced_events, history_events, top_entries
from gifting.wire import protocol
from gifting.wire.messages import (
    Error,
    GiftResult,
    Joined,
    Leaderboard,
    PledgeResult,
    Viewers,
)
from gifting.wire.protocol import Codec, ProtocolError
from gifting.wire.reasons import RejectReason

log = logging.getLogger(__name__)

RECOVER_IDS_PER_CALL = 500  # outstanding gift ids looked up per round trip after the pub/sub feed came back
WAITER_TTL_S = 60.0  # a gift result not seen by then is dropped; the client resends the gift_id to learn it
BUCKET_IDLE_S = 120.0  # rate-limit state of a user idle this long is forgotten
MAINTENANCE_INTERVAL_S = 1.0
STOP_STEP_TIMEOUT_S = 3.0  # each step of Hub.stop (tasks cancelled, pub/sub closed) waits at most this long

Waiter = Union["Connection", "asyncio.Future[dict[str, Any]]"]


_background: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any]) -> None:
    """Run a fire-and-forget task, holding a reference so it is not garbage-collected mid-flight."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


class Hub:
    def __init__(self, redis: aioredis.Redis, settings: Settings, catalogs: CatalogStore) -> None:
        self.redis = redis
        self.settings = settings
        self.catalogs = catalogs
        self.room_store = RoomStore(redis, settings)
        self.perks = Perks(redis, settings, self.room_store, self.room_store.ledger)
        self.id = secrets.token_hex(6)
        self.rooms: dict[str, LiveRoom] = {}
        # request id (gift_id, pledge_id) -> (registered at, [(request number, waiter)])
        self.waiters: dict[str, tuple[float, list[tuple[int, Waiter]]]] = {}
        self._requests = itertools.count(1)
        self.buckets: dict[str, tuple[float, float]] = {}  # user -> (tokens, last refill, monotonic s)
        self.backlog = 0  # unsettled gifts in the stream, refreshed once per maintenance interval
        self.pubsub = redis.pubsub(ignore_subscribe_messages=True)
        self.fanout = RoomFanout(self.pubsub, valkey.is_cluster_client(redis), settings.tick_ms)
        self._tasks: list[asyncio.Task[None]] = []
        self.revocations = Revocations(redis)
        self.users: dict[str, set[Connection]] = {}  # this process's connections per user (the per-user cap)

    async def start(self) -> None:
        await self.revocations.refresh()
        await self.pubsub.subscribe(keys.hub_channel(self.id), keys.CATALOG_CHANNEL, keys.AUTH_CHANNEL)
        loop = asyncio.get_running_loop()
        tasks = (self._read_pubsub(), self._tick(), self._maintain(), self._share_viewers(), self._push_top())
        self._tasks = [loop.create_task(t) for t in tasks]
        if self.fanout.sharded:  # rooms on shard channels (gifting/live/fanout.py)
            self._tasks.append(loop.create_task(self.fanout.read_shards(self._room_message)))
        self._tasks.append(loop.create_task(self._check_versions()))

    async def stop(self) -> None:
        for conn in {c for room in self.rooms.values() for c in room.members}:
            conn.shut(CLOSE_GOING_AWAY, "server shutting down")
        for task in self._tasks:
            task.cancel()
        # Bounded: a shutdown must never hang on a task or a Valkey connection in a bad state.
        try:
            await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), STOP_STEP_TIMEOUT_S)
        except TimeoutError:
            log.warning("hub stop: background tasks still running after %.0f s; leaving them", STOP_STEP_TIMEOUT_S)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pubsub.aclose(), STOP_STEP_TIMEOUT_S)

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
        metrics.ws_connections.inc()
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
        if conns is not None and conn in conns:
            metrics.ws_connections.dec()
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
            room = self.rooms[message.room] = LiveRoom(message.room, self.settings)
            try:
                await self.fanout.subscribe(message.room)
            except BaseException:
                # Valkey unreachable: forget the room, or later joiners would find it and never subscribe.
                if not room.members and self.rooms.get(message.room) is room:
                    del self.rooms[message.room]
                raise
        room.begin_join(conn)
        conn.rooms.add(message.room)
        metrics.live_rooms.set(len(self.rooms))
        try:
            joined, replayed = await self._snapshot(conn, room, message)
        except BaseException:
            await self.leave(conn, message.room)
            raise
        catch_up = room.finish_join(conn, joined["offset"], replayed)
        conn.send_message(joined)
        if catch_up is not None:
            conn.send_message(catch_up)
        if conn.identity.overlay_of is None and room.creator != conn.identity.user:
            await self.perks.joined(room.id, room.creator, conn.identity.user, conn.identity.name)

    async def _snapshot(
        self, conn: Connection, room: LiveRoom, message: protocol.Join
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        since = message.since
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.room_meta(room.id))
            pipe.hgetall(keys.room_goal(room.id))
            pipe.hkeys(keys.room_stage(room.id))
            self.perks.read_pins(pipe, room.id)
            meta, goal, guests, pins = await pipe.execute()
        if not meta:
            raise ProtocolError("room_not_found", f"no room {room.id!r}", message.ref)
        if not await self.perks.may_join(room.id, meta, conn.identity):
            price = meta.get("premium_coins")
            raise ProtocolError("ticket_required", f"a premium stream: buy a ticket ({price} coins)", message.ref)
        room.creator = meta.get("creator", "")
        offset, epoch = int(meta.get("offset", 0)), meta.get("epoch", "")
        plan = plan_join(offset, epoch, since, self.settings.snapshot_events, self.settings.replay_events_max)
        # History entries are announcements whose ids are the offsets of their last events, and the room's offset
        # is always an entry's end, so these ranges read just the entries that hold the wanted events, however
        # many events one announcement holds. Newer events are not read: they reach this socket live (it is
        # subscribed already) and are merged by offset.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrevrange(keys.room_history(room.id), max=f"{offset}-0", min=f"{plan.first}-0")
            if plan.replay:
                assert since is not None
                pipe.xrange(keys.room_history(room.id), min=f"{since.offset + 1}-0", max=f"{offset}-0")
            latest, *replay = await pipe.execute()
        latest_events = [e for e in history_events(latest[::-1]) if plan.first <= e["offset"] <= offset]
        recent = room.audience(conn, latest_events)
        joined = Joined(
            room=room.id,
            epoch=epoch,
            offset=offset,
            status=meta.get("status", "ended"),
            title=meta.get("title", ""),
            creator=room.creator,
            creator_name=meta.get("creator_name", ""),
            # Live state, so a (re)joining client needs nothing else: approximate viewers, goal, top gifters.
            viewers=max(room.viewers, len(room.members)),
            goal={**goal, "target": int(goal["target"]), "progress": int(goal["progress"])} if goal else None,
            top=room.top or await top_entries(self.redis, keys.room_top(room.id), self.settings.leaderboard_size),
            pools=await room_pools(self.redis, room.id),
            ref=message.ref,
            recipient_top=await self._recipient_top(room, guests),
            pins=[orjson.loads(p) for p in pins] or None,
        ).to_dict()
        if since is None:
            joined["recent"] = recent
            return joined, []
        events = [e for e in history_events(replay[0]) if since.offset < e["offset"] <= offset] if plan.replay else []
        joined["recovered"] = recovered = plan.recovered(since.offset, events)
        if not recovered:
            # Missed too much, or history was lost: a fresh snapshot instead of a silent gap.
            joined["recent"] = recent
            return joined, []
        return joined, events

    async def _recipient_top(self, room: LiveRoom, guests: list[str]) -> dict[str, list[dict[str, Any]]] | None:
        """With guests on stage: the top gifters of the host and of each guest (gifting/rooms/recipients.py)."""
        if not guests:
            return None
        on_stage = [room.creator, *sorted(guests)]
        return await recipient_tops(self.redis, room.id, on_stage, self.settings.leaderboard_size)

    async def leave(self, conn: Connection, room_id: str) -> None:
        conn.rooms.discard(room_id)
        room = self.rooms.get(room_id)
        if room is not None and room.leave(conn):
            del self.rooms[room_id]
            metrics.live_rooms.set(len(self.rooms))
            with contextlib.suppress(RedisConnectionError):
                await self.fanout.unsubscribe(room_id)

    # For the endpoint: what it needs of the stores, so it reaches into none of them -------------------

    async def open_pool(self, starter: str, message: protocol.StartPool) -> dict[str, Any]:
        """Open the pool `message` asks for (gifting/rooms/pools.py); RoomError with a code for each refusal."""
        return await open_pool(
            self.redis, self.room_store, self.settings, self.catalogs.current, message.room, starter,
            message.gift, message.deadline_s,
        )  # fmt: skip

    async def room_creator(self, room_id: str) -> str:
        """The creator of `room_id`; RoomError room_not_found if there is no such room."""
        return (await self.room_store.get(room_id)).creator

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

    def precheck(self, identity: Identity, gift: str) -> RejectReason | None:
        """Reasons the hub can give at once, without settlement (nothing is recorded; the id may be retried)."""
        reason = rules.catalog_reject(self.catalogs.current.gifts.get(gift))
        if reason is not None:
            return reason
        return self._admission_reject(identity.user)

    def _admission_reject(self, user: str) -> RejectReason | None:
        """Gifts and pledges alike: refused at once while settlement is backed up or the sender is over its rate."""
        if self.backlog > self.settings.gift_backlog_max:
            return RejectReason.OVERLOADED
        if self.rate_limited(user):
            return RejectReason.RATE_LIMITED
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
            metrics.gifts_rejected.labels(reason=reason).inc()
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
            to=message.to or "",
            campaign=message.campaign or "",
            match=message.match or "",
        )
        try:
            await gifts.enqueue(self.redis, request)
        except STORE_ERRORS as exc:
            self._unwait(message.gift_id, request.req)
            log.warning("gift %s: not queued, store unavailable: %r", message.gift_id, exc)
            metrics.store_errors.labels(component="hub").inc()
            metrics.gifts_rejected.labels(reason=STORE_UNAVAILABLE).inc()
            return GiftResult(message.gift_id, "rejected", STORE_UNAVAILABLE).to_dict()
        metrics.gifts_accepted.inc()
        return None

    async def send_pledge(
        self, identity: Identity, message: protocol.Pledge, waiter: Connection | asyncio.Future[dict[str, Any]]
    ) -> dict[str, Any] | None:
        """Queue a pledge for the worker (pool.lua); its result reaches `waiter` like a gift's."""
        reason = self._admission_reject(identity.user)
        if reason is not None:
            return PledgeResult(message.pledge_id, "rejected", reason).to_dict()
        req = self._wait(message.pledge_id, waiter)
        op = PoolOp(
            "pledge", message.pool, message.pledge_id, message.coins, identity.user, identity.name, self.id, req
        )
        try:
            await self.redis.xadd(keys.gifts_stream(keys.part_of_user(identity.user)), op.to_entry())
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

    def _accept_events(self, room: LiveRoom, events: list[dict[str, Any]]) -> None:
        """Live events from pub/sub, in offset order; a jump in offsets is filled from history."""
        self._fill(room, room.announce(events, time.monotonic()))

    def _fill(self, room: LiveRoom, gap: FillGap | None) -> None:
        if gap is not None:
            spawn(self._fill_gap(room, gap))

    async def _fill_gap(self, room: LiveRoom, gap: FillGap) -> None:
        after, before = gap.after, gap.before
        log.warning("room %s: live feed skipped offsets %d..%d; filling from history", room.id, after + 1, before - 1)
        missing: list[dict[str, Any]] = []
        try:
            # `before` starts an announcement, so the entries in the gap end at before - 1 at the latest.
            history = await self.redis.xrange(keys.room_history(room.id), min=f"{after + 1}-0", max=f"{before - 1}-0")
            missing = history_events(history)
        except Exception:
            log.exception("room %s: could not fill the gap; clients will resume by offset", room.id)
        self._fill(room, room.gap_filled(missing, time.monotonic()))

    def flush(self) -> None:
        """One tick: every room with events sends them, encoded once per audience and codec, to every socket."""
        now = time.monotonic()
        frames_n = bytes_n = 0  # counted per tick, not per write: the big-room loop stays as it is
        for room in list(self.rooms.values()):
            frames = room.tick(now)
            if frames is not None:
                self._write_tick(frames)
                room.written()
                frames_n += len(frames.shared) + len(frames.sends)
                bytes_n += len(frames.shared_frame) * len(frames.shared) if frames.shared else 0
                bytes_n += sum(len(out.frame) for _, out in frames.sends)
        if frames_n:
            metrics.ws_hub_ticks.inc()
            metrics.ws_frames_written.inc(frames_n)
            metrics.ws_bytes_written.inc(bytes_n)

    def _write_tick(self, frames: TickFrames) -> None:
        if frames.shared:
            self._write_shared(frames)
        for conn, out in frames.sends:
            conn.write(out)

    def _write_shared(self, frames: TickFrames) -> None:
        """The same bytes to every JSON viewer of the room: Connection.write, inlined, for the big-room loop;
        a sender with gifts in the tick's summary gets its own copy (`own`: rare, so encoded for it alone)."""
        frame, own = frames.shared_frame, frames.own
        room_max = self.settings.ws_queue_bytes_max - len(frame)
        for conn, transport in frames.shared.items():
            if own and conn.identity.user in own:
                conn.write(frames.own_frame(conn.identity.user))
            elif transport.get_write_buffer_size() > room_max:
                conn.shut(CLOSE_SLOW_CONSUMER, SLOW_CONSUMER_REASON)  # leaves the room when its endpoint ends
            elif not transport.is_closing():
                transport.write(frame)

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
                metrics.store_reconnects.inc()
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

    def _room_message(self, room_id: str, data: Any) -> None:
        """One announcement on a room's shard channel (a cluster)."""
        try:
            payload = announced_events(data)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.error("hub pub/sub: undecodable message for room %s", room_id)
            return
        if (room := self.rooms.get(room_id)) is not None:
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
                self.backlog = await gifts.gift_backlog(self.redis)

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
                        pipe.hset(keys.room_viewers(room.id), self.id, f"{len(room.members)} {now_ms}")
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
                    room.add_counter(Viewers(viewers).to_dict())

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
                    room.add_counter(Leaderboard(top).to_dict())


def fresh_viewer_total(counts: dict[str, str], now_ms: int, max_age_ms: int) -> int:
    """Sum of the per-process counts written within `max_age_ms` (a dead process's count ages out)."""
    total = 0
    for value in counts.values():
        count, _, written_ms = value.partition(" ")
        if count.isdigit() and written_ms.isdigit() and now_ms - int(written_ms) <= max_age_ms:
            total += int(count)
    return total
