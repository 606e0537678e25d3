"""Ledger rules: integer amounts, the legs of each transfer chain, outcome records. Pure; no I/O.

Double entry (after TigerBeetle): every change moves an integer amount from a debit account to a credit
account on one ledger (`coins` or `diamonds`). System accounts absorb the other side, so every ledger sums
to zero. The Lua scripts apply exactly these legs; `gifting audit` recomputes balances from the journal with
`parse_legs` and compares.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

from gifting import keys
from gifting.catalog.model import Gift
from gifting.ledger import partitions
from gifting.wire.reasons import RejectReason

BPS_DENOMINATOR = 10_000
LEDGERS = ("coins", "diamonds", "rewards")


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


def gift_reject(
    gift: Gift | None,
    price_shown: int | None,
    room_status: str | None,
    creator: str,
    sender: str,
    on_stage: bool = True,
) -> RejectReason | None:
    """Whether a gift may go to the ledger, decided before it (the ledger then checks coins and the daily
    cap). The hub's precheck gives the first two at once; settlement decides all of them for the record."""
    if gift is None:
        return RejectReason.UNKNOWN_GIFT
    if gift.retired:
        return RejectReason.GIFT_RETIRED
    if price_shown is not None and price_shown != gift.coins:
        return RejectReason.PRICE_CHANGED
    if room_status != "live":
        return RejectReason.ROOM_NOT_LIVE
    if not on_stage:  # the gift names a recipient who is not (or no longer) on the room's stage
        return RejectReason.RECIPIENT_NOT_ON_STAGE
    if creator == sender:
        return RejectReason.SELF_GIFT
    return None


def archive_backlog_reject(journal_entries: int, backlog_max: int) -> RejectReason | None:
    """Whether a debit (a gift, a pledge) is refused because more than GIFTING_ARCHIVE_BACKLOG_MAX journal entries
    (0: no bound) wait in Valkey for the archiver: Valkey's memory is bounded before money moves."""
    return RejectReason.ARCHIVE_BACKLOG if backlog_max and journal_entries > backlog_max else None


def catalog_reject(gift: Gift | None) -> RejectReason | None:
    """The part of gift_reject the hub can check at once, from its own catalog."""
    if gift is None:
        return RejectReason.UNKNOWN_GIFT
    return RejectReason.GIFT_RETIRED if gift.retired else None


def gift_legs(viewer: str, creator: str, split: GiftSplit) -> list[Leg]:
    """The atomic chain of one gift. Zero-amount legs are omitted (a 1-coin gift at 50 % earns 0 diamonds)."""
    legs = [
        Leg("coins", keys.account(viewer), keys.SYS_PLATFORM_REVENUE, split.platform_coins),
        Leg("coins", keys.account(viewer), keys.SYS_CREATOR_EARNINGS, split.diamonds),
        Leg("diamonds", keys.SYS_DIAMOND_ISSUANCE, keys.account(creator), split.diamonds),
    ]
    return [leg for leg in legs if leg.amount > 0]


def encode_legs(legs: list[Leg]) -> str:
    """Journal form: 'ledger debit credit amount' joined by '|'. Account names contain no spaces or bars.
    The scripts apply exactly the legs they are given (legs.lua) and write them to the journal as given."""
    return "|".join(f"{leg.ledger} {leg.debit} {leg.credit} {leg.amount}" for leg in legs)


# The legs of every other transfer kind. The scripts receive them encoded and apply them as given (legs.lua).


def purchase_legs(user: str, coins: int) -> list[Leg]:
    """Coins sold to a user come from the issuance account (which goes negative)."""
    return [Leg("coins", keys.SYS_COIN_ISSUANCE, keys.account(user), coins)]


def reversal_legs(user: str, coins: int) -> list[Leg]:
    """A refund or a chargeback takes a purchase's coins back to the issuance account."""
    return [Leg("coins", keys.account(user), keys.SYS_COIN_ISSUANCE, coins)]


