"""`gifting audit`: recompute every balance from the journal and check the ledger's invariants.

The journal is the archived entries in PostgreSQL followed by the entries still in Valkey (each read once).

Checks:
- each ledger sums to zero, and stored balances equal the journal's;
- no user balance below zero, except a coin debt no larger than the user's chargebacks (the documented debt);
- every journal entry parses, every gift settled once, with exactly its legs at the creator share stored with it;
- every paid purchase record has its journal transfer and vice versa; each refund or chargeback reverses one
  paid purchase, once, for its full amount;
- every pool closes (completed or voided) at most once, for exactly the coins pledged to it, and the escrow
  holds exactly the pledges of open pools;
- the journal is continuous across the two stores: every entry Valkey gave out is in exactly one of them
  (gifting/history/continuity.py);
- every perk or ticket is paid once with a gift's legs (a reward-paid gift's when paid with reward coins) and
  refunded at most once, in full, on the ledger it was paid on, and its record
  (settled, refunded, rejected) agrees with the journal; every ticket held has its paid, unrefunded
  purchase; every fan-club membership has its settled gift;
- every withdrawal is pending at most once and resolved (posted or voided) at most once, for its amount, and
  none is still pending past its deadline (plus GRACE_MS for the payout loop to notice);
- reward coins (the `rewards` ledger) move only issuance -> budget (funding), budget -> viewer (an accrual) and
  viewer -> sys:rewards_spent (a gift or perk) and back only for a refunded reward-paid ticket, so none is ever
  paid out, refunded as money or charged back; the budget is never
  below zero after any entry; each accrual id pays once; each viewer's and the platform's accruals of a UTC day
  stay within the caps recorded with them.
- sponsored-gift budgets (ledger/audit_campaigns.py): never below zero, every budget coin accounted for.
"""

from __future__ import annotations

import copy
import functools
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis.asyncio as aioredis

from gifting import clock, keys
from gifting.history import continuity
from gifting.history import journal as history
from gifting.ledger import audit_campaigns, audit_partitions, partitions, pools, rules

CHUNK_ENTRIES = 200  # journal entries read per XRANGE (a settled batch is one entry of up to 2,000 gifts)
GRACE_MS = 60_000  # a pending withdrawal may overrun its deadline this long before it is a finding
SCAN_COUNT = 1000


@dataclass
class AuditReport:
    entries: int = 0
    archived: int = 0  # of `entries`, those read from the history database
    awaiting_trim: int = 0  # archived entries Valkey still holds unchanged (between a batch's commit and trim)
    kinds: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    totals: dict[str, dict[str, int]] = field(default_factory=dict)  # ledger -> account -> balance, all partitions
    findings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the audit could not check, and why

    @property
    def clean(self) -> bool:
        return not self.findings

    def summary(self) -> str:
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(self.kinds.items()))
        lines = [f"journal entries: {self.entries} ({kinds}); {self.archived} of them from the archive"]
        if self.awaiting_trim:
            lines[0] += f" ({self.awaiting_trim} archived entries still in Valkey, awaiting trim)"
        for ledger, balances in sorted(self.totals.items()):
            users = sum(v for a, v in balances.items() if rules.is_user_account(a))
            system = {a: v for a, v in balances.items() if not rules.is_user_account(a)}
            lines.append(
                f"{ledger}: sum={sum(balances.values())} users={users} accounts={len(balances)} "
                + " ".join(f"{a}={v}" for a, v in sorted(system.items()))
            )
        lines.append(f"partitions: {partitions.count()} (findings name theirs: {{ledger:P.K}})")
        lines.extend(f"note: {n}" for n in self.notes)
        lines.append("findings: none" if self.clean else f"findings: {len(self.findings)}")
        lines.extend(f"  FINDING {f}" for f in self.findings)
        return "\n".join(lines)


@dataclass
class _Journal:
    """What the audit learns from one pass over the journal."""

    balances: dict[str, dict[str, int]] = field(
        default_factory=lambda: {ledger: defaultdict(int) for ledger in rules.LEDGERS}
    )  # over every partition
    parts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # partition -> ledger -> balances
    cross: audit_partitions.CrossJournal = field(default_factory=audit_partitions.CrossJournal)
    purchases: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (account, coins)
    reversals: dict[str, list[tuple[str, int]]] = field(default_factory=lambda: defaultdict(list))
    chargebacks: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # account -> coins
    withdrawals: dict[str, list[tuple[str, int]]] = field(default_factory=lambda: defaultdict(list))
    gift_ids: set[str] = field(default_factory=set)
    pledges: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # pool -> coins pledged
    pool_closings: dict[str, list[tuple[str, int]]] = field(default_factory=lambda: defaultdict(list))
    reward_ids: set[str] = field(default_factory=set)
    # (account or '*', day) -> (reward coins accrued, the lowest cap recorded with them)
    rewards_by_day: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    campaigns: audit_campaigns.CampaignJournal = field(default_factory=audit_campaigns.CampaignJournal)
    perks: dict[str, tuple[str, int]] = field(default_factory=dict)  # purchase id -> (ledger, coins) paid
    # purchase id -> (ledger, coins) given back, per refund
    perk_refunds: dict[str, list[tuple[str, int]]] = field(default_factory=lambda: defaultdict(list))


