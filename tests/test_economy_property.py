"""Property test: random concurrent interleavings of every economy operation keep the ledger consistent.

Hypothesis draws a scenario: a list of steps, each a small batch (1-4) of operations run concurrently with
asyncio.gather over HTTP against the real app, settlement worker and Valkey: purchases (fresh, or a retry of an
earlier Idempotency-Key with the same or a different body), gifts (fresh, or a resend of an earlier gift_id
with the same or different fields), refunds and chargebacks of earlier purchases (possibly twice), withdrawals
(payout accounts ok / fail / slow, and retries of their keys) and admin post/void of earlier withdrawals.

After every step `run_audit` must be clean over the whole database, and a model kept here must agree with the
server wherever the outcome is deterministic: a retried key returns the same purchase or withdrawal, a resent
gift_id the same status, reason and coins (another body or other fields: a conflict); no purchase is reversed
twice; coin balances equal what the answered outcomes add up to and go below zero only by chargebacks; a
withdrawal is resolved once (paid or failed, never both, never back to pending) and diamonds equal earnings
minus pending and paid withdrawals. Where concurrency makes an outcome order-dependent (two gifts of one
viewer in one batch), the model checks the bounds instead and learns the server's answer.

How it runs: pytest-asyncio (>= 1.0) runs an `async def` test decorated with `@given` by wrapping hypothesis's
inner test, so every example is one coroutine on the session event loop, the same loop as the fixtures. The
system (web app + settlement worker) is therefore started once per test by a fixture and shared by all
examples (HealthCheck.function_scoped_fixture is suppressed on purpose). Valkey cannot be flushed between
examples while the worker runs (its consumer group would vanish), so each example uses fresh user names (a
per-example prefix) and its own rooms, and the audit stays global: it must be clean across all examples.
Examples are derandomized (fixed sequence for CI) and bounded (25 examples of up to 8 steps: about 20-25 s;
half of them unless GIFTING_TEST_LONG=1: tests/conftest.py property_settings);
the timeout mark leaves room for hypothesis to shrink and print a failing scenario (`print_blob=True`), and
each step's requests and answers are attached to it with `note()`. `--hypothesis-show-statistics` lists
the outcomes exercised (`event()`).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import event, given, note
from hypothesis import strategies as st

from gifting import keys
from gifting.ledger import rules
from gifting.ledger.audit import run_audit
from tests.conftest import System, SystemFactory, property_settings

VIEWERS = 3
CREATORS = 2
BUNDLES = ("coins_65", "coins_328")
GIFTS = ("rose", "coffee", "doughnut", "confetti")
PAY_OK, PAY_DECLINED = "tok_sandbox_ok", "tok_sandbox_declined"
ACCT_OK, ACCT_FAIL, ACCT_SLOW = "acct_sandbox_ok", "acct_sandbox_fail", "acct_sandbox_slow"
ADMIN = "boss"
START_BUNDLE = "coins_328"  # every viewer buys this once before the scenario, so gifts can settle
START_GIFT = "confetti"  # and one viewer per creator sends this, so withdrawals can succeed
MAX_STEPS = 8
MAX_OPS_PER_STEP = 4
PENDING_GIFT_RESENDS = 3  # a gift answered 202 (still settling) is resent with the same gift_id this often
EXAMPLES = itertools.count(1)
REVERSED = ("refunded", "charged_back")
T = TypeVar("T")


# Drawn operations: abstract, resolved against the scenario's own history when the step runs -----------------


@dataclass(frozen=True)
class Purchase:
    viewer: int
    bundle: str
    pay_ok: bool
    retry_of: int | None  # None: a fresh Idempotency-Key; n: the key of the (n+1)-th latest purchase sent
    same_body: bool


@dataclass(frozen=True)
class Gift:
    viewer: int
    creator: int
    gift: str
    count: int
    resend_of: int | None  # None: a fresh gift_id; n: the gift_id of the (n+1)-th latest gift sent
    same_fields: bool


@dataclass(frozen=True)
class Reverse:
    mode: str  # refund | chargeback
    purchase: int  # the (n+1)-th latest purchase sent


@dataclass(frozen=True)
class Withdraw:
    creator: int
    diamonds: int
    account: str
    retry_of: int | None  # as for purchases
    same_body: bool


@dataclass(frozen=True)
class Resolve:
    action: str  # post | void
    withdrawal: int  # the (n+1)-th latest withdrawal sent


Op = Purchase | Gift | Reverse | Withdraw | Resolve


def scenarios() -> st.SearchStrategy[list[list[Op]]]:
    earlier = st.none() | st.integers(0, 9)
    same = st.sampled_from((True, False))
    viewer, creator = st.integers(0, VIEWERS - 1), st.integers(0, CREATORS - 1)
    purchase = st.builds(
        Purchase, viewer=viewer, bundle=st.sampled_from(BUNDLES), pay_ok=same, retry_of=earlier, same_body=same
    )
    gift = st.builds(
        Gift,
        viewer=viewer,
        creator=creator,
        gift=st.sampled_from(GIFTS),
        count=st.integers(1, 3),
        resend_of=earlier,
        same_fields=same,
    )
    reverse = st.builds(Reverse, mode=st.sampled_from(("refund", "chargeback")), purchase=st.integers(0, 9))
    accounts = st.sampled_from((ACCT_OK, ACCT_FAIL, ACCT_SLOW))
    withdraw = st.builds(
        Withdraw, creator=creator, diamonds=st.integers(1, 120), account=accounts, retry_of=earlier, same_body=same
    )
    resolve = st.builds(Resolve, action=st.sampled_from(("post", "void")), withdrawal=st.integers(0, 9))
    op: st.SearchStrategy[Op] = st.one_of(purchase, gift, reverse, withdraw, resolve)
    return st.lists(st.lists(op, min_size=1, max_size=MAX_OPS_PER_STEP), min_size=1, max_size=MAX_STEPS)


# Concrete requests ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PurchaseReq:
    viewer: str
    key: str
    bundle: str
    token: str

    @property
    def pid(self) -> str:
        return keys.purchase_id(self.viewer, self.key)

    @property
    def fp(self) -> tuple[str, str]:
        return (self.bundle, self.token)


@dataclass(frozen=True)
class GiftReq:
    viewer: str
    creator: str
    room: str
    gift: str
    count: int
    gift_id: str

    @property
    def fp(self) -> tuple[str, str, str, int]:
        return (self.viewer, self.room, self.gift, self.count)


@dataclass(frozen=True)
class ReverseReq:
    pid: str
    viewer: str
    mode: str


@dataclass(frozen=True)
class WithdrawReq:
    creator: str
    key: str
    diamonds: int
    account: str

    @property
    def wid(self) -> str:
        return keys.withdrawal_id(self.creator, self.key)

    @property
    def fp(self) -> tuple[int, str]:
        return (self.diamonds, self.account)


@dataclass(frozen=True)
class ResolveReq:
    wid: str
    creator: str
    action: str


Req = PurchaseReq | GiftReq | ReverseReq | WithdrawReq | ResolveReq
Answer = tuple[Any, int, dict[str, Any]]  # (request, HTTP status, JSON body)


# What the model has learned from the server's answers ----------------------------------------------------------


@dataclass
class PurchaseFact:
    viewer: str
    fp: tuple[str, str]
    record: dict[str, Any]  # the purchase as first answered, without its (changing) status
    coins: int
    status: str  # paid | declined | refunded | charged_back
    first_status: str = field(init=False)  # paid | declined: what the purchase was created as

    def __post_init__(self) -> None:
        self.first_status = self.status


@dataclass
class WithdrawalFact:
    creator: str
    fp: tuple[int, str]
    diamonds: int
    account: str
    admin: str | None = None  # the one admin action that succeeded: post | void


@dataclass
class Snapshot:
    """Diamond balances and withdrawal states read in one MULTI, so the worker cannot change them in between."""

    diamonds: dict[str, int]
    withdrawals: dict[str, tuple[str, str]]  # wid -> (status, reason)

    def pending(self, creator: str, facts: dict[str, WithdrawalFact]) -> int:
        states = self.withdrawals
        return sum(
            f.diamonds for w, f in facts.items() if f.creator == creator and states.get(w, ("",))[0] == "pending"
        )


def stable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "status"}


def error_code(body: dict[str, Any]) -> str | None:
    error = body.get("error")
    return error.get("code") if isinstance(error, dict) else None


def gift_result(body: dict[str, Any]) -> tuple[str, str | None, int]:
    return (body["status"], body["reason"], body["coins"])


def latest(sent: list[T], n: int) -> T:
    """The (n+1)-th most recent item (wrapping): small n often picks an op of the same, concurrent, step."""
    return sent[-1 - n % len(sent)]


def by_key(answers: list[Answer], key: str) -> dict[str, list[Answer]]:
    groups: dict[str, list[Answer]] = defaultdict(list)
    for answer in answers:
        groups[getattr(answer[0], key)].append(answer)
    return groups


class Run:
    """One hypothesis example: fresh users and rooms, the scenario's history, and the model."""

    def __init__(self, system: System, prefix: str, prices: dict[str, int], bundles: dict[str, int]) -> None:
        self.system, self.prices, self.bundles = system, prices, bundles
        self.viewers = [f"{prefix}v{i}" for i in range(VIEWERS)]
        self.creators = [f"{prefix}c{i}" for i in range(CREATORS)]
        self.rooms: list[str] = []
        self.key_numbers = itertools.count()
        # The drawn history (what was sent, whatever the answers): retries and targets are picked from it.
        self.sent_purchases: list[PurchaseReq] = []
        self.sent_gifts: list[GiftReq] = []
        self.sent_withdrawals: list[WithdrawReq] = []
        # What the server answered.
        self.purchases: dict[str, PurchaseFact] = {}
        self.gifts: dict[str, tuple[tuple[str, str, str, int], tuple[str, str | None, int]]] = {}
        self.withdrawals: dict[str, WithdrawalFact] = {}
        self.coins: dict[str, int] = dict.fromkeys(self.viewers, 0)
        self.charged_back: dict[str, int] = dict.fromkeys(self.viewers, 0)
        self.earned: dict[str, int] = dict.fromkeys(self.creators, 0)
        self.statuses: dict[str, tuple[str, str]] = {}  # each withdrawal's state at the last snapshot
        self.step_number = 0

    async def start(self) -> None:
        """Open the rooms; every viewer buys coins and two of them gift, so creators have diamonds to withdraw."""
        self.rooms = [await self.system.open_room(c, "Property") for c in self.creators]
        self.sent_purchases = [PurchaseReq(v, "start", START_BUNDLE, PAY_OK) for v in self.viewers]
        await self.run_step(list(self.sent_purchases))
        self.sent_gifts = [
            GiftReq(self.viewers[i], self.creators[i], self.rooms[i], START_GIFT, 1, str(uuid.uuid4()))
            for i in range(CREATORS)
        ]
        await self.run_step(list(self.sent_gifts))

    # Resolving drawn ops -------------------------------------------------------------------------------------

    def new_key(self) -> str:
        return f"k{next(self.key_numbers)}"

    def resolve(self, op: Op) -> Req | None:
        if isinstance(op, Purchase):
            return self._purchase(op)
        if isinstance(op, Gift):
            return self._gift(op)
        if isinstance(op, Withdraw):
            return self._withdraw(op)
        if isinstance(op, Reverse):
            if not self.sent_purchases:
                return None
            target = latest(self.sent_purchases, op.purchase)
            return ReverseReq(target.pid, target.viewer, op.mode)
        if not self.sent_withdrawals:
            return None
        target_w = latest(self.sent_withdrawals, op.withdrawal)
        return ResolveReq(target_w.wid, target_w.creator, op.action)

    def _purchase(self, op: Purchase) -> PurchaseReq:
        token = PAY_OK if op.pay_ok else PAY_DECLINED
        if op.retry_of is None or not self.sent_purchases:
            req = PurchaseReq(self.viewers[op.viewer], self.new_key(), op.bundle, token)
        else:
            prior = latest(self.sent_purchases, op.retry_of)
            bundle, token = (prior.bundle, prior.token) if op.same_body else (op.bundle, token)
            if not op.same_body and (bundle, token) == prior.fp:
                token = PAY_DECLINED if token == PAY_OK else PAY_OK
            req = PurchaseReq(prior.viewer, prior.key, bundle, token)
        self.sent_purchases.append(req)
        return req

    def _gift(self, op: Gift) -> GiftReq:
        if op.resend_of is None or not self.sent_gifts:
            c = op.creator
            req = GiftReq(
                self.viewers[op.viewer], self.creators[c], self.rooms[c], op.gift, op.count, str(uuid.uuid4())
            )
        elif op.same_fields:
            req = latest(self.sent_gifts, op.resend_of)
        else:
            prior = latest(self.sent_gifts, op.resend_of)
            c, count = op.creator, op.count
            if (self.rooms[c], op.gift, count) == (prior.room, prior.gift, prior.count):
                count = count % 3 + 1
            req = GiftReq(prior.viewer, self.creators[c], self.rooms[c], op.gift, count, prior.gift_id)
        self.sent_gifts.append(req)
        return req

    def _withdraw(self, op: Withdraw) -> WithdrawReq:
        if op.retry_of is None or not self.sent_withdrawals:
            req = WithdrawReq(self.creators[op.creator], self.new_key(), op.diamonds, op.account)
        else:
            prior = latest(self.sent_withdrawals, op.retry_of)
            diamonds, account = (prior.diamonds, prior.account) if op.same_body else (op.diamonds, op.account)
            if not op.same_body and (diamonds, account) == prior.fp:
                diamonds += 1
            req = WithdrawReq(prior.creator, prior.key, diamonds, account)
        self.sent_withdrawals.append(req)
        return req

    # Sending -----------------------------------------------------------------------------------------------

    async def send(self, req: Req) -> Answer:
        s = self.system
        admin = s.auth(ADMIN, "admin")
        if isinstance(req, PurchaseReq):
            response = await s.http.post(
                "/v1/wallet/purchases", headers={**s.auth(req.viewer), "Idempotency-Key": req.key},
                json={"bundle_id": req.bundle, "payment_token": req.token},
            )  # fmt: skip
        elif isinstance(req, GiftReq):
            body = {"gift": req.gift, "count": req.count, "gift_id": req.gift_id}
            for _ in range(PENDING_GIFT_RESENDS):
                response = await s.http.post(f"/v1/rooms/{req.room}/gifts", headers=s.auth(req.viewer), json=body)
                if response.status_code != 202:  # 202: still settling; resending the same gift_id is the protocol
                    break
        elif isinstance(req, ReverseReq):
            response = await s.http.post(f"/v1/admin/purchases/{req.pid}/{req.mode}", headers=admin)
        elif isinstance(req, WithdrawReq):
            response = await s.http.post(
                "/v1/wallet/withdrawals", headers={**s.auth(req.creator, "creator"), "Idempotency-Key": req.key},
                json={"diamonds": req.diamonds, "payout_account": req.account},
            )  # fmt: skip
        else:
            response = await s.http.post(f"/v1/admin/withdrawals/{req.wid}/{req.action}", headers=admin)
        body_json: dict[str, Any] = response.json()
        return req, response.status_code, body_json

    async def snapshot(self) -> Snapshot:
        wids = list(self.withdrawals)
        async with self.system.redis.pipeline(transaction=True) as pipe:
            for creator in self.creators:
                pipe.hget(keys.diamonds(keys.part_of_user(creator)), keys.account(creator))
            for wid in wids:
                pipe.hmget(keys.withdrawal(wid), "status", "reason")
            replies = await pipe.execute()
        diamonds = {c: int(v or 0) for c, v in zip(self.creators, replies[: len(self.creators)], strict=True)}
        records = zip(wids, replies[len(self.creators) :], strict=True)
        states = {w: (status or "", reason or "") for w, (status, reason) in records}
        return Snapshot(diamonds, states)

    # One step ----------------------------------------------------------------------------------------------

    async def step(self, ops: list[Op]) -> None:
        reqs = [r for r in (self.resolve(op) for op in ops) if r is not None]
        if reqs:
            await self.run_step(reqs)

    async def run_step(self, reqs: list[Req]) -> None:
        self.step_number += 1
        before = await self.snapshot()
        coins_before = dict(self.coins)
        purchases_before = {pid: fact.status for pid, fact in self.purchases.items()}
        withdrawals_before = set(self.withdrawals)
        coin_ops: Counter[str] = Counter()
        diamond_ops: Counter[str] = Counter()
        for req in reqs:
            if isinstance(req, PurchaseReq | GiftReq | ReverseReq):
                coin_ops[req.viewer] += 1
            if isinstance(req, GiftReq | WithdrawReq | ResolveReq):
                diamond_ops[req.creator] += 1

        answers = await asyncio.gather(*(self.send(r) for r in reqs))
        for req, status, body in answers:
            note(f"step {self.step_number}: {req} -> {status} {body}")
            event(f"{type(req).__name__} -> {status} {error_code(body) or body.get('status') or ''}")
        gift_ids = [r.gift_id for r in reqs if isinstance(r, GiftReq)]
        if len(set(gift_ids)) < len(gift_ids):
            event("one gift_id sent twice in one step")
        kinds: dict[type, list[Answer]] = defaultdict(list)
        for answer in answers:
            kinds[type(answer[0])].append(answer)

        replays = self.check_purchases(kinds[PurchaseReq])
        self.check_reversals(kinds[ReverseReq], purchases_before, coins_before, coin_ops)
        self.check_gifts(kinds[GiftReq], coins_before, coin_ops)
        self.check_withdrawals(kinds[WithdrawReq], before, diamond_ops)
        self.check_resolutions(kinds[ResolveReq], before, withdrawals_before)
        for pid, shown in replays:  # a replay shows the purchase's status before or after this step's reversals
            fact = self.purchases[pid]
            assert shown in (purchases_before.get(pid, fact.first_status), fact.status), (pid, shown)
        await self.check_state()

    # Checks per kind ---------------------------------------------------------------------------------------

    def check_purchases(self, answers: list[Answer]) -> list[tuple[str, str]]:
        """Every answer for one key is the same purchase; a different body is a conflict. Returns replays."""
        replays: list[tuple[str, str]] = []
        for pid, group in by_key(answers, "pid").items():
            known = self.purchases.get(pid)
            winner_fp = known.fp if known else None
            if known is None:
                answered = {req.fp for req, status, _ in group if status != 409}
                assert len(answered) == 1, f"purchase {pid}: answered for {len(answered)} different bodies: {group}"
                winner_fp = answered.pop()
                fresh = [(req, body) for req, status, body in group if status != 409 and not body["replay"]]
                assert len(fresh) == 1, f"purchase {pid}: {len(fresh)} non-replay answers: {group}"
                req, body = fresh[0]
                record = body["purchase"]
                assert record["purchase_id"] == pid and record["bundle_id"] == req.bundle, body
                assert record["status"] == ("paid" if req.token == PAY_OK else "declined"), body
                assert record["coins"] == self.bundles[req.bundle], body
                fact = PurchaseFact(req.viewer, req.fp, stable(record), record["coins"], record["status"])
                self.purchases[pid] = fact
                if fact.status == "paid":
                    self.coins[req.viewer] += fact.coins
            fact = self.purchases[pid]
            for req, status, body in group:
                if req.fp != winner_fp:
                    assert status == 409 and error_code(body) == "idempotency_key_conflict", (req, status, body)
                    continue
                declined = fact.status == "declined"
                assert status in ((402,) if declined else (200, 201)), (req, status, body)
                assert (status == 201) == (not body["replay"] and not declined), (req, status, body)
                assert stable(body["purchase"]) == fact.record, f"purchase {pid}: a retry got another purchase: {body}"
                if declined:
                    assert error_code(body) == "payment_declined", body
                if body["replay"]:
                    replays.append((pid, body["purchase"]["status"]))
        return replays

    def check_reversals(
        self,
        answers: list[Answer],
        purchases_before: dict[str, str],
        coins_before: dict[str, int],
        coin_ops: Counter[str],
    ) -> None:
        """A paid purchase is reversed at most once; a refund needs the coins unspent, a chargeback does not."""
        for pid, group in by_key(answers, "pid").items():
            fact = self.purchases.get(pid)
            status_before = purchases_before.get(pid)
            won = [(req, body) for req, status, body in group if status == 200]
            assert len(won) <= 1, f"purchase {pid}: reversed {len(won)} times in one step: {group}"
            for req, status, body in group:
                if status == 200:
                    continue
                code = error_code(body)
                if status == 404:
                    assert code == "unknown_purchase" and status_before is None, (req, status, body)
                    continue
                assert status == 409, (req, status, body)
                if status_before == "declined" or (fact is not None and fact.status == "declined"):
                    assert code == "purchase_not_paid", (req, status, body)
                elif status_before in REVERSED:
                    assert code == "already_reversed", (req, status, body)
                else:
                    allowed = ("already_reversed", "coins_spent") if req.mode == "refund" else ("already_reversed",)
                    assert code in allowed, (req, status, body)
                    if code == "already_reversed":
                        assert won, f"purchase {pid}: already_reversed, but nothing reversed it: {group}"
            if fact is None:
                assert not won, f"purchase {pid}: reversed, but no purchase was answered: {group}"
                continue
            if status_before == "paid" and any(req.mode == "chargeback" for req, _, _ in group):
                assert won, f"purchase {pid}: a chargeback of a paid purchase was refused: {group}"
            if status_before == "paid" and len(group) == 1 and coin_ops[fact.viewer] == 1:
                req, status, body = group[0]  # nothing else touched this viewer's coins: the outcome is known
                enough = coins_before[fact.viewer] >= fact.coins
                assert (status == 200) == (req.mode == "chargeback" or enough), (coins_before[fact.viewer], group)
                if status == 200:
                    assert body["coins"] == coins_before[fact.viewer] - fact.coins, (coins_before, body)
            if won:
                req, body = won[0]
                assert fact.status == "paid", f"purchase {pid}: {fact.status}, but a {req.mode} succeeded: {body}"
                fact.status = "refunded" if req.mode == "refund" else "charged_back"
                assert body["purchase"]["status"] == fact.status, body
                self.coins[fact.viewer] -= fact.coins
                if req.mode == "chargeback":
                    self.charged_back[fact.viewer] += fact.coins

    def check_gifts(self, answers: list[Answer], coins_before: dict[str, int], coin_ops: Counter[str]) -> None:
        """A gift_id is decided once: resends with its fields get its outcome, other fields a conflict."""
        for gift_id, group in by_key(answers, "gift_id").items():
            if gift_id in self.gifts:
                winner_fp, result = self.gifts[gift_id]
            else:
                answered = {req.fp for req, status, _ in group if status != 409}
                assert len(answered) == 1, f"gift_id {gift_id}: answered as {len(answered)} different gifts: {group}"
                winner_fp = answered.pop()
                results = {gift_result(body) for _, status, body in group if status == 200}
                assert len(results) == 1, f"gift_id {gift_id}: answered with different outcomes: {group}"
                result = results.pop()
                req = next(r for r, status, _ in group if status != 409)
                cost = self.prices[req.gift] * req.count
                if coin_ops[req.viewer] == len(group):  # only this gift touched the viewer's coins: known outcome
                    have = coins_before[req.viewer]
                    expected = (
                        ("settled", None, have - cost) if have >= cost else ("rejected", "insufficient_coins", have)
                    )
                    assert result == expected, f"gift {req}: expected {expected} from {have} coins, got {result}"
                if result[0] == "settled":
                    assert result[2] >= 0, f"gift {req} settled into debt: {result}"
                    self.coins[req.viewer] -= cost
                    diamonds = rules.split_gift(cost, self.system.settings.creator_share_bps).diamonds
                    self.earned[req.creator] += diamonds
                else:
                    assert result[:2] == ("rejected", "insufficient_coins"), f"gift {req}: {result}"
                self.gifts[gift_id] = (winner_fp, result)
            for req, status, body in group:
                if req.fp == winner_fp:
                    assert status == 200 and gift_result(body) == result, (req, status, body, result)
                else:
                    assert status == 409 and error_code(body) == "gift_id_conflict", (req, status, body, winner_fp)

    def check_withdrawals(self, answers: list[Answer], before: Snapshot, diamond_ops: Counter[str]) -> None:
        """Each withdrawal key is created once; retries replay it, another body conflicts."""
        for wid, group in by_key(answers, "wid").items():
            known = self.withdrawals.get(wid)
            if known is None:
                created = [(req, body) for req, status, body in group if status == 201]
                assert len(created) <= 1, f"withdrawal {wid}: created {len(created)} times: {group}"
                if not created:
                    for req, status, body in group:
                        assert status == 409 and error_code(body) == "insufficient_diamonds", (req, status, body)
                else:
                    req, body = created[0]
                    w = body["withdrawal"]
                    assert body["replay"] is False and w["withdrawal_id"] == wid, body
                    assert (w["diamonds"], w["payout_account"]) == (req.diamonds, req.account), body
                    # Read back after the request: a payout or admin action of this same step may have resolved it.
                    assert w["status"] in ("pending", "paid", "failed"), body
                    known = self.withdrawals[wid] = WithdrawalFact(req.creator, req.fp, req.diamonds, req.account)
            if len(group) == 1 and diamond_ops[group[0][0].creator] == 1 and wid not in before.withdrawals:
                req, status, body = group[0]  # alone on this creator's diamonds (voids by the worker only add)
                balance = before.diamonds[req.creator]
                if req.diamonds <= balance:
                    assert status == 201, f"withdrawal {req} refused with {balance} diamonds: {body}"
                if req.diamonds > balance + before.pending(req.creator, self.withdrawals):
                    assert status == 409, f"withdrawal {req} accepted beyond the balance {balance}: {body}"
            for req, status, body in group:
                if status == 201:
                    assert wid not in before.withdrawals, f"withdrawal {wid} created twice: {group}"
                    continue
                if error_code(body) == "insufficient_diamonds":  # refused before any creation of the key
                    assert status == 409 and wid not in before.withdrawals, (req, status, body)
                    continue
                assert known is not None, (req, status, body)
                if req.fp == known.fp:
                    w = body.get("withdrawal", {})
                    assert status == 200 and body["replay"] is True, (req, status, body)
                    assert (w["withdrawal_id"], w["diamonds"]) == (wid, known.diamonds), (req, body)
                else:
                    assert status == 409 and error_code(body) == "idempotency_key_conflict", (req, status, body)

    def check_resolutions(self, answers: list[Answer], before: Snapshot, withdrawals_before: set[str]) -> None:
        """An admin post or void succeeds only on a pending withdrawal, once."""
        for wid, group in by_key(answers, "wid").items():
            fact = self.withdrawals.get(wid)
            won = [(req, body) for req, status, body in group if status == 200]
            assert len(won) <= 1, f"withdrawal {wid}: resolved {len(won)} times in one step: {group}"
            state_before = before.withdrawals.get(wid, ("", ""))[0]
            for req, status, body in group:
                code = error_code(body)
                if status == 404:
                    assert code == "unknown_withdrawal" and wid not in withdrawals_before, (req, status, body)
                elif status == 409:
                    assert code == "withdrawal_not_pending" and fact is not None, (req, status, body)
                else:
                    assert status == 200, (req, status, body)
                    assert state_before in ("", "pending"), f"withdrawal {wid} resolved again: {body}"
            if fact is None:
                assert not won, f"withdrawal {wid}: resolved, but was never created: {group}"
                continue
            if won:
                req, body = won[0]
                assert fact.admin is None, f"withdrawal {wid}: admin {fact.admin} then {req.action} both succeeded"
                fact.admin = req.action
                w = body["withdrawal"]
                expected = ("paid", None) if req.action == "post" else ("failed", "voided_by_admin")
                assert (w["status"], w["reason"]) == expected, body

    # The whole state, after every step -----------------------------------------------------------------------

    async def check_state(self) -> None:
        s = self.system
        for viewer in self.viewers:
            wallet = (await s.http.get("/v1/wallet", headers=s.auth(viewer))).json()
            assert wallet["coins"] == self.coins[viewer], f"{viewer}: wallet {wallet}, model {self.coins[viewer]}"
            assert wallet["coins"] >= -self.charged_back[viewer], f"{viewer}: below zero without chargebacks: {wallet}"
            history = (await s.http.get("/v1/wallet/purchases?limit=200", headers=s.auth(viewer))).json()
            statuses = {p["purchase_id"]: p["status"] for p in history["purchases"]}
            expected = {pid: f.status for pid, f in self.purchases.items() if f.viewer == viewer}
            assert statuses == expected, f"{viewer}: purchases {statuses}, model {expected}"
        await self.check_diamonds(await self.snapshot())
        report = await run_audit(s.redis)
        assert report.clean, report.summary()

    async def check_diamonds(self, snap: Snapshot) -> None:
        """Withdrawals only move forward, each resolved once and consistently; diamonds add up."""
        for wid, (status, reason) in snap.withdrawals.items():
            fact = self.withdrawals[wid]
            previous = self.statuses.get(wid)
            if previous is not None and previous[0] != "pending":
                assert (status, reason) == previous, f"withdrawal {wid}: {previous} became {(status, reason)}"
            assert status in ("pending", "paid", "failed"), (wid, status)
            if fact.admin == "post":
                assert status == "paid", f"withdrawal {wid}: posted by an admin, but {status} ({reason})"
            if fact.admin == "void":
                assert (status, reason) == ("failed", "voided_by_admin"), f"withdrawal {wid}: voided, but {status}"
            if status == "paid":
                assert fact.admin == "post" or fact.account == ACCT_OK, f"withdrawal {wid} to {fact.account} paid"
            if reason == "voided_by_admin":
                assert fact.admin == "void", f"withdrawal {wid}: voided_by_admin, but no admin void succeeded"
            if reason == "payout_rejected":
                assert fact.account == ACCT_FAIL, f"withdrawal {wid} to {fact.account}: payout_rejected"
        self.statuses = snap.withdrawals
        for creator in self.creators:
            held = sum(
                f.diamonds
                for w, f in self.withdrawals.items()
                if f.creator == creator and snap.withdrawals[w][0] in ("pending", "paid")
            )
            expected_diamonds = self.earned[creator] - held
            assert snap.diamonds[creator] == expected_diamonds, (
                f"{creator}: {snap.diamonds[creator]} diamonds; earned {self.earned[creator]}, withdrawn {held}"
            )


