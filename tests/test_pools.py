"""Pooled gifts: pledges are pending transfers; a pool completes at its price or voids at its deadline."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gifting import clock, keys
from gifting.ledger import partitions, rules
from gifting.ledger import pools as ledger_pools
from gifting.ledger.audit import run_audit
from gifting.rooms.pools import PoolOp
from gifting.rooms.store import history_events, room_keys
from tests.conftest import System, SystemFactory, gift_id, spawn, stop
from workers.settlement import SettlementWorker

pytestmark = pytest.mark.cluster  # on a standalone Valkey and on a Valkey Cluster (tests/conftest.py)

WAIT_S = 30.0


def pool_key(pool: str) -> str:
    """A pool's record, in the partition its id names."""
    part = rules.pool_part(pool)
    assert part is not None, pool
    return keys.pool(part, pool)


async def audit_clean(redis: aioredis.Redis) -> None:
    report = await run_audit(redis)
    assert report.clean, report.summary()


async def open_pool(system: System, room: str, gift: str = "galaxy", deadline_s: int = 60, user: str = "v0") -> str:
    response = await system.http.post(
        f"/v1/rooms/{room}/pools", headers=system.auth(user), json={"gift": gift, "deadline_s": deadline_s}
    )
    assert response.status_code == 201, response.text
    pool: str = response.json()["pool"]["id"]
    return pool


async def pledge(system: System, user: str, pool: str, coins: int, pid: str | None = None) -> Any:
    return await system.http.post(
        f"/v1/pools/{pool}/pledges", headers=system.auth(user), json={"coins": coins, "pledge_id": pid or gift_id()}
    )


async def wait_pool(system: System, pool: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        body = (await system.http.get(f"/v1/pools/{pool}")).json()["pool"]
        if body["status"] == status:
            result: dict[str, Any] = body
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"pool {pool} did not become {status}")


async def test_pool_completes_once_under_concurrent_pledges(system: System) -> None:
    """Five viewers pledge at once toward a 1,000-coin gift: only what fits is accepted; one completion."""
    for i in range(6):
        await system.grant(f"v{i}", 1000)
    room = await system.open_room("c1")
    watcher = await system.connect("w")
    await watcher.join(room)
    pool = await open_pool(system, room)
    results = await asyncio.gather(*(pledge(system, f"v{i}", pool, 300) for i in range(5)))
    accepted = [r for r in results if r.json().get("status") == "accepted"]
    assert len(accepted) == 3
    assert {r.json()["reason"] for r in results if r.json().get("status") == "rejected"} == {"pledge_exceeds_remaining"}
    last = await pledge(system, "v5", pool, 100)
    assert last.status_code == 200 and last.json()["pool"]["status"] == "completed"
    again = await pledge(system, "v5", pool, 1)
    assert again.json()["reason"] == "pool_completed"
    assert (await system.wallet("c1"))["diamonds"] == 500
    completed = await watcher.wait_for(
        lambda m: m.get("type") == "events" and any(e["kind"] == "pool_completed" for e in m["events"])
    )
    event = next(e for e in completed["events"] if e["kind"] == "pool_completed")
    assert sum(c["coins"] for c in event["pool"]["contributors"]) == 1000 and len(event["pool"]["contributors"]) == 4
    history = [f["e"] for _, f in await system.redis.xrange(keys.room_history(room))]
    assert sum('"pool_completed"' in e for e in history) == 1
    top = (await system.http.get(f"/v1/rooms/{room}/leaderboard")).json()["top"]
    assert {t["user"]: t["coins"] for t in top} == {c["user"]: c["coins"] for c in event["pool"]["contributors"]}
    await audit_clean(system.redis)


