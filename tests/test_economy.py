"""The coin and diamond economy: catalog changes, purchases, refunds, chargebacks, cash-out, limits, statements."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gifting import keys
from gifting.ledger import rules
from gifting.ledger.audit import run_audit
from tests.conftest import System, SystemFactory, gift_id

pytestmark = pytest.mark.cluster  # on a standalone Valkey and on a Valkey Cluster (tests/conftest.py)


async def audit_clean(system: System) -> None:
    report = await run_audit(system.redis)
    assert report.clean, report.summary()


async def post(system: System, path: str, user: str, role: str = "viewer", **kw: Any) -> Any:
    return await system.http.post(path, headers=system.auth(user, role), **kw)  # type: ignore[arg-type]


async def send_and_settle(system: System, viewer: str, room: str, gift: str, count: int = 1) -> dict[str, Any]:
    response = await post(
        system, f"/v1/rooms/{room}/gifts", viewer, json={"gift": gift, "count": count, "gift_id": gift_id()}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_admin_reprices_and_retires_gifts_live(system: System) -> None:
    """An admin's price change and retirement reach the hub and the worker without a restart."""
    await system.grant("v1", 1000)
    room = await system.open_room("c1")
    response = await system.http.put(
        "/v1/admin/gifts/rose", headers=system.auth("boss", "admin"),
        json={"name": "Rose", "coins": 3, "asset": "rose.svg", "tier": "basic"},
    )  # fmt: skip
    assert response.status_code == 200 and response.json()["coins"] == 3
    gifts = {g["id"]: g for g in (await system.http.get("/v1/catalog/gifts")).json()["gifts"]}
    assert gifts["rose"]["coins"] == 3
    await asyncio.sleep(0.2)  # the hub reloads on the catalog channel; the worker per batch
    assert (await send_and_settle(system, "v1", room, "rose"))["coins"] == 997
    # A client that saw the old price is never charged the new one.
    stale = await post(
        system, f"/v1/rooms/{room}/gifts", "v1", json={"gift": "rose", "count": 1, "gift_id": gift_id(), "price": 1}
    )
    assert stale.json()["reason"] == "price_changed"
    retired = await system.http.post("/v1/admin/gifts/rose/retire", headers=system.auth("boss", "admin"))
    assert retired.status_code == 200 and retired.json()["retired"] is True
    await asyncio.sleep(0.2)
    assert "rose" not in {g["id"] for g in (await system.http.get("/v1/catalog/gifts")).json()["gifts"]}
    rejected = await post(
        system, f"/v1/rooms/{room}/gifts", "v1", json={"gift": "rose", "count": 1, "gift_id": gift_id()}
    )
    assert rejected.json()["reason"] == "gift_retired"
    assert (await system.wallet("v1"))["coins"] == 997
    await audit_clean(system)


async def test_catalog_admin_bad_input(system: System) -> None:
    """Non-admins cannot change the catalog; bad prices get bad_gift; unknown gifts 404."""
    body = {"name": "X", "coins": 5, "asset": "x.svg", "tier": "basic"}
    assert (await system.http.put("/v1/admin/gifts/x", headers=system.auth("v1"), json=body)).status_code == 403
    for coins in (0, -1, 1.5, "5", 10**12):
        response = await system.http.put(
            "/v1/admin/gifts/x", headers=system.auth("a", "admin"), json={**body, "coins": coins}
        )
        assert response.status_code == 400 and response.json()["error"]["code"] == "bad_gift", coins
    response = await system.http.post("/v1/admin/gifts/nope/retire", headers=system.auth("a", "admin"))
    assert response.status_code == 404


async def test_creator_share_is_stored_and_rounded_for_the_platform(start_system: SystemFactory) -> None:
    """At 3333 bps a 100-coin gift earns 33 diamonds (rounded down); the rate is on the journal entry."""
    system = await start_system(creator_share_bps=3333)
    await system.grant("v1", 100)
    room = await system.open_room("c1")
    await send_and_settle(system, "v1", room, "confetti")
    assert (await system.wallet("c1"))["diamonds"] == 33
    entries = await system.redis.xrange(keys.journal(keys.part_of_user("v1")))  # settled in the viewer's partition
    gift = next(g for _, f in entries if f["kind"] == "gifts" for g in rules.journal_gifts(f))
    assert gift["bps"] == "3333" and "sys:platform_revenue 67" in gift["legs"]
    await audit_clean(system)