@dataclass(repr=False)
class Economy:
    system: System
    finished: list[Run]  # earlier examples: the worker keeps paying out and timing out their withdrawals

    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example
        return f"Economy({self.system.base_url}, {len(self.finished)} earlier examples)"


@pytest.fixture
async def economy(start_system: SystemFactory) -> Economy:
    """One system for every example: quick payouts and timeouts, no withdrawal minimum or hold."""
    system = await start_system(
        withdrawal_diamonds_min=1, diamond_hold_s=0, payout_interval_ms=50, withdrawal_timeout_s=2
    )
    return Economy(system, [])


@pytest.mark.timeout(600)  # passes in well under a minute; hypothesis may shrink a failure for 5 minutes
@property_settings(25)  # full count under GIFTING_TEST_LONG=1 (tests/conftest.py)
@given(scenario=scenarios())
async def test_random_interleavings_keep_the_ledger_consistent(economy: Economy, scenario: list[list[Op]]) -> None:
    """Concurrent purchases, gifts, reversals, withdrawals and retries keep the audit clean and the model true."""
    system = economy.system
    for earlier in economy.finished:  # payouts and timeouts of earlier examples' withdrawals, seen now
        await earlier.check_diamonds(await earlier.snapshot())
    gifts = (await system.http.get("/v1/catalog/gifts")).json()["gifts"]
    bundles = (await system.http.get("/v1/catalog/bundles")).json()["bundles"]
    prices, coins = {g["id"]: g["coins"] for g in gifts}, {b["id"]: b["coins"] for b in bundles}
    run = Run(system, f"x{next(EXAMPLES)}", prices, coins)
    await run.start()
    for ops in scenario:
        await run.step(ops)
    economy.finished.append(run)
