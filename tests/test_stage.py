"""Multi-guest rooms: guests on stage, gifts that name their recipient, a guest leaving mid-storm, bad input.

Against the real embedded Valkey and real sockets.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gifting import keys
from gifting.ledger import rules
from gifting.rooms.store import history_events
from tests.conftest import System, SystemFactory, WsClient, gift_id

pytestmark = pytest.mark.cluster  # on a standalone Valkey and on a Valkey Cluster (tests/conftest.py)

COFFEE = 10
SHARE_BPS = 5000  # the default creator share


async def on_stage(system: System, room: str, host: str, *guests: str) -> None:
    for guest in guests:
        invited = await system.http.post(
            f"/v1/rooms/{room}/stage/invites", headers=system.auth(host, "creator"), json={"guest": guest}
        )
        assert invited.status_code == 201, invited.text
        accepted = await system.http.post(f"/v1/rooms/{room}/stage/accept", headers=system.auth(guest, "creator"))
        assert accepted.status_code == 200, accepted.text


async def gift_to(client: WsClient, room: str, to: str | None, gift: str = "coffee") -> dict[str, Any]:
    gid = gift_id()
    message: dict[str, Any] = {"type": "gift", "room": room, "gift": gift, "count": 1, "gift_id": gid}
    if to is not None:
        message["to"] = to
    await client.send(message)
    return await client.result(gid)


async def test_each_gift_reaches_the_recipient_it_names(start_system: SystemFactory) -> None:
    """Gifts to two guests and to the host credit each one's own diamonds and top gifters; the feed names the
    guest (`to`) and the host's copy carries only the host's diamonds; in a match they score for the room."""
    system = await start_system(payout_interval_ms=50)
    room = await system.open_room("host")
    other = await system.open_room("rival")
    await on_stage(system, room, "host", "g1", "g2")
    stage = (await system.http.get(f"/v1/rooms/{room}/stage")).json()
    assert stage == {"room": room, "host": "host", "guests": ["g1", "g2"]}
    invite = await system.http.post("/v1/matches", headers=system.auth("host", "creator"), json={"opponent": "rival"})
    match = invite.json()["id"]
    await system.http.post(f"/v1/matches/{match}/accept", headers=system.auth("rival", "creator"))
    await system.grant("v1", 1000)
    client = await system.connect("v1")
    await client.join(room)
    for to in ("g1", "g1", "g2", None, "host"):
        assert (await gift_to(client, room, to))["status"] == "settled"
    per_gift = rules.split_gift(COFFEE, SHARE_BPS).diamonds
    assert (await system.wallet("g1"))["diamonds"] == 2 * per_gift
    assert (await system.wallet("g2"))["diamonds"] == per_gift
    assert (await system.wallet("host"))["diamonds"] == 2 * per_gift
    assert (await system.wallet("v1"))["coins"] == 1000 - 5 * COFFEE
    assert await system.redis.zscore(keys.creator_top("g1", "all"), keys.account("v1")) == 2 * COFFEE
    gifts = [e for e in history_events(await system.redis.xrange(keys.room_history(room))) if e["kind"] == "gift"]
    assert [e.get("to") for e in gifts] == ["g1", "g1", "g2", None, None]
    assert [e["diamonds"] for e in gifts] == [0, 0, 0, per_gift, per_gift]  # the host's earnings only
    earnings = (await system.http.get(f"/v1/rooms/{room}/earnings", headers=system.auth("host", "creator"))).json()
    assert (earnings["coins"], earnings["diamonds"]) == (5 * COFFEE, 2 * per_gift)
    assert (await system.http.get(f"/v1/matches/{match}")).json()["a"]["points"] == 5 * COFFEE
    assert other


async def test_a_guest_leaving_mid_storm_stops_receiving_at_once_and_nothing_is_lost(
    start_system: SystemFactory,
) -> None:
    """Gifts to a guest race the guest's leave: each is settled to the guest or rejected recipient_not_on_stage,
    the coins and diamonds match exactly, and every gift sent after the leave answered is rejected."""
    system = await start_system()
    room = await system.open_room("host")
    await on_stage(system, room, "host", "g1")
    senders = [f"v{i}" for i in range(3)]
    clients = []
    for sender in senders:
        await system.grant(sender, 1000)
        clients.append(await system.connect(sender))
    outcomes: list[str] = []

    async def storm(client: WsClient) -> None:
        for _ in range(15):
            result = await gift_to(client, room, "g1")
            outcomes.append(result["status"] if result["status"] == "settled" else result["reason"])

    async def leave() -> None:
        await asyncio.sleep(0.05)  # a few gifts in: the leave lands mid-storm (any moment is correct)
        left = await system.http.post(f"/v1/rooms/{room}/stage/leave", headers=system.auth("g1", "creator"))
        assert left.status_code == 200 and left.json()["guests"] == []

    await asyncio.gather(*(storm(c) for c in clients), leave())
    assert set(outcomes) <= {"settled", "recipient_not_on_stage"}
    settled = outcomes.count("settled")
    per_gift = rules.split_gift(COFFEE, SHARE_BPS).diamonds
    assert (await system.wallet("g1"))["diamonds"] == settled * per_gift
    spent = sum([1000 - (await system.wallet(s))["coins"] for s in senders])
    assert spent == settled * COFFEE
    after = [await gift_to(c, room, "g1") for c in clients]
    assert [r["reason"] for r in after] == ["recipient_not_on_stage"] * len(clients)


async def test_every_bad_stage_request_and_recipient_is_refused(start_system: SystemFactory) -> None:
    """A guest not on stage, on another room's stage, a malformed recipient, a full stage, an accept without
    an invite, a stranger's invite, inviting yourself, leaving twice: each has its code and nothing moves."""
    system = await start_system(stage_guests_max=1)
    room, elsewhere = await system.open_room("host"), await system.open_room("host2")
    await on_stage(system, elsewhere, "host2", "g9")
    await system.grant("v1", 100)
    client = await system.connect("v1")
    await client.join(room)
    assert (await gift_to(client, room, "nobody"))["reason"] == "recipient_not_on_stage"
    assert (await gift_to(client, room, "g9"))["reason"] == "recipient_not_on_stage"  # another room's guest
    await client.send({"type": "gift", "room": room, "gift": "coffee", "count": 1, "gift_id": gift_id(), "to": 5})
    assert (await client.wait_type("error"))["code"] == "bad_message"
    assert await system.wallet("v1") == {"coins": 100, "diamonds": 0}
    assert (await system.wallet("g9"))["diamonds"] == 0

    async def post(user: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
        response = await system.http.post(path, headers=system.auth(user, "creator"), json=body or {})
        return response.status_code, response.json().get("error", {}).get("code", "ok")

    stage = f"/v1/rooms/{room}/stage"
    assert await post("g1", f"{stage}/accept") == (409, "no_stage_invite")
    assert await post("v1", f"{stage}/invites", {"guest": "g1"}) == (403, "forbidden")
    assert await post("host", f"{stage}/invites", {"guest": "host"}) == (400, "bad_guest")
    assert await post("host", f"{stage}/invites", {"guest": 7}) == (400, "bad_guest")
    assert await post("host", f"{stage}/invites", {"guest": "g1"}) == (201, "ok")
    assert await post("host", f"{stage}/invites", {"guest": "g2"}) == (201, "ok")
    assert await post("g1", f"{stage}/accept") == (200, "ok")
    assert await post("g2", f"{stage}/accept") == (409, "too_many_guests")  # the cap holds at the accept too
    assert await post("host", f"{stage}/invites", {"guest": "g2"}) == (409, "too_many_guests")
    assert await post("g1", f"{stage}/leave") == (200, "ok")
    assert await post("g1", f"{stage}/leave") == (409, "not_on_stage")
    assert await post("v1", f"{stage}/leave", {"guest": "g9"}) == (403, "forbidden")


async def test_top_gifters_per_recipient_count_each_gift_once(start_system: SystemFactory) -> None:
    """Once a guest is on stage each recipient (host, guests) has a board of their gifters: resent gifts count
    once, a rejected gift counts nowhere; it is in a joiner's snapshot and over HTTP; bad input gets a code."""
    system = await start_system()
    room = await system.open_room("host")
    await on_stage(system, room, "host", "g1", "g2")
    for user in ("v1", "v2"):
        await system.grant(user, 1000)
    v1, v2 = await system.connect("v1"), await system.connect("v2")
    for client in (v1, v2):
        await client.join(room)
    sent = [(v1, "g1", "coffee"), (v2, "g1", "rose"), (v1, None, "coffee"), (v2, "g2", "coffee"), (v2, "g2", "rose")]
    for client, to, gift in sent:
        result = await gift_to(client, room, to, gift)
        assert result["status"] == "settled"
        resend: dict[str, Any] = {"type": "gift", "room": room, "gift": gift, "count": 1, "gift_id": result["gift_id"]}
        await client.send({**resend, **({"to": to} if to else {})})  # a resend: counted once
        assert (await client.result(result["gift_id"]))["status"] == "settled"
    assert (await gift_to(v1, room, "stranger"))["reason"] == "recipient_not_on_stage"

    async def top(recipient: str | None) -> list[tuple[str, int]]:
        query = f"?recipient={recipient}" if recipient else ""
        response = await system.http.get(f"/v1/rooms/{room}/top{query}")
        assert response.status_code == 200, response.text
        return [(e["user"], e["coins"]) for e in response.json()["top"]]

    assert await top("g1") == [("v1", 10), ("v2", 1)]
    assert await top("g2") == [("v2", 11)]
    assert await top(None) == await top("host") == [("v1", 10)]
    assert await top("stranger") == []
    joiner = await system.connect("v3")
    joined = await joiner.join(room)
    boards = {who: [(e["user"], e["coins"]) for e in entries] for who, entries in joined["recipient_top"].items()}
    assert boards == {"host": [("v1", 10)], "g1": [("v1", 10), ("v2", 1)], "g2": [("v2", 11)]}
    bad = await system.http.get(f"/v1/rooms/{room}/top?recipient=not%20a%20user")
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "bad_recipient")
    bad = await system.http.get(f"/v1/rooms/{room}/top?limit=0")
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "bad_limit")
    missing = await system.http.get("/v1/rooms/nope/top")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "room_not_found")
    await system.http.post(f"/v1/rooms/{room}/end", headers=system.auth("host", "creator"))
    assert await system.redis.ttl(keys.room_recipient_top(room, "g1")) > 0  # the boards expire with the room


async def test_a_room_without_a_stage_keeps_no_boards(start_system: SystemFactory) -> None:
    """Rooms nobody took the stage of pay nothing for boards: no board is written, the snapshot has none."""
    system = await start_system()
    room = await system.open_room("host")
    await system.grant("v1", 100)
    client = await system.connect("v1")
    joined = await client.join(room)
    assert "recipient_top" not in joined
    assert (await gift_to(client, room, None))["status"] == "settled"
    assert not await system.redis.exists(keys.room_recipients(room), keys.room_recipient_top(room, "host"))
