"""Matches (PK battles): invites, exact scoring from settlement, the end-of-match cutoff, one `match_ended`.

Against the real embedded Valkey and real sockets; matches last a second or two (GIFTING_MATCH_DURATION_S is a
setting) and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gifting import gifts, keys
from gifting.app import redis_client
from gifting.rooms.matches import MatchError, MatchStore
from gifting.rooms.store import RoomStore, history_events
from tests.conftest import SystemFactory, WsClient, gift_id, make_settings
from tests.test_settlement import assert_audit_clean, balances, grant, processes
from workers.settlement import SettlementWorker

pytestmark = pytest.mark.cluster  # on a standalone Valkey and on a Valkey Cluster (tests/conftest.py)

WAIT_S = 30.0
FAST = {"payout_interval_ms": 50, "match_duration_s": 2}  # the worker sweeps matches every payout interval


async def wait_until(predicate: Callable[[], Awaitable[bool]], what: str, timeout_s: float = WAIT_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def server_ms(redis: aioredis.Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def match_events(redis: aioredis.Redis, room: str) -> list[dict[str, Any]]:
    entries = await redis.xrange(keys.room_history(room))
    played = ("match_started", "match_score", "match_ended")  # match_invited: only in the invitee's room
    return [e for e in history_events(entries) if e["kind"] in played]


async def start_match(system: Any, a: str = "ca", b: str = "cb", duration_s: int = 2) -> tuple[str, str, str]:
    room_a, room_b = await system.open_room(a), await system.open_room(b)
    invite = await system.http.post(
        "/v1/matches", headers=system.auth(a, "creator"), json={"opponent": b, "duration_s": duration_s}
    )
    assert invite.status_code == 201, invite.text
    match: str = invite.json()["id"]
    accepted = await system.http.post(f"/v1/matches/{match}/accept", headers=system.auth(b, "creator"))
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["status"] == "live"
    return match, room_a, room_b


async def test_scores_are_exact_under_concurrent_gifts_and_resends(start_system: SystemFactory) -> None:
    """Viewers of both rooms gift at once and resend every gift: each side's points are exactly the coins
    settled to it, both rooms get one match_started and one match_ended with the same result and MVPs."""
    system = await start_system(**FAST)
    match, room_a, room_b = await start_match(system, duration_s=3)
    viewers: list[tuple[WsClient, str, str]] = []
    for i in range(4):
        user, room = f"v{i}", (room_a if i % 2 == 0 else room_b)
        await system.grant(user, 1000)
        client = await system.connect(user)
        assert (await client.join(room))["type"] == "joined"
        viewers.append((client, user, room))
    expected: Counter[str] = Counter()
    mvp: dict[str, Counter[str]] = {"a": Counter(), "b": Counter()}

    async def storm(client: WsClient, user: str, room: str) -> None:
        side = "a" if room == room_a else "b"
        for gift, coins in (("rose", 1), ("coffee", 10), ("finger_heart", 5)):
            gid = await client.gift(room, gift)
            await client.gift(room, gift, gid=gid)  # a resend: settles and scores once
            results = [await client.result(gid), await client.result(gid)]
            assert [r["status"] for r in results] == ["settled", "settled"], results
            expected[side] += coins
            mvp[side][user] += coins

    await asyncio.gather(*(storm(*v) for v in viewers))
    await wait_until(lambda: _ended(system, match), "the match to end")

    async def announced_ended() -> bool:  # the status turns ended first, the rooms are told after
        kinds = [Counter(e["kind"] for e in await match_events(system.redis, r)) for r in (room_a, room_b)]
        return all(k["match_ended"] for k in kinds)

    await wait_until(announced_ended, "match_ended in both rooms")
    result = (await system.http.get(f"/v1/matches/{match}")).json()
    assert result["result"]["points"] == {"a": expected["a"], "b": expected["b"]}
    assert result["a"]["points"] == expected["a"] and result["b"]["points"] == expected["b"]
    assert result["result"]["draw"] and result["result"]["winner"] is None  # same gifts on both sides
    for side in ("a", "b"):
        named = {m["user"]: m["coins"] for m in result["result"]["mvps"][side]}
        assert named == dict(mvp[side].most_common(3))
    for room in (room_a, room_b):
        events = await match_events(system.redis, room)
        kinds = Counter(e["kind"] for e in events)
        assert kinds["match_started"] == 1 and kinds["match_ended"] == 1, kinds
        assert kinds["match_score"] == 12  # one per distinct gift of either side, none for the resends
        ended = next(e for e in events if e["kind"] == "match_ended")
        assert ended["match"]["result"] == result["result"]
        last = [e for e in events if e["kind"] == "match_score"][-1]
        assert (last["points_a"], last["points_b"]) == (expected["a"], expected["b"])
    invited = [
        [e for e in history_events(await system.redis.xrange(keys.room_history(r))) if e["kind"] == "match_invited"]
        for r in (room_a, room_b)
    ]
    assert [len(i) for i in invited] == [0, 1] and invited[1][0]["match"]["status"] == "invited"
    for client, _, _ in viewers:  # every viewer of either room sees the same final score and result live
        await client.wait_for(lambda m: any(e["kind"] == "match_ended" for e in m.get("events", [])))
        seen = [e for e in client.events() if e["kind"] in ("match_score", "match_ended")]
        assert max(e["points_a"] for e in seen if e["kind"] == "match_score") == expected["a"]
        assert max(e["points_b"] for e in seen if e["kind"] == "match_score") == expected["b"]
        assert [e["match"]["result"] for e in seen if e["kind"] == "match_ended"] == [result["result"]]


async def _ended(system: Any, match: str) -> bool:
    body = (await system.http.get(f"/v1/matches/{match}")).json()
    return bool(body["status"] == "ended")


async def test_cutoff_counts_gifts_accepted_before_the_end_however_late_they_settle(
    redis: aioredis.Redis, valkey_url: str, tmp_path: Path
) -> None:
    """Gifts that entered the stream before the end score even when settled after it; later ones do not; the
    match does not end while an earlier gift is still unsettled, and a redelivered batch scores nothing twice."""
    settings = make_settings(tmp_path, match_duration_s=1)
    client = redis_client(valkey_url)
    try:
        rooms, worker = RoomStore(client, settings), SettlementWorker(client, settings, consumer="w1")
        matches = MatchStore(client, settings, rooms)
        assert await worker.start_up(asyncio.Event())
        room_a, room_b = (await rooms.open("ca", "A", "t")).room, (await rooms.open("cb", "B", "t")).room
        match = (await matches.invite("ca", "cb", 1))["id"]
        end_ms = (await matches.answer(match, "cb", True))["end_ms"]
        await grant(client, "v1", 100)
        before = [gifts.new_request(gift_id=gift_id(), room=r, gift="coffee", count=1, sender="v1", sender_name="V",
                                    hub="") for r in (room_a, room_a, room_b)]  # fmt: skip
        for request in before:
            await gifts.enqueue(client, request)
        await wait_until(lambda: _past(client, end_ms), "the match's end")
        late = gifts.new_request(gift_id=gift_id(), room=room_b, gift="coffee", count=1, sender="v1", sender_name="V",
                                 hub="")  # fmt: skip
        await gifts.enqueue(client, late)
        assert not await matches.finish(match)  # the gifts in flight have not scored yet
        assert await worker.step(pending=False) == 4
        entries = [(f"{end_ms - 1}-0", r) for r in before]  # a redelivery of the same gifts
        await worker.settle([r for _, r in entries], [e for e, _ in entries])
        await worker.flush_acks()
        assert await matches.finish(match) and await matches.finish(match)
        view = await matches.get(match)
        assert view["status"] == "ended"
        assert view["result"]["points"] == {"a": 20, "b": 10} and view["result"]["winner"] == "a"
        for room in (room_a, room_b):
            kinds = Counter(e["kind"] for e in await match_events(client, room))
            assert kinds == Counter(match_started=1, match_score=3, match_ended=1), kinds
    finally:
        await client.aclose()


async def _past(redis: aioredis.Redis, end_ms: int) -> bool:
    return await server_ms(redis) >= end_ms


async def test_every_bad_invite_and_answer_gets_its_code(start_system: SystemFactory) -> None:
    """Self-invites, offline or busy opponents, a too long match, a stranger's or a second answer, an unknown
    match: each is refused with its code, and nothing starts."""
    system = await start_system(match_invite_timeout_s=1, **FAST)
    await system.open_room("ca")
    await system.open_room("cb")
    await system.open_room("cc")

    async def invite(user: str, body: dict[str, Any]) -> tuple[int, str]:
        response = await system.http.post("/v1/matches", headers=system.auth(user, "creator"), json=body)
        return response.status_code, response.json().get("error", {}).get("code", "") or response.json()["id"]

    async def answer(user: str, match: str, action: str = "accept") -> tuple[int, str]:
        response = await system.http.post(f"/v1/matches/{match}/{action}", headers=system.auth(user, "creator"))
        return response.status_code, response.json().get("error", {}).get("code", response.json().get("status"))

    assert await invite("ca", {"opponent": "ca"}) == (400, "bad_opponent")
    assert await invite("ca", {"opponent": "offline"}) == (409, "opponent_not_live")
    assert await invite("nobody", {"opponent": "ca"}) == (409, "room_not_live")
    assert await invite("ca", {"opponent": "cb", "duration_s": 901}) == (400, "bad_duration")
    assert await invite("ca", {"opponent": "cb", "duration_s": "5"}) == (400, "bad_duration")
    assert await invite("ca", {"opponent": 7}) == (400, "bad_opponent")
    status, match = await invite("ca", {"opponent": "cb", "duration_s": 60})
    assert status == 201
    status, rival = await invite("cc", {"opponent": "cb"})  # an invitee may hold several invites...
    assert status == 201
    assert await invite("ca", {"opponent": "cc"}) == (409, "already_in_match")  # ...an inviter one
    assert await answer("cc", match) == (403, "forbidden")
    assert await answer("cb", match) == (200, "live")
    assert await answer("cb", rival) == (409, "already_in_match")  # ...and plays at most one
    assert await invite("cc", {"opponent": "cb"}) == (409, "already_in_match")
    assert await answer("cb", rival, "decline") == (200, "declined")
    assert await answer("cb", match) == (409, "invite_not_pending")
    assert await answer("cb", match, "decline") == (409, "invite_not_pending")
    assert (await system.http.get("/v1/matches/nope")).json()["error"]["code"] == "match_not_found"
    assert (await system.http.get("/v1/matches/nope")).status_code == 404

    assert await invite("cc", {"opponent": "cd"}) == (409, "opponent_not_live")
    await system.open_room("cd")
    status, declined = await invite("cc", {"opponent": "cd"})
    assert await answer("cd", declined, "decline") == (200, "declined")
    assert await answer("cd", declined) == (409, "invite_not_pending")
    status, expiring = await invite("cc", {"opponent": "cd"})  # declining freed both creators
    assert status == 201
    await asyncio.sleep(1.1)  # past the 1 s invite timeout
    assert await answer("cd", expiring) == (409, "invite_expired")
    assert (await system.http.get(f"/v1/matches/{expiring}")).json()["status"] == "expired"


async def test_store_refuses_a_match_longer_than_the_maximum(redis: aioredis.Redis, tmp_path: Path) -> None:
    """MatchStore itself bounds the duration by GIFTING_MATCH_DURATION_S_MAX (and refuses zero)."""
    settings = make_settings(tmp_path, match_duration_s_max=10)
    rooms = RoomStore(redis, settings)
    await rooms.open("ca", "A", "t")
    await rooms.open("cb", "B", "t")
    for duration_s in (0, 11):
        try:
            await MatchStore(redis, settings, rooms).invite("ca", "cb", duration_s)
        except MatchError as exc:
            assert exc.code == "bad_duration"
        else:
            raise AssertionError(f"duration {duration_s} accepted")
    assert not await redis.exists(keys.creator_match("ca"))


async def test_ending_the_stream_mid_match_forfeits_and_both_summaries_name_the_result(
    start_system: SystemFactory,
) -> None:
    """A creator who ends their stream mid-match loses by forfeit whatever the points; the match ends at once
    (not at its planned end) and both creators' stream summaries (and session lists) carry the result."""
    system = await start_system(**FAST)
    match, room_a, room_b = await start_match(system, duration_s=600)
    await system.grant("v1", 100)
    client = await system.connect("v1")
    await client.join(room_a)
    gid = await client.gift(room_a, "coffee")
    assert (await client.result(gid))["status"] == "settled"
    ended = await system.http.post(f"/v1/rooms/{room_a}/end", headers=system.auth("ca", "creator"))
    assert ended.status_code == 200, ended.text
    await wait_until(lambda: _ended(system, match), "the forfeited match to end")
    view = (await system.http.get(f"/v1/matches/{match}")).json()
    assert view["result"]["forfeit"] == "a" and view["result"]["winner"] == "b"
    assert view["result"]["points"] == {"a": 10, "b": 0}
    assert view["end_ms"] < view["started_at_ms"] + 600_000
    await system.http.post(f"/v1/rooms/{room_b}/end", headers=system.auth("cb", "creator"))

    async def summarised() -> bool:  # the worker stores the result, then adds it to each room's summary in turn
        summary = (await system.http.get(f"/v1/rooms/{room_a}/summary")).json()
        return bool(summary["matches"])

    await wait_until(summarised, "the forfeiting room's summary to carry the result")
    for room, creator in ((room_a, "ca"), (room_b, "cb")):
        summary = (await system.http.get(f"/v1/rooms/{room}/summary")).json()
        assert [m["id"] for m in summary["matches"]] == [match], room
        assert summary["matches"][0]["result"] == view["result"]
        sessions = await RoomStore(system.redis, system.settings).sessions(creator, 10)
        assert [[m["result"] for m in s["matches"]] for s in sessions] == [[view["result"]]]
    invite = await system.http.post("/v1/matches", headers=system.auth("cb", "creator"), json={"opponent": "ca"})
    assert invite.json()["error"]["code"] == "room_not_live"  # the markers were released: no longer in a match