async def run_audit(
    redis: aioredis.Redis,
    progress: Callable[[int], None] | None = None,
    archive: psycopg.AsyncConnection[Any] | None = None,
) -> AuditReport:
    """Audit a ledger that may be in use, partition by partition: each partition's balances are compared with
    its journal as of one atomic snapshot of that partition (which also reads its outbox); records (purchases,
    withdrawals, pools) are read after every snapshot and must agree with the journal either at the snapshot or
    after the entries that arrived since (a live payout may post a withdrawal meanwhile). Then the cross-partition
    checks (ledger/audit_partitions.py). With `archive` (the history database), each partition's journal is its
    archived entries followed by Valkey's."""
    report = AuditReport()
    snapshot = _Journal()
    ends: dict[str, str | None] = {}
    lines: list[audit_partitions.OutboxLine] = []
    transit: dict[str, Counter[str]] = {}
    partial: set[str] = set()  # partitions whose outbox was read only in part: their transfers are not judged
    in_flight: dict[str, list[str]] = {}  # partition -> its pledges in flight at its snapshot
    for part in partitions.all_tags():
        read = await _snapshot_partition(redis, archive, report, snapshot, part, progress)
        ends[part], stored, outbox, in_flight[part] = read
        _check_balances(report, snapshot, part, stored)
        transit[part] = Counter({ledger: int(b.get(keys.SYS_TRANSIT, 0)) for ledger, b in stored.items()})
        lines += audit_partitions.outbox_lines(report.findings, part, outbox)
        if len(outbox) >= audit_partitions.OUTBOX_ENTRIES_MAX:
            report.notes.append(f"outbox {part}: read its oldest {len(outbox)} entries only: its transfers not judged")
            partial.add(part)
    for part, pledges in in_flight.items():  # a pledge between its steps: in flight like an outbox credit
        lines += await pools.in_flight_lines(redis, part, pledges, snapshot.cross.sources)
    records = await _read_records(redis, snapshot, archive)
    latest = copy.deepcopy(snapshot)
    moved = report.entries
    for part in partitions.all_tags():
        await _scan(redis, archive, report, latest, part, ends[part], None, None)
    # A cut only if no journal moved while read: then the per-partition snapshots are one state of the whole.
    quiet = report.entries == moved and not partial
    audit_partitions.check(report.findings, snapshot.cross, latest.cross, lines, transit if quiet else None, partial)
    if not quiet:
        report.notes.append("sums over partitions (sys:transit, sys:pool_escrow) not checked: the journals moved")
    _check_purchases(report, snapshot, latest, records.purchases)
    _check_withdrawals(report, snapshot, latest, records.withdrawals)
    _check_pools(report, snapshot, latest, records.pools, lines, quiet)
    _check_reward_caps(report, latest)
    coins = report.totals.get("coins", {})
    await audit_campaigns.check(redis, report.findings, coins, snapshot.campaigns, latest.campaigns)
    _check_perks(report, snapshot, latest, records.perks)
    for holder, purchase in records.tickets.items():  # a ticket held is a paid, unrefunded ticket purchase
        if _perk_status(latest, purchase) != "settled":
            report.findings.append(f"ticket {holder}: its purchase {purchase} is not a paid, unrefunded perk")
    for membership, gift in records.memberships.items():  # a member joined by a gift the ledger settled
        if gift not in latest.gift_ids:
            report.findings.append(f"fan club membership {membership}: its gift {gift} is not a settled gift")
    return report


