"""Purchase records past their hot window move to a real PostgreSQL exactly once, and reads, resends, refunds
and chargebacks of an archived purchase work as before (money exact, one transfer each, idempotent)."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis

from gifting import keys
from gifting.history import pools, summaries, withdrawals
from gifting.history import purchases as archive
from gifting.history.reader import ArchiveReader
from gifting.ledger import partitions, rules
from gifting.ledger.audit import run_audit
from gifting.ledger.store import GiftToSettle, Ledger
from gifting.payments import PAYOUT_OK
from tests.conftest import SystemFactory, make_settings
from tests.test_archive import archiver_env, drain, start_archiver
from tests.test_pools import open_pool, pledge

WAIT_S = 30.0
FAR_FUTURE_MS = 2**62


@pytest.fixture
async def records(history: psycopg.AsyncConnection[Any]) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """The history database with no archived purchase, withdrawal, summary or pool, before and after the test."""
    await history.execute("TRUNCATE purchases, withdrawals, summaries, pools")
    yield history
    await history.execute("TRUNCATE purchases, withdrawals, summaries, pools")


async def buy(ledger: Ledger, user: str, coins: int = 100) -> str:
    pid = keys.purchase_id(user, str(uuid.uuid4()))
    record = {"purchase_id": pid, "bundle_id": "coins_100", "coins": coins, "price_minor": 99, "currency": "USD"}
    await ledger.purchase(user, pid, "fp", "paid", record, coins)
    return pid


async def archived_ids(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    return [row[0] for row in await (await conn.execute("SELECT id FROM purchases ORDER BY id")).fetchall()]


async def hot_left(redis: aioredis.Redis) -> int:
    records = len([k async for k in redis.scan_iter(match="{ledger:*}:purchase:*")])
    return records + sum([await redis.zcard(keys.purchases_hot(part)) for part in partitions.all_tags()])


async def hot_ids(redis: aioredis.Redis) -> list[str]:
    """The purchase ids still indexed as hot, in every partition."""
    return sorted(
        [pid for part in partitions.all_tags() for pid in await redis.zrange(keys.purchases_hot(part), 0, -1)]
    )


def hot_index(purchase_id: str) -> str:
    return keys.purchases_hot(archive.purchase_part(purchase_id))


async def clean_audit(redis: aioredis.Redis, conn: psycopg.AsyncConnection[Any]) -> None:
    report = await run_audit(redis, archive=conn)
    assert report.clean, report.summary()


async def test_records_past_the_hot_window_move_once_and_are_dropped(
    redis: aioredis.Redis, records: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """Only records older than the window move; each lands once, then Valkey holds none of them; audit clean."""
    ledger = Ledger(redis, make_settings(tmp_path))
    old = [await buy(ledger, f"v{i}") for i in range(7)]
    cutoff = int((await redis.zscore(hot_index(old[-1]), old[-1])) or 0)
    young = await buy(ledger, "v9")
    await redis.zadd(hot_index(young), {young: cutoff + 1})  # made after the cutoff, whatever the clock says
    while await archive.archive_due(redis, records, cutoff, 3):
        pass
    assert await archived_ids(records) == sorted(old)
    assert await hot_ids(redis) == [young]
    assert await redis.lrange(keys.purchases_of("v0"), 0, -1) == []
    await drain(redis, records)
    await clean_audit(redis, records)


async def test_crash_after_commit_before_drop_duplicates_nothing(
    redis: aioredis.Redis, records: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """A batch committed but not dropped (a crash between) is upserted again, once, then dropped; audit clean."""
    ledger = Ledger(redis, make_settings(tmp_path))
    ids = [await buy(ledger, "v1") for _ in range(5)]  # one partition: a batch of 3 of them
    await archive.commit_due(redis, records, FAR_FUTURE_MS, 3)  # then the crash
    assert len(await archived_ids(records)) == 3 and len(await hot_ids(redis)) == 5
    await drain(redis, records)
    await clean_audit(redis, records)  # in both for now: read once
    while await archive.archive_due(redis, records, FAR_FUTURE_MS, 3):
        pass
    assert await archived_ids(records) == sorted(ids) and await hot_left(redis) == 0
    await clean_audit(redis, records)


@pytest.mark.cluster
async def test_a_reversal_between_commit_and_drop_keeps_the_record_until_archived_again(
    redis: aioredis.Redis, records: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """A refund landing after the archiver read a record keeps it in Valkey; the next round archives `refunded`."""
    ledger = Ledger(redis, make_settings(tmp_path))
    pid = await buy(ledger, "v1")
    committed = await archive.commit_due(redis, records, FAR_FUTURE_MS, 10)
    await ledger.reverse(pid, "refund")
    await archive.drop_committed(redis, committed)
    assert await redis.hget(keys.purchase_record(pid), "status") == "refunded"
    await archive.archive_due(redis, records, FAR_FUTURE_MS, 10)
    status = await (await records.execute("SELECT status FROM purchases WHERE id = %s", (pid,))).fetchone()
    assert status == ("refunded",) and await hot_left(redis) == 0


async def test_a_stale_status_never_undoes_a_reversal(
    redis: aioredis.Redis, records: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """An upsert of `paid` (a stale read) after `refunded` was archived leaves `refunded`."""
    ledger = Ledger(redis, make_settings(tmp_path))
    pid = await buy(ledger, "v1")
    stale = await redis.hgetall(keys.purchase_record(pid))
    await ledger.reverse(pid, "refund")
    await archive.archive_due(redis, records, FAR_FUTURE_MS, 10)
    await redis.hset(keys.purchase_record(pid), mapping=stale)
    await redis.zadd(hot_index(pid), {pid: 1})
    await archive.archive_due(redis, records, FAR_FUTURE_MS, 10)
    status = await (await records.execute("SELECT status FROM purchases WHERE id = %s", (pid,))).fetchone()
    assert status == ("refunded",)


async def test_archiver_killed_mid_batch_moves_every_record_once(
    redis: aioredis.Redis, records: psycopg.AsyncConnection[Any], valkey_url: str, database_url: str, tmp_path: Path
) -> None:
    """`gifting archive` (records due at once) killed -9 as soon as it commits, three times, then left to finish:
    every purchase record and resolved withdrawal in PostgreSQL once, none left in Valkey, audit clean."""
    settings = withdrawal_settings(tmp_path)
    ledger = Ledger(redis, settings)
    bought = await earn(ledger, settings, 30)
    env = {**archiver_env(valkey_url, database_url, tmp_path), "GIFTING_PURCHASE_HOT_S": "0"}
    env["GIFTING_WITHDRAWAL_HOT_S"] = "0"
    process = await start_archiver(env)
    paid: list[str] = []
    try:
        for round_ in range(3):
            before = len(await archived_ids(records))
            paid += [await withdraw(ledger, f"k{round_}-{i}") for i in range(10)]
            bought += [await buy(ledger, f"v{i}") for i in range(40)]
            await wait_for(lambda before=before: _more_than(records, before))
            process.send_signal(signal.SIGKILL)
            await process.wait()
            process = await start_archiver(env)
        await wait_for(lambda: _all_moved(redis, records, len(bought)))
        await wait_for(lambda: _withdrawals_moved(redis, records, len(paid)))
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), WAIT_S)
    assert await archived_ids(records) == sorted(bought)
    assert await archived_withdrawals(records) == dict.fromkeys(paid, "paid")
    await clean_audit(redis, records)


async def _withdrawals_moved(redis: aioredis.Redis, conn: psycopg.AsyncConnection[Any], rows: int) -> bool:
    return len(await archived_withdrawals(conn)) == rows and not await withdrawals_done(redis)


async def withdrawals_done(redis: aioredis.Redis) -> int:
    """Resolved withdrawals not yet archived, in every partition."""
    return sum([await redis.zcard(keys.withdrawals_done(part)) for part in partitions.all_tags()])


async def _more_than(conn: psycopg.AsyncConnection[Any], rows: int) -> bool:
    return len(await archived_ids(conn)) > rows


async def _all_moved(redis: aioredis.Redis, conn: psycopg.AsyncConnection[Any], rows: int) -> bool:
    return (
        len(await archived_ids(conn)) == rows
        and await hot_left(redis) == 0
        and not sum([await redis.xlen(keys.journal(part)) for part in partitions.all_tags()])
    )


async def wait_for(check: Any) -> None:
    """Poll (another process archives: there is no event to wait on) until `check()` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not await check():
        assert loop.time() < deadline, f"not within {WAIT_S} s"
        await asyncio.sleep(0.005)