async def test_worker_killed_in_the_last_seconds_changes_nothing(
    redis: aioredis.Redis, valkey_url: str, tmp_path: Path
) -> None:
    """kill -9 of the worker process while it settles a backlog in the match's last seconds, gifts after the
    end, then a restart: the points are exactly the coins of the gifts accepted before the end, and each room
    gets one match_ended, the same."""
    settings = make_settings(tmp_path)
    rooms = RoomStore(redis, settings)
    matches = MatchStore(redis, settings, rooms)
    room_a, room_b = (await rooms.open("ca", "A", "t")).room, (await rooms.open("cb", "B", "t")).room
    senders = [f"v{i}" for i in range(4)]
    for sender in senders:
        await grant(redis, sender, 100_000)
    accepted: dict[str, tuple[str, int]] = {}  # gift id -> (room, entry ms)

    async def enqueue(n: int) -> None:
        async with redis.pipeline(transaction=False) as pipe:
            plan = [(gift_id(), (room_a, room_b)[i % 2], senders[i % 4]) for i in range(n)]
            for gid, room, sender in plan:
                request = settlement_request(gid, room, sender)
                pipe.xadd(gifts.stream_of(request), request.to_entry())
            for (gid, room, _), entry_id in zip(plan, await pipe.execute(), strict=True):
                accepted[gid] = (room, int(entry_id.split("-")[0]))

    env = {
        "REDIS_URL": valkey_url,
        "GIFTING_CLAIM_IDLE_MS": "500",
        "GIFTING_SETTLE_BATCH_MAX": "20",
        "GIFTING_DATA_DIR": str(tmp_path),
        "GIFTING_PAYOUT_INTERVAL_MS": "50",
    }
    with processes(tmp_path) as start:
        worker = start("worker", env, "worker-killed.log")
        await wait_until(lambda: _heartbeats(redis), "the worker's first heartbeat")
        match = (await matches.invite("ca", "cb", 6))["id"]  # the kill lands well within its 6 s, even on a busy CPU
        end_ms = (await matches.answer(match, "cb", True))["end_ms"]
        for _ in range(6):
            await enqueue(500)  # a backlog: the kill below leaves most of it, all accepted before the end
        backlog = await gifts.gift_backlog(redis)
        await wait_until(lambda: _progressed(redis, backlog - 200), "some settling")
        worker.send_signal(signal.SIGKILL)
        worker.wait(15)
        assert any(
            [await redis.xrange(keys.gifts_stream(keys.part_of_user(s)), "-", f"({end_ms}-0", count=1) for s in senders]
        ), "the kill should leave a backlog"
        assert (await matches.get(match))["status"] == "live"
        await wait_until(lambda: _past(redis, end_ms), "the end")
        await enqueue(200)  # after the end: settle, never score
        start("worker", env, "worker-restarted.log")
        await wait_until(lambda: _status(matches, match, "ended"), "the match to end after the restart")
    view = await matches.get(match)
    expected = {"a": 0, "b": 0}
    for room, at in accepted.values():
        if at < end_ms:
            expected["a" if room == room_a else "b"] += 10  # coffee
    assert expected["a"] > 0 and view["result"]["points"] == expected
    scoring = sum(1 for _, at in accepted.values() if at < end_ms)
    for room in (room_a, room_b):
        events = await match_events(redis, room)
        kinds = Counter(e["kind"] for e in events)
        assert kinds == Counter(match_started=1, match_score=scoring, match_ended=1), kinds
        assert next(e for e in events if e["kind"] == "match_ended")["match"]["result"] == view["result"]