async def _snapshot_partition(
    redis: aioredis.Redis, archive: psycopg.AsyncConnection[Any] | None, report: AuditReport, journal: _Journal,
    part: str, progress: Callable[[int], None] | None,
) -> tuple[str | None, dict[str, dict[str, str]], list[tuple[str, dict[str, str]]], list[str]]:  # fmt: skip
    """One atomic read of a partition (its balances, its journal's end, its outbox), then its journal up to that
    end. Returns (the end, the stored balances by ledger, the outbox entries, the pledges in flight)."""
    stream = keys.journal(part)
    async with redis.pipeline(transaction=True) as pipe:
        for _, hash_key in keys.ledgers(part):
            pipe.hgetall(hash_key)
        pipe.xinfo_stream(stream)
        pipe.xrange(keys.outbox(part), count=audit_partitions.OUTBOX_ENTRIES_MAX)
        pipe.zrange(keys.pledges_in_flight(part), 0, audit_partitions.OUTBOX_ENTRIES_MAX)
        *stored, info, outbox, pledges = await pipe.execute(raise_on_error=False)
    # The last id the stream ever gave out: the archiver may have moved every entry to PostgreSQL.
    end = None if isinstance(info, Exception) or info["last-generated-id"] == "0-0" else info["last-generated-id"]
    read, archived = report.entries, report.archived
    if end is not None:
        await _scan(redis, archive, report, journal, part, None, end, progress)
    report.findings += continuity.gap_findings(stream, info, report.entries - read, report.archived - archived)
    if archive is not None:
        overlap, awaiting = await continuity.overlap_findings(redis, archive, stream)
        report.findings += overlap
        report.awaiting_trim += awaiting
    if isinstance(outbox, Exception):
        report.findings.append(f"outbox {part}: not readable ({outbox})")
        outbox = []
    if isinstance(pledges, Exception):
        report.findings.append(f"pledges in flight {part}: not readable ({pledges})")
        pledges = []
    return end, {ledger: b for (ledger, _), b in zip(keys.ledgers(part), stored, strict=True)}, outbox, pledges


async def _scan(
    redis: aioredis.Redis, archive: psycopg.AsyncConnection[Any] | None, report: AuditReport, journal: _Journal,
    part: str, after: str | None, end: str | None, progress: Callable[[int], None] | None,
) -> None:  # fmt: skip
    """Apply the entries of the partition's journal after `after` up to `end` (None: the newest), each once,
    oldest first. Valkey holds a suffix of the journal (the archiver trims only the oldest entries, and only after
    PostgreSQL committed them), so whatever is missing from Valkey before its first entry is read from the
    archive."""
    stream = keys.journal(part)
    while True:
        chunk = await redis.xrange(stream, min="(" + after if after else "-", max=end or "+", count=CHUNK_ENTRIES)
        if archive is not None:
            upto, inclusive = (chunk[0][0], False) if chunk else (end, True)
            after = await _scan_archive(archive, report, journal, part, after, upto, inclusive)
        for entry_id, fields in chunk:
            report.entries += 1
            _apply_entry(report, journal, part, entry_id, fields)
        if len(chunk) < CHUNK_ENTRIES:
            return
        after = chunk[-1][0]
        if progress:
            progress(report.entries)


async def _scan_archive(
    archive: psycopg.AsyncConnection[Any], report: AuditReport, journal: _Journal, part: str,
    after: str | None, upto: str | None, inclusive: bool,
) -> str | None:  # fmt: skip
    while True:
        rows = await history.archived_entries(archive, keys.journal(part), after, upto, inclusive)
        for entry_id, fields in rows:
            report.entries += 1
            report.archived += 1
            _apply_entry(report, journal, part, entry_id, fields)
            after = entry_id
        if len(rows) < history.READ_CHUNK_ENTRIES:
            return after


@dataclass
class _Records:
    purchases: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # id -> (status, coins)
    withdrawals: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # id -> (status, deadline)
    pools: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # id -> (status, deadline)
    perks: dict[str, str | None] = field(default_factory=dict)  # purchase id -> status
    memberships: dict[str, str] = field(default_factory=dict)  # 'creator member' -> the gift id that joined
    tickets: dict[str, str] = field(default_factory=dict)  # 'room account' -> the ticket's purchase id


