"""The hub over real websockets: resume by offset, snapshots, coalescing, codecs, slow readers, leave, room end."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import orjson
import pytest
import redis.asyncio as aioredis
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from gifting import gifts as gifts_module
from gifting import valkey
from gifting.config import Settings
from gifting.live.hub import Hub
from gifting.live.output import CLOSE_SLOW_CONSUMER, Connection
from gifting.rooms.store import RoomStore
from tests.conftest import RECV_TIMEOUT_S, System, SystemFactory, WsClient, run_worker, token

pytestmark = pytest.mark.cluster  # on a standalone Valkey and on a Valkey Cluster (tests/conftest.py)

WRONG_EPOCH = "zzzzzzzz"  # epochs are hex: this one is never a room's


# Helpers -----------------------------------------------------------------------------------------------


async def settle(sender: WsClient, gids: list[str]) -> None:
    """Wait for the result of every gift in `gids` (in any order); each must have settled."""
    pending = set(gids)
    while pending:
        result = await sender.wait_for(lambda m: m.get("type") == "gift_result" and m.get("gift_id") in pending)
        assert result["status"] == "settled", result
        pending.discard(result["gift_id"])


async def send_gifts(sender: WsClient, room: str, n: int) -> list[str]:
    """Send `n` roses to `room` and wait until all of them settled."""
    gids = [await sender.gift(room) for _ in range(n)]
    await settle(sender, gids)
    return gids


def room_events(client: WsClient, room: str) -> list[dict[str, Any]]:
    """History events of `room` received so far (counters such as `viewers` have no offset and are skipped)."""
    seen = [e for m in client.seen if m.get("type") == "events" and m.get("room") == room for e in m["events"]]
    return [e for e in seen if "offset" in e]


async def events_until(client: WsClient, room: str, offset: int) -> list[dict[str, Any]]:
    """Every event of `room` received so far, once one with an offset >= `offset` has arrived."""
    while not any(e["offset"] >= offset for e in room_events(client, room)):
        await client.wait_type("events")
    return room_events(client, room)


@pytest.fixture
async def system(start_system: SystemFactory) -> System:
    """These tests are about offsets and resume, so every gift counts as big: viewers get each one unmerged.

    The big-room merging of cheap gifts has its own tests in test_live_room.py.
    """
    return await start_system(big_gift_coins=1)


def offsets(events: list[dict[str, Any]]) -> list[int]:
    return [e["offset"] for e in events]


async def sender_with_coins(system: System, user: str = "sender", coins: int = 10_000) -> WsClient:
    await system.grant(user, coins)
    return await system.connect(user)


def hub_connection(hub: Hub, room: str, user: str) -> Connection:
    return next(c for c in hub.rooms[room].members if c.identity.user == user)


async def eventually(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll `condition` until it holds or `timeout_s` passes; returns its last value."""
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


