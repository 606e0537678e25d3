"""Every inbound websocket message draws from the connection's budget, joins more than the rest, and a user has at
most GIFTING_WS_CONNECTIONS_PER_USER_MAX sockets on one web process."""

from __future__ import annotations

import asyncio

import pytest
import websockets

from gifting import auth
from gifting.config import ConfigError, Settings
from tests.conftest import SECRET, SystemFactory, WsClient, gift_id

ALMOST_NO_REFILL = 0.001  # messages per second: what a test sends in a burst is not refilled meanwhile


async def close_code(client: WsClient) -> int | None:
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            await client.recv()
    return info.value.rcvd.code if info.value.rcvd is not None else None


async def answers(client: WsClient, count: int) -> list[str]:
    """The next `count` direct answers, each as its type, or its error code / rejection reason."""
    out: list[str] = []
    while len(out) < count:
        message = await client.recv()
        if message["type"] == "error":
            out.append(message["code"])
        elif message["type"] == "gift_result":
            out.append(f"gift:{message['status']}:{message.get('reason')}")
        elif message["type"] in ("pong", "joined", "left"):
            out.append(message["type"])
    return out


async def test_pings_beyond_the_budget_get_rate_limited(start_system: SystemFactory) -> None:
    """With a burst of 5 and no refill, 5 pings are answered and the next 3 get `rate_limited`."""
    system = await start_system(ws_message_rate_per_s=ALMOST_NO_REFILL, ws_message_burst=5, ws_join_cost=1)
    client = await system.connect("v1")
    for i in range(8):
        await client.send({"type": "ping", "ref": str(i)})
    assert await answers(client, 8) == ["pong"] * 5 + ["rate_limited"] * 3


async def test_joins_cost_more_and_gifts_count_too(start_system: SystemFactory) -> None:
    """A join draws GIFTING_WS_JOIN_COST; a gift over the budget is rejected `rate_limited` (retryable)."""
    system = await start_system(ws_message_rate_per_s=ALMOST_NO_REFILL, ws_message_burst=5, ws_join_cost=3)
    room = await system.open_room("c1")
    await system.grant("v1", 100)
    client = await system.connect("v1")
    await client.send({"type": "join", "room": room})  # 5 -> 2
    await client.send({"type": "join", "room": room})  # needs 3: refused
    await client.send({"type": "leave", "room": room})  # 2 -> 1
    await client.send({"type": "ping"})  # 1 -> 0
    await client.send({"type": "gift", "room": room, "gift": "rose", "count": 1, "gift_id": gift_id()})
    assert await answers(client, 5) == ["joined", "rate_limited", "left", "pong", "gift:rejected:rate_limited"]
    assert (await system.wallet("v1"))["coins"] == 100


async def test_a_client_that_keeps_exceeding_its_budget_is_closed(start_system: SystemFactory) -> None:
    """Over-budget messages count as invalid ones: past GIFTING_WS_INVALID_MESSAGES_MAX the socket closes (4002)."""
    system = await start_system(
        ws_message_rate_per_s=ALMOST_NO_REFILL, ws_message_burst=2, ws_join_cost=1, ws_invalid_messages_max=3
    )
    client = await system.connect("v1")
    for _ in range(10):
        await client.send({"type": "ping"})
    assert await close_code(client) == 4002
    other = await system.connect("v2")
    await other.send({"type": "ping"})
    assert (await other.wait_type("pong"))["type"] == "pong"


async def test_connections_per_user_are_capped(start_system: SystemFactory) -> None:
    """A user's third socket (cap 2) is told `too_many_connections` and closed with 4029; others are unaffected,
    and a closed socket frees its place."""
    system = await start_system(ws_connections_per_user_max=2)
    first, _second = await system.connect("v1"), await system.connect("v1")
    third = await system.connect("v1", raw_token=auth.mint(SECRET, "v1", "viewer"))
    assert (await third.recv())["code"] == "too_many_connections"
    assert await close_code(third) == 4029
    other = await system.connect("v2")
    await other.send({"type": "ping"})
    assert (await other.wait_type("pong"))["type"] == "pong"
    await first.close()
    for _ in range(100):  # the server forgets the closed socket once its endpoint has ended
        fourth = await system.connect("v1", raw_token=auth.mint(SECRET, "v1", "viewer"))
        if (await fourth.recv())["type"] == "welcome":
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("a closed socket never freed its place")


def test_join_cost_must_fit_the_burst() -> None:
    """A join that costs more than the whole budget could never happen: refused at startup."""
    with pytest.raises(ConfigError, match="GIFTING_WS_JOIN_COST"):
        Settings.from_env({}, ws_message_burst=5, ws_join_cost=6)