def withdrawal_legs(phase: str, user: str, diamonds: int) -> list[Leg]:
    """A cash-out in two phases: pending (the diamonds wait in clearing), then posted (paid out) or voided
    (they come back)."""
    clearing = keys.SYS_PAYOUT_CLEARING
    if phase == "pending":
        return [Leg("diamonds", keys.account(user), clearing, diamonds)]
    if phase == "posted":
        return [Leg("diamonds", clearing, keys.SYS_DIAMONDS_PAID_OUT, diamonds)]
    assert phase == "voided", phase
    return [Leg("diamonds", clearing, keys.account(user), diamonds)]


def pledge_legs(user: str, coins: int) -> list[Leg]:
    """A pledge to a pool: a pending transfer of the viewer's coins into escrow."""
    return [Leg("coins", keys.account(user), keys.SYS_POOL_ESCROW, coins)]


def pledge_return_legs(user: str, coins: int) -> list[Leg]:
    """A voided pool gives every contributor's coins back from escrow."""
    return [Leg("coins", keys.SYS_POOL_ESCROW, keys.account(user), coins)]


def pool_completion_legs(creator: str, split: GiftSplit) -> list[Leg]:
    """A completed pool: the escrow pays the gift, split like any gift (zero-amount legs omitted)."""
    legs = [
        Leg("coins", keys.SYS_POOL_ESCROW, keys.SYS_PLATFORM_REVENUE, split.platform_coins),
        Leg("coins", keys.SYS_POOL_ESCROW, keys.SYS_CREATOR_EARNINGS, split.diamonds),
        Leg("diamonds", keys.SYS_DIAMOND_ISSUANCE, keys.account(creator), split.diamonds),
    ]
    return [leg for leg in legs if leg.amount > 0]


# Pools on partitions (docs/SCALING.md "Pooled gifts"): a pool, its escrow and its indexes live in its room's
# creator's partition, named by the pool id; a pledger pays from their own. So a pledge is two steps: the
# pledger's partition debits the coins to sys:transit (pledge_debit_legs), then the pool's partition takes them
# from transit into its escrow (pledge_landing_legs) or refuses the pledge, and the pledger's partition gives
# them back (pledge_refund_legs). rules.place_legs would put a leg between a user and the (shared) escrow in the
# user's partition, but an escrow must be the pool's: these legs name their partition themselves.
POOL_ID_PREFIX = "p_"
POOL_PART_DIGITS = 4  # hex digits of the partition number after the prefix (partitions.PARTITIONS_MAX fits)
POOL_TOKEN_BYTES = 6  # random bytes after them: the id keeps the wire's shape, 'p_' and 16 hex digits


def pool_id(partition: int, token: str) -> str:
    """A pool id that names its partition: 'p_', the partition number in 4 hex digits, then 12 random hex
    digits (token)."""
    assert 0 <= partition < 16**POOL_PART_DIGITS and len(token) == 2 * POOL_TOKEN_BYTES, (partition, token)
    return f"{POOL_ID_PREFIX}{partition:0{POOL_PART_DIGITS}x}{token}"


def pool_part(pool: str) -> str | None:
    """The tag of the partition holding a pool, from its id; None for an id no pool can have."""
    digits = pool.removeprefix(POOL_ID_PREFIX)
    if len(digits) != POOL_PART_DIGITS + 2 * POOL_TOKEN_BYTES or not pool.startswith(POOL_ID_PREFIX):
        return None
    if not set(digits) <= set("0123456789abcdef"):
        return None
    number = int(digits[:POOL_PART_DIGITS], 16)
    return partitions.tag(number) if number < partitions.count() else None


def pledge_debit_legs(user: str, coins: int) -> list[Leg]:
    """Pledge step 1, in the pledger's partition: the coins leave for the pool's partition."""
    return [Leg("coins", keys.account(user), keys.SYS_TRANSIT, coins)]