class RawWsClient:
    """A websocket client on a bare socket with a small receive buffer: it reads only when the test says so.

    websockets' sans-I/O ClientProtocol does the framing; the socket is non-blocking and driven by the loop.
    """

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self.sock = sock
        self.protocol = protocol
        self.messages: list[dict[str, Any]] = []
        self.eof = False

    @classmethod
    async def connect(cls, url: str, rcvbuf: int = 4096) -> RawWsClient:
        uri = parse_uri(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (uri.host, uri.port))
            client = cls(sock, ClientProtocol(uri, subprotocols=[Subprotocol("gifting.v1.json")], max_size=None))
            client.protocol.send_request(client.protocol.connect())
            await client._flush()
            while client.protocol.state is State.CONNECTING:
                await client._read(RECV_TIMEOUT_S)
            assert client.protocol.state is State.OPEN, client.protocol.handshake_exc
        except BaseException:
            sock.close()
            raise
        return client

    async def _flush(self) -> None:
        data = b"".join(self.protocol.data_to_send())
        if data:
            with contextlib.suppress(OSError):  # the server may have gone already
                await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def _read(self, timeout_s: float) -> None:
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 1 << 20), timeout_s)
        if data:
            self.protocol.receive_data(data)
        else:
            self.eof = True
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.messages.append(orjson.loads(event.data))
        await self._flush()  # the protocol answers a close frame by itself

    async def recv(self) -> dict[str, Any]:
        while not self.messages:
            await self._read(RECV_TIMEOUT_S)
        return self.messages.pop(0)

    async def send(self, message: dict[str, Any]) -> None:
        self.protocol.send_text(orjson.dumps(message))
        await self._flush()

    async def read_to_end(self, timeout_s: float) -> int | None:
        """Read everything until the server's close frame (its code) or the end of the stream (None).

        Raises TimeoutError if the connection neither closes nor ends within `timeout_s`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.protocol.close_rcvd is None and not self.eof:
            await self._read(max(0.01, deadline - loop.time()))
        return self.protocol.close_rcvd.code if self.protocol.close_rcvd is not None else None

    def close(self) -> None:
        self.sock.close()


# Resume ------------------------------------------------------------------------------------------------


async def test_resume_replays_exactly_the_missed_events_then_live_ones(system: System) -> None:
    """A rejoin with since={epoch, last offset seen} gets recovered: true, exactly the missed events, then live ones."""
    room = await system.open_room()
    sender = await sender_with_coins(system)
    viewer = await system.connect("viewer1")
    joined = await viewer.join(room)
    epoch = joined["epoch"]
    await send_gifts(sender, room, 3)
    seen = await events_until(viewer, room, 3)
    assert offsets(seen) == [1, 2, 3]
    await viewer.close()

    missed = await send_gifts(sender, room, 4)  # offsets 4..7 settle while the viewer is away
    again = await system.connect("viewer1")
    rejoined = await again.join(room, since={"epoch": epoch, "offset": seen[-1]["offset"]})
    assert rejoined["recovered"] is True
    assert rejoined["epoch"] == epoch and rejoined["offset"] == 7
    assert "recent" not in rejoined
    replayed = await events_until(again, room, 7)
    assert offsets(replayed) == [4, 5, 6, 7]
    assert [e["gift_id"] for e in replayed] == missed

    live = await send_gifts(sender, room, 2)
    after = await events_until(again, room, 9)
    assert offsets(after) == [4, 5, 6, 7, 8, 9]
    assert [e["gift_id"] for e in after[4:]] == live
    assert all("diamonds" not in e for e in after)


async def test_joins_while_gifts_keep_flowing_see_every_offset_once(start_system: SystemFactory) -> None:
    """With gifts settling throughout, a rejoin's events before plus after hold every offset once; a plain join too."""
    # A long tick keeps live events waiting in the hub while the joins run (the joins must not get them twice);
    # `stayer` keeps the room subscribed in the hub throughout.
    system = await start_system(tick_ms=100, big_gift_coins=1)
    room = await system.open_room()
    sender = await sender_with_coins(system)
    stayer = await system.connect("viewer0")
    viewer = await system.connect("viewer1")
    epoch = (await stayer.join(room))["epoch"]
    await viewer.join(room)
    joined_event = asyncio.Event()

    async def keep_gifting() -> int:
        """Gift one at a time until 15 gifts after the joins (at most 400); returns how many settled."""
        sent = after_joins = 0
        while sent < 400 and after_joins < 15:
            await send_gifts(sender, room, 1)
            sent += 1
            after_joins += joined_event.is_set()
        return sent

    flow = asyncio.create_task(keep_gifting())
    try:
        before = await events_until(viewer, room, 5)
        await viewer.close()
        again = await system.connect("viewer1")
        newcomer = await system.connect("viewer2")
        rejoined, joined = await asyncio.gather(
            again.join(room, since={"epoch": epoch, "offset": before[-1]["offset"]}), newcomer.join(room)
        )
        joined_event.set()
        total = await asyncio.wait_for(flow, 60)
    finally:
        flow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flow
    assert rejoined["recovered"] is True
    assert joined["recent"] and joined["recent"][-1]["offset"] == joined["offset"]
    got = {
        "rejoined: before + after": offsets(before) + offsets(await events_until(again, room, total)),
        "plain join: after joined": offsets(await events_until(newcomer, room, total)),
        "stayed": offsets(await events_until(stayer, room, total)),
    }
    assert got == {
        "rejoined: before + after": list(range(1, total + 1)),
        "plain join: after joined": list(range(joined["offset"] + 1, total + 1)),
        "stayed": list(range(1, total + 1)),
    }


