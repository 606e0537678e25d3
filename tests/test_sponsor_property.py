"""Property test: random concurrent mixes of sponsored sends (fresh and resent), paid gifts, fundings (fresh and
retried), admin grants and early ends keep every budget exact.

Each step runs a small batch (1-4) of operations at once over HTTP against the real app, worker and Valkey (as
tests/test_economy_property.py does). After every step the audit must be clean, and the campaign's report must
agree with what the answers add up to: funded = the fundings and grants answered 200 (a retried key once),
spent = settled sponsored gifts x price (a resend of a gift_id: the same outcome, counted once), funded = spent +
returned + budget left, never below zero; once the campaign ended, nothing more settles from it and it holds 0.
One system serves every example (fresh user names per example); examples are derandomized and bounded
(30; half of them unless GIFTING_TEST_LONG=1: tests/conftest.py property_settings).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import event, given, note
from hypothesis import strategies as st

from gifting import clock
from gifting.ledger.audit import run_audit
from tests.conftest import System, SystemFactory, property_settings

PRICE = 10  # coffee, the sponsored gift
EXAMPLES = itertools.count(1)
# Sends weigh most (a storm); an end is rare, so most examples run out of budget before it.
OPS = ("send", "send", "send", "send", "resend", "resend", "paid_gift", "fund", "fund_retry", "grant", "end")


@dataclass
class Run:
    system: System
    prefix: str
    campaign: str = ""
    room: str = ""
    funded: int = 0
    settled: set[str] = field(default_factory=set)
    outcomes: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # gift id -> (status, reason)
    senders: dict[str, int] = field(default_factory=dict)  # gift id -> its viewer (a resend keeps it)
    fund_keys: dict[str, tuple[str, int]] = field(default_factory=dict)  # key -> (fund | grant, coins), answered 200
    ended: bool = False

    @property
    def brand(self) -> str:
        return f"{self.prefix}b"

    async def start(self) -> None:
        await self.system.grant(self.brand, 10_000)
        for i in range(3):
            await self.system.grant(f"{self.prefix}v{i}", 1_000)
        self.room = await self.system.open_room(f"{self.prefix}c")
        body = {"name": "p", "gift": "coffee", "end_ms": clock.now_ms() + 3_600_000, "viewer_day_max": 5}
        response = await self.system.http.post("/v1/campaigns", headers=self.auth(self.brand, "brand"), json=body)
        assert response.status_code == 201, response.text
        self.campaign = response.json()["campaign"]["id"]
        await self.fund("fund", 3 * PRICE)  # some sends settle from the start; the storm exhausts it

    def auth(self, user: str, role: Any = "viewer") -> dict[str, str]:
        return self.system.auth(user, role)

    async def run(self, op: str, viewer: int, coins: int) -> str:
        http = self.system.http
        if op in ("send", "resend"):
            gid = next(iter(self.senders), None) if op == "resend" else None
            gid = gid or str(uuid.uuid4())
            viewer = self.senders.setdefault(gid, viewer)
            user = f"{self.prefix}v{viewer}"
            body = {"gift": "coffee", "count": 1, "gift_id": gid, "campaign": self.campaign}
            response = await http.post(f"/v1/rooms/{self.room}/gifts", headers=self.auth(user), json=body)
            return self.sent(gid, response.status_code, response.json())
        if op == "paid_gift":
            body = {"gift": "rose", "count": 1, "gift_id": str(uuid.uuid4())}
            headers = self.auth(f"{self.prefix}v{viewer}")
            response = await http.post(f"/v1/rooms/{self.room}/gifts", headers=headers, json=body)
            return f"paid {response.status_code}"
        if op in ("fund", "fund_retry", "grant"):
            return await self.fund(op, coins)
        response = await http.post(f"/v1/campaigns/{self.campaign}/end", headers=self.auth(self.brand, "brand"))
        assert response.status_code == 200, response.text
        self.ended = True
        return f"end returned {response.json()['returned']}"

    def sent(self, gid: str, status: int, body: dict[str, Any]) -> str:
        if status == 202:  # still settling: the report's bounds below allow it; a later resend learns it
            self.outcomes.setdefault(gid, ("pending", None))
            return f"send {gid[:8]} pending"
        outcome = (body["status"], body.get("reason"))
        if gid in self.outcomes and self.outcomes[gid][0] != "pending":
            assert outcome == self.outcomes[gid], (gid, outcome, self.outcomes[gid])
        self.outcomes[gid] = outcome
        if outcome[0] == "settled":
            self.settled.add(gid)
        return f"send {gid[:8]} {outcome}"

    async def fund(self, op: str, coins: int) -> str:
        """A brand funding or an admin grant; fund_retry repeats an earlier one with its key (moves nothing)."""
        key = next(iter(self.fund_keys), "") if op == "fund_retry" else str(uuid.uuid4())
        if key:
            op, coins = self.fund_keys.get(key, (op, coins))
        else:
            op, key = "fund", str(uuid.uuid4())
        if op == "grant":
            path, headers = f"/v1/admin/campaigns/{self.campaign}/grant", self.auth(f"{self.prefix}a", "admin")
            body: dict[str, Any] = {"coins": coins, "invoice": f"INV-{key[:8]}"}
        else:
            path, headers, body = (
                f"/v1/campaigns/{self.campaign}/fund",
                self.auth(self.brand, "brand"),
                {"coins": coins},
            )
        response = await self.system.http.post(path, headers={**headers, "Idempotency-Key": key}, json=body)
        if response.status_code == 200 and key not in self.fund_keys:
            self.fund_keys[key] = (op, coins)
            self.funded += coins
        else:
            assert response.status_code == 200 or response.json()["error"]["code"] == "campaign_closed", response.text
        return f"{op} {coins}: {response.status_code}"

    async def check(self) -> None:
        report = await run_audit(self.system.redis)
        assert report.clean, report.summary()
        response = await self.system.http.get(f"/v1/campaigns/{self.campaign}", headers=self.auth(self.brand, "brand"))
        r = response.json()["campaign"]["report"]
        note(f"report {r}")
        assert r["funded"] == self.funded
        assert r["funded"] == r["spent"] + r["returned"] + r["budget_left"] and r["budget_left"] >= 0
        pending = sum(1 for status, _ in self.outcomes.values() if status == "pending")
        assert len(self.settled) * PRICE <= r["spent"] <= (len(self.settled) + pending) * PRICE
        if self.ended:
            assert r["budget_left"] == 0


def steps() -> st.SearchStrategy[list[list[tuple[str, int, int]]]]:
    op = st.tuples(st.sampled_from(OPS), st.integers(0, 2), st.sampled_from((5, 10, 25, 40)))
    return st.lists(st.lists(op, min_size=1, max_size=4), min_size=1, max_size=6)


@pytest.fixture
async def shared(start_system: SystemFactory) -> System:
    return await start_system()


@pytest.mark.timeout(600)
@property_settings(30)  # full count under GIFTING_TEST_LONG=1 (tests/conftest.py)
@given(scenario=steps())
async def test_random_mixes_keep_every_budget_exact(shared: System, scenario: list[list[tuple[str, int, int]]]) -> None:
    """Concurrent sponsored sends, resends, paid gifts, fundings, grants and ends: audit clean, report exact."""
    run = Run(shared, f"s{next(EXAMPLES)}")
    await run.start()
    for batch in scenario:
        answers = await asyncio.gather(*(run.run(*op) for op in batch))
        note(f"step {batch}: {answers}")
        for answer in answers:  # --hypothesis-show-statistics lists the outcomes exercised
            event(answer.split(" ", 1)[0] + (" " + answer.split(" ", 2)[2] if answer.startswith("send ") else ""))
        await run.check()