def pledge_landing_legs(coins: int) -> list[Leg]:
    """Pledge step 2, in the pool's partition: the pledge lands in the escrow (a pending transfer)."""
    return [Leg("coins", keys.SYS_TRANSIT, keys.SYS_POOL_ESCROW, coins)]


def pledge_refund_legs(user: str, coins: int) -> list[Leg]:
    """A pledge the pool's partition refused, in the pledger's partition: the coins in transit come back."""
    return [Leg("coins", keys.SYS_TRANSIT, keys.account(user), coins)]


def pledge_return_placed(user: str, coins: int, pool_part: str) -> dict[str, list[Leg]]:
    """A voided pool gives a contributor's coins back from its escrow (pledge_return_legs), placed: in the
    pool's partition when the contributor lives there, else through sys:transit, the contributor's side as a
    credit of the pool's partition's outbox."""
    user_part = keys.part_of_user(user)
    if user_part == pool_part:
        return {pool_part: pledge_return_legs(user, coins)}
    return {
        pool_part: [Leg("coins", keys.SYS_POOL_ESCROW, keys.SYS_TRANSIT, coins)],
        user_part: [Leg("coins", keys.SYS_TRANSIT, keys.account(user), coins)],
    }


# Reward coins (docs/REWARDS.md): a ledger of their own, so they can never be mistaken for bought coins. They
# come from sys:rewards_budget (funded by admins; never negative), reach viewers only by accruals the server
# observes itself, and leave a viewer only to sys:rewards_spent, as the price of a gift. Nothing else moves them:
# no refund, chargeback or withdrawal has a `rewards` leg, which is how the audit knows none was paid out.
REWARD_DAY_TTL_S = 2 * 86400  # a day's accrual records and totals are kept this long after their last write
REWARD_KINDS = ("watch", "streak", "first_gift")


def reward_funding_legs(coins: int) -> list[Leg]:
    """An admin funds the rewards budget; reward coins come into being at the issuance account."""
    return [Leg("rewards", keys.SYS_REWARDS_ISSUANCE, keys.SYS_REWARDS_BUDGET, coins)]


def reward_legs(user: str, coins: int) -> list[Leg]:
    """One accrual: the budget pays the viewer."""
    return [Leg("rewards", keys.SYS_REWARDS_BUDGET, keys.account(user), coins)]


def reward_id(kind: str, user: str, period: str) -> str:
    """An accrual's transfer id: one per viewer, kind and period (a watch period number, or a UTC day), so any
    number of sockets, hubs or retries of one period move the coins once."""
    assert kind in REWARD_KINDS and ":" not in user, (kind, user)
    return f"reward:{kind}:{user}:{period}"


def reward_credits(
    transfer_id: str, kind: str, user: str, placed: dict[str, list[Leg]], source_part: str, row: str, now_ms: int
) -> dict[str, list[Credit]]:
    """What an accrual decided in the budget's partition (`source_part`) owes a viewer of another partition: its
    legs there (sys:transit -> the viewer) and the viewer's statement row, applied once by the accrual's id.
    Empty when the viewer lives in the budget's partition (rewards.lua then writes the row itself)."""
    return {
        part: [Credit(transfer_id, "reward_" + kind, legs, now_ms, [(keys.account(user), row)])]
        for part, legs in placed.items()
        if part != source_part
    }


def reward_refusal(
    budget: int, earned_viewer: int, earned_day: int, coins: int, viewer_day_max: int, day_max: int
) -> str | None:
    """Why an accrual of `coins` moves nothing (rewards.lua checks the same, atomically): all or nothing."""
    if budget < coins:
        return "rewards_budget_exhausted"
    if earned_viewer + coins > viewer_day_max:
        return "reward_viewer_cap"
    if earned_day + coins > day_max:
        return "reward_platform_cap"
    return None