async def test_resume_too_far_behind_gets_a_fresh_snapshot(start_system: SystemFactory) -> None:
    """Missing over GIFTING_REPLAY_EVENTS_MAX gives recovered: false with the latest events, then only newer ones."""
    system = await start_system(replay_events_max=5, snapshot_events=3, big_gift_coins=1)
    room = await system.open_room()
    sender = await sender_with_coins(system)
    viewer = await system.connect("viewer1")
    epoch = (await viewer.join(room))["epoch"]
    await send_gifts(sender, room, 2)
    assert offsets(await events_until(viewer, room, 2)) == [1, 2]
    await viewer.close()

    await send_gifts(sender, room, 8)  # offsets 3..10: 8 missed, more than 5
    again = await system.connect("viewer1")
    rejoined = await again.join(room, since={"epoch": epoch, "offset": 2})
    assert rejoined["recovered"] is False and rejoined["offset"] == 10
    # The snapshot is the room's latest events, so nothing between it and the live feed is silently skipped.
    assert offsets(rejoined["recent"]) == [8, 9, 10]
    await send_gifts(sender, room, 1)
    assert offsets(await events_until(again, room, 11)) == [11]  # no replay of the gap, only live events
    await again.close()

    # Exactly GIFTING_REPLAY_EVENTS_MAX missed is still recovered.
    missed = await send_gifts(sender, room, 5)  # offsets 12..16
    third = await system.connect("viewer1")
    rejoined = await third.join(room, since={"epoch": epoch, "offset": 11})
    assert rejoined["recovered"] is True
    replayed = await events_until(third, room, 16)
    assert offsets(replayed) == [12, 13, 14, 15, 16] and [e["gift_id"] for e in replayed] == missed


async def test_resume_with_unusable_since_gets_a_fresh_snapshot(start_system: SystemFactory) -> None:
    """A since with a wrong epoch, or ahead of the room, gets recovered: false and the snapshot a plain join gets."""
    system = await start_system(snapshot_events=3, big_gift_coins=1)
    room = await system.open_room()
    sender = await sender_with_coins(system)
    await send_gifts(sender, room, 5)
    plain = await system.connect("viewer0")
    snapshot = (await plain.join(room))["recent"]
    assert offsets(snapshot) == [3, 4, 5]

    wrong_epoch = await system.connect("viewer1")
    joined = await wrong_epoch.join(room, since={"epoch": WRONG_EPOCH, "offset": 2})
    ahead = await system.connect("viewer2")
    epoch = joined["epoch"]
    joined_ahead = await ahead.join(room, since={"epoch": epoch, "offset": 99})
    results = {
        "wrong epoch": (joined["recovered"], offsets(joined.get("recent", []))),
        "ahead of the room": (joined_ahead["recovered"], offsets(joined_ahead.get("recent", []))),
    }
    assert results == {"wrong epoch": (False, [3, 4, 5]), "ahead of the room": (False, [3, 4, 5])}
    await send_gifts(sender, room, 1)
    for client in (wrong_epoch, ahead):
        assert offsets(await events_until(client, room, 6)) == [6]  # nothing replayed from the bad position


