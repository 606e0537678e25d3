"""The hub's direct socket over a real uvicorn server: frames intact and in order, both codecs, large frames,
the close of a peer that never reads, and the fallback when there is no direct socket."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgpack
import orjson
import pytest
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from gifting.app import server_config
from gifting.config import Settings
from gifting.live import direct
from gifting.live.hub import Hub
from gifting.live.output import CLOSE_SLOW_CONSUMER, Connection
from gifting.rooms.store import RoomStore
from tests.conftest import RECV_TIMEOUT_S, System, SystemFactory, WsClient
from tests.test_hub import (
    events_until,
    eventually,
    hub_connection,
    offsets,
    output_path,
    pump_until,
    sender_with_coins,
    settle,
    slow_reader_setup,
)

STOCK_UVICORN = {"ws": "websockets-sansio"}  # no direct socket: the hub's fallback path


async def receive_until(client: WsClient, done: Any, timeout_s: float = RECV_TIMEOUT_S) -> None:
    """Receive (into client.seen) until `done()` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not done():
        await client.recv(max(0.01, deadline - loop.time()))


def paths(hub: Hub, room: str) -> dict[str, str]:
    return {c.identity.user: output_path(hub, room, c) for c in hub.rooms[room].members}


async def announce_padded(system: System, room: str, events: int, pad_chars: int) -> int:
    """One announce call (one tick's frame) of `events` padded events; returns how many were announced."""
    store = RoomStore(system.redis, system.settings)
    batch = [(f"pad:{uuid.uuid4()}", {"kind": "pad", "pad": "x" * pad_chars}) for _ in range(events)]
    return await store.announce(room, batch)


async def test_direct_frames_arrive_intact_and_in_order_with_interleaved_replies(start_system: SystemFactory) -> None:
    """A viewer that gifts and pings while watching gets every event in offset order, every pong in order and
    every gift_result, all through its direct socket (the room's one loop over JSON viewers)."""
    system = await start_system(big_gift_coins=1, tick_ms=5)
    room = await system.open_room()
    sender = await sender_with_coins(system)
    watcher = await system.connect("watcher")
    for client in (sender, watcher):
        assert (await client.join(room))["type"] == "joined"
    gifts = 40
    gids = []
    for i in range(gifts):
        gids.append(await sender.gift(room))
        await sender.send({"type": "ping", "ref": f"p{i}"})
        if i == 5:  # by now both have had a tick with events: they are in the room's one loop
            await events_until(sender, room, 1)
            await events_until(watcher, room, 1)
            assert paths(system.hub, room) == {"sender": "direct", "watcher": "direct"}

    def all_in() -> bool:
        results = {m["gift_id"] for m in sender.seen if m.get("type") == "gift_result"}
        events = [e for m in sender.seen if m.get("type") == "events" for e in m["events"] if "offset" in e]
        pongs = [m for m in sender.seen if m.get("type") == "pong"]
        return results == set(gids) and len(pongs) == gifts and bool(events) and events[-1]["offset"] == gifts

    await receive_until(sender, all_in)
    kinds = [m["type"] for m in sender.seen]
    assert set(kinds) <= {"welcome", "joined", "events", "gift_result", "pong"}, kinds
    assert [m["ref"] for m in sender.seen if m["type"] == "pong"] == [f"p{i}" for i in range(gifts)]
    assert all(m["status"] == "settled" for m in sender.seen if m["type"] == "gift_result")
    sender_events = [e for m in sender.seen if m["type"] == "events" for e in m["events"] if "offset" in e]
    assert offsets(sender_events) == list(range(1, gifts + 1))
    assert [e["gift_id"] for e in sender_events] == gids
    assert offsets(await events_until(watcher, room, gifts)) == list(range(1, gifts + 1))