async def _read_records(
    redis: aioredis.Redis, journal: _Journal, archive: psycopg.AsyncConnection[Any] | None = None
) -> _Records:
    records = _Records()
    async for key in redis.scan_iter(match=_IN_ANY_PARTITION + ":purchase:*", count=SCAN_COUNT):
        records.purchases[_after(key, ":purchase:")] = tuple(await redis.hmget(key, "status", "coins"))
    if archive is not None:  # after Valkey's: the archiver commits a record before it drops it from Valkey
        async with archive.cursor() as cur:
            await cur.execute("SELECT id, status, coins::text FROM purchases")
            async for purchase, status, coins in cur:
                records.purchases.setdefault(purchase, (status, coins))
        await archive.commit()
    for withdrawal in journal.withdrawals:
        records.withdrawals[withdrawal] = tuple(await redis.hmget(keys.withdrawal(withdrawal), "status", "deadline_ms"))
    if archive is not None:  # after Valkey's: the archiver commits a withdrawal before it drops it from Valkey
        missing = [w for w, (status, _) in records.withdrawals.items() if status is None]
        rows = await (
            await archive.execute(
                "SELECT id, status, fields->>'deadline_ms' FROM withdrawals WHERE id = ANY(%s)", (missing,)
            )
        ).fetchall()
        await archive.commit()
        records.withdrawals.update({w: (status, deadline) for w, status, deadline in rows})
    # A pool lives in its creator's partition, which its pledges' entries do not name: found by scanning.
    stored_pools: dict[str, tuple[str | None, str | None]] = {}
    async for key in redis.scan_iter(match=_IN_ANY_PARTITION + ":pool:*", count=SCAN_COUNT):
        stored_pools[_after(key, ":pool:")] = tuple(await redis.hmget(key, "status", "deadline_ms"))
    for pool in set(journal.pledges) | set(journal.pool_closings):
        records.pools[pool] = stored_pools.get(pool, (None, None))
    async for key in redis.scan_iter(match=_IN_ANY_PARTITION + ":perk:*", count=SCAN_COUNT):
        records.perks[_after(key, ":perk:")] = await redis.hget(key, "status")
    async for key in redis.scan_iter(match=_IN_ANY_PARTITION + ":tickets:*", count=SCAN_COUNT):
        room = _after(key, ":tickets:")
        for account, purchase in (await redis.hgetall(key)).items():
            if purchase:  # '' once refunded
                records.tickets[f"{room} {account}"] = purchase
    async for key in redis.scan_iter(match=keys.fanclub_members("*"), count=SCAN_COUNT):
        creator = key[len(keys.fanclub_members("").split("}")[0]) : key.index("}")]  # '{fanclub:' CREATOR '}...'
        for member, record in (await redis.hgetall(key)).items():
            records.memberships[f"{creator} {member}"] = record.split("|")[1]
    return records


_IN_ANY_PARTITION = "{ledger:*}"  # a SCAN pattern's start matching every partition's keys (keys.py: '{ledger:P.K}')


def _after(key: str, marker: str) -> str:
    """The id in a partition's key: what follows `marker` after the tag ('{ledger:3.41}:pool:ID' -> 'ID')."""
    return key.partition("}" + marker)[2]


def _apply_entry(report: AuditReport, journal: _Journal, part: str, entry_id: str, fields: dict[str, str]) -> None:
    """Apply one entry of the partition's journal. Findings name the entry as 'partition/id' (ids are per stream)."""
    kind, entry = fields.get("kind", "?"), fields.get("id", "?")
    if kind in ("gifts", "credits"):  # one entry per settled batch or credit.lua call: a transfer per row
        try:
            rows = rules.journal_gifts(fields) if kind == "gifts" else rules.journal_credits(fields)
        except rules.JournalError as exc:
            report.findings.append(f"journal {part}/{entry_id} ({kind}): {exc}")
            return
        for row in rows:
            if kind == "gifts":
                _apply_entry(report, journal, part, entry_id, row)
            else:
                _apply_credit(report, journal, part, entry_id, row)
        return
    report.kinds[kind] += 1
    legs = _legs(report, journal, part, f"{part}/{entry_id}", fields)
    if legs is None:
        return
    journal.cross.source(part, entry, legs)
    entry_id = f"{part}/{entry_id}"
    if kind in ("reward", "reward_funding") or any(leg.ledger == "rewards" for leg in legs):
        _apply_rewards(report, journal, entry_id, kind, fields, legs)
    amount = sum(leg.amount for leg in legs)
    audit_campaigns.apply_entry(
        report.findings, journal.campaigns, journal.balances, journal.gift_ids, entry_id, fields, legs
    )
    if kind == "gift":
        if entry in journal.gift_ids:
            report.findings.append(f"journal {entry_id}: gift {entry} settled more than once")
        journal.gift_ids.add(entry)
        _check_gift(report, entry_id, fields, legs)
    elif kind == "purchase":
        journal.purchases[entry] = (legs[0].credit if legs else "?", amount)
    elif kind in ("refund", "chargeback"):
        journal.reversals[fields.get("ref", "?")].append((kind, amount))
        if kind == "chargeback" and legs:
            journal.chargebacks[legs[0].debit] += amount
    elif kind.startswith("withdrawal_"):
        journal.withdrawals[entry].append((kind, amount))
    elif kind == "perk":
        if entry in journal.perks:
            report.findings.append(f"journal {entry_id}: perk {entry} paid more than once")
        journal.perks[entry] = _buyer_side(legs)
        _check_gift(report, entry_id, fields, legs)  # a perk's chain is a gift's (rules.perk_legs)
    elif kind == "perk_refund":
        journal.perk_refunds[fields.get("ref", "?")].append(_buyer_side(legs))
    elif kind == "pledge_pending":
        journal.pledges[fields.get("ref", "?")] += amount
    elif kind in ("pool_completed", "pool_voided"):
        coins = sum(leg.amount for leg in legs if leg.ledger == "coins")
        status = "completed" if kind == "pool_completed" else fields.get("status", "expired")  # older: expired
        journal.pool_closings[entry].append((status, coins))