async def test_plain_join_gets_recent_then_only_newer_events(start_system: SystemFactory) -> None:
    """A join without since carries the last GIFTING_SNAPSHOT_EVENTS events; later frames only hold higher offsets."""
    system = await start_system(snapshot_events=5, big_gift_coins=1)
    room = await system.open_room()
    sender = await sender_with_coins(system)
    gids = await send_gifts(sender, room, 8)
    viewer = await system.connect("viewer1")
    joined = await viewer.join(room)
    assert joined["offset"] == 8 and "recovered" not in joined
    assert offsets(joined["recent"]) == [4, 5, 6, 7, 8]
    assert [e["gift_id"] for e in joined["recent"]] == gids[3:]
    assert all("diamonds" not in e for e in joined["recent"])
    creator = await system.connect("creator1", "creator")
    assert all(e["diamonds"] == 0 for e in (await creator.join(room))["recent"])  # roses: 1 coin, 0 diamonds

    await send_gifts(sender, room, 2)
    assert offsets(await events_until(viewer, room, 10)) == [9, 10]


# Fan-out -----------------------------------------------------------------------------------------------


async def test_gifts_settled_together_reach_sockets_as_few_coalesced_frames(
    start_system: SystemFactory, valkey_url: str
) -> None:
    """Many gifts settled in one batch arrive as fewer `events` frames than gifts; only the creator's carry diamonds."""
    system = await start_system(worker=False, big_gift_coins=1)
    room = await system.open_room("creator1")
    sender = await sender_with_coins(system)
    creator = await system.connect("creator1", "creator")
    viewer = await system.connect("viewer1")
    for client in (creator, viewer):
        assert (await client.join(room))["type"] == "joined"
    gifts = 30
    gids = [await sender.gift(room, "finger_heart") for _ in range(gifts)]
    stream_len = 0
    for _ in range(200):  # every gift queued before the worker starts, so they settle together
        stream_len = await gifts_module.gift_backlog(system.redis)
        if stream_len == gifts:
            break
        await asyncio.sleep(0.02)
    assert stream_len == gifts
    async with run_worker(system.settings, valkey_url):
        await settle(sender, gids)
        for client in (creator, viewer):
            await events_until(client, room, gifts)

    for client, with_diamonds in ((creator, True), (viewer, False)):
        frames = [m for m in client.seen if m.get("type") == "events"]
        events = [e for f in frames for e in f["events"]]
        assert offsets(events) == list(range(1, gifts + 1))
        assert [e["gift_id"] for e in events] == gids
        assert len(frames) < gifts
        assert max(len(f["events"]) for f in frames) > 1
        if with_diamonds:
            assert all(e["diamonds"] == 2 for e in events)  # finger_heart: 5 coins, 50 % share, rounded down
        else:
            assert all("diamonds" not in e for e in events)


async def test_msgpack_client_gets_binary_frames_with_the_same_events(system: System) -> None:
    """A gifting.v1.msgpack client gets binary frames that decode to the same events a JSON client gets."""
    room = await system.open_room()
    sender = await sender_with_coins(system)
    as_json = await system.connect("viewer1")
    as_msgpack = await system.connect("viewer2", codec="msgpack")
    assert as_msgpack.conn.subprotocol == "gifting.v1.msgpack"
    assert as_json.conn.subprotocol == "gifting.v1.json"
    assert (await as_json.join(room))["type"] == "joined"
    assert (await as_msgpack.join(room))["type"] == "joined"

    await send_gifts(sender, room, 5)
    json_events = await events_until(as_json, room, 5)
    msgpack_events: list[dict[str, Any]] = []
    while not msgpack_events or msgpack_events[-1]["offset"] < 5:
        raw = await asyncio.wait_for(as_msgpack.conn.recv(), RECV_TIMEOUT_S)
        assert isinstance(raw, bytes), raw
        message = msgpack.unpackb(raw)
        if message["type"] == "events":
            assert message["room"] == room
            msgpack_events.extend(message["events"])
    assert offsets(json_events) == [1, 2, 3, 4, 5]
    assert msgpack_events == json_events


# Slow readers ------------------------------------------------------------------------------------------

SLOW_QUEUE_BYTES = 16384
PAD_CHARS = 1000
EVENTS_PER_BATCH = 12  # ~12 KiB per batch: one batch fits the queue of a client that reads


