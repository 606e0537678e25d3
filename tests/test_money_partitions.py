"""Money on ledger partitions: purchases, refunds, chargebacks and withdrawals touch only their user's partition
(the user's account and that partition's share of the system accounts), on a standalone Valkey and on a 3-primary
cluster, with the default GIFTING_LEDGER_PARTITIONS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from gifting import keys, valkey
from gifting.history.hot import HotState
from gifting.history.reader import ArchiveReader
from gifting.history.statements import Statements
from gifting.ledger import partitions, rules
from gifting.ledger.store import Ledger, LedgerError
from gifting.payments import PAYOUT_OK, SandboxPayouts
from tests.conftest import SystemFactory, make_settings
from workers.payouts import Payouts

pytestmark = pytest.mark.cluster


def user_in(part: int, prefix: str) -> str:
    """A user name whose account lives in ledger partition `part`."""
    return next(f"{prefix}{i}" for i in range(10_000) if partitions.of_account(keys.account(f"{prefix}{i}")) == part)


async def seed_diamonds(redis: aioredis.Redis, user: str, diamonds: int) -> None:
    """Diamonds a creator earned, balanced in the creator's partition (what a gift's credit leaves there)."""
    part = keys.part_of_user(user)
    await redis.hincrby(keys.diamonds(part), keys.account(user), diamonds)
    await redis.hincrby(keys.diamonds(part), keys.SYS_DIAMOND_ISSUANCE, -diamonds)


async def buy(ledger: Ledger, user: str, key: str, coins: int, status: str = "paid") -> str:
    pid = keys.purchase_id(user, key)
    record = {"purchase_id": pid, "bundle_id": f"coins_{coins}", "coins": coins, "price_minor": 99, "currency": "USD"}
    await ledger.purchase(user, pid, rules.fingerprint(key, coins), status, record, coins)
    return pid


async def withdraw(ledger: Ledger, user: str, key: str, diamonds: int, mode: str) -> str:
    wid = keys.withdrawal_id(user, key)
    await ledger.request_withdrawal(user, wid, diamonds, PAYOUT_OK, rules.fingerprint(diamonds, PAYOUT_OK))
    if mode:
        await ledger.resolve_withdrawal(wid, mode, "test")
    return wid


async def balances(redis: aioredis.Redis, part: str) -> dict[str, dict[str, int]]:
    """A partition's non-zero balances, per ledger."""
    found = {}
    for name, key in keys.ledgers(part):
        found[name] = {account: int(v) for account, v in (await redis.hgetall(key)).items() if int(v)}
    return found


async def test_two_users_in_two_partitions_move_money_only_in_their_own(redis: aioredis.Redis, tmp_path: Path) -> None:
    """Two users of different partitions (of the default 16) buy, refund, charge back and withdraw: exact balances
    in each one's partition, each partition's ledgers sum to zero, and no other partition holds any key."""
    assert partitions.count() == partitions.PARTITIONS_DEFAULT == 16
    ledger = Ledger(redis, make_settings(tmp_path, withdrawal_diamonds_min=1, diamond_hold_s=0))
    alice, bob = user_in(2, "alice"), user_in(11, "bob")
    pa, pb = keys.part_of_user(alice), keys.part_of_user(bob)
    await seed_diamonds(redis, alice, 40)
    await seed_diamonds(redis, bob, 25)

    await buy(ledger, alice, "k1", 100)
    await ledger.reverse(await buy(ledger, alice, "k2", 60), "refund")
    await buy(ledger, alice, "k3", 500, status="declined")
    await withdraw(ledger, alice, "w1", 15, "post")
    await withdraw(ledger, alice, "w2", 5, "void")
    await ledger.reverse(await buy(ledger, bob, "k1", 70), "chargeback")
    await buy(ledger, bob, "k2", 30)
    pending = await withdraw(ledger, bob, "w1", 25, "")

    assert await balances(redis, pa) == {
        "coins": {keys.account(alice): 100, keys.SYS_COIN_ISSUANCE: -100},
        "diamonds": {keys.account(alice): 25, keys.SYS_DIAMOND_ISSUANCE: -40, keys.SYS_DIAMONDS_PAID_OUT: 15},
        "rewards": {},
    }
    assert await balances(redis, pb) == {
        "coins": {keys.account(bob): 30, keys.SYS_COIN_ISSUANCE: -30},
        "diamonds": {keys.SYS_DIAMOND_ISSUANCE: -25, keys.SYS_PAYOUT_CLEARING: 25},
        "rewards": {},
    }
    assert await ledger.wallet(alice) == {"coins": 100, "diamonds": 25, "reward_coins": 0}
    assert await ledger.wallet(bob) == {"coins": 30, "diamonds": 0, "reward_coins": 0}
    assert await ledger.pending_withdrawals(pb, 10) == [pending] and await ledger.pending_withdrawals(pa, 10) == []
    kinds = {part: [f["kind"] for _id, f in await redis.xrange(keys.journal(part))] for part in (pa, pb)}
    assert kinds == {
        pa: ["purchase", "purchase", "refund", "withdrawal_pending", "withdrawal_posted", "withdrawal_pending",
             "withdrawal_voided"],
        pb: ["purchase", "chargeback", "purchase", "withdrawal_pending"],
    }  # fmt: skip
    ledger_keys = [key async for key in redis.scan_iter(match="{ledger:*")]
    assert {key.partition("}")[0] + "}" for key in ledger_keys} == {pa, pb}, ledger_keys