async def test_pool_expiring_under_concurrent_pledges_returns_every_coin(start_system: SystemFactory) -> None:
    """An incomplete pool at its deadline voids every pledge, even with pledges racing the deadline."""
    system = await start_system(pool_deadline_s_min=1, payout_interval_ms=50)
    for i in range(4):
        await system.grant(f"v{i}", 500)
    room = await system.open_room("c1")
    watcher = await system.connect("w")
    await watcher.join(room)
    pool = await open_pool(system, room, deadline_s=1)
    await asyncio.gather(*(pledge(system, f"v{i}", pool, 100) for i in range(4)))
    await wait_pool(system, pool, "expired")
    late = await pledge(system, "v0", pool, 10)
    assert late.json()["reason"] in ("pool_expired",)
    for i in range(4):
        assert (await system.wallet(f"v{i}"))["coins"] == 500
    expired = await watcher.wait_for(
        lambda m: m.get("type") == "events" and any(e["kind"] == "pool_expired" for e in m["events"])
    )
    assert expired["type"] == "events"
    await audit_clean(system.redis)


async def test_pledge_resend_is_idempotent_and_conflicts_are_errors(system: System) -> None:
    """The same pledge_id twice debits once; the same id with other coins is pledge_id_conflict."""
    await system.grant("v1", 1000)
    room = await system.open_room("c1")
    pool = await open_pool(system, room, user="v1")
    pid = gift_id()
    first, second = await pledge(system, "v1", pool, 200, pid), await pledge(system, "v1", pool, 200, pid)
    assert first.json()["status"] == second.json()["status"] == "accepted"
    assert first.json()["coins"] == second.json()["coins"] == 800
    conflict = await pledge(system, "v1", pool, 300, pid)
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "pledge_id_conflict"
    assert (await system.wallet("v1"))["coins"] == 800
    await audit_clean(system.redis)


async def test_pool_bad_input(system: System) -> None:
    """Unknown, malformed and closed pools, pledging more than owned, retired gifts, bad deadlines: clear codes."""
    await system.grant("v1", 50)
    room = await system.open_room("c1")
    pool = await open_pool(system, room, user="v1")
    cases = [
        (await pledge(system, "v1", pool, 100), 422, "insufficient_coins"),
        (await pledge(system, "v1", "p_0123456789abcdef", 10), 422, "unknown_pool"),
        (await pledge(system, "v1", "nope", 10), 400, "bad_pool"),
        (await pledge(system, "v1", pool, 0), 400, "bad_amount"),
        (await pledge(system, "v1", pool, -5), 400, "bad_amount"),
        (await pledge(system, "c1", pool, 10), 422, "self_gift"),
    ]
    for response, status, code in cases:
        body = response.json()
        assert response.status_code == status, body
        assert code in (body.get("reason"), body.get("error", {}).get("code")), body
    admin = system.auth("boss", "admin")
    await system.http.post("/v1/admin/gifts/castle/retire", headers=admin)
    await asyncio.sleep(0.2)
    for body, code in [
        ({"gift": "castle", "deadline_s": 60}, "unknown_gift"),
        ({"gift": "galaxy", "deadline_s": 1}, "bad_deadline"),
        ({"gift": "galaxy", "deadline_s": 10**6}, "bad_deadline"),
        ({"gift": "galaxy", "deadline_s": "60"}, "bad_deadline"),
    ]:
        response = await system.http.post(f"/v1/rooms/{room}/pools", headers=system.auth("v1"), json=body)
        assert response.status_code == 400 and response.json()["error"]["code"] == code, body
    assert (await system.wallet("v1"))["coins"] == 50
    await audit_clean(system.redis)


async def test_pools_over_the_websocket(system: System) -> None:
    """pool_start and pledge work over the websocket, with pool_started and pledge_result answers."""
    await system.grant("v1", 2000)
    room = await system.open_room("c1")
    client = await system.connect("v1")
    joined = await client.join(room)
    assert joined["pools"] == []
    await client.send({"type": "pool_start", "room": room, "gift": "galaxy", "deadline_s": 60, "ref": "a"})
    started = await client.wait_type("pool_started")
    assert started["ref"] == "a" and started["pool"]["price"] == 1000
    pid = gift_id()
    await client.send({"type": "pledge", "pool": started["pool"]["id"], "coins": 1000, "pledge_id": pid})
    result = await client.wait_for(lambda m: m.get("pledge_id") == pid)
    assert result["status"] == "accepted" and result["pool"]["status"] == "completed" and result["coins"] == 1000