def _legs(
    report: AuditReport, journal: _Journal, part: str, where: str, fields: dict[str, str]
) -> list[rules.Leg] | None:
    """Parse an entry's (or row's) legs and apply them to the balances, whole and the partition's."""
    try:
        legs = rules.parse_legs(fields.get("legs", ""))
    except rules.JournalError as exc:
        report.findings.append(f"journal {where} ({fields.get('kind', '?')} {fields.get('id', '?')}): {exc}")
        return None
    own = journal.parts.setdefault(part, {ledger: defaultdict(int) for ledger in rules.LEDGERS})
    strangers = {a for leg in legs for a in (leg.debit, leg.credit) if not _lives_in(a, part)}
    if strangers:  # its balance moved in a partition that does not hold it: the partition's sums still agree
        report.findings.append(
            f"journal {where} ({fields.get('kind', '?')} {fields.get('id', '?')}): moves "
            f"{', '.join(sorted(strangers))}, of other partitions"
        )
    for leg in legs:
        for balances in (journal.balances, own):
            balances[leg.ledger][leg.debit] -= leg.amount
            balances[leg.ledger][leg.credit] += leg.amount
    return legs


def _lives_in(account: str, part: str) -> bool:
    return partitions.is_shared(account) or _home(account, partitions.count()) == part


@functools.lru_cache(maxsize=100_000)
def _home(account: str, count: int) -> str:
    """The partition of a placed account (cached: each row names its accounts again; keyed by the count, which
    tests change)."""
    return keys.part_of(account)


def _apply_credit(report: AuditReport, journal: _Journal, part: str, entry_id: str, row: dict[str, str]) -> None:
    """A credit applied in `part` (a `credits` row): its legs, and what it settles of its source transfer.
    Reward coins reach a partition only through sys:transit (a reward accrual's second half)."""
    report.kinds["credit"] += 1
    where = f"{part}/{entry_id}"
    legs = _legs(report, journal, part, where, row)
    if legs is None:
        return
    journal.cross.credit(part, where, row.get("id", "?"), legs)
    for leg in legs:
        if leg.ledger == "rewards" and keys.SYS_TRANSIT not in (leg.debit, leg.credit):
            report.findings.append(
                f"journal {where} (credit {row.get('id')}): reward coins moved {leg.debit} -> {leg.credit}"
            )


# The only ways reward coins move, by journal entry kind: (debit, credit) with None for a user account.
_REWARD_MOVES = {
    "reward_funding": (keys.SYS_REWARDS_ISSUANCE, keys.SYS_REWARDS_BUDGET),
    "reward": (keys.SYS_REWARDS_BUDGET, None),
    "gift": (None, keys.SYS_REWARDS_SPENT),
    "perk": (None, keys.SYS_REWARDS_SPENT),
    "perk_refund": (keys.SYS_REWARDS_SPENT, None),  # a reward-paid ticket refunded: reward coins back, never money
}


