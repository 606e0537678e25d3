"""Ledger rules: integer amounts, the legs of each transfer chain, outcome records. Pure; no I/O.

Double entry (after TigerBeetle): every change moves an integer amount from a debit account to a credit
account on one ledger (`coins` or `diamonds`). System accounts absorb the other side, so every ledger sums
to zero. The Lua scripts apply exactly these legs; `gifting audit` recomputes balances from the journal with
`parse_legs` and compares.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from gifting import keys

BPS_DENOMINATOR = 10_000
LEDGERS = ("coins", "diamonds")


@dataclass(frozen=True, slots=True)
class Leg:
    ledger: str
    debit: str
    credit: str
    amount: int


@dataclass(frozen=True, slots=True)
class GiftSplit:
    """How a gift's coins divide: the creator's diamonds and the platform's coins."""

    coins: int
    diamonds: int  # credited to the creator; equals the coins routed to sys:creator_earnings
    platform_coins: int


def split_gift(coins: int, creator_share_bps: int) -> GiftSplit:
    """Creator share in basis points, rounded down: any fraction of a diamond stays with the platform."""
    assert coins > 0 and 0 <= creator_share_bps <= BPS_DENOMINATOR, (coins, creator_share_bps)
    diamonds = coins * creator_share_bps // BPS_DENOMINATOR
    return GiftSplit(coins=coins, diamonds=diamonds, platform_coins=coins - diamonds)


def gift_legs(viewer: str, creator: str, split: GiftSplit) -> list[Leg]:
    """The atomic chain of one gift. Zero-amount legs are omitted (a 1-coin gift at 50 % earns 0 diamonds)."""
    legs = [
        Leg("coins", keys.account(viewer), keys.SYS_PLATFORM_REVENUE, split.platform_coins),
        Leg("coins", keys.account(viewer), keys.SYS_CREATOR_EARNINGS, split.diamonds),
        Leg("diamonds", keys.SYS_DIAMOND_ISSUANCE, keys.account(creator), split.diamonds),
    ]
    return [leg for leg in legs if leg.amount > 0]


def purchase_legs(user: str, coins: int) -> list[Leg]:
    return [Leg("coins", keys.SYS_COIN_ISSUANCE, keys.account(user), coins)]


def encode_legs(legs: list[Leg]) -> str:
    """Journal form: 'ledger debit credit amount' joined by '|'. Account names contain no spaces or bars."""
    return "|".join(f"{leg.ledger} {leg.debit} {leg.credit} {leg.amount}" for leg in legs)


class JournalError(ValueError):
    """A journal entry does not parse; the audit reports it as a finding."""


def parse_legs(text: str) -> list[Leg]:
    legs = []
    for part in text.split("|") if text else []:
        fields = part.split(" ")
        if len(fields) != 4 or fields[0] not in LEDGERS or not (fields[3].isascii() and fields[3].isdigit()):
            raise JournalError(f"bad leg {part!r}: expected 'ledger debit credit amount'")
        legs.append(Leg(fields[0], fields[1], fields[2], int(fields[3])))
    return legs


RECORD_BUCKETS = 8  # a gift id is looked up in this many time buckets (+1), one HMGET each per batch