async def test_worker_killed_mid_pool_leaves_the_audit_clean(
    redis: aioredis.Redis, valkey_url: str, tmp_path: Path, start_system: SystemFactory
) -> None:
    """kill -9 of the worker while pledges stream in: after a restart every pool is consistent and audited."""
    system = await start_system(worker=False, pool_deadline_s_min=1)
    viewers = [f"v{i}" for i in range(10)]
    for user in viewers:
        await system.grant(user, 10_000)
    room = await system.open_room("c1")
    pools = [await open_pool(system, room, "galaxy", deadline_s=3, user=viewers[i]) for i in range(3)]
    env = {"REDIS_URL": valkey_url, "GIFTING_DATA_DIR": str(tmp_path), "GIFTING_CLAIM_IDLE_MS": "300",
           "GIFTING_PAYOUT_INTERVAL_MS": "50", "GIFTING_SETTLE_BATCH_MAX": "5"}  # fmt: skip
    worker = spawn("worker", env, tmp_path / "worker1.log")
    try:
        for i in range(300):
            op = PoolOp("pledge", pools[i % 3], gift_id(), 7, viewers[i % 10], viewers[i % 10], "")
            await redis.xadd(keys.gifts_stream(keys.part_of_user(op.sender)), op.to_entry())
        await asyncio.sleep(0.3)
        stop(worker, kill=True)
        worker = spawn("worker", env, tmp_path / "worker2.log")
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            statuses = [await redis.hget(pool_key(p), "status") for p in pools]
            backlog = sum([await redis.xlen(keys.gifts_stream(part)) for part in partitions.all_tags()])
            if "open" not in statuses and backlog == 0:
                break
            await asyncio.sleep(0.1)
        assert "open" not in statuses, statuses
    finally:
        stop(worker)
    await audit_clean(redis)


async def history_kinds(redis: aioredis.Redis, room: str) -> list[str]:
    return [e["kind"] for e in history_events(await redis.xrange(keys.room_history(room)))]


async def test_room_end_voids_open_pools_once_and_pays_the_creator_nothing(system: System) -> None:
    """Ending a room voids its open pool (pledges back, one pool_voided before room_ended); a later pledge that
    would have completed it is refused, the creator gets nothing, and every room key expires."""
    await system.grant("v1", 1000)
    await system.grant("v2", 1000)
    room = await system.open_room("c1")
    pool = await open_pool(system, room, user="v1")
    assert (await pledge(system, "v1", pool, 600)).json()["status"] == "accepted"
    ended = await system.http.post(f"/v1/rooms/{room}/end", headers=system.auth("c1", "creator"))
    assert ended.status_code == 200, ended.text
    late = await pledge(system, "v2", pool, 400)
    assert late.status_code == 422 and late.json()["reason"] == "pool_voided", late.text
    assert (await system.wallet("c1"))["diamonds"] == 0
    assert (await system.wallet("v1"))["coins"] == (await system.wallet("v2"))["coins"] == 1000
    kinds = await history_kinds(system.redis, room)
    assert kinds.count("pool_voided") == kinds.count("room_ended") == 1, kinds
    assert kinds.index("pool_voided") < kinds.index("room_ended") and kinds[-1] == "stream_summary", kinds
    again = await system.http.post(f"/v1/rooms/{room}/end", headers=system.auth("c1", "creator"))
    assert again.status_code == 409 and again.json()["error"]["code"] == "room_not_live"
    for key in (*room_keys(room), pool_key(pool), keys.room_ended(keys.part_of_user("c1"), room)):
        assert await system.redis.ttl(key) != -1, key  # gone, or expiring
    assert await system.redis.ttl(pool_key(pool)) > 0
    await audit_clean(system.redis)