def _apply_rewards(
    report: AuditReport, journal: _Journal, entry_id: str, kind: str, fields: dict[str, str], legs: list[rules.Leg]
) -> None:
    """Reward coins move only as _REWARD_MOVES allows, the budget never goes below zero, an id pays once."""
    entry = fields.get("id", "?")
    for leg in legs:
        allowed = _REWARD_MOVES.get(kind)
        debit, credit = allowed if allowed else ("", "")
        fits = leg.ledger == "rewards" and allowed is not None
        fits = fits and (leg.debit == debit if debit else _user_side(leg.debit))
        fits = fits and (leg.credit == credit if credit else _user_side(leg.credit))
        if leg.ledger == "rewards" and not fits:
            report.findings.append(
                f"journal {entry_id} ({kind} {entry}): reward coins moved {leg.debit} -> {leg.credit}"
            )
    if kind in ("reward", "reward_funding") and any(leg.ledger != "rewards" for leg in legs):
        report.findings.append(f"journal {entry_id} ({kind} {entry}): a reward transfer with a non-reward leg")
    if journal.balances["rewards"][keys.SYS_REWARDS_BUDGET] < 0:
        budget = journal.balances["rewards"][keys.SYS_REWARDS_BUDGET]
        report.findings.append(
            f"journal {entry_id} ({kind} {entry}): {keys.SYS_REWARDS_BUDGET} at {budget}, below zero"
        )
    if kind != "reward":
        return
    if entry in journal.reward_ids:
        report.findings.append(f"journal {entry_id}: reward {entry} paid more than once")
    journal.reward_ids.add(entry)
    day, coins = fields.get("day", "?"), sum(leg.amount for leg in legs)
    # An accrual to a viewer of another partition names sys:transit in its legs; its `viewer` field (rewards.lua)
    # names who was paid.
    viewer = fields.get("viewer") or (legs[0].credit if legs else "?")
    caps = [(viewer, "viewer_cap"), ("*", "day_cap")] if viewer != keys.SYS_TRANSIT else [("*", "day_cap")]
    for account, cap in caps:
        had, had_cap = journal.rewards_by_day.get((account, day), (0, -1))
        raw = fields.get(cap, "")
        this_cap = int(raw) if raw.isdigit() else 0
        journal.rewards_by_day[(account, day)] = (had + coins, this_cap if had_cap < 0 else min(had_cap, this_cap))


def _user_side(account: str) -> bool:
    """A user account, or sys:transit standing for one in another partition (the rest travels as a credit)."""
    return rules.is_user_account(account) or account == keys.SYS_TRANSIT


def _check_reward_caps(report: AuditReport, journal: _Journal) -> None:
    for (account, day), (coins, cap) in sorted(journal.rewards_by_day.items()):
        if coins > cap:
            who = "the platform" if account == "*" else account
            report.findings.append(f"rewards {day}: {who} accrued {coins} reward coins, over the cap of {cap}")


def _check_gift(report: AuditReport, entry_id: str, fields: dict[str, str], legs: list[rules.Leg]) -> None:
    """A gift's legs must be exactly what rules.gift_legs (or, paid with reward coins, rules.reward_gift_legs)
    gives for its total and stored share."""
    reward_legs = [leg for leg in legs if leg.ledger == "rewards"]
    if reward_legs:
        _check_reward_gift(report, entry_id, fields, legs, reward_legs[0])
        return
    coin_legs = [leg for leg in legs if leg.ledger == "coins"]
    if not coin_legs or len({leg.debit for leg in coin_legs}) != 1:
        report.findings.append(f"journal {entry_id} gift {fields.get('id')}: expected coin legs from one viewer")
        return
    total = sum(leg.amount for leg in coin_legs)
    try:
        split = rules.split_gift(total, int(fields.get("bps", "-1")))
    except (AssertionError, ValueError):
        report.findings.append(f"journal {entry_id} gift {fields.get('id')}: bad bps {fields.get('bps')!r}")
        return
    creator = next((leg.credit for leg in legs if leg.ledger == "diamonds"), "u:?")
    viewer = coin_legs[0].debit.removeprefix("u:")
    expected = _here(rules.gift_legs(viewer, creator.removeprefix("u:"), split), legs)
    if sorted(expected, key=repr) != sorted(legs, key=repr):
        report.findings.append(f"journal {entry_id} gift {fields.get('id')}: legs do not match the gift rules")


def _here(expected: list[rules.Leg], legs: list[rules.Leg]) -> list[rules.Leg]:
    """The expected legs that belong in the paying partition's entry: without the diamonds leg when the entry has
    none (the creator lives in another partition: the diamonds travel as a credit, matched by
    audit_partitions)."""
    if any(leg.ledger == "diamonds" for leg in legs):
        return expected
    return [leg for leg in expected if leg.ledger != "diamonds"]


def _check_reward_gift(
    report: AuditReport, entry_id: str, fields: dict[str, str], legs: list[rules.Leg], paid: rules.Leg
) -> None:
    try:
        split = rules.split_gift(paid.amount, int(fields.get("bps", "-1")))
    except (AssertionError, ValueError):
        report.findings.append(f"journal {entry_id} gift {fields.get('id')}: bad bps {fields.get('bps')!r}")
        return
    creator = next((leg.credit for leg in legs if leg.ledger == "diamonds"), "u:?")
    viewer = paid.debit.removeprefix(keys.ACCOUNT_PREFIX)
    expected = _here(rules.reward_gift_legs(viewer, creator.removeprefix(keys.ACCOUNT_PREFIX), split), legs)
    if sorted(expected, key=repr) != sorted(legs, key=repr):
        report.findings.append(f"journal {entry_id} gift {fields.get('id')}: legs do not match the reward gift rules")