def record_buckets(now_s: int, ttl_s: int) -> tuple[list[int], int]:
    """Which idempotency-record buckets a batch settled at `now_s` reads (newest first; it writes the first)
    and when the newest expires (unix s). A bucket spans ttl_s / RECORD_BUCKETS and lives until its last
    record is ttl_s old, so a gift id is remembered at least ttl_s and at most ttl_s + one bucket span."""
    span = max(1, -(-ttl_s // RECORD_BUCKETS))
    current = now_s // span
    oldest = (now_s - ttl_s) // span
    return list(range(current, oldest - 1, -1)), (current + 1) * span + ttl_s


STATEMENT_FIELDS = ("ts", "kind", "ledger", "amount", "counterpart", "reference", "gift", "count")


def parse_statement_row(index: int, row: str) -> dict[str, Any]:
    """One statement row as written by the Lua scripts (tab-separated STATEMENT_FIELDS) for the API."""
    ts, kind, ledger, amount, counterpart, reference, gift, count = row.split("\t")
    return {
        "id": str(index),
        "kind": kind,
        "ledger": ledger,
        "amount": int(amount),
        "counterpart": counterpart.removeprefix("u:"),
        "reference": reference,
        "gift": gift or None,
        "count": int(count) if count else None,
        "ts": int(ts),
    }


def gift_journal_row(
    gift_id: str, viewer: str, creator: str, split: GiftSplit, room: str, gift: str, count: int
) -> str:
    """A settled gift's row in its batch's journal entry (GIFT_ROW_FIELDS, tab-separated; read by journal_gifts).
    settle.lua writes it as given when it settles the gift. The legs are encode_legs(gift_legs(...)), spelled
    out because the worker builds one per gift (tests/test_rules.py checks they agree)."""
    v = keys.ACCOUNT_PREFIX + viewer
    legs = [f"coins {v} {keys.SYS_PLATFORM_REVENUE} {split.platform_coins}"] if split.platform_coins > 0 else []
    if split.diamonds > 0:
        legs.append(f"coins {v} {keys.SYS_CREATOR_EARNINGS} {split.diamonds}")
        legs.append(f"diamonds {keys.SYS_DIAMOND_ISSUANCE} {keys.ACCOUNT_PREFIX}{creator} {split.diamonds}")
    return f"{gift_id}\t{'|'.join(legs)}\t{room}\t{gift}\t{count}"


def statement_row(
    ts_ms: int, kind: str, ledger: str, amount: int, counterpart: str, reference: str, gift: str = "", count: str = ""
) -> str:
    """One statement row (STATEMENT_FIELDS, tab-separated), as every script appends it."""
    return f"{ts_ms}\t{kind}\t{ledger}\t{amount}\t{counterpart}\t{reference}\t{gift}\t{count}"


GIFT_ROW_FIELDS = ("id", "legs", "room", "gift", "count")


def journal_gifts(fields: dict[str, str]) -> list[dict[str, str]]:
    """The gifts of one journal entry of kind 'gifts' (settle.lua writes one per batch: a tab-separated row per
    gift, rows joined by newlines), each in the shape of a single-transfer entry: kind, id, legs, room, gift,
    count, bps, ts. Raises JournalError for a row that does not parse."""
    gifts = []
    for row in fields.get("rows", "").split("\n"):
        values = row.split("\t")
        if len(values) != len(GIFT_ROW_FIELDS):
            raise JournalError(f"bad gift row {row[:200]!r}: expected {len(GIFT_ROW_FIELDS)} tab-separated fields")
        gift = dict(zip(GIFT_ROW_FIELDS, values, strict=True))
        gift |= {"kind": "gift", "bps": fields.get("bps", ""), "ts": fields.get("ts", "")}
        gifts.append(gift)
    return gifts


def is_user_account(account: str) -> bool:
    return account.startswith("u:")


def fingerprint(*fields: object) -> str:
    """Identifies the request behind an idempotency key: same key with another fingerprint is a conflict."""
    text = "\x1f".join(str(f) for f in fields)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


# Daily spend caps. Every way of spending coins (gifts in settle.lua, pool pledges in pool.lua) checks the same
# rule, spend_cap.lua, prepended to both scripts: the cap in force is the lower of GIFTING_DAILY_SPEND_COINS_MAX
# and the viewer's own (0: none), and spending counts toward the UTC day's total from the first coin, whether
# or not a cap exists. The viewer's own cap is stored as 'cap', or 'cap|requested|effective_ms' while a
# raised or removed cap waits out the cooling-off (GIFTING_SPEND_LIMIT_COOLOFF_S).
SPENT_DAY_TTL_S = 2 * 86400  # a day's spend totals outlive the day by one, for late batches and support


@dataclass(frozen=True, slots=True)
class OwnSpendLimit:
    """A viewer's own daily cap in coins (0: none) and a raised or removed cap waiting out the cooling-off."""

    coins: int
    pending_coins: int | None = None
    pending_effective_ms: int | None = None

    def encode(self) -> str | None:
        """The stored form (None: nothing to store)."""
        if self.pending_coins is None:
            return str(self.coins) if self.coins > 0 else None
        return f"{self.coins}|{self.pending_coins}|{self.pending_effective_ms}"


def own_spend_limit(stored: str | None, now_ms: int) -> OwnSpendLimit:
    """The stored own cap as it stands at `now_ms` (a pending change past its time is in force)."""
    if not stored:
        return OwnSpendLimit(0)
    fields = stored.split("|")
    if len(fields) == 1:
        return OwnSpendLimit(int(fields[0]))
    coins, pending, effective_ms = map(int, fields)
    if now_ms >= effective_ms:
        return OwnSpendLimit(pending)
    return OwnSpendLimit(coins, pending, effective_ms)


def change_own_spend_limit(stored: str | None, requested: int, now_ms: int, cooloff_s: int) -> OwnSpendLimit:
    """A viewer asks for a daily cap of `requested` coins (0: none). A lower cap applies at once (and cancels a
    pending raise); a higher one, or none, only after `cooloff_s`, the protection regulators ask of gambling
    and gifting platforms against a decision made in the heat of the moment. Asking again for the same pending
    value keeps its time; asking for another restarts the cooling-off."""
    assert requested >= 0 and cooloff_s >= 0
    current = own_spend_limit(stored, now_ms)
    lowers = requested > 0 and (current.coins == 0 or requested < current.coins)
    if lowers or requested == current.coins or cooloff_s == 0:
        return OwnSpendLimit(requested)
    if current.pending_coins == requested:
        return current
    return OwnSpendLimit(current.coins, requested, now_ms + cooloff_s * 1000)


# Reasons a gift is rejected; they reach only the sender.
REJECT_INSUFFICIENT_COINS = "insufficient_coins"
REJECT_UNKNOWN_GIFT = "unknown_gift"
REJECT_GIFT_RETIRED = "gift_retired"
REJECT_PRICE_CHANGED = "price_changed"
REJECT_ROOM_NOT_LIVE = "room_not_live"
REJECT_SELF_GIFT = "self_gift"
REJECT_DAILY_LIMIT = "daily_limit"  # the viewer's daily spend cap (spend_cap.lua), for gifts and pledges
REJECT_REASONS = (
    REJECT_INSUFFICIENT_COINS,
    REJECT_UNKNOWN_GIFT,
    REJECT_GIFT_RETIRED,
    REJECT_PRICE_CHANGED,
    REJECT_ROOM_NOT_LIVE,
    REJECT_SELF_GIFT,
    REJECT_DAILY_LIMIT,
)


@dataclass(frozen=True, slots=True)
class GiftOutcome:
    """What settlement decided for one gift id; the same outcome answers every resend."""

    gift_id: str
    status: str  # settled | rejected | conflict
    reason: str  # "" when settled
    coins: int  # the sender's coin balance right after this gift was decided
    replay: bool  # True: decided earlier, this is the stored outcome
    lifetime_spent: int = 0  # the sender's lifetime coins spent on gifts (for the gifter level)

    @property
    def settled(self) -> bool:
        return self.status == "settled"


def parse_gift_record(gift_id: str, record: str, replay: bool) -> GiftOutcome:
    """The stored form written by settle.lua: 'status|reason|coins|fingerprint'."""
    status, reason, coins, _fp = record.split("|")
    return GiftOutcome(gift_id, status, reason, int(coins), replay)


# Gifter levels: (level, lifetime coins spent on gifts needed). A badge on the viewer's gift events.
LEVEL_THRESHOLDS: tuple[tuple[int, int], ...] = (
    (1, 0),
    (2, 100),
    (3, 500),
    (4, 1_000),
    (5, 5_000),
    (6, 10_000),
    (7, 50_000),
    (8, 100_000),
    (9, 500_000),
    (10, 1_000_000),
)


def level_for(lifetime_spent: int) -> int:
    """The highest level whose threshold the viewer's lifetime spend has reached."""
    level = 1
    for candidate, threshold in LEVEL_THRESHOLDS:
        if lifetime_spent >= threshold:
            level = candidate
    return level
