"""Fan clubs: joining by the membership gift, levels from gifting and visits, the pause, badges, member perks
(member-only gift, free premium entry), the member list, and bad input. Real Valkey, real sockets."""

from __future__ import annotations

from typing import Any

import pytest

from gifting import clock, keys
from gifting.ledger import rules
from gifting.ledger.audit import run_audit
from tests.conftest import System, WsClient, gift_id

pytestmark = pytest.mark.cluster  # a money path or a multi-key step in every test; a short module

COFFEE = 10  # the membership gift in these tests
CLUB = {"membership_gift": "coffee", "member_gift": "cap", "free_premium": True}


async def club(system: System, body: dict[str, Any] | None = None, creator: str = "creator1") -> Any:
    return await system.http.put("/v1/fanclub", headers=system.auth(creator, "creator"), json=body or CLUB)


async def send(client: WsClient, room: str, gift: str, gid: str | None = None) -> dict[str, Any]:
    return await client.result(await client.gift(room, gift, gid=gid))


async def membership(system: System, user: str, creator: str = "creator1") -> Any:
    response = await system.http.get(f"/v1/creators/{creator}/fanclub", headers=system.auth(user))
    assert response.status_code == 200, response.text
    return response.json()["membership"]


async def member_list(system: System, creator: str = "creator1") -> list[dict[str, Any]]:
    response = await system.http.get("/v1/fanclub/members", headers=system.auth(creator, "creator"))
    assert response.status_code == 200, response.text
    members: list[dict[str, Any]] = response.json()["members"]
    return members


async def audit_clean(system: System) -> None:
    report = await run_audit(system.redis)
    assert report.clean, report.findings


async def joined_member(system: System, user: str = "v1", coins: int = 1000) -> tuple[str, WsClient]:
    """A live room of creator1 with a club, and `user` a member by the membership gift."""
    assert (await club(system)).status_code == 200
    room = await system.open_room()
    await system.grant(user, coins)
    client = await system.connect(user)
    await client.join(room)
    assert (await send(client, room, "coffee"))["status"] == "settled"
    return room, client


async def test_the_membership_gift_makes_a_member_whose_gifts_carry_a_badge(system: System) -> None:
    """A settled membership gift joins the club (points = its coins); every gift of a member carries
    `fan: {level}` in the room and in the creator's feed; the creator's list shows the member."""
    room, client = await joined_member(system)
    creator = await system.connect("creator1", "creator")
    await creator.join(room)
    assert (await send(client, room, "rose"))["status"] == "settled"
    feed = await creator.wait_for(lambda m: any(e.get("gift") == "rose" for e in m.get("events", [])))
    rose = next(e for e in feed["events"] if e.get("gift") == "rose")
    assert rose["fan"] == {"level": 1} and "diamonds" in rose
    seen = await client.wait_for(lambda m: any(e.get("gift") == "rose" for e in m.get("events", [])))
    assert next(e for e in seen["events"] if e.get("gift") == "rose")["fan"] == {"level": 1}
    member = await membership(system, "v1")
    assert (member["points"], member["level"], member["status"]) == (COFFEE + 1, 1, "active")
    assert [(m["user"], m["level"]) for m in await member_list(system)] == [("v1", 1)]
    await audit_clean(system)


async def test_a_gift_from_a_non_member_has_no_badge(system: System) -> None:
    """Gifts from someone who never sent the membership gift count for nothing and carry no badge."""
    assert (await club(system)).status_code == 200
    room = await system.open_room()
    await system.grant("v2", 100)
    client = await system.connect("v2")
    await client.join(room)
    assert (await send(client, room, "rose"))["status"] == "settled"
    seen = await client.wait_for(lambda m: any(e.get("gift") == "rose" for e in m.get("events", [])))
    assert "fan" not in next(e for e in seen["events"] if e.get("gift") == "rose")
    assert await membership(system, "v2") is None and await member_list(system) == []


async def test_the_level_grows_with_gifting_and_visits_each_counted_once(system: System) -> None:
    """Coins gifted to the creator and one visit per UTC day add points; a resent gift and a second visit the
    same day add nothing; the level follows rules.fan_level."""
    room, client = await joined_member(system)
    gid = gift_id()
    for _ in range(2):  # the second is a resend of the same gift_id: its original outcome, no points
        assert (await send(client, room, "doughnut", gid))["status"] == "settled"
    assert (await membership(system, "v1"))["points"] == COFFEE + 30
    other = await system.connect("v1")
    await other.join(room)  # a visit today: + GIFTING_FANCLUB_VISIT_POINTS, once
    await other.join(room)
    points = COFFEE + 30 + system.settings.fanclub_visit_points
    member = await membership(system, "v1")
    assert (member["points"], member["level"]) == (points, rules.fan_level(points)) and member["level"] == 2
    await audit_clean(system)