def settlement_request(gid: str, room: str, sender: str) -> gifts.GiftRequest:
    return gifts.new_request(gift_id=gid, room=room, gift="coffee", count=1, sender=sender, sender_name=sender, hub="")


async def _heartbeats(redis: aioredis.Redis) -> bool:
    return await redis.zcard(keys.WORKER_HEARTBEATS) > 0


async def _progressed(redis: aioredis.Redis, below: int) -> bool:
    return await gifts.gift_backlog(redis) <= below


async def _status(matches: MatchStore, match: str, status: str) -> bool:
    return bool((await matches.get(match))["status"] == status)


async def test_a_reconnecting_viewer_resumes_the_score_without_a_gap(start_system: SystemFactory) -> None:
    """A viewer of side b who drops resumes by (epoch, offset) and gets every match_score it missed, made by
    gifts in the other room; a late joiner finds the score in its snapshot."""
    system = await start_system(**FAST)
    match, room_a, room_b = await start_match(system, duration_s=600)
    await system.grant("va", 1000)
    gifter = await system.connect("va")
    await gifter.join(room_a)
    watcher = await system.connect("vb")
    joined = await watcher.join(room_b)
    since = {"epoch": joined["epoch"], "offset": joined["offset"]}
    await watcher.close()
    sent = [await gifter.gift(room_a, "coffee") for _ in range(3)]
    for gid in sent:
        assert (await gifter.result(gid))["status"] == "settled"
    await wait_until(lambda: _scores_in(system.redis, room_b, 3), "the scores in room b's history")
    again = await system.connect("vb")
    resumed = await again.join(room_b, since=since)
    assert resumed["recovered"] is True
    await again.wait_for(lambda m: any(e.get("points_a") == 30 for e in m.get("events", [])))
    scores = [e for e in again.events() if e["kind"] == "match_score"]
    assert [(e["gift_id"], e["points_a"]) for e in scores] == list(zip(sent, (10, 20, 30), strict=True))
    late = await system.connect("vc")
    snapshot = await late.join(room_b)
    assert [e["points_a"] for e in snapshot["recent"] if e["kind"] == "match_score"][-1] == 30
    assert (await system.http.get(f"/v1/matches/{match}")).json()["a"]["points"] == 30