async def slow_reader_setup(
    start_system: SystemFactory, as_creator: bool = False, server: dict[str, Any] | None = None
) -> tuple[System, str, WsClient, RawWsClient]:
    """A room with a normal client and a raw one (small receive buffer) that has joined and now stops reading.

    `as_creator`: the slow one is the room's creator (its frames take the hub's general path, not the room's
    one loop over JSON viewers). `server`: uvicorn options (the stock protocol: the hub's fallback path).
    """
    system = await start_system(ws_queue_bytes_max=SLOW_QUEUE_BYTES, tick_ms=5, server=server)
    room = await system.open_room("slow" if as_creator else "creator1")
    normal = await system.connect("normal")
    assert (await normal.join(room))["type"] == "joined"
    slow = await RawWsClient.connect(f"{system.ws_url}?token={token('slow', 'creator' if as_creator else 'viewer')}")
    try:
        assert (await slow.recv())["type"] == "welcome"
        await slow.send({"type": "join", "room": room})
        assert (await slow.recv())["type"] == "joined"
    except BaseException:
        slow.close()
        raise
    return system, room, normal, slow


async def pump_until(
    redis: aioredis.Redis,
    room: str,
    normal: WsClient,
    done: Callable[[], bool],
    offset: int = 0,
    batches_max: int = 3000,
) -> int:
    """Announce batches of padded events in lockstep with `normal` (one batch per frame) until `done()`.

    Bounded in batches and time. Returns the last offset announced.
    """
    store = RoomStore(redis, Settings.from_env({}, room_history_events_max=100_000, idempotency_ttl_s=600))
    pad = "x" * PAD_CHARS
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    for _ in range(batches_max):
        if done() or loop.time() > deadline:
            break
        batch = [(f"pad:{uuid.uuid4()}", {"kind": "pad", "pad": pad}) for _ in range(EVENTS_PER_BATCH)]
        offset += await store.announce(room, batch)
        await events_until(normal, room, offset)
    return offset


SLOW_PATHS = {
    # the room's one loop over JSON viewers' transports (Hub._write_shared)
    "direct, viewer": (False, None, "direct"),
    # a direct socket written one by one (Connection.write): the creator gets its own frame
    "direct, creator": (True, None, "general"),
    # stock uvicorn: no direct socket, ASGI sends from a writer task
    "fallback": (False, {"ws": "websockets-sansio"}, "fallback"),
}


def output_path(hub: Hub, room: str, conn: Connection) -> str:
    if conn.fallback is not None:
        return "fallback"
    return "direct" if conn in hub.rooms[room].shared else "general"


@pytest.mark.parametrize("path", list(SLOW_PATHS))
async def test_slow_reader_is_closed_with_4008_while_others_keep_receiving(
    start_system: SystemFactory, path: str
) -> None:
    """A socket that stops reading is closed with 4008 once its queue overflows; a reading client gets every event."""
    as_creator, server, expected_path = SLOW_PATHS[path]
    system, room, normal, slow = await slow_reader_setup(start_system, as_creator, server)
    try:
        hub = system.hub
        slow_conn = hub_connection(hub, room, "slow")
        on_path = await pump_until(
            system.redis, room, normal, lambda: output_path(hub, room, slow_conn) == expected_path, 0, 5
        )
        assert output_path(hub, room, slow_conn) == expected_path
        offset = await pump_until(system.redis, room, normal, lambda: slow_conn.closed, on_path)
        assert slow_conn.closed and slow_conn.close_code == CLOSE_SLOW_CONSUMER
        assert await slow.read_to_end(RECV_TIMEOUT_S) == CLOSE_SLOW_CONSUMER
        assert await eventually(lambda: slow_conn not in hub.rooms[room].members, RECV_TIMEOUT_S)
    finally:
        slow.close()
    more = await pump_until(system.redis, room, normal, lambda: False, offset, batches_max=3)  # and it goes on
    assert more == offset + 3 * EVENTS_PER_BATCH
    assert offsets(room_events(normal, room)) == list(range(1, more + 1))
    normal_conn = hub_connection(hub, room, "normal")
    assert not normal_conn.closed and normal.conn.state is State.OPEN