async def test_purchase_history_and_refund_once(system: System) -> None:
    """A refund reverses an unspent purchase as a new transfer; a second refund is refused."""
    bought = await system.buy("v1", "coins_65", key="p1")
    purchase_id = bought["purchase"]["purchase_id"]
    history = (await system.http.get("/v1/wallet/purchases", headers=system.auth("v1"))).json()["purchases"]
    assert [p["purchase_id"] for p in history] == [purchase_id]
    admin = system.auth("boss", "admin")
    refund = await system.http.post(f"/v1/admin/purchases/{purchase_id}/refund", headers=admin)
    assert refund.status_code == 200 and refund.json()["coins"] == 0
    assert refund.json()["purchase"]["status"] == "refunded"
    again = await system.http.post(f"/v1/admin/purchases/{purchase_id}/refund", headers=admin)
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_reversed"
    viewer_try = await system.http.post(f"/v1/admin/purchases/{purchase_id}/chargeback", headers=system.auth("v1"))
    assert viewer_try.status_code == 403
    await audit_clean(system)


async def test_chargeback_of_spent_coins_leaves_a_debt_that_blocks_gifting(system: System) -> None:
    """Coins spent then charged back: negative balance (debt), gifting blocked, creator keeps diamonds."""
    bought = await system.buy("v1", "coins_65", key="p1")
    room = await system.open_room("c1")
    assert (await send_and_settle(system, "v1", room, "doughnut", 2))["status"] == "settled"  # 60 coins
    admin = system.auth("boss", "admin")
    pid = bought["purchase"]["purchase_id"]
    refused = await system.http.post(f"/v1/admin/purchases/{pid}/refund", headers=admin)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "coins_spent"
    charged = await system.http.post(f"/v1/admin/purchases/{pid}/chargeback", headers=admin)
    assert charged.status_code == 200 and charged.json()["coins"] == -60
    wallet = (await system.http.get("/v1/wallet", headers=system.auth("v1"))).json()
    assert wallet["coins"] == -60 and wallet["debt_coins"] == 60
    assert (await send_and_settle(system, "v1", room, "rose"))["reason"] == "insufficient_coins"
    assert (await system.wallet("c1"))["diamonds"] == 30  # not clawed back
    await system.buy("v1", "coins_65", key="p2")  # repays the debt first
    assert (await system.wallet("v1"))["coins"] == 5
    await audit_clean(system)


async def test_withdrawal_paid_failed_and_timed_out(start_system: SystemFactory) -> None:
    """Cash-out is two-phase: paid posts it, a failing payout voids it and returns the diamonds."""
    system = await start_system(
        withdrawal_diamonds_min=10, diamond_hold_s=0, payout_interval_ms=50, withdrawal_timeout_s=1
    )
    await system.grant("v1", 10_000)
    room = await system.open_room("c1")
    await send_and_settle(system, "v1", room, "galaxy", 2)  # 2000 coins -> 1000 diamonds
    creator = system.auth("c1", "creator")

    async def withdraw(key: str, diamonds: int, account: str) -> Any:
        return await system.http.post(
            "/v1/wallet/withdrawals", headers={**creator, "Idempotency-Key": key},
            json={"diamonds": diamonds, "payout_account": account},
        )  # fmt: skip

    ok = await withdraw("w1", 100, "acct_sandbox_ok")
    assert ok.status_code == 201 and ok.json()["withdrawal"]["status"] == "pending"
    assert (await system.wallet("c1"))["diamonds"] == 900  # held while pending, gone once paid: 900 either way
    assert (await withdraw("w1", 100, "acct_sandbox_ok")).json()["replay"] is True
    assert (await withdraw("w1", 101, "acct_sandbox_ok")).json()["error"]["code"] == "idempotency_key_conflict"
    failing = await withdraw("w2", 200, "acct_sandbox_fail")
    slow = await withdraw("w3", 300, "acct_sandbox_slow")
    assert failing.status_code == 201 and slow.status_code == 201  # (the payouts may void `failing` any time now)

    async def statuses() -> dict[str, str]:
        items = (await system.http.get("/v1/wallet/withdrawals", headers=creator)).json()["withdrawals"]
        return {w["withdrawal_id"]: w["status"] for w in items}

    for _ in range(100):
        if "pending" not in (await statuses()).values():
            break
        await asyncio.sleep(0.05)
    assert await statuses() == {"w:c1:w1": "paid", "w:c1:w2": "failed", "w:c1:w3": "failed"}
    assert (await system.wallet("c1"))["diamonds"] == 900  # failed and timed-out diamonds came back
    post_after_void = await system.http.post("/v1/admin/withdrawals/w:c1:w2/post", headers=system.auth("a", "admin"))
    assert post_after_void.status_code == 409 and post_after_void.json()["error"]["code"] == "withdrawal_not_pending"
    await audit_clean(system)