async def test_a_member_without_activity_is_paused_until_the_next(system: System) -> None:
    """After GIFTING_FANCLUB_PAUSE_S without activity the member is paused (level kept, no member perks);
    their next activity resumes them at once."""
    room, client = await joined_member(system)
    stale = clock.now_ms() - system.settings.fanclub_pause_s * 1000 - 1
    await system.redis.hset(keys.fanclub_active("creator1"), "v1", stale)
    assert (await member_list(system))[0]["status"] == "paused"
    refused = await send(client, room, "cap")
    assert (refused["status"], refused["reason"]) == ("rejected", "members_only")
    assert (await send(client, room, "rose"))["status"] == "settled"  # activity: resumed
    assert (await membership(system, "v1"))["status"] == "active"
    assert (await send(client, room, "cap"))["status"] == "settled"


async def test_the_member_only_gift_is_refused_to_non_members(system: System) -> None:
    """The creator's member-only gift from a non-member is rejected `members_only` and moves nothing; a member
    sends it like any gift."""
    room, member = await joined_member(system)
    await system.grant("v2", 500)
    outsider = await system.connect("v2")
    await outsider.join(room)
    refused = await send(outsider, room, "cap")
    assert (refused["status"], refused["reason"]) == ("rejected", "members_only")
    assert (await system.wallet("v2"))["coins"] == 500
    assert (await send(member, room, "cap"))["status"] == "settled"
    assert (await system.wallet("v1"))["coins"] == 1000 - COFFEE - 99
    await audit_clean(system)


async def test_members_enter_premium_streams_free_when_the_creator_chose_it(system: System) -> None:
    """With `free_premium`, an active member joins a premium stream without a ticket; a non-member still needs
    one; without the perk, members need one too."""
    room, _client = await joined_member(system)
    await system.http.post(f"/v1/rooms/{room}/premium", headers=system.auth("creator1", "creator"), json={"coins": 50})
    member = await system.connect("v1")
    assert (await member.join(room))["type"] == "joined"
    outsider = await system.connect("v2")
    assert (await outsider.join(room))["code"] == "ticket_required"
    assert (await club(system, {**CLUB, "free_premium": False})).status_code == 200
    again = await system.connect("v1")
    assert (await again.join(room))["code"] == "ticket_required"


async def test_a_fan_club_gift_to_oneself_is_refused(system: System) -> None:
    """The creator sending their own membership gift in their room is a self-gift: rejected, nothing moves, no
    membership."""
    assert (await club(system)).status_code == 200
    room = await system.open_room()
    await system.grant("creator1", 100)
    client = await system.connect("creator1", "creator")
    await client.join(room)
    result = await send(client, room, "coffee")
    assert (result["status"], result["reason"]) == ("rejected", "self_gift")
    assert (await system.wallet("creator1"))["coins"] == 100
    assert await member_list(system) == []


async def test_bad_fan_club_choices_are_refused(system: System) -> None:
    """Unknown gifts, the member-only gift equal to the membership gift, a non-boolean free_premium and a
    viewer setting up a club: each its code, and nothing is stored."""
    cases = [
        (await club(system, {**CLUB, "membership_gift": "nope"}), 400, "unknown_gift"),
        (await club(system, {**CLUB, "membership_gift": None}), 400, "unknown_gift"),
        (await club(system, {**CLUB, "member_gift": "nope"}), 400, "unknown_gift"),
        (await club(system, {**CLUB, "member_gift": "coffee"}), 400, "bad_fanclub"),
        (await club(system, {**CLUB, "free_premium": "yes"}), 400, "bad_fanclub"),
        (await system.http.put("/v1/fanclub", headers=system.auth("v1"), json=CLUB), 403, "forbidden"),
        (await system.http.get("/v1/creators/bad creator/fanclub"), 400, "bad_creator"),
    ]
    for response, status, code in cases:
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text
    assert (await system.http.get("/v1/creators/creator1/fanclub")).json()["config"] is None


async def test_the_audit_finds_a_membership_without_its_gift(system: System) -> None:
    """A member whose joining gift never settled is a finding."""
    await joined_member(system)
    await system.redis.hset(keys.fanclub_members("creator1"), "ghost", f"{clock.now_ms()}|{gift_id()}|Ghost")
    report = await run_audit(system.redis)
    assert any("ghost" in f for f in report.findings), report.findings