async def test_another_users_id_is_refused_without_touching_their_partition(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    """A purchase or withdrawal under an id naming another user (their partition) is a conflict: nothing moves and
    nothing of theirs is shown."""
    ledger = Ledger(redis, make_settings(tmp_path, withdrawal_diamonds_min=1, diamond_hold_s=0))
    alice, bob = user_in(2, "alice"), user_in(11, "bob")
    pid = await buy(ledger, alice, "k1", 100)
    stored, same, replay = await ledger.purchase(bob, pid, rules.fingerprint("k1", 100), "paid", {}, 100)
    assert (stored, same, replay) == ({}, False, True)
    await seed_diamonds(redis, bob, 5)
    with pytest.raises(LedgerError) as refused:
        await ledger.request_withdrawal(bob, keys.withdrawal_id(alice, "w1"), 5, PAYOUT_OK, "fp")
    assert refused.value.code == "idempotency_key_conflict"
    assert await ledger.wallet(bob) == {"coins": 0, "diamonds": 5, "reward_coins": 0}
    assert await ledger.wallet(alice) == {"coins": 100, "diamonds": 0, "reward_coins": 0}


async def test_over_http_each_users_money_and_statement_stay_in_their_partition(start_system: SystemFactory) -> None:
    """Over HTTP (no settlement worker: no gift involved), two users of two partitions buy, are refunded or charged
    back, withdraw and are paid out by the payout loop: wallets, statements and balances exact per partition."""
    system = await start_system(worker=False, withdrawal_diamonds_min=1, diamond_hold_s=0)
    alice, bob = user_in(5, "alice"), user_in(13, "bob")
    pa, pb = keys.part_of_user(alice), keys.part_of_user(bob)
    admin = system.auth("boss", "admin")
    kept = (await system.buy(alice, "coins_328"))["purchase"]
    refunded = (await system.buy(alice, "coins_65"))["purchase"]
    charged = (await system.buy(bob, "coins_657"))["purchase"]
    for purchase, mode in ((refunded, "refund"), (charged, "chargeback")):
        response = await system.http.post(f"/v1/admin/purchases/{purchase['purchase_id']}/{mode}", headers=admin)
        assert response.status_code == 200, response.text
    for user in (alice, bob):
        await seed_diamonds(system.redis, user, 50)
        response = await system.http.post(
            "/v1/wallet/withdrawals", headers={**system.auth(user, "creator"), "Idempotency-Key": "w1"},
            json={"diamonds": 20, "payout_account": PAYOUT_OK},
        )  # fmt: skip
        assert response.status_code == 201, response.text
    ledger = system.app.state.ledger
    assert await Payouts(ledger, system.settings, SandboxPayouts()).run() == 2
    assert await system.wallet(alice) == {"coins": kept["coins"], "diamonds": 30}
    assert await system.wallet(bob) == {"coins": 0, "diamonds": 30}
    assert (await balances(system.redis, pa))["coins"] == {keys.account(alice): 328, keys.SYS_COIN_ISSUANCE: -328}
    assert (await balances(system.redis, pb))["coins"] == {}
    for part in (pa, pb):
        assert (await balances(system.redis, part))["diamonds"][keys.SYS_DIAMONDS_PAID_OUT] == 20
    statement = await system.http.get("/v1/wallet/transactions", headers=system.auth(alice))
    kinds = [row["kind"] for row in statement.json()["transactions"]]
    assert kinds == ["withdrawal", "refund", "purchase", "purchase"], statement.text
    ledger_keys = [key async for key in system.redis.scan_iter(match="{ledger:*")]
    assert {key.partition("}")[0] + "}" for key in ledger_keys} == {pa, pb}, ledger_keys


async def test_statements_of_two_partitions_archive_trim_and_page_each_in_its_own(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    """The archiver's statement step (a HotState per partition) copies and trims each user's rows under their own
    partition's base; each statement then pages whole, newest first, across Valkey and PostgreSQL."""
    users = [user_in(2, "alice"), user_in(11, "bob"), user_in(11, "carol")]
    rows = {u: [rules.statement_row(i, "purchase", "coins", i + 1, keys.SYS_COIN_ISSUANCE, f"p{i}") for i in range(7)]
            for u in users}  # fmt: skip
    for user in users:
        await redis.rpush(keys.statement(user), *rows[user])
    legs = [(1, rules.Leg("coins", keys.SYS_COIN_ISSUANCE, keys.account(u), 1)) for u in users]
    dropped = 0
    for part in dict.fromkeys(map(keys.part_of_user, users)):  # the archiver's hot state of each partition
        state = HotState(redis, statement_rows=3, top_gifters=10, hold_s=0, part=part)
        async with history.transaction():
            await state.archive(history, (1, 0), legs)  # takes its own partition's accounts only
        dropped += await state.trim()
    assert dropped == 4 * len(users)
    reader = ArchiveReader(database_url)
    try:
        for user in users:
            base = keys.statement_base(keys.part_of_user(user))
            assert int(await redis.hget(base, keys.account(user)) or 0) == 4
            assert await redis.lrange(keys.statement(user), 0, -1) == rows[user][4:]
            page, cursor = await Statements(redis, reader).page(user, None, 5)
            older, last = await Statements(redis, reader).page(user, int(cursor or 0), 5)
            assert [item["id"] for item in page + older] == [str(seq) for seq in range(6, -1, -1)] and last is None
    finally:
        await reader.close()


async def waitaof_calls(redis: aioredis.Redis) -> int:
    """WAITAOF calls so far, over every primary."""
    if not valkey.is_cluster_client(redis):
        return int((await redis.info("commandstats")).get("cmdstat_waitaof", {}).get("calls", 0))
    per_node = await redis.info("commandstats", target_nodes=RedisCluster.PRIMARIES)  # type: ignore[call-arg]
    return sum(int(stats.get("cmdstat_waitaof", {}).get("calls", 0)) for stats in per_node.values())


async def test_a_group_commit_waits_once_per_node_written(redis: aioredis.Redis, tmp_path: Path) -> None:
    """Purchases of three users in partitions on three primaries: alone, a durability wait each; in one
    group_commit, one wait per node they were written to (one on a standalone server, three on the cluster)."""
    ledger = Ledger(redis, make_settings(tmp_path))
    users = [user_in(part, "buyer") for part in (0, 6, 12)]  # slot ranges of the 1st, 2nd and 3rd primary
    before = await waitaof_calls(redis)
    for user in users:
        await buy(ledger, user, "alone", 65)
    assert await waitaof_calls(redis) == before + 3
    async with ledger.group_commit():
        for user in users:
            await buy(ledger, user, "grouped", 65)
    nodes = 3 if valkey.is_cluster_client(redis) else 1
    assert await waitaof_calls(redis) == before + 3 + nodes