def _check_balances(
    report: AuditReport, journal: _Journal, part: str, snapshot: dict[str, dict[str, str]]
) -> None:  # fmt: skip
    """One partition's stored balances against its own journal; each of its ledgers sums to zero by itself.
    Findings start with the partition's tag. The report's totals add the partitions up."""
    own = journal.parts.get(part, {})
    for ledger, raw in snapshot.items():
        stored = {a: int(v) for a, v in raw.items()}
        expected = own.get(ledger, {})
        totals = report.totals.setdefault(ledger, defaultdict(int))
        for account, value in stored.items():
            totals[account] += value
        if (total := sum(stored.values())) != 0:
            report.findings.append(f"{part} {ledger}: stored balances sum to {total}, expected 0")
        for account in sorted(set(stored) | set(expected)):
            have, want = stored.get(account, 0), expected.get(account, 0)
            if have != want:
                report.findings.append(f"{part} {ledger} {account}: stored balance {have}, journal says {want}")
            debt_allowed = journal.chargebacks.get(account, 0) if ledger == "coins" else 0
            if rules.is_user_account(account) and have < 0 and -have > debt_allowed:
                report.findings.append(
                    f"{part} {ledger} {account}: balance {have} below zero beyond its chargeback debt ({debt_allowed})"
                )
        if own and not raw and any(own.get(ledger, {}).values()):
            report.findings.append(f"{part} {ledger}: no stored balances, the journal moves some")


def _purchase_status(journal: _Journal, purchase: str) -> str | None:
    """What the purchase record's status must be, given this journal (None: no purchase yet)."""
    if purchase not in journal.purchases:
        return None
    reversals = journal.reversals.get(purchase, [])
    if not reversals:
        return "paid"
    return "refunded" if reversals[0][0] == "refund" else "charged_back"


def _check_purchases(
    report: AuditReport, snapshot: _Journal, latest: _Journal, records: dict[str, tuple[str | None, str | None]]
) -> None:
    for purchase, (status, coins) in records.items():
        if status == "declined":
            if purchase in latest.purchases:
                report.findings.append(f"purchase {purchase}: declined, but the journal credits it")
            continue
        allowed = {_purchase_status(snapshot, purchase), _purchase_status(latest, purchase)}
        if status not in allowed:
            report.findings.append(
                f"purchase {purchase}: record says {status}, journal says {sorted(map(str, allowed))}"
            )
        if purchase in latest.purchases and coins is not None and latest.purchases[purchase][1] != int(coins):
            report.findings.append(f"purchase {purchase}: record says {coins} coins, journal says otherwise")
    for purchase in set(snapshot.purchases) - set(records):
        if not purchase.startswith("grant:"):
            report.findings.append(f"purchase {purchase}: in the journal but has no purchase record")
    for purchase, reversals in latest.reversals.items():
        if purchase not in latest.purchases:
            report.findings.append(f"{reversals[0][0]} of {purchase}: no such purchase in the journal")
        elif len(reversals) > 1:
            report.findings.append(f"purchase {purchase}: reversed {len(reversals)} times")
        elif reversals[0][1] != latest.purchases[purchase][1]:
            report.findings.append(f"purchase {purchase}: reversed for another amount than it credited")


def _withdrawal_status(journal: _Journal, withdrawal: str) -> str | None:
    kinds = [k for k, _ in journal.withdrawals.get(withdrawal, [])]
    if not kinds:
        return None
    return {"withdrawal_posted": "paid", "withdrawal_voided": "failed"}.get(kinds[-1], "pending")


def _check_withdrawals(
    report: AuditReport, snapshot: _Journal, latest: _Journal, records: dict[str, tuple[str | None, str | None]]
) -> None:
    now_ms = clock.now_ms()
    for withdrawal, steps in latest.withdrawals.items():
        kinds = [k for k, _ in steps]
        if kinds[:1] != ["withdrawal_pending"] or len(steps) > 2 or kinds.count("withdrawal_pending") != 1:
            report.findings.append(f"withdrawal {withdrawal}: transfers {kinds} are not pending then one resolution")
        if len({a for _, a in steps}) != 1:
            report.findings.append(f"withdrawal {withdrawal}: resolved for another amount than was pending")
    for withdrawal, (status, deadline) in records.items():
        allowed = {_withdrawal_status(snapshot, withdrawal), _withdrawal_status(latest, withdrawal)}
        if status not in allowed:
            report.findings.append(
                f"withdrawal {withdrawal}: record says {status}, journal says {sorted(map(str, allowed))}"
            )
        if status == "pending" and deadline is not None and now_ms > int(deadline) + GRACE_MS:
            report.findings.append(
                f"withdrawal {withdrawal}: still pending {now_ms - int(deadline)} ms past its deadline"
            )


