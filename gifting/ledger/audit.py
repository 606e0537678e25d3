"""`gifting audit`: recompute every balance from the journal and check the ledger's invariants.

Checks: each ledger sums to zero; stored balances equal the journal's; no user balance below zero; every
journal entry parses and every gift has all its legs at the creator share stored with it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from gifting import keys
from gifting.ledger import rules

CHUNK_ENTRIES = 5000  # journal entries read per XRANGE


@dataclass
class AuditReport:
    entries: int = 0
    kinds: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    totals: dict[str, dict[str, int]] = field(default_factory=dict)  # ledger -> account -> balance
    findings: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def summary(self) -> str:
        lines = [f"journal entries: {self.entries} ({', '.join(f'{k}={v}' for k, v in sorted(self.kinds.items()))})"]
        for ledger, balances in sorted(self.totals.items()):
            users = sum(v for a, v in balances.items() if rules.is_user_account(a))
            system = {a: v for a, v in balances.items() if not rules.is_user_account(a)}
            lines.append(
                f"{ledger}: sum={sum(balances.values())} users={users} accounts={len(balances)} "
                + " ".join(f"{a}={v}" for a, v in sorted(system.items()))
            )
        lines.append("findings: none" if self.clean else f"findings: {len(self.findings)}")
        lines.extend(f"  FINDING {f}" for f in self.findings)
        return "\n".join(lines)


async def run_audit(redis: aioredis.Redis, progress: Callable[[int], None] | None = None) -> AuditReport:
    report = AuditReport()
    computed: dict[str, dict[str, int]] = {ledger: defaultdict(int) for ledger in rules.LEDGERS}
    start = "-"
    while True:
        chunk = await redis.xrange(keys.LEDGER_JOURNAL, min=start, max="+", count=CHUNK_ENTRIES)
        for entry_id, fields in chunk:
            report.entries += 1
            _apply_entry(report, computed, entry_id, fields)
        if len(chunk) < CHUNK_ENTRIES:
            break
        start = "(" + chunk[-1][0]
        if progress:
            progress(report.entries)

    for ledger, hash_key in keys.LEDGER_LEDGERS:
        stored = {a: int(v) for a, v in (await redis.hgetall(hash_key)).items()}
        expected = computed[ledger]
        report.totals[ledger] = stored
        if (total := sum(stored.values())) != 0:
            report.findings.append(f"{ledger}: stored balances sum to {total}, expected 0")
        for account in sorted(set(stored) | set(expected)):
            have, want = stored.get(account, 0), expected.get(account, 0)
            if have != want:
                report.findings.append(f"{ledger} {account}: stored balance {have}, journal says {want}")
            if rules.is_user_account(account) and have < 0:
                report.findings.append(f"{ledger} {account}: balance {have} below zero")
    return report


def _apply_entry(
    report: AuditReport, computed: dict[str, dict[str, int]], entry_id: str, fields: dict[str, str]
) -> None:
    kind = fields.get("kind", "?")
    report.kinds[kind] += 1
    try:
        legs = rules.parse_legs(fields.get("legs", ""))
    except rules.JournalError as exc:
        report.findings.append(f"journal {entry_id} ({kind} {fields.get('id')}): {exc}")
        return
    for leg in legs:
        computed[leg.ledger][leg.debit] -= leg.amount
        computed[leg.ledger][leg.credit] += leg.amount
    if kind == "gift":
        _check_gift(report, entry_id, fields, legs)


def _check_gift(report: AuditReport, entry_id: str, fields: dict[str, str], legs: list[rules.Leg]) -> None:
    """A gift's legs must be exactly what rules.gift_legs gives for its total and stored share."""
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
    creator = next((leg.credit for leg in legs if leg.ledger == "diamonds"), None)
    viewer = coin_legs[0].debit.removeprefix("u:")
    expected = rules.gift_legs(viewer, creator.removeprefix("u:") if creator else "?", split)
    if sorted(expected, key=repr) != sorted(legs, key=repr):
        report.findings.append(f"journal {entry_id} gift {fields.get('id')}: legs do not match the gift rules")
