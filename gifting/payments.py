"""Payment providers: how a coin purchase is paid for.

A provider must be idempotent by the key it is given: charging twice with the same key returns the first
charge (real providers support this). That, plus the ledger's own purchase record, is what makes a retried
purchase credit coins exactly once even across a crash between the charge and the ledger write.

The key is never the client's raw Idempotency-Key: two users may both send `buy-42`, and a provider that
honours idempotency would hand the second user the first user's charge. `charge_key` derives it from the
purchase id (user and Idempotency-Key) and the purchase itself (bundle, payment token, amount, currency), so
it is unique per user and per purchase: a retry of the same purchase reaches the same charge, anything else
a new one.

To plug in a real provider, implement `PaymentProvider` and pass it to `create_app(payments=...)`; for cash-outs,
implement `PayoutProvider` and give it to the settlement worker (`SettlementWorker(payouts=...)`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from gifting.errors import GiftingError

SANDBOX_OK = "tok_sandbox_ok"
SANDBOX_DECLINED = "tok_sandbox_declined"


class PaymentError(GiftingError):
    """The payment request itself is unusable (not a decline): nothing is charged or recorded."""


@dataclass(frozen=True, slots=True)
class Charge:
    status: str  # paid | declined
    charge_id: str
    decline_reason: str = ""


CHARGE_KEY_PREFIX = "gift-pur-"


def charge_key(purchase_id: str, amount_minor: int, currency: str, fingerprint: str) -> str:
    """The idempotency key a provider receives for one purchase: unique per user and purchase, 41 characters
    (providers cap keys; Stripe at 255), and it does not reveal the user id or the client's key."""
    text = "\x1f".join((purchase_id, str(amount_minor), currency, fingerprint))
    return CHARGE_KEY_PREFIX + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class PaymentProvider(Protocol):
    """Charges real money. Contract: `idempotency_key` is unique per user and per purchase (see `charge_key`);
    the same key must return the first charge, never a second one; a different key is a different charge."""

    name: str

    async def charge(
        self, idempotency_key: str, user: str, amount_minor: int, currency: str, payment_token: str
    ) -> Charge: ...


class SandboxProvider:
    """Accepts `tok_sandbox_ok`, declines `tok_sandbox_declined`; any other token is an error."""

    name = "sandbox"

    async def charge(
        self, idempotency_key: str, user: str, amount_minor: int, currency: str, payment_token: str
    ) -> Charge:
        assert amount_minor > 0
        charge_id = "ch_sb_" + hashlib.sha256(f"{user}\x1f{idempotency_key}".encode()).hexdigest()[:20]
        if payment_token == SANDBOX_OK:
            return Charge("paid", charge_id)
        if payment_token == SANDBOX_DECLINED:
            return Charge("declined", charge_id, "card_declined")
        raise PaymentError(
            "invalid_payment_token", f"sandbox payment_token must be {SANDBOX_OK!r} or {SANDBOX_DECLINED!r}"
        )


PAYOUT_OK = "acct_sandbox_ok"
PAYOUT_FAIL = "acct_sandbox_fail"
PAYOUT_SLOW = "acct_sandbox_slow"


@dataclass(frozen=True, slots=True)
class Payout:
    status: str  # paid | failed | processing
    reason: str = ""


class PayoutProvider(Protocol):
    """Pays withdrawals out. `withdrawal_id` is the idempotency key: the worker may ask again for the same id
    (a crash between the payout and its posting, or a withdrawal still `processing`), and the provider must pay
    an id at most once and answer a repeat with that payout's outcome. The worker asks only once the
    withdrawal's debit is durable (WAITAOF)."""

    name: str

    async def payout(self, withdrawal_id: str, user: str, diamonds: int, payout_account: str) -> Payout: ...


class SandboxPayouts:
    """`acct_sandbox_ok` is paid, `acct_sandbox_fail` fails (the diamonds come back), `acct_sandbox_slow` stays
    processing until the withdrawal times out (GIFTING_WITHDRAWAL_TIMEOUT_S) and is voided."""

    name = "sandbox"

    async def payout(self, withdrawal_id: str, user: str, diamonds: int, payout_account: str) -> Payout:
        if payout_account == PAYOUT_OK:
            return Payout("paid")
        if payout_account == PAYOUT_SLOW:
            return Payout("processing")
        return Payout("failed", "payout_rejected" if payout_account == PAYOUT_FAIL else "unknown_payout_account")