def streak_after(stored: str | None, day: str, yesterday: str) -> tuple[int, str]:
    """The streak a claim on `day` makes (1 + yesterday's streak, else 1) and its stored form 'day count'."""
    last, _, count = (stored or "").partition(" ")
    streak = int(count) + 1 if last == yesterday and count.isdigit() else 1
    return streak, f"{day} {streak}"


def streak_coins(streak: int, coins_per_day: int, days_max: int) -> int:
    return coins_per_day * min(streak, days_max)


def reward_gift_legs(viewer: str, creator: str, split: GiftSplit) -> list[Leg]:
    """A gift paid with reward coins: the viewer's reward coins go to sys:rewards_spent, and the creator earns
    the same diamonds as from a bought-coin gift, paid by the platform out of its revenue (the creator cannot
    tell, and cannot be farmed against: reward coins are capped per viewer and day)."""
    legs = [
        Leg("rewards", keys.account(viewer), keys.SYS_REWARDS_SPENT, split.coins),
        Leg("coins", keys.SYS_PLATFORM_REVENUE, keys.SYS_CREATOR_EARNINGS, split.diamonds),
        Leg("diamonds", keys.SYS_DIAMOND_ISSUANCE, keys.account(creator), split.diamonds),
    ]
    return [leg for leg in legs if leg.amount > 0]


# Sponsored gifts: a brand's campaign budget (keys.campaign_account) pays for a gift a viewer sends free. The
# budget is funded from the brand's own coins or by an admin grant against an invoice (coins from issuance), is
# debited exactly like a viewer's coins for a paid gift, and what is left returns to the brand's coins once, when
# the campaign closes (at its end, or ended early by the brand or an admin). sponsor.lua applies these legs.


def sponsored_gift_legs(campaign_id: str, creator: str, split: GiftSplit) -> list[Leg]:
    """A sponsored gift: the campaign's budget pays the same split a viewer's coins would (zero legs omitted)."""
    budget = keys.campaign_account(campaign_id)
    legs = [
        Leg("coins", budget, keys.SYS_PLATFORM_REVENUE, split.platform_coins),
        Leg("coins", budget, keys.SYS_CREATOR_EARNINGS, split.diamonds),
        Leg("diamonds", keys.SYS_DIAMOND_ISSUANCE, keys.account(creator), split.diamonds),
    ]
    return [leg for leg in legs if leg.amount > 0]


def reward_gift_journal_row(
    gift_id: str,
    viewer: str,
    creator: str,
    split: GiftSplit,
    room: str,
    gift: str,
    count: int,
    creator_here: bool = True,
) -> str:
    """gift_journal_row for a gift paid with reward coins (settle.lua picks one of the two rows it is given). The
    legs are the viewer's partition's part of place_legs(reward_gift_legs(...)), spelled out because the worker
    builds one per gift (tests/test_rewards.py checks they agree)."""
    legs = f"rewards {keys.ACCOUNT_PREFIX}{viewer} {keys.SYS_REWARDS_SPENT} {split.coins}"
    if split.diamonds > 0:
        legs += f"|coins {keys.SYS_PLATFORM_REVENUE} {keys.SYS_CREATOR_EARNINGS} {split.diamonds}"
        if creator_here:
            legs += "|" + creator_legs(creator, split)[0]
    return f"{gift_id}\t{legs}\t{room}\t{gift}\t{count}"


def pays_with_rewards(reward_balance: int, coin_balance: int, coins: int) -> bool:
    """Reward coins are spent first, a whole gift at a time: a gift is paid wholly with reward coins when they
    cover its price, else wholly with bought coins (never a mix, so each gift's legs are one of the two shapes
    its caller built, and bought coins stay refundable exactly as before). A viewer in chargeback debt
    (coin balance below zero) gifts with neither until it is repaid. settle.lua applies this rule."""
    return coins > 0 and coin_balance >= 0 and reward_balance >= coins


