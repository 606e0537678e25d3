"""Money holes found by attacking the server from outside (issue #10): idempotency scoped per user, one spend
cap for every way of spending, a self-set cap that cools off before it rises, short-lived rejection records."""

from __future__ import annotations

import hashlib
from typing import Any

from gifting import keys
from gifting.ledger import rules
from gifting.ledger.audit import run_audit
from gifting.ledger.store import LedgerError
from gifting.payments import SANDBOX_DECLINED, SANDBOX_OK, Charge
from tests.conftest import System, SystemFactory, gift_id


class IdempotentProvider:
    """A payment provider that honours idempotency keys as real ones do: a repeated key returns the first charge,
    whoever asks and whatever the token."""

    name = "idempotent"

    def __init__(self) -> None:
        self.charges: dict[str, Charge] = {}
        self.keys_seen: list[str] = []

    async def charge(
        self, idempotency_key: str, user: str, amount_minor: int, currency: str, payment_token: str
    ) -> Charge:
        self.keys_seen.append(idempotency_key)
        if idempotency_key not in self.charges:
            charge_id = "ch_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]
            status = "paid" if payment_token == SANDBOX_OK else "declined"
            self.charges[idempotency_key] = Charge(status, charge_id, "" if status == "paid" else "card_declined")
        return self.charges[idempotency_key]


async def buy(system: System, user: str, key: str, payment_token: str, bundle: str = "coins_65") -> Any:
    return await system.http.post(
        "/v1/wallet/purchases",
        headers={**system.auth(user), "Idempotency-Key": key},
        json={"bundle_id": bundle, "payment_token": payment_token},
    )


async def audit_clean(system: System) -> None:
    report = await run_audit(system.redis)
    assert report.clean, report.summary()


# Item 1 -------------------------------------------------------------------------------------------------------


async def test_two_users_with_one_idempotency_key_reach_the_provider_with_different_keys(system: System) -> None:
    """Viewer 2 reusing viewer 1's Idempotency-Key is charged on their own card, not handed viewer 1's charge."""
    provider = IdempotentProvider()
    system.app.state.payments = provider
    assert (await buy(system, "v1", "buy-42", SANDBOX_OK)).status_code == 201
    declined = await buy(system, "v2", "buy-42", SANDBOX_DECLINED)
    assert declined.status_code == 402, declined.text
    assert (await system.wallet("v2"))["coins"] == 0
    assert (await system.wallet("v1"))["coins"] == 65
    assert len(set(provider.keys_seen)) == 2 and "buy-42" not in provider.keys_seen
    await audit_clean(system)


async def test_the_provider_key_differs_for_a_different_purchase_under_the_same_key(system: System) -> None:
    """A crashed purchase retried with other fields under the same key never gets the first charge's answer."""
    provider = IdempotentProvider()
    system.app.state.payments = provider
    assert (await buy(system, "v1", "k1", SANDBOX_OK, "coins_65")).status_code == 201
    # As if the first attempt had charged the provider and crashed before the ledger recorded it:
    await system.redis.delete(keys.purchase_record(keys.purchase_id("v1", "k1")))
    retried = await buy(system, "v1", "k1", SANDBOX_DECLINED, "coins_328")
    assert retried.status_code == 402, retried.text
    assert provider.keys_seen[0] != provider.keys_seen[1]


# Item 2 -------------------------------------------------------------------------------------------------------


async def withdraw(system: System, creator: str, key: str, diamonds: int, account: str = "acct_sandbox_slow") -> Any:
    return await system.http.post(
        "/v1/wallet/withdrawals",
        headers={**system.auth(creator, "creator"), "Idempotency-Key": key},
        json={"diamonds": diamonds, "payout_account": account},
    )


async def test_withdrawal_ids_of_different_creators_never_meet(start_system: SystemFactory) -> None:
    """Creator `c1` with key `k_x` and creator `c1_k` with key `x` get two withdrawals; neither sees the other's."""
    system = await start_system(withdrawal_diamonds_min=10, diamond_hold_s=0)
    for creator in ("c1", "c1_k"):
        await system.grant("v1", 200)
        room = await system.open_room(creator)
        response = await system.http.post(
            f"/v1/rooms/{room}/gifts",
            headers=system.auth("v1"),
            json={"gift": "confetti", "count": 1, "gift_id": gift_id()},
        )
        assert response.json()["status"] == "settled", response.text
    first = await withdraw(system, "c1", "k_x", 20, "acct_sandbox_slow")
    second = await withdraw(system, "c1_k", "x", 20, "acct_sandbox_slow")
    assert first.status_code == 201 and second.status_code == 201, second.text
    assert second.json()["replay"] is False
    assert second.json()["withdrawal"]["user"] == "c1_k" and second.json()["withdrawal"]["diamonds"] == 20
    assert first.json()["withdrawal"]["withdrawal_id"] != second.json()["withdrawal"]["withdrawal_id"]
    await audit_clean(system)


async def test_a_withdrawal_replay_checks_its_owner(start_system: SystemFactory) -> None:
    """Asking the ledger for another creator's withdrawal id is refused, never answered with their withdrawal."""
    system = await start_system(withdrawal_diamonds_min=10, diamond_hold_s=0)
    await system.grant("v1", 200)
    room = await system.open_room("c1")
    await system.http.post(
        f"/v1/rooms/{room}/gifts",
        headers=system.auth("v1"),
        json={"gift": "confetti", "count": 1, "gift_id": gift_id()},
    )
    created = (await withdraw(system, "c1", "w1", 20)).json()["withdrawal"]
    ledger = system.app.state.ledger
    fingerprint = rules.fingerprint(20, "acct_sandbox_slow")
    try:
        await ledger.request_withdrawal("c2", created["withdrawal_id"], 20, "acct_sandbox_slow", fingerprint)
    except LedgerError as exc:
        assert exc.code == "idempotency_key_conflict"
    else:
        raise AssertionError("another creator's withdrawal id was replayed")


async def test_a_purchase_replay_checks_its_owner(system: System) -> None:
    """A purchase record found under an id is returned only to the user who made it."""
    assert (await buy(system, "v1", "p1", SANDBOX_OK)).status_code == 201
    ledger = system.app.state.ledger
    fingerprint = rules.fingerprint("coins_65", SANDBOX_OK)
    stored, same, replay = await ledger.purchase("v2", keys.purchase_id("v1", "p1"), fingerprint, "paid", {}, 65)
    assert not same and replay and stored == {}  # the other purchase stays private
    assert (await system.wallet("v2"))["coins"] == 0