async def test_json_text_and_msgpack_binary_frames_on_direct_sockets(start_system: SystemFactory) -> None:
    """JSON clients get text frames, msgpack clients binary ones, with the same events; the creator's carry
    diamonds. Only the JSON viewer is in the room's one loop; the others are written one by one."""
    system = await start_system(big_gift_coins=1)
    room = await system.open_room("creator1")
    sender = await sender_with_coins(system)
    viewer = await system.connect("viewer1")
    packed = await system.connect("viewer2", codec="msgpack")
    creator = await system.connect("creator1", "creator")
    creator_packed = await system.connect("creator1", "creator", codec="msgpack")
    clients = (viewer, packed, creator, creator_packed)
    for client in clients:
        assert (await client.join(room))["type"] == "joined"
    gids = [await sender.gift(room, "finger_heart") for _ in range(3)]
    for gid in gids:
        assert (await sender.result(gid))["status"] == "settled"

    received: dict[str, list[dict[str, Any]]] = {}
    for name, client in zip(("viewer", "packed", "creator", "creator_packed"), clients, strict=True):
        events: list[dict[str, Any]] = []
        while not events or events[-1]["offset"] < 3:
            raw = await asyncio.wait_for(client.conn.recv(), RECV_TIMEOUT_S)
            assert isinstance(raw, bytes) == (client.codec == "msgpack"), (name, type(raw))
            message = msgpack.unpackb(raw) if isinstance(raw, bytes) else orjson.loads(raw)
            if message["type"] == "events":
                events += [e for e in message["events"] if "offset" in e]
        received[name] = events
    assert received["packed"] == received["viewer"]
    assert received["creator_packed"] == received["creator"]
    assert [e["gift_id"] for e in received["viewer"]] == gids
    assert all("diamonds" not in e for e in received["viewer"])
    assert all(e["diamonds"] == 2 for e in received["creator"])
    conns = system.hub.rooms[room].members
    assert all(c.transport is not None and c.fallback is None for c in conns)
    placed = {(c.identity.user, c.codec.name): output_path(system.hub, room, c) for c in conns}
    assert placed == {
        ("viewer1", "JSON"): "direct",
        ("viewer2", "MSGPACK"): "general",
        ("creator1", "JSON"): "general",
        ("creator1", "MSGPACK"): "general",
    }


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_frame_over_64_kib_arrives_intact(start_system: SystemFactory, codec: str) -> None:
    """A tick's frame of about 100 KB (64-bit length header) reaches a direct socket whole, then small ones."""
    system = await start_system()
    room = await system.open_room()
    viewer = await system.connect("viewer1", codec=codec)
    assert (await viewer.join(room))["type"] == "joined"
    assert await announce_padded(system, room, events=10, pad_chars=10_000) == 10
    raw = await asyncio.wait_for(viewer.conn.recv(), RECV_TIMEOUT_S)
    assert len(raw) > 65_536
    message = msgpack.unpackb(raw) if codec == "msgpack" else orjson.loads(raw)
    assert message["type"] == "events" and (message["from"], message["to"]) == (1, 10)
    assert [len(e["pad"]) for e in message["events"]] == [10_000] * 10
    await announce_padded(system, room, events=1, pad_chars=10)
    assert offsets(await events_until(viewer, room, 11)) == [11]


