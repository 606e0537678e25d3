"""The audit across ledger partitions (docs/SCALING.md "Stage 2"): what crosses partitions through the outboxes.

A transfer decided in one partition (its source) applies that partition's legs there and appends what it owes
accounts of other partitions to the source's outbox, as credit lines (rules.Credit); each destination applies a
credit once by id (ledger/credit.lua: a `credits` journal row each), then the outbox entry is deleted. Legs
between accounts of two partitions go through sys:transit (rules.place_legs), and a gift's diamonds, issued in
the creator's partition, travel as a credit too. So every transfer, summed over its source entry and its
credits, puts nothing in sys:transit and earns its creator exactly the coins it routed to sys:creator_earnings.

Checks (each finding names its partition(s)):
- no credit id is applied twice, and each is applied in the partition its outbox line names;
- every transfer that owes other partitions something (a non-zero `_owed` vector: coins into sys:transit,
  diamonds not yet issued for its creator earnings) has credits, applied or still in an outbox, that settle it
  exactly: none lost, none for another amount; and every credit belongs to such a transfer;
- sys:transit summed over the partitions equals the transit legs of the credits in flight (outbox lines not yet
  applied), per ledger. That sum is read partition by partition, so it is only exact as a cut when nothing was
  written meanwhile: checked when the journals did not move while the audit read them, reported skipped
  otherwise (the per-transfer matching above is exact either way).

Race-freedom of the matching: each partition's outbox is read in the same transaction as its journal's end,
so a source entry up to that end either still has its outbox line there, or its outbox entry was deleted
after its credit was applied, which the later scan of every journal (up to the newest entry) sees.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from gifting import keys
from gifting.ledger import partitions, rules

OUTBOX_ENTRIES_MAX = 10_000  # outbox entries read per partition (healthy: a few batches awaiting their credit)
SUFFIX_SEPARATORS = ":#/."  # a credit id is its transfer's id, or that id with a suffix after one of these
NAMED_MAX = 20  # findings of one kind named one by one; the rest are counted


# (ledger, debit or credit side, account) -> (what it owes, sign): the legs that leave something owed elsewhere.
_OWING = {
    ("coins", "credit", keys.SYS_CREATOR_EARNINGS): ("diamonds", 1),
    ("coins", "debit", keys.SYS_CREATOR_EARNINGS): ("diamonds", -1),
    ("diamonds", "debit", keys.SYS_DIAMOND_ISSUANCE): ("diamonds", -1),
    ("diamonds", "credit", keys.SYS_DIAMOND_ISSUANCE): ("diamonds", 1),
}


def owed(legs: list[rules.Leg]) -> Counter[str]:
    """What legs leave owed to other partitions: per ledger, what they put into sys:transit ('transit:<ledger>'),
    and the creator earnings not yet issued as diamonds ('diamonds'). A whole transfer sums to nothing."""
    vector: dict[str, int] = {}  # a plain dict while summing: the audit builds one per journal row
    for leg in legs:
        for side, account, sign in (("credit", leg.credit, 1), ("debit", leg.debit, -1)):
            if account == keys.SYS_TRANSIT:
                what = "transit:" + leg.ledger
                vector[what] = vector.get(what, 0) + sign * leg.amount
            elif (owing := _OWING.get((leg.ledger, side, account))) is not None:
                vector[owing[0]] = vector.get(owing[0], 0) + owing[1] * leg.amount
    return nonzero(vector)


def nonzero(vector: Mapping[str, int]) -> Counter[str]:
    """The vector without its zero entries (Counter's own +/- would drop the negative ones too)."""
    return Counter({what: amount for what, amount in vector.items() if amount})


@dataclass
class CrossJournal:
    """What the journal scan learns for the cross-partition checks."""

    # transfer id -> (source partition, what its source entry owes others), for transfers owing something
    sources: dict[str, tuple[str, Counter[str]]] = field(default_factory=dict)
    # credit id -> [(partition applied in, journal entry, its vector)], one per `credits` row
    applied: dict[str, list[tuple[str, str, Counter[str]]]] = field(default_factory=lambda: defaultdict(list))

    def __deepcopy__(self, memo: dict[int, Any]) -> CrossJournal:
        """A copy for the audit's second scan: only the source vectors are ever changed in place (a third of the
        audit's time went to copying this generically)."""
        copied = CrossJournal()
        copied.sources = {t: (part, vector.copy()) for t, (part, vector) in self.sources.items()}
        copied.applied.update((credit, list(rows)) for credit, rows in self.applied.items())
        return copied

    def source(self, part: str, transfer: str, legs: list[rules.Leg]) -> None:
        vector = owed(legs)
        if vector:
            _, total = self.sources.setdefault(transfer, (part, Counter()))
            total.update(vector)

    def credit(self, part: str, entry_id: str, credit: str, legs: list[rules.Leg]) -> None:
        self.applied[credit].append((part, entry_id, owed(legs)))


@dataclass(frozen=True)
class OutboxLine:
    source: str  # the partition whose outbox holds it
    entry_id: str
    dest: str
    credit: rules.Credit


def outbox_lines(
    findings: list[str], part: str, entries: list[tuple[str, dict[str, str]]]
) -> list[OutboxLine]:  # fmt: skip
    """The credit lines of one partition's outbox entries; an entry that does not decode, or names a destination
    that is no partition (or its own), is a finding."""
    tags = set(partitions.all_tags())
    lines: list[OutboxLine] = []
    for entry_id, fields in entries:
        try:
            credits = rules.outbox_credits(fields)
        except (ValueError, rules.JournalError) as exc:
            findings.append(f"outbox {part} {entry_id}: does not decode ({exc})")
            continue
        for dest, owed_there in credits.items():
            if dest not in tags or dest == part:
                findings.append(f"outbox {part} {entry_id}: credits partition {dest!r}, not another partition")
                continue
            lines += [OutboxLine(part, entry_id, dest, c) for c in owed_there]
    return lines


def check(
    findings: list[str],
    snapshot: CrossJournal,
    latest: CrossJournal,
    lines: list[OutboxLine],
    transit: dict[str, Counter[str]] | None,
    partial: Container[str] = (),
) -> None:
    """`snapshot`: the journals up to each partition's snapshot (when its outbox was read); `latest`: up to the
    newest entries, read after. `transit`: each partition's stored sys:transit per ledger at its snapshot, or
    None when the journals moved while the audit read them (the sum is then no cut). `partial`: partitions whose
    outbox was read only up to OUTBOX_ENTRIES_MAX: their transfers' credits are not judged."""
    named: list[str] = []
    for credit, rows in latest.applied.items():
        if len(rows) > 1:
            where = ", ".join(f"{part} (journal {entry})" for part, entry, _ in rows)
            named.append(f"credit {credit}: applied {len(rows)} times, in {where}")
    for line in lines:
        rows = latest.applied.get(line.credit.id, [])
        elsewhere = sorted({part for part, _, _ in rows} - {line.dest})
        if elsewhere:
            named.append(
                f"credit {line.credit.id} (outbox {line.source} {line.entry_id}): owed to {line.dest}, "
                f"applied in {', '.join(elsewhere)}"
            )
    named += _match_transfers(snapshot, latest, lines, partial)
    findings += _bounded(named)
    if transit is not None:
        findings += _transit_findings(latest, lines, transit)


def _match_transfers(
    snapshot: CrossJournal, latest: CrossJournal, lines: list[OutboxLine], partial: Container[str]
) -> list[str]:
    """Every owing transfer settled exactly by its credits (each counted once, applied or in flight), and every
    credit belonging to an owing transfer."""
    credits: dict[str, tuple[str, Counter[str]]] = {}  # credit id -> (where: applied in / in flight, vector)
    for line in lines:
        credits[line.credit.id] = (f"in flight from {line.source} to {line.dest}", owed(line.credit.legs))
    for credit, rows in latest.applied.items():
        part, _, vector = rows[0]
        credits[credit] = (f"applied in {part}", vector)
    by_transfer: dict[str, list[str]] = defaultdict(list)
    named: list[str] = []
    # A credit seen by the snapshots (applied by its destination's, or in flight at its source's) has its source
    # entry in `latest`, which was read after every snapshot; a credit applied later may come from a source entry
    # written after the scan of its partition: not judged.
    judged = set(snapshot.applied) | {line.credit.id for line in lines}
    for credit, (where, vector) in credits.items():
        if not vector:
            continue  # moves nothing across (e.g. a pledge returned from escrow): other checks cover it
        transfer = transfer_of(credit, latest.sources)
        if transfer is not None:
            by_transfer[transfer].append(credit)
        elif credit in judged:
            named.append(f"credit {credit} ({where}): no transfer of any partition owes it")
    for transfer, (part, vector) in snapshot.sources.items():
        if part in partial:
            continue
        got: Counter[str] = Counter()
        for credit in by_transfer.get(transfer, []):
            got.update(credits[credit][1])
        left = Counter(vector)
        left.update(got)
        if not nonzero(left):
            continue
        if not by_transfer.get(transfer):
            named.append(
                f"transfer {transfer} (in {part}): owes {_show(vector)} to other partitions, and no credit of it "
                "is applied or in an outbox (lost)"
            )
        else:
            shown = "; ".join(f"{c} {credits[c][0]}" for c in sorted(by_transfer[transfer]))
            named.append(
                f"transfer {transfer} (in {part}): owes {_show(vector)} to other partitions, its credits "
                f"({shown}) settle {_show(Counter({w: -a for w, a in got.items()}))}"
            )
    return named


def transfer_of(credit: str, sources: Container[str]) -> str | None:
    """The transfer a credit id belongs to: the id itself, or the id with suffixes dropped (rules.Credit: one
    transfer crediting several accounts of one partition suffixes its ids)."""
    candidate = credit
    for _ in range(len(credit)):
        if candidate in sources:
            return candidate
        cut = max(candidate.rfind(sep) for sep in SUFFIX_SEPARATORS)
        if cut <= 0:
            return None
        candidate = candidate[:cut]
    return None


def _transit_findings(latest: CrossJournal, lines: list[OutboxLine], transit: dict[str, Counter[str]]) -> list[str]:
    held: Counter[str] = Counter()
    for by_ledger in transit.values():
        held.update(by_ledger)
    in_flight: Counter[str] = Counter()
    for line in lines:
        if line.credit.id not in latest.applied:
            for leg in line.credit.legs:
                if leg.debit == keys.SYS_TRANSIT:
                    in_flight[leg.ledger] += leg.amount
    findings = []
    for ledger in sorted(set(held) | set(in_flight)):
        if held[ledger] != in_flight[ledger]:
            parts = " ".join(
                f"{p}={transit[p][ledger]}" for p in partitions.all_tags() if p in transit and transit[p][ledger]
            )
            findings.append(
                f"{ledger} {keys.SYS_TRANSIT}: the partitions hold {held[ledger]} ({parts or 'none'}), the credits "
                f"in flight carry {in_flight[ledger]}"
            )
    return findings


def _show(vector: Counter[str]) -> str:
    return ", ".join(f"{amount} {what}" for what, amount in sorted(vector.items()) if amount) or "nothing"


def _bounded(findings: list[str]) -> list[str]:
    if len(findings) <= NAMED_MAX:
        return findings
    return [*findings[:NAMED_MAX], f"partitions: {len(findings) - NAMED_MAX} more cross-partition findings"]