def campaign_funding_legs(campaign_id: str, coins: int, brand: str | None) -> list[Leg]:
    """Funding a budget: from the brand's own coins (bought like any purchase), or, with `brand` None, an admin
    grant against an invoice: new coins from the issuance account, as a purchase credits them."""
    payer = keys.account(brand) if brand is not None else keys.SYS_COIN_ISSUANCE
    return [Leg("coins", payer, keys.campaign_account(campaign_id), coins)]


def campaign_return_legs(campaign_id: str, brand: str, coins: int) -> list[Leg]:
    """The unspent budget of a closed campaign goes to the brand's coins (granted coins too: the invoice paid
    for them), once."""
    return [Leg("coins", keys.campaign_account(campaign_id), keys.account(brand), coins)] if coins > 0 else []


def sponsor_reject(
    campaign: dict[str, str] | None, gift: str, room: str, creator: str, sender: str, now_ms: int
) -> RejectReason | None:
    """Whether a sponsored send may go to the ledger, decided from the campaign record before it (sponsor.lua
    then checks the window again, the limits and the budget, atomically with the debit). `campaign` is the
    stored record (keys.campaign), None when there is no such campaign."""
    if not campaign:
        return RejectReason.UNKNOWN_CAMPAIGN
    if campaign.get("status") != "active" or now_ms >= int(campaign["end_ms"]):
        return RejectReason.CAMPAIGN_ENDED
    if now_ms < int(campaign["start_ms"]):
        return RejectReason.CAMPAIGN_NOT_STARTED
    if gift != campaign["gift"]:
        return RejectReason.NOT_SPONSORED_GIFT
    if campaign["brand"] in (sender, creator):  # the brand's budget would pay the brand, or be sent by it
        return RejectReason.SPONSOR_SELF
    rooms, creators = campaign.get("rooms", "").split(), campaign.get("creators", "").split()
    if (rooms or creators) and room not in rooms and creator not in creators:
        return RejectReason.CAMPAIGN_NOT_TARGETED
    return None


# Perks (gifting/perks.py): a highlighted message, an entrance effect or a premium-stream ticket is paid like a
# gift, one transfer chain with the gift's legs split at GIFTING_PERK_CREATOR_SHARE_BPS, and a ticket refunded
# when its premium stream ends early is that chain reversed, leg by leg, once (perk.lua).
PERK_KINDS = ("highlight", "entrance", "ticket")


def perk_legs(viewer: str, creator: str, split: GiftSplit, with_rewards: bool = False) -> list[Leg]:
    """A perk's chain: exactly a gift's (the audit checks it with the gift rule). Paid with reward coins (perk.lua
    applies pays_with_rewards, as settle.lua does for gifts), exactly a reward-paid gift's: the creator earns the
    same diamonds, the platform pays for them (docs/REWARDS.md)."""
    return reward_gift_legs(viewer, creator, split) if with_rewards else gift_legs(viewer, creator, split)


def perk_refund_legs(viewer: str, creator: str, split: GiftSplit, with_rewards: bool = False) -> list[Leg]:
    """A refunded ticket: every leg of its purchase reversed, so the creator gives the diamonds back and the
    viewer gets back what paid (bought coins, or reward coins for a reward-paid ticket: never money). The
    diamonds are still on hold when GIFTING_DIAMOND_HOLD_S is at least GIFTING_PREMIUM_REFUND_WINDOW_S (the
    defaults), so none can have been withdrawn."""
    legs = perk_legs(viewer, creator, split, with_rewards)
    return [Leg(leg.ledger, leg.credit, leg.debit, leg.amount) for leg in legs]


def highlight_pin_ms(coins: int, pin_s_per_coin: int, pin_s_max: int) -> int:
    """How long a highlighted message stays pinned: linear in its price, capped (as Super Chat's tiers grow)."""
    assert coins > 0
    return min(coins * pin_s_per_coin, pin_s_max) * 1000