async def test_peer_that_never_reads_is_aborted_after_the_close_flush(
    start_system: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a 4008 the hub waits CLOSE_FLUSH_S for its buffer and close frame to drain, then aborts the socket:
    a peer that never reads holds neither its buffer nor its socket."""
    monkeypatch.setattr(direct, "CLOSE_FLUSH_S", 0.5)
    system, room, normal, slow = await slow_reader_setup(start_system)
    try:
        slow_conn = hub_connection(system.hub, room, "slow")
        transport = slow_conn.transport
        assert transport is not None
        await pump_until(system.redis, room, normal, lambda: slow_conn.closed)
        assert slow_conn.close_code == CLOSE_SLOW_CONSUMER
        assert transport.is_closing() and transport.get_write_buffer_size() > 0  # the peer has not read
        # Aborted: the buffer is dropped (the peer still has not read) and the hub has let the connection go.
        assert await eventually(lambda: transport.get_write_buffer_size() == 0, 3.0)
        assert await eventually(lambda: slow_conn not in system.hub.rooms[room].members, 3.0)
    finally:
        slow.close()


async def test_fallback_without_a_direct_socket(start_system: SystemFactory) -> None:
    """On stock uvicorn (no direct socket) the hub sends through ASGI: joins, events, replies and codecs work."""
    system = await start_system(big_gift_coins=1, server=STOCK_UVICORN)
    room = await system.open_room()
    sender = await sender_with_coins(system)
    packed = await system.connect("viewer2", codec="msgpack")
    for client in (sender, packed):
        assert (await client.join(room))["type"] == "joined"
    gids = [await sender.gift(room) for _ in range(5)]
    await sender.send({"type": "ping", "ref": "fb"})

    def answered() -> bool:
        results = {m["gift_id"]: m["status"] for m in sender.seen if m.get("type") == "gift_result"}
        return results == dict.fromkeys(gids, "settled") and {"type": "pong", "ref": "fb"} in sender.seen

    await receive_until(sender, answered)
    for client in (sender, packed):
        assert offsets(await events_until(client, room, 5)) == [1, 2, 3, 4, 5]
    conns = system.hub.rooms[room].members
    assert all(c.transport is None and c.fallback is not None for c in conns)
    assert not system.hub.rooms[room].shared


async def test_a_connection_with_permessage_deflate_takes_the_fallback(start_system: SystemFactory) -> None:
    """Prebuilt frames carry no compression bit: a connection that negotiated permessage-deflate gets no direct
    socket, and still gets every event (compressed by uvicorn)."""
    system = await start_system(big_gift_coins=1, server={"ws_per_message_deflate": True})
    room = await system.open_room()
    sender = await sender_with_coins(system)
    deflated = await system.connect("viewer1")  # websockets' client offers permessage-deflate by default
    plain = await system.connect("viewer2", compression=None)
    for client in (deflated, plain):
        assert (await client.join(room))["type"] == "joined"
    await settle(sender, [await sender.gift(room) for _ in range(3)])
    for client in (deflated, plain):
        assert offsets(await events_until(client, room, 3)) == [1, 2, 3]
    by_user: dict[str, Connection] = {c.identity.user: c for c in system.hub.rooms[room].members}
    assert by_user["viewer1"].fallback is not None and by_user["viewer1"].transport is None
    assert by_user["viewer2"].transport is not None


async def never_called_app(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app for a server config that is never served."""
    raise AssertionError("not served")


def test_installed_uvicorn_has_what_the_direct_socket_uses() -> None:
    """The startup check of the direct socket passes on the uvicorn and websockets the lock installs."""
    direct.check_protocol()


def test_a_uvicorn_without_what_the_direct_socket_uses_stops_the_server_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """A uvicorn whose protocol lost a member the direct socket calls makes server_config raise, naming it,
    instead of every socket silently taking the ASGI fallback."""
    monkeypatch.setattr(WebSocketsSansIOProtocol, "stop_keepalive", None)
    with pytest.raises(direct.ProtocolChanged, match=r"stop_keepalive\(\)"):
        server_config(never_called_app, Settings(), "127.0.0.1", 0)


def test_a_connection_that_is_not_a_websockets_server_protocol_is_named() -> None:
    """A protocol whose `conn` is no longer websockets' sans-I/O ServerProtocol is refused by the check."""

    class Replaced(direct.HubWebSocketProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.conn = object()  # type: ignore[assignment]

    with pytest.raises(direct.ProtocolChanged, match="conn \\(a websockets ServerProtocol, found object\\)"):
        direct.check_protocol(Replaced)