async def _scores_in(redis: aioredis.Redis, room: str, n: int) -> bool:
    return sum(1 for e in await match_events(redis, room) if e["kind"] == "match_score") >= n


async def test_in_a_gift_match_only_the_named_gift_scores(start_system: SystemFactory) -> None:
    """Mode `gift`: only the named gift scores (other gifts settle as usual); an unknown gift is refused."""
    system = await start_system(**FAST)
    room_a, _room_b = await system.open_room("ca"), await system.open_room("cb")
    headers = system.auth("ca", "creator")
    bad = await system.http.post("/v1/matches", headers=headers, json={"opponent": "cb", "gift": "nope"})
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "unknown_gift")
    invite = await system.http.post("/v1/matches", headers=headers, json={"opponent": "cb", "gift": "coffee"})
    match = invite.json()["id"]
    assert (invite.json()["mode"], invite.json()["gift"]) == ("gift", "coffee")
    await system.http.post(f"/v1/matches/{match}/accept", headers=system.auth("cb", "creator"))
    await system.grant("v1", 1000)
    client = await system.connect("v1")
    await client.join(room_a)
    for gift in ("rose", "coffee", "finger_heart", "coffee"):
        assert (await client.result(await client.gift(room_a, gift)))["status"] == "settled"
    view = (await system.http.get(f"/v1/matches/{match}")).json()
    assert (view["a"]["points"], view["b"]["points"]) == (20, 0)
    assert (await system.wallet("v1"))["coins"] == 1000 - 26


