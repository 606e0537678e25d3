"""Team matches (2 v 2) across four rooms: every invitee accepts or the invite fails cleanly, one score per side
summed over its two rooms, one `match_ended` in all four, a team's forfeit, and bad input.

Against the real embedded Valkey and real sockets; matches last a couple of seconds and every wait is bounded.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from gifting import keys
from tests.conftest import System, SystemFactory
from tests.test_matches import FAST, match_events, wait_until
from tests.test_stage import gift_to, on_stage

pytestmark = pytest.mark.cluster  # a money path or a multi-key step in every test; a short module

CREATORS = {"a": "ca", "a2": "ca2", "b": "cb", "b2": "cb2"}
TEAM = {"opponent": "cb", "partner": "ca2", "opponent_partner": "cb2"}


async def invite(system: System, user: str, body: dict[str, Any]) -> tuple[int, Any]:
    response = await system.http.post("/v1/matches", headers=system.auth(user, "creator"), json=body)
    data = response.json()
    return response.status_code, data["error"]["code"] if "error" in data else data


async def answer(system: System, user: str, match: str, action: str = "accept") -> tuple[int, Any]:
    response = await system.http.post(f"/v1/matches/{match}/{action}", headers=system.auth(user, "creator"))
    data = response.json()
    return response.status_code, data["error"]["code"] if "error" in data else data


async def open_rooms(system: System) -> dict[str, str]:
    return {seat: await system.open_room(creator) for seat, creator in CREATORS.items()}


async def ended(system: System, match: str) -> bool:
    return bool((await system.http.get(f"/v1/matches/{match}")).json()["status"] == "ended")


async def announced_end(system: System, rooms: dict[str, str]) -> bool:
    """The worker stores the result, then announces match_ended to each room in turn."""
    for room in rooms.values():
        if not any(e["kind"] == "match_ended" for e in await match_events(system.redis, room)):
            return False
    return True


async def test_a_team_match_sums_each_side_over_its_two_rooms(start_system: SystemFactory) -> None:
    """2 v 2: live only after all three invitees accept; gifts in all four rooms (one to a guest on a partner's
    stage) and their resends score once for their side; all four rooms get one match_started and one
    match_ended with the same result; every viewer sees the final score; the creators are free afterwards."""
    system = await start_system(**FAST)
    rooms = await open_rooms(system)
    await on_stage(system, rooms["a2"], "ca2", "guest")
    status, view = await invite(system, "ca", {**TEAM, "duration_s": 3})
    assert status == 201 and (view["mode"], view["status"]) == ("team", "invited")
    assert view["a"]["partner"] == {"creator": "ca2", "room": rooms["a2"]} and sorted(view["rooms"]) == sorted(
        rooms.values()
    )
    match = view["id"]
    assert (await answer(system, "cb", match))[1]["waiting_for"] == ["ca2", "cb2"]
    assert await answer(system, "cb", match) == (409, "invite_not_pending")  # accepting twice
    assert await answer(system, "stranger", match) == (403, "forbidden")
    assert (await answer(system, "ca2", match))[1]["status"] == "invited"
    status, live = await answer(system, "cb2", match)
    assert (status, live["status"]) == (200, "live")
    viewers = []
    for i, seat in enumerate(CREATORS):
        await system.grant(f"v{i}", 1000)
        client = await system.connect(f"v{i}")
        await client.join(rooms[seat])
        viewers.append((client, seat))
    expected: Counter[str] = Counter()

    async def storm(client: Any, seat: str) -> None:
        for to in (None, "guest") if seat == "a2" else (None, None):
            result = await gift_to(client, rooms[seat], to)
            assert result["status"] == "settled"
            message = {"type": "gift", "room": rooms[seat], "gift": "coffee", "count": 1, "gift_id": result["gift_id"]}
            await client.send({**message, **({"to": to} if to else {})})  # a resend scores nothing
            assert (await client.result(result["gift_id"]))["status"] == "settled"
            expected[seat[0]] += 10

    await asyncio.gather(*(storm(*v) for v in viewers))
    await wait_until(lambda: ended(system, match), "the team match to end")
    await wait_until(lambda: announced_end(system, rooms), "match_ended in all four rooms")
    final = (await system.http.get(f"/v1/matches/{match}")).json()
    assert final["result"]["points"] == {"a": expected["a"], "b": expected["b"]} == {"a": 40, "b": 40}
    assert sorted(m["user"] for m in final["result"]["mvps"]["a"]) == ["v0", "v1"]
    for room in rooms.values():
        kinds = Counter(e["kind"] for e in await match_events(system.redis, room))
        assert kinds == Counter(match_started=1, match_score=8, match_ended=1), (room, kinds)
        ended_event = next(e for e in await match_events(system.redis, room) if e["kind"] == "match_ended")
        assert ended_event["match"]["result"] == final["result"]
    for client, _ in viewers:
        await client.wait_for(lambda m: any(e["kind"] == "match_ended" for e in m.get("events", [])))
        results = [e["match"]["result"] for e in client.events() if e["kind"] == "match_ended"]
        assert results == [final["result"]]
    for creator in CREATORS.values():
        assert not await system.redis.exists(keys.creator_match(creator))


async def test_a_team_invite_fails_cleanly_on_a_decline_or_the_timeout(start_system: SystemFactory) -> None:
    """One invitee's decline declines the team match for all (after others accepted); an invite not accepted by
    all three within the timeout expires; either way every creator is free again and no room names the match."""
    system = await start_system(match_invite_timeout_s=1, **FAST)
    rooms = await open_rooms(system)
    match = (await invite(system, "ca", TEAM))[1]["id"]
    assert (await answer(system, "cb", match))[0] == 200
    assert (await answer(system, "cb2", match, "decline"))[1]["status"] == "declined"
    assert await answer(system, "ca2", match) == (409, "invite_not_pending")
    for seat, creator in CREATORS.items():
        assert not await system.redis.exists(keys.creator_match(creator))
        assert await system.redis.hget(keys.room_meta(rooms[seat]), "match") is None
    match = (await invite(system, "ca", TEAM))[1]["id"]  # free again
    assert (await answer(system, "cb", match))[0] == 200
    assert (await answer(system, "ca2", match))[0] == 200
    await asyncio.sleep(1.1)  # past the 1 s invite timeout
    assert await answer(system, "cb2", match) == (409, "invite_expired")
    assert (await system.http.get(f"/v1/matches/{match}")).json()["status"] == "expired"
    for seat, creator in CREATORS.items():
        assert not await system.redis.exists(keys.creator_match(creator))
        assert await system.redis.hget(keys.room_meta(rooms[seat]), "match") is None


async def test_a_partner_who_ends_their_stream_forfeits_for_the_team(start_system: SystemFactory) -> None:
    """In a team match either creator of a side ending their stream forfeits for the side: the match ends at
    once, the other side wins whatever the points, and all four rooms get the one match_ended."""
    system = await start_system(**FAST)
    rooms = await open_rooms(system)
    match = (await invite(system, "ca", {**TEAM, "duration_s": 600}))[1]["id"]
    for creator in ("cb", "ca2", "cb2"):
        assert (await answer(system, creator, match))[0] == 200
    await system.grant("v1", 100)
    client = await system.connect("v1")
    await client.join(rooms["b2"])
    assert (await gift_to(client, rooms["b2"], None))["status"] == "settled"
    ended_room = await system.http.post(f"/v1/rooms/{rooms['b2']}/end", headers=system.auth("cb2", "creator"))
    assert ended_room.status_code == 200
    await wait_until(lambda: ended(system, match), "the forfeited team match to end")
    await wait_until(lambda: announced_end(system, rooms), "match_ended in all four rooms")
    result = (await system.http.get(f"/v1/matches/{match}")).json()["result"]
    assert (result["forfeit"], result["winner"], result["points"]) == ("b", "a", {"a": 0, "b": 10})
    for room in rooms.values():
        kinds = Counter(e["kind"] for e in await match_events(system.redis, room))
        assert kinds["match_ended"] == 1, (room, kinds)
    summary = (await system.http.get(f"/v1/rooms/{rooms['b2']}/summary")).json()
    assert [m["result"] for m in summary["matches"]] == [result]


async def test_every_bad_team_invite_gets_its_code(start_system: SystemFactory) -> None:
    """A partner for one side only, a creator named twice, a partner who is offline, busy or not a user id: each
    refused with its code, and nobody is left holding a match."""
    system = await start_system(**FAST)
    await open_rooms(system)
    await system.open_room("cx")
    await system.open_room("cy")
    assert await invite(system, "ca", {"opponent": "cb", "partner": "ca2"}) == (400, "bad_partner")
    assert await invite(system, "ca", {**TEAM, "opponent_partner": "ca2"}) == (400, "bad_partner")
    assert await invite(system, "ca", {**TEAM, "partner": "ca"}) == (400, "bad_partner")
    assert await invite(system, "ca", {**TEAM, "partner": 5}) == (400, "bad_partner")
    assert await invite(system, "ca", {**TEAM, "partner": "offline"}) == (409, "partner_not_live")
    assert await invite(system, "ca", {**TEAM, "opponent_partner": "offline"}) == (409, "partner_not_live")
    assert (await invite(system, "cx", {"opponent": "cy"}))[0] == 201  # cx now holds a match (its invite)
    assert await invite(system, "ca", {**TEAM, "opponent_partner": "cx"}) == (409, "already_in_match")
    for creator in CREATORS.values():
        assert not await system.redis.exists(keys.creator_match(creator))
