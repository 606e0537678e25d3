"""Ledger rules, pure: the gift split rounds in the platform's favour, every chain balances, legs round-trip."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gifting import keys
from gifting.catalog.model import Gift
from gifting.ledger import rules
from gifting.ledger.rules import JournalError, Leg
from gifting.wire.reasons import RejectReason


def net_by_ledger(legs: list[Leg]) -> dict[str, dict[str, int]]:
    """Each account's net change per ledger after applying `legs`."""
    net: dict[str, dict[str, int]] = {ledger: defaultdict(int) for ledger in rules.LEDGERS}
    for leg in legs:
        net[leg.ledger][leg.debit] -= leg.amount
        net[leg.ledger][leg.credit] += leg.amount
    return net


@pytest.mark.parametrize(
    ("coins", "bps", "diamonds"),
    [
        (1, 5000, 0),
        (2, 5000, 1),
        (3, 5000, 1),
        (100, 5000, 50),
        (99, 5000, 49),
        (7, 3333, 2),
        (1, 9999, 0),
        (1, 10000, 1),
        (44999, 0, 0),
        (44999 * 999, 5000, 44999 * 999 // 2),
    ],
)
def test_split_rounds_in_the_platforms_favour(coins: int, bps: int, diamonds: int) -> None:
    """The creator's diamonds are rounded down; the platform keeps the remainder."""
    split = rules.split_gift(coins, bps)
    assert (split.coins, split.diamonds, split.platform_coins) == (coins, diamonds, coins - diamonds)


def test_one_coin_gift_at_half_share_has_no_diamond_legs() -> None:
    """A 1-coin gift at 50 % earns 0 diamonds: only the platform leg is written."""
    legs = rules.gift_legs("v", "c", rules.split_gift(1, 5000))
    assert legs == [Leg("coins", "u:v", keys.SYS_PLATFORM_REVENUE, 1)]


def test_full_share_gift_has_no_platform_leg() -> None:
    """At 100 % the creator gets every coin as diamonds and the platform leg is omitted."""
    legs = rules.gift_legs("v", "c", rules.split_gift(10, 10000))
    assert legs == [
        Leg("coins", "u:v", keys.SYS_CREATOR_EARNINGS, 10),
        Leg("diamonds", keys.SYS_DIAMOND_ISSUANCE, "u:c", 10),
    ]


def test_gift_legs_sum_to_zero_per_ledger() -> None:
    """A 3-coin gift at 50 %: viewer -3 coins, platform +2, earnings +1, creator +1 diamond; each ledger nets 0."""
    net = net_by_ledger(rules.gift_legs("v", "c", rules.split_gift(3, 5000)))
    assert dict(net["coins"]) == {"u:v": -3, keys.SYS_PLATFORM_REVENUE: 2, keys.SYS_CREATOR_EARNINGS: 1}
    assert dict(net["diamonds"]) == {keys.SYS_DIAMOND_ISSUANCE: -1, "u:c": 1}
    assert all(sum(accounts.values()) == 0 for accounts in net.values())


def test_purchase_legs_balance() -> None:
    """A purchase moves coins from issuance to the user, and the coin ledger nets 0."""
    legs = rules.purchase_legs("v", 65)
    assert legs == [Leg("coins", keys.SYS_COIN_ISSUANCE, "u:v", 65)]
    assert sum(net_by_ledger(legs)["coins"].values()) == 0


accounts = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.@-", min_size=1, max_size=64)


@given(coins=st.integers(1, 10**12), bps=st.integers(0, rules.BPS_DENOMINATOR), viewer=accounts, creator=accounts)
@example(coins=1, bps=5000, viewer="v", creator="c")
@example(coins=1, bps=0, viewer="v", creator="c")
def test_split_and_legs_always_balance(coins: int, bps: int, viewer: str, creator: str) -> None:
    """For any amount and share: diamonds = floor(coins*bps/10000), legs are positive, each ledger nets 0."""
    split = rules.split_gift(coins, bps)
    assert split.diamonds * rules.BPS_DENOMINATOR <= coins * bps < (split.diamonds + 1) * rules.BPS_DENOMINATOR
    assert split.diamonds + split.platform_coins == coins and split.platform_coins >= 0
    legs = rules.gift_legs(viewer, creator, split)
    assert all(leg.amount > 0 for leg in legs)
    net = net_by_ledger(legs)
    assert all(sum(balances.values()) == 0 for balances in net.values())
    if viewer != creator:
        assert net["coins"][keys.account(viewer)] == -coins
        assert net["diamonds"][keys.account(creator)] == split.diamonds
    assert net["coins"][keys.SYS_CREATOR_EARNINGS] == split.diamonds
    assert rules.parse_legs(rules.encode_legs(legs)) == legs


def test_encode_parse_round_trip() -> None:
    """Legs encode to 'ledger debit credit amount' joined by '|' and parse back identically."""
    legs = rules.gift_legs("viewer_1", "creator.2@x", rules.split_gift(1088, 5000))
    text = rules.encode_legs(legs)
    assert text == (
        "coins u:viewer_1 sys:platform_revenue 544|coins u:viewer_1 sys:creator_earnings 544"
        "|diamonds sys:diamond_issuance u:creator.2@x 544"
    )
    assert rules.parse_legs(text) == legs
    assert rules.parse_legs("") == [] and rules.encode_legs([]) == ""


@pytest.mark.parametrize(
    "text",
    [
        "garbage",
        "coins a b",
        "coins a b c",
        "coins a b 1 extra",
        "gems a b 1",
        "Coins a b 1",
        "coins a b -1",
        "coins a b 1.5",
        "coins a b 1|",
        "|coins a b 1",
        "coins a b 1||coins a b 2",
        "coins  a b 1",
        "coins a b 1\n",
        "coins a b ²",
        "coins a b ٣",
    ],
)
def test_parse_garbage_raises_journal_error(text: str) -> None:
    """A leg that is not 'coins|diamonds debit credit <ASCII digits>' raises JournalError (what the audit reports)."""
    with pytest.raises(JournalError):
        rules.parse_legs(text)


@given(
    ledger=st.sampled_from(rules.LEDGERS),
    debit=st.text(min_size=1, max_size=8),
    credit=st.text(min_size=1, max_size=8),
    amount=st.text(min_size=1, max_size=6),
)
@example(ledger="coins", debit="a", credit="b", amount="²")
def test_parse_never_raises_anything_but_journal_error(ledger: str, debit: str, credit: str, amount: str) -> None:
    """Any journal text parses to legs with non-negative int amounts, or raises JournalError; nothing else."""
    try:
        legs = rules.parse_legs(f"{ledger} {debit} {credit} {amount}")
    except JournalError:
        return
    assert all(type(leg.amount) is int and leg.amount >= 0 for leg in legs)


def test_fingerprint_identifies_the_request() -> None:
    """Same fields give the same fingerprint; any change, or moving a boundary between fields, gives another."""
    base = rules.fingerprint("alice", "r_1", "rose", 1)
    assert base == rules.fingerprint("alice", "r_1", "rose", 1)
    assert base != rules.fingerprint("alice", "r_1", "rose", 2)
    assert base != rules.fingerprint("bob", "r_1", "rose", 1)
    assert rules.fingerprint("a b", "c") != rules.fingerprint("a", "b c")


def test_parse_gift_record() -> None:
    """The stored 'status|reason|coins|fingerprint' record reads back as an outcome."""
    outcome = rules.parse_gift_record("g1", "rejected|insufficient_coins|5|abc", replay=True)
    assert outcome == rules.GiftOutcome("g1", "rejected", "insufficient_coins", 5, True)
    assert not outcome.settled
    assert rules.parse_gift_record("g2", "settled||0|abc", replay=False).settled


@given(now=st.integers(0, 4_000_000_000), ttl=st.integers(1, 30 * 86400), age=st.integers(0, 30 * 86400))
def test_record_buckets_find_every_record_younger_than_the_ttl(now: int, ttl: int, age: int) -> None:
    """A record written `age` s ago (age <= ttl) sits in a bucket the lookup reads, and that bucket has not
    expired yet; the batch writes into the newest bucket it reads."""
    buckets, _ = rules.record_buckets(now, ttl)
    age = min(age, ttl, now)
    written_buckets, expire_at = rules.record_buckets(now - age, ttl)
    assert written_buckets[0] in buckets
    assert expire_at > now and expire_at > (now - age) + ttl
    assert buckets == sorted(buckets, reverse=True) and len(buckets) <= rules.RECORD_BUCKETS + 2


def test_journal_gifts_reads_each_row_of_a_batch_entry() -> None:
    legs = "coins u:v sys:platform_revenue 5|coins u:v sys:creator_earnings 5|diamonds sys:diamond_issuance u:c 5"
    fields = {"kind": "gifts", "rows": f"g1\t{legs}\tr1\trose\t2\ng2\t{legs}\tr1\tlion\t1", "bps": "5000", "ts": "7"}
    gifts = rules.journal_gifts(fields)
    assert [g["id"] for g in gifts] == ["g1", "g2"]
    assert gifts[0] == {"kind": "gift", "id": "g1", "legs": legs, "room": "r1", "gift": "rose", "count": "2",
                        "bps": "5000", "ts": "7"}  # fmt: skip
    assert len(rules.parse_legs(gifts[1]["legs"])) == 3


@pytest.mark.parametrize("rows", ["", "g1\tlegs", "g1\ta\tb\tc\td\te"])
def test_journal_gifts_rejects_rows_that_do_not_parse(rows: str) -> None:
    with pytest.raises(rules.JournalError, match="bad gift row"):
        rules.journal_gifts({"kind": "gifts", "rows": rows})


def test_statement_row_parses_to_the_api_shape() -> None:
    row = "1700000000000\tgift_sent\tcoins\t-10\tu:c1\tg-1\trose\t2"
    assert rules.parse_statement_row(4, row) == {
        "id": "4", "kind": "gift_sent", "ledger": "coins", "amount": -10, "counterpart": "c1",
        "reference": "g-1", "gift": "rose", "count": 2, "ts": 1700000000000,
    }  # fmt: skip
    purchase = rules.parse_statement_row(0, "5\tpurchase\tcoins\t65\tsys:coin_issuance\tu1:k\t\t")
    assert purchase["gift"] is None and purchase["count"] is None and purchase["counterpart"] == "sys:coin_issuance"


@given(coins=st.integers(1, 10**9), bps=st.integers(0, rules.BPS_DENOMINATOR), count=st.integers(1, 99))
def test_gift_journal_row_reads_back_as_the_gift_legs(coins: int, bps: int, count: int) -> None:
    """The row the worker builds for settle.lua parses (journal_gifts, parse_legs) to exactly gift_legs."""
    split = rules.split_gift(coins, bps)
    row = rules.gift_journal_row("g-1", "v1", "c1", split, "room1", "rose", count)
    [gift] = rules.journal_gifts({"kind": "gifts", "rows": row, "bps": str(bps), "ts": "1"})
    assert (gift["id"], gift["room"], gift["gift"], gift["count"]) == ("g-1", "room1", "rose", str(count))
    assert rules.parse_legs(gift["legs"]) == rules.gift_legs("v1", "c1", split)
    assert (
        rules.parse_statement_row(0, rules.statement_row(5, "gift_sent", "coins", -coins, "u:c1", "g-1"))["amount"]
        == -coins
    )


def test_every_transfer_kind_has_its_legs_here_and_they_balance() -> None:
    """Refund/chargeback, the three withdrawal phases, a pledge, its return and a pool's completion: each ledger
    nets 0, and each kind moves exactly the amounts the scripts used to spell out themselves."""
    split = rules.split_gift(1001, 5000)
    chains = {
        "reversal": rules.reversal_legs("v", 65),
        "withdrawal pending": rules.withdrawal_legs("pending", "c", 500),
        "withdrawal posted": rules.withdrawal_legs("posted", "c", 500),
        "withdrawal voided": rules.withdrawal_legs("voided", "c", 500),
        "pledge": rules.pledge_legs("v", 300),
        "pledge returned": rules.pledge_return_legs("v", 300),
        "pool completed": rules.pool_completion_legs("c", split),
    }
    for kind, legs in chains.items():
        assert legs and all(leg.amount > 0 for leg in legs), kind
        assert all(sum(accounts.values()) == 0 for accounts in net_by_ledger(legs).values()), kind
    assert rules.encode_legs(chains["reversal"]) == "coins u:v sys:coin_issuance 65"
    assert rules.encode_legs(chains["withdrawal voided"]) == "diamonds sys:payout_clearing u:c 500"
    assert rules.encode_legs(chains["pool completed"]) == (
        "coins sys:pool_escrow sys:platform_revenue 501|coins sys:pool_escrow sys:creator_earnings 500"
        "|diamonds sys:diamond_issuance u:c 500"
    )
    pending_then_posted = net_by_ledger(chains["withdrawal pending"] + chains["withdrawal posted"])["diamonds"]
    assert dict(pending_then_posted) == {"u:c": -500, keys.SYS_PAYOUT_CLEARING: 0, keys.SYS_DIAMONDS_PAID_OUT: 500}
    pledged_then_returned = net_by_ledger(chains["pledge"] + chains["pledge returned"])["coins"]
    assert set(pledged_then_returned.values()) == {0}


def test_a_pool_completed_at_zero_share_pays_no_diamonds() -> None:
    """At 0 % creator share a completed pool has one leg (all to the platform), as a gift does."""
    legs = rules.pool_completion_legs("c", rules.split_gift(100, 0))
    assert legs == [Leg("coins", keys.SYS_POOL_ESCROW, keys.SYS_PLATFORM_REVENUE, 100)]


ROSE = Gift("rose", "Rose", 1, "rose.svg", "basic")


@pytest.mark.parametrize(
    ("gift", "price", "room_status", "creator", "reason"),
    [
        (None, None, "live", "c", RejectReason.UNKNOWN_GIFT),
        (Gift("rose", "Rose", 1, "rose.svg", "basic", retired=True), None, "live", "c", RejectReason.GIFT_RETIRED),
        (ROSE, 2, "live", "c", RejectReason.PRICE_CHANGED),
        (ROSE, None, None, "", RejectReason.ROOM_NOT_LIVE),
        (ROSE, None, "ended", "c", RejectReason.ROOM_NOT_LIVE),
        (ROSE, 1, "live", "v", RejectReason.SELF_GIFT),
        (ROSE, 1, "live", "c", None),
        (ROSE, None, "live", "c", None),
    ],
)
def test_gift_reject_decides_before_the_ledger_in_a_fixed_order(
    gift: Gift | None, price: int | None, room_status: str | None, creator: str, reason: RejectReason | None
) -> None:
    """The pre-ledger rules, in order: known gift, not retired, price as shown, room live, not a self-gift."""
    assert rules.gift_reject(gift, price, room_status, creator, "v") == reason
    assert rules.catalog_reject(gift) == (
        reason if reason in (RejectReason.UNKNOWN_GIFT, RejectReason.GIFT_RETIRED) else None
    )


def test_match_side_reject_follows_the_scoring_cutoff() -> None:
    """A gift naming a match passes only when accepted in [start, end) on one of its rooms; else a reason."""
    reject = rules.match_side_reject
    rooms: list[str | None] = ["ra", "rb", None, None]
    assert reject("ra", rooms, 100, 200, 100) is None and reject("rb", rooms, 100, 200, 199) is None
    assert reject("rb2", ["ra", "rb", "ra2", "rb2"], 100, 200, 150) is None  # a team match's partner room
    assert reject("ra", rooms, 100, 200, 200) == RejectReason.MATCH_ENDED
    assert reject("rc", rooms, 100, 200, 150) == RejectReason.NOT_IN_MATCH  # not a side
    assert reject("ra", rooms, 100, 200, 99) == RejectReason.NOT_IN_MATCH  # before it started
    assert reject("ra", rooms, None, None, 150) == RejectReason.NOT_IN_MATCH  # invited, declined, expired
    assert reject("ra", [None] * 4, None, None, 150) == RejectReason.NOT_IN_MATCH  # unknown