async def test_a_gift_naming_a_match_that_ended_is_rejected_and_nothing_moves(start_system: SystemFactory) -> None:
    """A gift that names the match (its room's side) scores while it is live; once it ended it is rejected
    `match_ended` and no coin moves; an ordinary gift to the same room still settles; a gift naming a match its
    room is not in is `not_in_match`; a malformed match id is `bad_message`."""
    system = await start_system(**FAST)
    match, room_a, _room_b = await start_match(system, duration_s=1)
    room_c = await system.open_room("cc")
    await system.grant("v1", 1000)
    client = await system.connect("v1")
    await client.join(room_a)

    async def send(room: str, named: str | None) -> dict[str, Any]:
        gid = gift_id()
        await client.send({"type": "gift", "room": room, "gift": "coffee", "count": 1, "gift_id": gid, "match": named})
        return await client.result(gid)

    assert (await send(room_a, match))["status"] == "settled"
    await wait_until(lambda: _ended(system, match), "the match to end")
    assert (await system.http.get(f"/v1/matches/{match}")).json()["result"]["points"] == {"a": 10, "b": 0}
    ended = await send(room_a, match)
    assert (ended["status"], ended["reason"]) == ("rejected", "match_ended")
    assert (await system.wallet("v1"))["coins"] == 990  # nothing moved
    assert (await send(room_a, None))["status"] == "settled"  # an ordinary gift still works
    stranger = await send(room_c, match)
    assert (stranger["status"], stranger["reason"]) == ("rejected", "not_in_match")
    assert (await send(room_a, "f" * 32))["reason"] == "not_in_match"  # no such match
    assert (await system.wallet("v1"))["coins"] == 980
    gid = gift_id()
    await client.send({"type": "gift", "room": room_a, "gift": "coffee", "count": 1, "gift_id": gid, "match": "x!"})
    error = await client.wait_for(lambda m: m.get("type") == "error")
    assert error["code"] == "bad_message" and "match" in error["message"]
    http = await system.http.post(
        f"/v1/rooms/{room_a}/gifts", headers=system.auth("v1"), json={"gift": "coffee", "gift_id": gift_id(),
                                                                       "count": 1, "match": match},
    )  # fmt: skip
    assert (http.json()["status"], http.json()["reason"]) == ("rejected", "match_ended")
    assert (await system.wallet("v1"))["coins"] == 980
    assert (await system.http.get(f"/v1/matches/{match}")).json()["result"]["points"] == {"a": 10, "b": 0}