def entrance_until_ms(paid_until_ms: int, now_ms: int, days: int) -> int:
    """An entrance effect bought while one runs extends it; otherwise it runs `days` from now. perk.lua applies
    this rule atomically (a Lua reading of it, like spend_cap.lua's)."""
    return max(paid_until_ms, now_ms) + days * 86_400_000


def ticket_refund_due(premium_since_ms: int, ended_ms: int, window_s: int) -> bool:
    """A premium stream that ends within `window_s` of being marked premium ended early: its tickets are refunded
    in full. After the window, the stream delivered what the ticket bought and nothing is refunded."""
    return window_s > 0 and ended_ms - premium_since_ms < window_s * 1000


# Fan clubs (gifting/fanclubs.py): (level, points needed). Points are the coins a member gifted to the creator
# plus GIFTING_FANCLUB_VISIT_POINTS per UTC day they visited the creator's room.
FAN_LEVEL_THRESHOLDS: tuple[tuple[int, int], ...] = (
    (1, 0),
    (2, 50),
    (3, 200),
    (4, 500),
    (5, 1_000),
    (6, 2_500),
    (7, 5_000),
    (8, 10_000),
    (9, 25_000),
    (10, 50_000),
)


def fan_level(points: int) -> int:
    """The highest fan-club level whose threshold the member's points reached."""
    return max(level for level, threshold in FAN_LEVEL_THRESHOLDS if points >= threshold)


def fan_active(last_active_ms: int, now_ms: int, pause_s: int) -> bool:
    """A member is active (badge, member perks) until `pause_s` pass without activity; then paused."""
    return now_ms - last_active_ms < pause_s * 1000


def members_only_reject(gift: str, member_gift: str, active_member: bool) -> RejectReason | None:
    """The creator's member-only gift may be sent to them only by an active member of their fan club."""
    return RejectReason.MEMBERS_ONLY if member_gift and gift == member_gift and not active_member else None


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
    gift_id: str,
    viewer: str,
    creator: str,
    split: GiftSplit,
    room: str,
    gift: str,
    count: int,
    creator_here: bool = True,
) -> str:
    """A settled gift's row in its batch's journal entry (GIFT_ROW_FIELDS, tab-separated; read by journal_gifts).
    settle.lua writes it as given when it settles the gift. The legs are the viewer's partition's part of
    place_legs(gift_legs(...)): all of them when the creator is in it too (`creator_here`), else the coin legs
    (the diamonds leg is the creator's credit, creator_legs). Spelled out because the worker builds one per gift
    (tests/test_rules.py checks they agree)."""
    v = keys.ACCOUNT_PREFIX + viewer
    legs = [f"coins {v} {keys.SYS_PLATFORM_REVENUE} {split.platform_coins}"] if split.platform_coins > 0 else []
    if split.diamonds > 0:
        legs.append(f"coins {v} {keys.SYS_CREATOR_EARNINGS} {split.diamonds}")
        if creator_here:
            legs.append(creator_legs(creator, split)[0])
    return f"{gift_id}\t{'|'.join(legs)}\t{room}\t{gift}\t{count}"


def creator_legs(creator: str, split: GiftSplit) -> list[str]:
    """A gift's legs in its creator's partition, however it was paid (encoded): the diamonds from issuance."""
    if split.diamonds <= 0:
        return []
    return [f"diamonds {keys.SYS_DIAMOND_ISSUANCE} {keys.ACCOUNT_PREFIX}{creator} {split.diamonds}"]


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
WITHDRAWN_DAY_TTL_S = 2 * 86400  # a day's withdrawal totals, likewise
# A creator's top-gifter boards: (period, seconds a board is kept after its last gift; 0: for ever). Gifts
# (settle.lua) and completed pools (pool.lua) add to them through the same rule (top_gifters.lua).
TOP_DAY_TTL_S = 2 * 86400
TOP_WEEK_TTL_S = 14 * 86400


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