async def test_no_pool_opens_and_no_pledge_lands_once_a_room_end_began(start_system: SystemFactory) -> None:
    """A room end interrupted after closing the room (a crash): pledges get room_not_live, no pool opens, and the
    worker finishes the end (pools voided, room_ended and summary once, one session entry)."""
    system = await start_system(worker=False)
    await system.grant("v1", 1000)
    room = await system.open_room("c1")
    pool = await open_pool(system, room, user="v1")
    worker = SettlementWorker(system.redis, system.settings)
    await worker.settle_pool_op(PoolOp("pledge", pool, gift_id(), 100, "v1", "v1"))
    async with system.redis.pipeline(transaction=False) as pipe:  # the end's first steps, then the crash
        pipe.zadd(keys.ROOMS_ENDING, {room: 1})
        pipe.hset(keys.room_ended(keys.part_of_user("c1"), room), "*", 1)
        await pipe.execute()
    status, reason, *_ = await worker.ledger.pool_op("pledge", pool, gift_id(), "v1", 900, "v1")
    assert (status, reason) == ("rejected", "room_not_live")
    refused = await system.http.post(
        f"/v1/rooms/{room}/pools", headers=system.auth("v1"), json={"gift": "rose", "deadline_s": 60}
    )
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "room_not_live", refused.text
    assert await worker.sweep_room_ends() == 1
    assert await worker.sweep_room_ends() == 0
    assert (await system.http.get(f"/v1/rooms/{room}")).json()["status"] == "ended"
    kinds = await history_kinds(system.redis, room)
    assert [k for k in kinds if k != "pool_progress"] == ["pool_voided", "room_ended", "stream_summary"], kinds
    assert len(await system.redis.lrange(keys.creator_sessions("c1"), 0, -1)) == 1
    assert (await system.wallet("v1"))["coins"] == 1000
    await audit_clean(system.redis)


async def test_ending_an_interrupted_end_again_finishes_it_once(system: System) -> None:
    """A room whose end stopped after marking it ended (no room_ended yet) is finished by ending it again."""
    room = await system.open_room("c1")
    async with system.redis.pipeline(transaction=False) as pipe:  # two slots (a cluster): no transaction
        # Interrupted just now: the worker's retry of old interrupted ends (GIFTING_ROOM_END_RETRY_S) stays out of
        # it, or its concurrent finish could list the room as ending again while the second request comes.
        pipe.zadd(keys.ROOMS_ENDING, {room: clock.now_ms()})
        pipe.hset(keys.room_meta(room), mapping={"status": "ended", "ended_at_ms": 1})
        await pipe.execute()
    creator = system.auth("c1", "creator")
    assert (await system.http.post(f"/v1/rooms/{room}/end", headers=creator)).status_code == 200
    assert (await system.http.post(f"/v1/rooms/{room}/end", headers=creator)).status_code == 409
    assert await history_kinds(system.redis, room) == ["room_ended", "stream_summary"]
    assert await system.redis.zscore(keys.ROOMS_ENDING, room) is None


async def test_announcing_after_a_room_ended_writes_no_key_without_a_ttl(system: System) -> None:
    """An event announced after the end (a gift settled while the room ended) leaves its stats and top keys
    expiring with the room, not forever."""
    room = await system.open_room("c1")
    assert (await system.http.post(f"/v1/rooms/{room}/end", headers=system.auth("c1", "creator"))).status_code == 200
    late = {"kind": "gift", "gift_id": "g1", "gift": "rose", "count": 1, "coins": 1, "diamonds": 0, "sender": "v1"}
    await system.app.state.rooms.announce(room, [("g1", late | {"sender_name": "v1", "level": 1, "ts": 1})])
    for key in (keys.room_stats(room), keys.room_top(room), keys.room_history(room), keys.room_meta(room)):
        assert await system.redis.ttl(key) > 0, key