async def test_a_gift_naming_the_match_in_flight_at_the_end_settles_by_the_cutoff(
    redis: aioredis.Redis, valkey_url: str, tmp_path: Path
) -> None:
    """The rule for a gift naming a match is the scoring cutoff: accepted by the hub before the end, it settles
    and scores however late; accepted at or after the end, `match_ended`, nothing moves; a redelivery of either
    gets its first outcome."""
    settings = make_settings(tmp_path, match_duration_s=1)
    client = redis_client(valkey_url)
    try:
        rooms, worker = RoomStore(client, settings), SettlementWorker(client, settings, consumer="w1")
        matches = MatchStore(client, settings, rooms)
        assert await worker.start_up(asyncio.Event())
        room_a = (await rooms.open("ca", "A", "t")).room
        await rooms.open("cb", "B", "t")
        match = (await matches.invite("ca", "cb", 1))["id"]
        end_ms = (await matches.answer(match, "cb", True))["end_ms"]
        await grant(client, "v1", 100)
        in_time, late = (
            gifts.new_request(gift_id=gift_id(), room=room_a, gift="coffee", count=1, sender="v1", sender_name="V",
                              hub="", match=match) for _ in range(2)
        )  # fmt: skip
        await wait_until(lambda: _past(client, end_ms), "the match's end")
        for _ in range(2):  # the second time: a redelivery
            outcomes = await worker.settle([in_time, late], [f"{end_ms - 1}-0", f"{end_ms}-0"])
            assert [(o.status, o.reason) for o in outcomes] == [("settled", ""), ("rejected", "match_ended")]
        assert (await balances(client, "v1"))[0] == 90
        await assert_audit_clean(client)
        await worker.flush_acks()
        assert await matches.finish(match)
        assert (await matches.get(match))["result"]["points"] == {"a": 10, "b": 0}
    finally:
        await client.aclose()


