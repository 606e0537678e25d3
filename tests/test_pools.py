"""Pooled gifts: pledges are pending transfers; a pool completes at its price or voids at its deadline."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from gifting import keys
from gifting.ledger.audit import run_audit
from gifting.pools import PoolOp
from tests.conftest import System, SystemFactory, gift_id, spawn, stop

WAIT_S = 30.0


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
    pool = await open_pool(system, room)
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
    pool = await open_pool(system, room)
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
    pools = [await open_pool(system, room, "galaxy", deadline_s=3) for _ in range(3)]
    env = {"REDIS_URL": valkey_url, "GIFTING_DATA_DIR": str(tmp_path), "GIFTING_CLAIM_IDLE_MS": "300",
           "GIFTING_PAYOUT_INTERVAL_MS": "50", "GIFTING_SETTLE_BATCH_MAX": "5"}  # fmt: skip
    worker = spawn("worker", env, tmp_path / "worker1.log")
    try:
        for i in range(300):
            op = PoolOp("pledge", pools[i % 3], gift_id(), 7, viewers[i % 10], viewers[i % 10], "")
            await redis.xadd(keys.GIFTS_STREAM, op.to_entry())
        await asyncio.sleep(0.3)
        stop(worker, kill=True)
        worker = spawn("worker", env, tmp_path / "worker2.log")
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            statuses = [await redis.hget(keys.pool(p), "status") for p in pools]
            backlog = await redis.xlen(keys.GIFTS_STREAM)
            if "open" not in statuses and backlog == 0:
                break
            await asyncio.sleep(0.1)
        assert "open" not in statuses, statuses
    finally:
        stop(worker)
    await audit_clean(redis)