async def test_concurrent_pool_starts_respect_the_room_cap(system: System) -> None:
    """Eight viewers start pools at once in a room capped at three: exactly three open, the rest too_many_pools."""
    viewers = [f"v{i}" for i in range(8)]
    for user in viewers:
        await system.grant(user, 10)
    room = await system.open_room("c1")
    responses = await asyncio.gather(
        *(
            system.http.post(
                f"/v1/rooms/{room}/pools", headers=system.auth(u), json={"gift": "galaxy", "deadline_s": 60}
            )
            for u in viewers
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] * 3 + [409] * 5, [r.text for r in responses]
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {"too_many_pools"}
    assert await system.redis.scard(keys.room_pools(keys.part_of_user("c1"), room)) == 3


async def test_pool_opener_limits_and_cancel(system: System) -> None:
    """One open pool per user, none without coins; the opener (or creator, or an admin) cancels and every pledge
    goes back; others may not; the record then expires and the opener may open another."""
    for user in ("v1", "v2"):
        await system.grant(user, 1000)
    room = await system.open_room("c1")
    watcher = await system.connect("w")
    await watcher.join(room)
    pool = await open_pool(system, room, user="v1")

    async def start(user: str) -> Any:
        body = {"gift": "galaxy", "deadline_s": 60}
        return await system.http.post(f"/v1/rooms/{room}/pools", headers=system.auth(user), json=body)

    assert (await start("v1")).json()["error"]["code"] == "too_many_open_pools"
    assert (await start("broke")).json()["error"]["code"] == "pool_opener_coins"
    assert (await pledge(system, "v2", pool, 300)).json()["status"] == "accepted"

    async def cancel(user: str, role: Any = "viewer", pool_id: str = pool) -> Any:
        return await system.http.post(f"/v1/pools/{pool_id}/cancel", headers=system.auth(user, role))

    assert (await cancel("v2")).status_code == 403
    assert (await cancel("v2", pool_id="p_0123456789abcdef")).status_code == 404
    assert (await cancel("v2", pool_id="nope")).json()["error"]["code"] == "bad_pool"
    cancelled = await cancel("v1")
    assert cancelled.status_code == 200 and cancelled.json()["pool"]["status"] == "cancelled", cancelled.text
    assert (await cancel("c1", "creator")).status_code == 200  # repeated: the same answer
    assert (await system.wallet("v2"))["coins"] == 1000
    assert (await pledge(system, "v2", pool, 10)).json()["reason"] == "pool_cancelled"
    await watcher.wait_for(lambda m: any(e.get("kind") == "pool_cancelled" for e in m.get("events", [])))
    assert (await history_kinds(system.redis, room)).count("pool_cancelled") == 1
    assert await system.redis.ttl(pool_key(pool)) > 0
    second = await start("v1")
    assert second.status_code == 201, second.text
    assert (await cancel("boss", "admin", second.json()["pool"]["id"])).status_code == 200
    await audit_clean(system.redis)


async def test_redelivered_expiry_announces_what_its_first_delivery_did_not(start_system: SystemFactory) -> None:
    """The worker expired a pool, then died before announcing: the redelivered expiry is a ledger noop and still
    announces pool_expired, once."""
    system = await start_system(worker=False, pool_deadline_s_min=1)
    await system.grant("v1", 1000)
    room = await system.open_room("c1")
    pool = await open_pool(system, room, deadline_s=1, user="v1")
    worker = SettlementWorker(system.redis, system.settings)
    await worker.settle_pool_op(PoolOp("pledge", pool, gift_id(), 100, "v1", "v1"))
    deadline_ms = await system.redis.zscore(keys.pools_open(keys.part_of_user("c1")), pool)
    await asyncio.sleep(max(0.0, deadline_ms / 1000 - time.time()) + 0.05)  # past the deadline
    status, *_ = await worker.ledger.pool_op("expire", pool)  # the first delivery: ledger step only, then death
    assert status == "expired"
    for _ in range(2):  # redelivered, twice
        await worker.settle_pool_op(PoolOp("expire", pool))
    assert (await history_kinds(system.redis, room)).count("pool_expired") == 1
    assert (await system.wallet("v1"))["coins"] == 1000
    await audit_clean(system.redis)


async def test_pledges_racing_a_room_end_land_before_it_or_not_at_all(system: System) -> None:
    """Ten pledges that together complete a pool race the room's end: nothing of the pool follows room_ended in
    the history, and either the pool completed before the end or every coin came back."""
    viewers = [f"v{i}" for i in range(10)]
    for user in viewers:
        await system.grant(user, 100)
    room = await system.open_room("c1")
    pool = await open_pool(system, room, user="v0")
    end = system.http.post(f"/v1/rooms/{room}/end", headers=system.auth("c1", "creator"))
    *_, ended = await asyncio.gather(*(pledge(system, u, pool, 100) for u in viewers), end)
    assert ended.status_code == 200, ended.text
    final = (await system.http.get(f"/v1/pools/{pool}")).json()["pool"]
    kinds = await history_kinds(system.redis, room)
    assert kinds[kinds.index("room_ended") :] == ["room_ended", "stream_summary"], kinds
    if final["status"] == "completed":
        assert (await system.wallet("c1"))["diamonds"] == 500
    else:
        assert final["status"] == "voided" and (await system.wallet("c1"))["diamonds"] == 0
        assert {(await system.wallet(u))["coins"] for u in viewers} == {100}
    await audit_clean(system.redis)


async def test_a_completed_pools_day_and_week_boards_expire_like_a_gifts(system: System) -> None:
    """A completed pool adds to the creator's top-gifter boards with the same expiry as a gift (day, week; not
    all time): one rule for both."""
    await system.grant("v1", 2000)
    room = await system.open_room("c1")
    pool = await open_pool(system, room, user="v1")
    assert (await pledge(system, "v1", pool, 1000)).json()["pool"]["status"] == "completed"
    now = clock.now_ms()
    day, week = keys.creator_top("c1", "day", clock.utc_day(now)), keys.creator_top("c1", "week", clock.iso_week(now))
    assert await system.redis.zscore(day, keys.account("v1")) == 1000
    assert 0 < await system.redis.ttl(day) <= rules.TOP_DAY_TTL_S
    assert rules.TOP_DAY_TTL_S < await system.redis.ttl(week) <= rules.TOP_WEEK_TTL_S
    assert await system.redis.ttl(keys.creator_top("c1", "all")) == -1
    await audit_clean(system.redis)


async def test_a_pledge_built_from_a_stale_read_writes_nothing(start_system: SystemFactory) -> None:
    """pool.lua refuses legs built from a pool that changed after the caller read it ('stale', nothing written);
    pool_op reads again and the pledge lands once, with a completion that pays every contributor's coins."""
    system = await start_system(worker=False)
    for user in ("v1", "v2"):
        await system.grant(user, 1000)
    room = await system.open_room("c1")
    pool = await open_pool(system, room, user="v1")
    ledger = SettlementWorker(system.redis, system.settings).ledger
    part = keys.part_of_user("c1")
    read = await ledger_pools.read_pool(ledger, part, pool)
    assert (await ledger.pool_op("pledge", pool, gift_id(), "v1", 400, "v1"))[0] == "accepted"
    sid = keys.user_scoped_id("v2", gift_id())
    keys_, args = ledger_pools._land_call(ledger, part, pool, read, sid, "v2", 600, "v2")
    status, *_ = await ledger._pool(keys=keys_, args=args)
    assert status == "stale"
    assert await system.redis.get(keys.pledge_landing(part, sid)) is None  # nothing written
    status, _reason, balance, _replay, state = await ledger.pool_op("pledge", pool, gift_id(), "v2", 600, "v2")
    assert (status, balance) == ("accepted", 400) and state is not None and state["status"] == "completed"
    top = await system.redis.zrange(keys.creator_top("c1", "all"), 0, -1, withscores=True)
    assert dict(top) == {keys.account("v1"): 400, keys.account("v2"): 600}
    await audit_clean(system.redis)