async def test_a_pooled_gift_scores_for_its_side_once_and_its_pledgers_are_mvps(start_system: SystemFactory) -> None:
    """A pool completed in a match's room scores its price for that side exactly once (a resent completing pledge
    scores nothing more), both rooms see the one match_score, and each pledger is an MVP for their pledge."""
    system = await start_system(**FAST)
    match, room_a, room_b = await start_match(system, duration_s=600)
    for user in ("v1", "v2", "v3"):
        await system.grant(user, 1000)
    opened = await system.http.post(
        f"/v1/rooms/{room_a}/pools", headers=system.auth("v1"), json={"gift": "galaxy", "deadline_s": 60}
    )
    pool = opened.json()["pool"]["id"]

    async def pledge(user: str, coins: int, pid: str) -> dict[str, Any]:
        response = await system.http.post(
            f"/v1/pools/{pool}/pledges", headers=system.auth(user), json={"coins": coins, "pledge_id": pid}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    assert (await pledge("v1", 600, gift_id()))["status"] == "accepted"
    completing = gift_id()
    for _ in range(2):  # the second: a resend of the pledge that completed the pool
        assert (await pledge("v2", 400, completing))["status"] == "accepted"
    client = await system.connect("v3")
    await client.join(room_b)
    assert (await client.result(await client.gift(room_b, "coffee")))["status"] == "settled"
    view = (await system.http.get(f"/v1/matches/{match}")).json()
    assert (view["a"]["points"], view["b"]["points"]) == (1000, 10)
    await system.http.post(f"/v1/rooms/{room_b}/end", headers=system.auth("cb", "creator"))  # b forfeits
    await wait_until(lambda: _ended(system, match), "the forfeited match to end")
    result = (await system.http.get(f"/v1/matches/{match}")).json()["result"]
    assert result["points"] == {"a": 1000, "b": 10}
    assert [(m["user"], m["coins"]) for m in result["mvps"]["a"]] == [("v1", 600), ("v2", 400)]
    for room in (room_a, room_b):
        scores = [e for e in await match_events(system.redis, room) if e["kind"] == "match_score"]
        assert [(e["gift_id"], e["side"]) for e in scores] == [("pool:" + pool, "a"), (scores[1]["gift_id"], "b")]