def _pool_status(journal: _Journal, pool: str) -> str:
    closings = journal.pool_closings.get(pool, [])
    return closings[0][0] if closings else "open"


def _check_pools(
    report: AuditReport, snapshot: _Journal, latest: _Journal, records: dict[str, tuple[str | None, str | None]],
    lines: list[audit_partitions.OutboxLine], quiet: bool,
) -> None:  # fmt: skip
    """Each pool closes at most once, for exactly what was pledged; what is still open is in escrow. A closing's
    legs, in the pool's partition, move every pledge out of the escrow: to a pledger of the partition, or to
    sys:transit for one of another partition, whose credit (matched to the closing like any transfer's, by
    audit_partitions) then moves it on: counting the credits here too would count those coins twice."""
    now_ms = clock.now_ms()
    for pool in set(latest.pledges) | set(latest.pool_closings):
        pledged, closings = latest.pledges.get(pool, 0), latest.pool_closings.get(pool, [])
        moved = closings[0][1] if closings else 0
        if len(closings) > 1:
            report.findings.append(f"pool {pool}: closed {len(closings)} times ({[k for k, _ in closings]})")
        elif closings and moved != pledged:
            report.findings.append(f"pool {pool}: {closings[0][0]} moved {moved} coins, pledged {pledged}")
    for pool, (status, deadline) in records.items():
        allowed = {_pool_status(snapshot, pool), _pool_status(latest, pool)}
        if status is None and "open" not in allowed:
            continue  # a closed pool's record moves to PostgreSQL; the journal keeps its story
        if status not in allowed:
            report.findings.append(f"pool {pool}: record says {status}, journal says {sorted(allowed)}")
        if status == "open" and deadline is not None and now_ms > int(deadline) + GRACE_MS:
            report.findings.append(f"pool {pool}: still open {now_ms - int(deadline)} ms past its deadline")
    if not quiet:  # pledges and closings are in different partitions: their snapshots are one cut only if quiet
        return
    # As of the snapshot, the escrow holds exactly the pledges of pools not yet closed.
    escrow_open = sum(v for pool, v in snapshot.pledges.items() if pool not in snapshot.pool_closings)
    escrow = report.totals.get("coins", {}).get(keys.SYS_POOL_ESCROW, 0)
    if escrow != escrow_open:
        report.findings.append(f"coins {keys.SYS_POOL_ESCROW}: holds {escrow}, open pools pledged {escrow_open}")


def _buyer_side(legs: list[rules.Leg]) -> tuple[str, int]:
    """What a perk's buyer paid (or a refund gave back), and on which ledger: the coin or reward-coin legs from
    (to) a user account. A reward-paid perk's platform-funded diamonds leg is between system accounts."""
    user = rules.is_user_account
    paid = [leg for leg in legs if leg.ledger != "diamonds" and (user(leg.debit) or user(leg.credit))]
    return ("+".join(sorted({leg.ledger for leg in paid})), sum(leg.amount for leg in paid))


def _perk_status(journal: _Journal, purchase: str) -> str | None:
    if purchase not in journal.perks:
        return None
    return "refunded" if journal.perk_refunds.get(purchase) else "settled"


def _check_perks(report: AuditReport, snapshot: _Journal, latest: _Journal, records: dict[str, str | None]) -> None:
    """Each perk (or ticket) is paid once and refunded at most once, in full; its record agrees with the journal
    (a rejected purchase moved nothing, a settled one is paid, a refunded one is paid and refunded)."""
    for purchase, refunds in latest.perk_refunds.items():
        if purchase not in latest.perks:
            report.findings.append(f"perk refund of {purchase}: no such perk in the journal")
        elif len(refunds) > 1:
            report.findings.append(f"perk {purchase}: refunded {len(refunds)} times")
        elif refunds[0] != latest.perks[purchase]:
            (back_ledger, back), (paid_ledger, paid) = refunds[0], latest.perks[purchase]
            report.findings.append(f"perk {purchase}: refunded {back} {back_ledger}, paid {paid} {paid_ledger}")
    for purchase, status in records.items():
        if status == "rejected":
            if purchase in latest.perks:
                report.findings.append(f"perk {purchase}: rejected, but the journal pays it")
            continue
        allowed = {_perk_status(snapshot, purchase), _perk_status(latest, purchase)}
        if status not in allowed:
            report.findings.append(f"perk {purchase}: record says {status}, journal says {sorted(map(str, allowed))}")