def match_side_reject(
    room: str, rooms: list[str | None], started_at_ms: int | None, end_ms: int | None, accepted_ms: int
) -> RejectReason | None:
    """A gift that names a match targets its room's side: it settles only if it scores there, by the cutoff that
    scores gifts (accepted by the hub in [started_at_ms, end_ms)); later it is `match_ended`. A match that is not
    found, never started, or does not have this room among its `rooms`: `not_in_match`. (gifting/rooms/matches.py)"""
    if room not in rooms or started_at_ms is None or end_ms is None or accepted_ms < started_at_ms:
        return RejectReason.NOT_IN_MATCH
    if accepted_ms >= end_ms:
        return RejectReason.MATCH_ENDED
    return None


# Partitions (docs/SCALING.md "Stage 2"): a transfer's legs are built as above, then placed. Each partition
# applies its own legs in one script, so every ledger sums to zero inside every partition at every moment; a
# leg between accounts of two partitions goes through sys:transit, which over the whole installation holds
# exactly what is in flight between partitions.


def place_legs(legs: list[Leg], source_part: str) -> dict[str, list[Leg]]:
    """Each partition's legs of one transfer, the source partition (where the transfer is decided) first. A leg
    belongs to the partition of its placed account (partitions.is_shared: system accounts exist in every
    partition); two shared accounts stay in the source; two placed accounts of different partitions: the leg is
    split through sys:transit (debit side -> transit, transit -> credit side)."""
    placed: dict[str, list[Leg]] = {source_part: []}

    def home(account: str) -> str | None:
        return None if partitions.is_shared(account) else keys.part_of(account)

    for leg in legs:
        debit_part, credit_part = home(leg.debit), home(leg.credit)
        if debit_part is not None and credit_part is not None and debit_part != credit_part:
            placed.setdefault(debit_part, []).append(Leg(leg.ledger, leg.debit, keys.SYS_TRANSIT, leg.amount))
            placed.setdefault(credit_part, []).append(Leg(leg.ledger, keys.SYS_TRANSIT, leg.credit, leg.amount))
        else:
            placed.setdefault(debit_part or credit_part or source_part, []).append(leg)
    return placed


# Separators: US between a script argument's fields (credit.lua's too); FS between an encoded credit's fields
# (it travels inside settle.lua's US-separated argument); RS and GS within a field. None occurs in any row.
US, FS, RS, GS = "\x1f", "\x1c", "\x1e", "\x1d"


@dataclass(frozen=True, slots=True)
class Credit:
    """What a transfer decided in one partition owes accounts of another: applied there exactly once, by id, by
    ledger/credit.lua (Ledger.apply_credits), from the source partition's outbox."""

    id: str  # idempotency key in the destination (the transfer's id; suffixed if one transfer owes it twice)
    kind: str  # the transfer's kind, as in statements (gift_received, transfer_in, ...)
    legs: list[Leg]  # the destination's placed legs (every account in them lives there, or is shared)
    ts_ms: int  # when the source step decided it: the earned hour and the boards' day and week come from it
    statement: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (account, statement_row)
    earned: tuple[str, int] | None = None  # (creator account, diamonds): held back from withdrawal
    board: tuple[str, str, int] | None = None  # (creator account, gifter account, coins): top gifters
    room: str = ""
    gift: str = ""
    count: int = 0

    def encode(self) -> str:
        """One line (no newline): outbox entries join a destination's credits with '\\n'."""
        statement = GS.join(account + RS + row for account, row in self.statement)
        earned = f"{self.earned[0]} {self.earned[1]}" if self.earned else ""
        board = " ".join(map(str, self.board)) if self.board else ""
        fields = (self.id, self.kind, encode_legs(self.legs), str(self.ts_ms), self.room, self.gift, str(self.count))
        return FS.join((*fields, statement, earned, board))

    @classmethod
    def decode(cls, line: str) -> Credit:
        id_, kind, legs, ts, room, gift, count, statement, earned, board = line.split(FS)
        pairs = [tuple(item.split(RS, 1)) for item in statement.split(GS)] if statement else []
        e = earned.split(" ") if earned else None
        b = board.split(" ") if board else None
        return cls(
            id=id_,
            kind=kind,
            legs=parse_legs(legs) if legs else [],
            ts_ms=int(ts),
            statement=[(a, r) for a, r in pairs],
            earned=(e[0], int(e[1])) if e else None,
            board=(b[0], b[1], int(b[2])) if b else None,
            room=room,
            gift=gift,
            count=int(count),
        )

    def journal_row(self) -> str:
        """Its row in the destination's `credits` journal entry (CREDIT_ROW_FIELDS, tab-separated)."""
        return "\t".join(
            (self.id, self.kind, encode_legs(self.legs), self.room, self.gift, str(self.count), str(self.ts_ms))
        )