async def test_withdrawal_rules(start_system: SystemFactory) -> None:
    """Minimum, balance, daily cap, hold on fresh diamonds, absurd amounts, and viewers: each a clear code."""
    system = await start_system(withdrawal_diamonds_min=50, withdrawal_diamonds_per_day_max=300, diamond_hold_s=3600)
    await system.grant("v1", 10_000)
    room = await system.open_room("c1")
    await send_and_settle(system, "v1", room, "galaxy", 2)  # 1000 diamonds, all freshly earned (held)
    creator = system.auth("c1", "creator")

    async def code(diamonds: Any, user: dict[str, str] = creator) -> str:
        response = await system.http.post(
            "/v1/wallet/withdrawals", headers={**user, "Idempotency-Key": gift_id()}, json={"diamonds": diamonds}
        )
        return str(response.json()["error"]["code"]) if response.status_code >= 400 else "ok"

    assert await code(10) == "below_minimum"
    assert await code(5000) == "daily_cap_exceeded"
    assert await code(2000_000_000) == "daily_cap_exceeded"
    assert await code(100) == "diamonds_on_hold"
    for bad in (0, -5, 1.5, "100", True, None):
        assert await code(bad) == "bad_amount", bad
    assert await code(100, system.auth("v1")) == "forbidden"
    assert (await system.wallet("c1"))["diamonds"] == 1000  # nothing moved
    await audit_clean(system)


async def test_daily_spend_cap_is_enforced_in_settlement(start_system: SystemFactory) -> None:
    """A viewer's own daily cap (and the global one) reject gifts past it, atomically under concurrency."""
    system = await start_system(daily_spend_coins_max=500)
    await system.grant("v1", 10_000)
    room = await system.open_room("c1")
    response = await system.http.put(
        "/v1/wallet/limits", headers=system.auth("v1"), json={"daily_spend_coins_max": 250}
    )
    assert response.json()["daily_spend_coins_max"] == 250
    results = await asyncio.gather(*(send_and_settle(system, "v1", room, "coffee") for _ in range(40)))
    assert sum(r["status"] == "settled" for r in results) == 25
    assert {r["reason"] for r in results if r["status"] == "rejected"} == {"daily_limit"}
    bad = await system.http.put("/v1/wallet/limits", headers=system.auth("v1"), json={"daily_spend_coins_max": -1})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_amount"
    await audit_clean(system)


async def test_statements_paginate_and_sessions_summarise(system: System) -> None:
    """Transactions list every transfer with kind, amount, counterpart and reference, page by page."""
    await system.buy("v1", "coins_328", key="p1")
    room = await system.open_room("c1")
    for _ in range(5):
        await send_and_settle(system, "v1", room, "coffee")
    seen: list[dict[str, Any]] = []
    cursor = None
    for _ in range(10):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await system.http.get("/v1/wallet/transactions", headers=system.auth("v1"), params=params)).json()
        seen += page["transactions"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [t["kind"] for t in seen] == ["gift_sent"] * 5 + ["purchase"]
    assert seen[0]["amount"] == -10 and seen[0]["counterpart"] == "c1" and seen[-1]["amount"] == 328
    creator_page = (await system.http.get("/v1/wallet/transactions", headers=system.auth("c1", "creator"))).json()
    assert {(t["kind"], t["amount"], t["counterpart"]) for t in creator_page["transactions"]} == {
        ("gift_received", 5, "v1")
    }
    earnings = (await system.http.get(f"/v1/rooms/{room}/earnings", headers=system.auth("c1", "creator"))).json()
    assert (earnings["gifts"], earnings["coins"], earnings["diamonds"]) == (5, 50, 25)
    await system.http.post(f"/v1/rooms/{room}/end", headers=system.auth("c1", "creator"))
    sessions = (await system.http.get("/v1/wallet/sessions", headers=system.auth("c1", "creator"))).json()["sessions"]
    assert sessions[0]["room"] == room and sessions[0]["diamonds"] == 25
    assert (await system.http.get("/v1/wallet/transactions?cursor=bad", headers=system.auth("v1"))).status_code == 400


async def test_audit_flags_a_double_reversal(system: System) -> None:
    """A hand-made second refund entry in the journal is a finding (every reversal matches one purchase)."""
    bought = await system.buy("v1", "coins_65", key="p1")
    pid = bought["purchase"]["purchase_id"]
    await system.http.post(f"/v1/admin/purchases/{pid}/refund", headers=system.auth("a", "admin"))
    part = keys.part_of_user("v1")  # the buyer's partition holds the purchase and its reversals
    await system.redis.xadd(
        keys.journal(part), {"kind": "refund", "id": "x", "ref": pid, "legs": "coins u:v1 sys:coin_issuance 65"}
    )
    await system.redis.hincrby(keys.coins(part), "u:v1", -65)
    await system.redis.hincrby(keys.coins(part), "sys:coin_issuance", 65)
    report = await run_audit(system.redis)
    assert any("reversed 2 times" in f or "2 reversal" in f for f in report.findings), report.summary()