async def test_slow_reader_that_never_reads_is_dropped_by_the_hub(start_system: SystemFactory) -> None:
    """A socket closed for 4008 that never reads again is still dropped: out of the hub's room, its stream ended."""
    system, room, normal, slow = await slow_reader_setup(start_system)
    try:
        hub = system.hub
        slow_conn = hub_connection(hub, room, "slow")
        await pump_until(system.redis, room, normal, lambda: slow_conn.closed)
        assert slow_conn.closed and slow_conn.close_code == CLOSE_SLOW_CONSUMER
        # The hub gives a close frame 5 s to get out; allow a little more before the client reads anything.
        removed = await eventually(lambda: slow_conn not in hub.rooms[room].members, 8.0)
        try:
            await slow.read_to_end(3.0)
            ended = True
        except TimeoutError:
            ended = False
    finally:
        slow.close()
    assert {"removed from the room": removed, "stream ended": ended} == {
        "removed from the room": True,
        "stream ended": True,
    }


# Leave, limits, room end -------------------------------------------------------------------------------


async def test_leave_stops_events_from_that_room(system: System) -> None:
    """After leave the client gets `left` and no more events from that room, while its other rooms go on."""
    left_room = await system.open_room("creator1")
    kept_room = await system.open_room("creator2")
    sender = await sender_with_coins(system)
    viewer = await system.connect("viewer1")
    witness = await system.connect("viewer2")
    for room in (left_room, kept_room):
        assert (await viewer.join(room))["type"] == "joined"
    assert (await witness.join(left_room))["type"] == "joined"
    await send_gifts(sender, left_room, 1)
    await events_until(viewer, left_room, 1)

    await viewer.send({"type": "leave", "room": left_room, "ref": "bye"})
    assert await viewer.wait_type("left") == {"type": "left", "room": left_room, "ref": "bye"}
    left_at = len(viewer.seen)
    await send_gifts(sender, left_room, 2)
    await events_until(witness, left_room, 3)  # the room goes on without the viewer
    await send_gifts(sender, kept_room, 1)
    await events_until(viewer, kept_room, 1)
    after_leave = [m for m in viewer.seen[left_at:] if m.get("room") == left_room]
    assert after_leave == []


async def test_room_limit_per_connection_and_unknown_room(system: System) -> None:
    """A connection joins at most GIFTING_WS_ROOMS_PER_CONNECTION_MAX rooms (too_many_rooms); unknown rooms fail."""
    limit = system.settings.ws_rooms_per_connection_max
    rooms = [await system.open_room(f"creator{i}") for i in range(limit + 1)]
    viewer = await system.connect("viewer1")
    for room in rooms[:limit]:
        assert (await viewer.join(room))["type"] == "joined"
    await viewer.send({"type": "join", "room": rooms[limit], "ref": "one-too-many"})
    refused = await viewer.wait_for(lambda m: m.get("type") in ("joined", "error"))
    assert refused["type"] == "error" and refused["code"] == "too_many_rooms"
    assert refused.get("ref") == "one-too-many"
    assert (await viewer.join(rooms[0]))["type"] == "joined"  # joining a room again takes no new slot
    await viewer.send({"type": "leave", "room": rooms[0]})
    await viewer.wait_type("left")
    assert (await viewer.join(rooms[limit]))["type"] == "joined"  # leaving frees a slot

    other = await system.connect("viewer2")
    await other.send({"type": "join", "room": "r_no_such_room", "ref": "nope"})
    missing = await other.wait_for(lambda m: m.get("type") in ("joined", "error"))
    assert missing["type"] == "error" and missing["code"] == "room_not_found" and missing["ref"] == "nope"
    for room in rooms[:limit]:  # a failed join holds no slot
        assert (await other.join(room))["type"] == "joined"


