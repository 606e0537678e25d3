"""Money on ledger partitions: purchases, refunds, chargebacks and withdrawals touch only their user's partition
(the user's account and that partition's share of the system accounts), on a standalone Valkey and on a 3-primary
cluster, with the default GIFTING_LEDGER_PARTITIONS."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gifting import keys
from gifting.ledger import partitions, rules
from gifting.ledger.store import Ledger, LedgerError
from gifting.payments import PAYOUT_OK
from tests.conftest import make_settings

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