@pytest.mark.cluster
async def test_reads_resends_and_reversals_of_archived_purchases(
    start_system: SystemFactory, records: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    """Over HTTP, an archived purchase is still listed, a resend of its Idempotency-Key answers it (no new
    charge), a refund reverses it once for its exact coins, a second refund and a chargeback are refused, and
    the restored record goes back to PostgreSQL `refunded`; audit clean."""
    system = await start_system(database_url=database_url)
    first = (await system.buy("v1", key="k1"))["purchase"]
    second = (await system.buy("v1", key="k2"))["purchase"]
    while await archive.archive_due(system.redis, records, FAR_FUTURE_MS, 10):
        pass
    assert await hot_left(system.redis) == 0
    listed = (await system.http.get("/v1/wallet/purchases", headers=system.auth("v1"))).json()["purchases"]
    assert [p["purchase_id"] for p in listed] == [second["purchase_id"], first["purchase_id"]]
    assert [p["status"] for p in listed] == ["paid", "paid"]
    again = await system.buy("v1", key="k1")
    assert again["replay"] and again["purchase"]["purchase_id"] == first["purchase_id"]
    coins = (await system.wallet("v1"))["coins"]
    assert coins == first["coins"] + second["coins"]
    admin = system.auth("boss", "admin")
    refund = await system.http.post(f"/v1/admin/purchases/{first['purchase_id']}/refund", headers=admin)
    assert refund.status_code == 200 and refund.json()["coins"] == coins - first["coins"], refund.text
    assert refund.json()["purchase"]["status"] == "refunded"
    listed = (await system.http.get("/v1/wallet/purchases", headers=system.auth("v1"))).json()["purchases"]
    assert [p["status"] for p in listed] == ["paid", "refunded"]  # the restored record, newer than the archive's
    await archive.archive_due(system.redis, records, FAR_FUTURE_MS, 10)  # the restored record moves back
    for mode in ("refund", "chargeback"):
        refused = await system.http.post(f"/v1/admin/purchases/{first['purchase_id']}/{mode}", headers=admin)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "already_reversed", refused.text
    assert (await system.wallet("v1"))["coins"] == coins - first["coins"]
    charged = await system.http.post(f"/v1/admin/purchases/{second['purchase_id']}/chargeback", headers=admin)
    assert charged.status_code == 200 and charged.json()["coins"] == coins - first["coins"] - second["coins"]
    await archive.archive_due(system.redis, records, FAR_FUTURE_MS, 10)
    statuses = dict(await (await records.execute("SELECT id, status FROM purchases")).fetchall())
    assert statuses == {first["purchase_id"]: "refunded", second["purchase_id"]: "charged_back"}
    journal = [f for _, f in await system.redis.xrange(keys.journal(keys.part_of_user("v1")))] + [
        row[0] for row in await (await records.execute("SELECT fields FROM journal")).fetchall()
    ]
    assert sorted(f["kind"] for f in journal if f["kind"] in ("refund", "chargeback")) == ["chargeback", "refund"]
    await drain(system.redis, records)
    await clean_audit(system.redis, records)


async def test_unknown_purchase_is_still_unknown_with_an_archive(
    redis: aioredis.Redis, records: psycopg.AsyncConnection[Any], database_url: str, tmp_path: Path
) -> None:
    """A reversal of a purchase in neither store is `unknown_purchase`; nothing is restored."""
    ledger = Ledger(redis, make_settings(tmp_path))
    ledger.archive = ArchiveReader(database_url)
    try:
        with pytest.raises(Exception) as refused:
            await ledger.reverse("u:v1:nope", "refund")
        assert getattr(refused.value, "code", None) == "unknown_purchase"
        assert await hot_left(redis) == 0
    finally:
        await ledger.archive.close()


async def earn(ledger: Ledger, settings: Any, diamonds_wanted: int) -> list[str]:
    """creator1 earns at least `diamonds_wanted` diamonds (purchases and gifts, journal entries the audit reads).
    Returns the purchase ids."""
    users = 10
    bought = [await buy(ledger, f"fan{i}", 1000) for i in range(users)]
    per_gift = -(-diamonds_wanted * 10_000 // settings.creator_share_bps // users) + 1
    split = rules.split_gift(per_gift, settings.creator_share_bps)
    batch = [
        GiftToSettle(str(uuid.uuid4()), f"fan{i}", "creator1", split.coins, split.diamonds, "fp", "", "r1", "rose", 1)
        for i in range(users)
    ]
    assert all(o.settled for o in await ledger.settle(batch))
    return bought


async def withdraw(ledger: Ledger, key: str, diamonds: int = 1, mode: str = "post") -> str:
    """A withdrawal of creator1, resolved at once (`mode`: post | void | '' to leave it pending)."""
    wid = keys.withdrawal_id("creator1", key)
    await ledger.request_withdrawal("creator1", wid, diamonds, PAYOUT_OK, rules.fingerprint(diamonds, PAYOUT_OK))
    if mode:
        await ledger.resolve_withdrawal(wid, mode, "test")
    return wid


async def archived_withdrawals(conn: psycopg.AsyncConnection[Any]) -> dict[str, str]:
    return dict(await (await conn.execute("SELECT id, status FROM withdrawals")).fetchall())


def withdrawal_settings(tmp_path: Path) -> Any:
    return make_settings(tmp_path, withdrawal_diamonds_min=1, diamond_hold_s=0)


@pytest.mark.cluster
async def test_resolved_withdrawals_move_once_and_pending_ones_stay(
    redis: aioredis.Redis, records: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    """Paid and failed withdrawals move (once, even after a crash between commit and drop); a pending one stays
    in Valkey; audit clean."""
    settings = withdrawal_settings(tmp_path)
    ledger = Ledger(redis, settings)
    await earn(ledger, settings, 10)
    paid, failed, pending = await withdraw(ledger, "a"), await withdraw(ledger, "b", mode="void"), None
    pending = await withdraw(ledger, "c", mode="")
    await withdrawals.commit_due(redis, records, FAR_FUTURE_MS, 10)  # then the crash
    assert await archived_withdrawals(records) == {paid: "paid", failed: "failed"}
    await withdrawals.archive_due(redis, records, FAR_FUTURE_MS, 10)
    assert await archived_withdrawals(records) == {paid: "paid", failed: "failed"}
    assert not await redis.exists(keys.withdrawal(paid), keys.withdrawal(failed))
    assert await withdrawals_done(redis) == 0
    assert await redis.lrange(keys.withdrawals_of("creator1"), 0, -1) == [pending]
    await drain(redis, records)
    await clean_audit(redis, records)


async def test_reads_and_resends_of_archived_withdrawals(
    start_system: SystemFactory, records: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    """Over HTTP, archived withdrawals are listed after the hot ones; a resend of the key answers the archived one
    (nothing held again); other fields under that key are a conflict; an admin post is withdrawal_not_pending."""
    system = await start_system(database_url=database_url, withdrawal_diamonds_min=1, diamond_hold_s=0)
    await earn(system.app.state.ledger, system.settings, 10)
    old = await withdraw(system.app.state.ledger, "k1", diamonds=2)
    while await withdrawals.archive_due(system.redis, records, FAR_FUTURE_MS, 10):
        pass
    young = await withdraw(system.app.state.ledger, "k2", diamonds=1)
    creator = system.auth("creator1", "creator")
    listed = (await system.http.get("/v1/wallet/withdrawals", headers=creator)).json()["withdrawals"]
    assert [(w["withdrawal_id"], w["status"]) for w in listed] == [(young, "paid"), (old, "paid")]
    diamonds = (await system.wallet("creator1"))["diamonds"]
    url = "/v1/wallet/withdrawals"
    resend = await system.http.post(url, headers={**creator, "Idempotency-Key": "k1"}, json={"diamonds": 2})
    assert resend.status_code == 200 and resend.json()["replay"], resend.text
    assert resend.json()["withdrawal"]["withdrawal_id"] == old and resend.json()["withdrawal"]["status"] == "paid"
    assert (await system.wallet("creator1"))["diamonds"] == diamonds
    other = await system.http.post(url, headers={**creator, "Idempotency-Key": "k1"}, json={"diamonds": 3})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_conflict", other.text
    admin = system.auth("boss", "admin")
    post = await system.http.post(f"/v1/admin/withdrawals/{old}/post", headers=admin)
    assert post.status_code == 409 and post.json()["error"]["code"] == "withdrawal_not_pending", post.text
    await drain(system.redis, records)
    await clean_audit(system.redis, records)


async def ended_room(system: Any, creator: str = "c1") -> str:
    room: str = await system.open_room(creator)
    ended = await system.http.post(f"/v1/rooms/{room}/end", headers=system.auth(creator, "creator"))
    assert ended.status_code == 200, ended.text
    return room


async def test_summaries_move_once_and_reads_reach_them(
    start_system: SystemFactory, records: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    """An ended stream's summary moves to PostgreSQL once (a crash between commit and drop writes it once), leaves
    Valkey (key, session list, index), and GET summary and the creator's sessions answer it as before; a live
    room's summary is its running totals."""
    system = await start_system(database_url=database_url)
    await system.grant("v1", 100)
    old = await ended_room(system)
    creator = system.auth("c1", "creator")
    before = (await system.http.get(f"/v1/rooms/{old}/summary", headers=creator)).json()
    committed = await summaries.commit_due(system.redis, records, FAR_FUTURE_MS, 10)  # then the crash
    await summaries.commit_due(system.redis, records, FAR_FUTURE_MS, 10)
    await summaries.drop_committed(system.redis, committed)
    count = await (await records.execute("SELECT count(*) FROM summaries WHERE room = %s", (old,))).fetchone()
    assert count == (1,)
    assert not await system.redis.exists(keys.room_summary(old), keys.creator_sessions("c1"), keys.ROOMS_SUMMARIZED)
    young = await ended_room(system)
    live = await system.open_room("c1")
    assert (await system.http.get(f"/v1/rooms/{old}/summary", headers=creator)).json() == before
    assert (await system.http.get(f"/v1/rooms/{live}/summary", headers=creator)).json()["status"] == "live"
    sessions = (await system.http.get("/v1/wallet/sessions", headers=creator)).json()["sessions"]
    assert [s["room"] for s in sessions] == [young, old] and sessions[1] == before
    await summaries.archive_due(system.redis, records, FAR_FUTURE_MS, 10)
    sessions = (await system.http.get("/v1/wallet/sessions?limit=1", headers=creator)).json()["sessions"]
    assert [s["room"] for s in sessions] == [young]


@pytest.mark.cluster
async def test_closed_pools_move_once_and_are_read_after_they_leave_valkey(
    start_system: SystemFactory, records: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    """A completed and a cancelled pool stay in Valkey until their hot window passes, then move to PostgreSQL
    once (a round that crashed between commit and drop adds no row when repeated) and leave Valkey only then;
    GET /v1/pools/{id} answers the same from PostgreSQL; the `pledges` view lists every pledge."""
    system = await start_system(database_url=database_url)
    for user in ("v0", "v1"):
        await system.grant(user, 1000)
    room = await system.open_room("c1")
    done = await open_pool(system, room, "galaxy", user="v0")
    cancelled = await open_pool(system, room, "galaxy", user="v1")
    price = (await system.http.get(f"/v1/pools/{done}")).json()["pool"]["price"]
    for user, coins in (("v0", price // 2), ("v1", price - price // 2)):
        assert (await pledge(system, user, done, coins)).json()["status"] == "accepted"
    assert (await pledge(system, "v0", cancelled, 1)).json()["status"] == "accepted"
    cancel = await system.http.post(f"/v1/pools/{cancelled}/cancel", headers=system.auth("v1"))
    assert cancel.status_code == 200, cancel.text
    views = {p: (await system.http.get(f"/v1/pools/{p}")).json() for p in (done, cancelled)}
    part = keys.part_of_user("c1")  # the pools' partition: their creator's
    assert await system.redis.zcard(keys.pools_closed(part)) == 2
    assert await pools.archive_due(system.redis, records, 0, 10) == 0  # closed after that: still hot
    assert await pools.commit_due(system.redis, records, FAR_FUTURE_MS, 10, part)  # committed, then a crash
    assert await system.redis.exists(keys.pool(part, done), keys.pool(part, cancelled)) == 2  # not yet dropped
    assert await pools.archive_due(system.redis, records, FAR_FUTURE_MS, 10) == 2
    rows = dict(await (await records.execute("SELECT id, status FROM pools")).fetchall())
    assert rows == {done: "completed", cancelled: "cancelled"} and not await system.redis.zcard(keys.pools_closed(part))
    assert await system.redis.exists(keys.pool(part, done), keys.pool(part, cancelled)) == 0
    for pool_id, view in views.items():
        assert (await system.http.get(f"/v1/pools/{pool_id}")).json() == view
    await drain(system.redis, records)
    pledged = await (await records.execute("SELECT pool, account, coins FROM pledges ORDER BY coins")).fetchall()
    assert sorted(pledged) == sorted(
        [(done, "u:v0", price // 2), (done, "u:v1", price - price // 2), (cancelled, "u:v0", 1)]
    )
    await clean_audit(system.redis, records)


async def test_history_database_down_is_history_unavailable(start_system: SystemFactory) -> None:
    """PostgreSQL unreachable: reads that need the archive answer 503 `history_unavailable` (and so does a new
    purchase, whose Idempotency-Key is checked against the archive), while gifts keep settling."""
    system = await start_system(database_url="postgresql://postgres@127.0.0.1:1/postgres")
    listed = await system.http.get("/v1/wallet/purchases", headers=system.auth("v1"))
    assert listed.status_code == 503 and listed.json()["error"]["code"] == "history_unavailable", listed.text
    headers = {**system.auth("v1"), "Idempotency-Key": "k1"}
    body = {"bundle_id": "coins_65", "payment_token": "tok_sandbox_ok"}
    bought = await system.http.post("/v1/wallet/purchases", headers=headers, json=body)
    assert bought.status_code == 503 and bought.json()["error"]["code"] == "history_unavailable", bought.text
    await system.grant("v1", 100)
    room = await system.open_room("c1")
    client = await system.connect("v1")
    assert (await client.result(await client.gift(room, "rose", 1)))["status"] == "settled"