async def test_room_end_broadcasts_room_ended_and_unlists_the_room(system: System) -> None:
    """POST /v1/rooms/{room}/end sends `room_ended` to the room's sockets and removes it from GET /v1/rooms."""
    room = await system.open_room("creator1")
    other_room = await system.open_room("creator2")
    listed = (await system.http.get("/v1/rooms")).json()["rooms"]
    assert {room, other_room} <= {r["room"] for r in listed}
    sender = await sender_with_coins(system)
    creator = await system.connect("creator1", "creator")
    viewer = await system.connect("viewer1")
    for client in (creator, viewer):
        assert (await client.join(room))["type"] == "joined"
    await send_gifts(sender, room, 1)

    refused = await system.http.post(f"/v1/rooms/{room}/end", headers=system.auth("viewer1"))
    assert refused.status_code == 403
    ended = await system.http.post(f"/v1/rooms/{room}/end", headers=system.auth("creator1", "creator"))
    assert ended.status_code == 200 and ended.json()["status"] == "ended"
    for client in (creator, viewer):
        events = await events_until(client, room, 3)
        assert [(e["offset"], e["kind"]) for e in events] == [(1, "gift"), (2, "room_ended"), (3, "stream_summary")]
    listed = (await system.http.get("/v1/rooms")).json()["rooms"]
    assert room not in {r["room"] for r in listed} and other_room in {r["room"] for r in listed}
    gid = await sender.gift(room)
    assert (await sender.result(gid))["status"] == "rejected"


async def test_more_concurrent_joins_than_valkey_connections_all_succeed(start_system: SystemFactory) -> None:
    """60 joins at once through a 5-connection Valkey pool queue for a connection; none is dropped."""
    system = await start_system(redis_connections_max=5)
    if valkey.is_cluster_client(system.redis):
        pytest.skip("redis-py's cluster client has no waiting pool: GIFTING_REDIS_CONNECTIONS_MAX is per node there")
    room = await system.open_room("creator1")
    clients = [await system.connect(f"w{i}") for i in range(60)]
    joined = await asyncio.gather(*(client.join(room) for client in clients))
    assert [j["type"] for j in joined] == ["joined"] * 60


async def test_snapshot_and_resume_read_by_offset_when_one_announcement_holds_many_events(
    start_system: SystemFactory,
) -> None:
    """History entries hold whole announcements (a worker batch for a room can be hundreds of events): a join
    still gets exactly the last GIFTING_SNAPSHOT_EVENTS events, a resume exactly the missed ones, and neither
    reads more than the entries that hold them."""
    system = await start_system(replay_events_max=100)
    room = await system.open_room()
    store = RoomStore(system.redis, system.settings)
    big = [
        (f"g-{i}", {"kind": "gift", "gift_id": f"g-{i}", "gift": "rose", "count": 1, "coins": 1, "diamonds": 0,
                    "sender": f"u{i}", "sender_name": f"U{i}", "ts": 1})
        for i in range(1, 301)
    ]  # fmt: skip
    assert await store.announce(room, big[:250]) == 250  # one history entry: offsets 1..250
    assert await store.announce(room, big[250:]) == 50  # another: 251..300
    viewer = await system.connect("viewer1")
    joined = await viewer.join(room)
    n = system.settings.snapshot_events
    assert [e["offset"] for e in joined["recent"]] == list(range(301 - n, 301))
    again = await system.connect("viewer1")
    resumed = await again.join(room, since={"epoch": joined["epoch"], "offset": 240})
    assert resumed["recovered"] is True and resumed["offset"] == 300
    assert offsets(await events_until(again, room, 300)) == list(range(241, 301))
    too_far = await (await system.connect("viewer1")).join(room, since={"epoch": joined["epoch"], "offset": 150})
    assert too_far["recovered"] is False  # 150 missed > GIFTING_REPLAY_EVENTS_MAX = 100: a fresh snapshot
    assert [e["offset"] for e in too_far["recent"]] == list(range(301 - n, 301))
