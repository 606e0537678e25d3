"""`gifting report DAY` (and `--json`): the accountant's daily totals from the archive's SQL views, exact to
the coin and the minor unit: coins sold and money taken per bundle and currency, coins spent, diamonds earned
and paid out, refunds and chargebacks."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import psycopg
import redis.asyncio as aioredis

from gifting import keys
from gifting.ledger import rules
from gifting.ledger.store import Ledger
from tests.conftest import REPO, make_settings
from tests.test_archive import archiver_env, drain, gifts

WAIT_S = 30.0
BUNDLES = {"small": (100, 99, "USD"), "big": (1000, 899, "EUR")}  # bundle -> (coins, price_minor, currency)


async def buy(ledger: Ledger, user: str, bundle: str, key: str) -> str:
    coins, price, currency = BUNDLES[bundle]
    pid = keys.purchase_id(user, key)
    record = {"purchase_id": pid, "bundle_id": bundle, "coins": coins, "price_minor": price, "currency": currency}
    await ledger.purchase(user, pid, "fp", "paid", record, coins)
    return pid


async def report(database_url: str, tmp_path: Path, day: str, *flags: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gifting.cli", "report", day, *flags,
        env=archiver_env("redis://127.0.0.1:1/0", database_url, tmp_path), cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), WAIT_S)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_daily_report_by_bundle_and_currency(
    redis: aioredis.Redis, history: psycopg.AsyncConnection[Any], database_url: str, tmp_path: Path
) -> None:
    """Three purchases (two bundles, two currencies), gifts, a refund, a chargeback and a paid-out withdrawal:
    every figure of the JSON report is exact; the text report shows each section."""
    settings = make_settings(tmp_path, withdrawal_diamonds_min=1, diamond_hold_s=0)
    ledger = Ledger(redis, settings)
    await buy(ledger, "viewer0", "small", "a")
    refunded = await buy(ledger, "viewer1", "small", "b")
    charged = await buy(ledger, "viewer2", "big", "c")
    await ledger.reverse(refunded, "refund")
    await gifts(ledger, settings, 1, coins=10)  # viewer0 gives 10 coins to creator1
    await ledger.reverse(charged, "chargeback")
    withdrawal, _ = await ledger.request_withdrawal(
        "creator1", keys.withdrawal_id("creator1", "k"), 2, "acct_sandbox", "2:acct_sandbox"
    )
    await ledger.resolve_withdrawal(withdrawal["withdrawal_id"], "post")
    await drain(redis, history)
    days = [row[0].isoformat() for row in await (await history.execute("SELECT DISTINCT day FROM legs")).fetchall()]
    sales: Counter[tuple[str, str, str]] = Counter()
    reversals: Counter[tuple[str, str, str, str]] = Counter()
    ledger_totals: Counter[str] = Counter()
    for day in days:  # one day, unless the test ran across midnight UTC
        body = orjson.loads(await report(database_url, tmp_path, day, "--json"))
        for row in body["sales"]:
            for field in ("purchases", "coins_sold", "money_minor"):
                sales[(row["bundle"], row["currency"], field)] += row[field]
        for row in body["reversals"]:
            for field in ("reversals", "coins", "money_minor"):
                reversals[(row["kind"], row["bundle"], row["currency"], field)] += row[field]
        ledger_totals.update(body["ledger"][0])
    assert sales == {
        ("small", "USD", "purchases"): 2, ("small", "USD", "coins_sold"): 200, ("small", "USD", "money_minor"): 198,
        ("big", "EUR", "purchases"): 1, ("big", "EUR", "coins_sold"): 1000, ("big", "EUR", "money_minor"): 899,
    }  # fmt: skip
    assert reversals == {
        ("refund", "small", "USD", "reversals"): 1, ("refund", "small", "USD", "coins"): 100,
        ("refund", "small", "USD", "money_minor"): 99,
        ("chargeback", "big", "EUR", "reversals"): 1, ("chargeback", "big", "EUR", "coins"): 1000,
        ("chargeback", "big", "EUR", "money_minor"): 899,
    }  # fmt: skip
    diamonds = rules.split_gift(10, settings.creator_share_bps).diamonds
    assert ledger_totals == {"coins_spent": 10, "diamonds_earned": diamonds, "diamonds_paid_out": 2}
    text = await report(database_url, tmp_path, days[-1])
    assert "== coins sold and money taken, per bundle and currency" in text
    assert "== refunds and chargebacks" in text and "== coins spent on gifts" in text


async def test_report_of_a_day_with_nothing_archived(database_url: str, tmp_path: Path) -> None:
    """A day with no archived entry reports empty sections and zero ledger totals (not an error)."""
    body = orjson.loads(await report(database_url, tmp_path, "2001-01-01", "--json"))
    assert body == {
        "day": "2001-01-01", "totals": [], "sales": [], "reversals": [],
        "ledger": [{"coins_spent": 0, "diamonds_earned": 0, "diamonds_paid_out": 0}],
    }  # fmt: skip