def credit_id(transfer_id: str, source_part: str) -> str:
    """A credit's id: its transfer's id and the partition that decided it. A transfer id is unique only within
    its source partition (a gift id is checked against the payer's partition's records: another payer's gift
    may carry the same id in another partition), so a credit is applied once per (transfer, source)."""
    return transfer_id + "/" + source_part


def gift_credit_line(
    gift_id: str,
    creator: str,
    viewer: str,
    split: GiftSplit,
    ts_ms: int,
    creator_row: str,
    room: str,
    gift: str,
    count: int,
    source_part: str,
) -> str:
    """Credit(...).encode() of a gift's creator side (creator_legs, the creator's statement row, the earned
    diamonds, the gifter's coins on the boards; accounts as u:<user>), spelled out because the worker builds one
    per gift to another partition (tests/test_partitions.py checks they agree)."""
    statement = creator + RS + creator_row if creator_row else ""
    earned = f"{creator} {split.diamonds}" if split.diamonds > 0 else ""
    legs = f"diamonds {keys.SYS_DIAMOND_ISSUANCE} {creator} {split.diamonds}" if split.diamonds > 0 else ""
    return FS.join(
        (
            credit_id(gift_id, source_part),
            "gift_received",
            legs,
            str(ts_ms),
            room,
            gift,
            str(count),
            statement,
            earned,
            f"{creator} {viewer} {split.coins}",
        )
    )


def outbox_fields(credits: dict[str, list[Credit]]) -> list[str]:
    """An outbox entry's field/value pairs: destination tag, then its credits' lines joined by newlines."""
    fields: list[str] = []
    for part, owed in credits.items():
        if owed:
            fields += [part, "\n".join(c.encode() for c in owed)]
    return fields


def outbox_credits(fields: dict[str, str]) -> dict[str, list[Credit]]:
    """An outbox entry read back: destination tag -> its credits."""
    return {part: [Credit.decode(line) for line in lines.split("\n")] for part, lines in fields.items() if lines}


CREDIT_ROW_FIELDS = ("id", "kind", "legs", "room", "gift", "count", "ts")


def journal_credits(fields: dict[str, str]) -> list[dict[str, str]]:
    """The credits of one journal entry of kind 'credits' (credit.lua writes one per call: a row per credit), each
    as a dict of CREDIT_ROW_FIELDS. Raises JournalError for a row that does not parse."""
    rows = []
    for row in fields.get("rows", "").split("\n"):
        values = row.split("\t")
        if len(values) != len(CREDIT_ROW_FIELDS):
            raise JournalError(f"bad credit row {row[:200]!r}: expected {len(CREDIT_ROW_FIELDS)} tab-separated fields")
        rows.append(dict(zip(CREDIT_ROW_FIELDS, values, strict=True)))
    return rows
