"""The audit of sponsored-gift budgets (part of `gifting audit`, ledger/audit.py).

Checks, from the journal and the campaign records:
- a budget account (sys:campaign:<id>) is only moved by its fundings, grants, sponsored gifts and its return;
- a budget never goes below zero, at any point of the journal;
- every sponsored gift settled once (with the paid gifts' ids), with exactly the legs of the gift rules at the
  creator share stored with it placed in the campaign's partition, paid by the budget of the campaign it names;
- a campaign returns its budget at most once, and a closed campaign holds nothing;
- every budget coin is accounted for: funded = spent + returned + what the budget holds, and the campaign
  record's counters say the same as the journal.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from gifting import keys
from gifting.ledger import rules

BUDGET_KINDS = ("campaign_fund", "campaign_grant", "sponsored", "campaign_return")


@dataclass
class CampaignJournal:
    """What the audit learns of each campaign from one pass over the journal (campaign id -> coins)."""

    funded: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    spent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    returns: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))


def campaign_of(account: str) -> str | None:
    return (
        account.removeprefix(keys.CAMPAIGN_ACCOUNT_PREFIX) if account.startswith(keys.CAMPAIGN_ACCOUNT_PREFIX) else None
    )


def apply_entry(
    findings: list[str], journal: CampaignJournal, balances: dict[str, dict[str, int]], gift_ids: set[str],  # 'part/id'
    entry_id: str, fields: dict[str, str], legs: list[rules.Leg],
) -> None:  # fmt: skip
    """One journal entry whose legs were just applied to `balances`."""
    kind, entry = fields.get("kind", "?"), fields.get("id", "?")
    touched = {c for leg in legs for c in (campaign_of(leg.debit), campaign_of(leg.credit)) if c is not None}
    if touched and kind not in BUDGET_KINDS:
        findings.append(f"journal {entry_id} ({kind} {entry}): moves campaign budget {sorted(touched)}")
    for campaign in touched:
        if balances["coins"][keys.campaign_account(campaign)] < 0:
            findings.append(f"journal {entry_id} ({kind} {entry}): campaign {campaign} budget below zero")
    amount = sum(leg.amount for leg in legs if leg.ledger == "coins")
    if kind in ("campaign_fund", "campaign_grant"):
        journal.funded[fields.get("ref", "?")] += amount
    elif kind == "campaign_return":
        journal.returns[fields.get("ref", "?")].append(amount)
    elif kind == "sponsored":
        settled = entry_id.partition("/")[0] + "/" + entry  # unique in its partition, as audit.py's gifts
        if settled in gift_ids:
            findings.append(f"journal {entry_id}: gift {entry} settled more than once")
        gift_ids.add(settled)
        campaign = fields.get("campaign", "?")
        journal.spent[campaign] += amount
        _check_sponsored(findings, entry_id, fields, legs, campaign, amount)


def _check_sponsored(
    findings: list[str], entry_id: str, fields: dict[str, str], legs: list[rules.Leg], campaign: str, coins: int
) -> None:
    """A sponsored gift's legs must be exactly the campaign partition's part of rules.sponsored_gift_legs for its
    total and stored share (rules.place_legs: the creator's diamonds are an outbox credit when the creator lives
    in another partition; the cross-partition audit matches those)."""
    try:
        split = rules.split_gift(coins, int(fields.get("bps", "-1")))
    except (AssertionError, ValueError):
        findings.append(f"journal {entry_id} sponsored gift {fields.get('id')}: bad amount or bps")
        return
    creator = fields.get("creator") or next((leg.credit for leg in legs if leg.ledger == "diamonds"), "u:?")
    part = keys.campaign_part(campaign)
    expected = rules.place_legs(rules.sponsored_gift_legs(campaign, creator.removeprefix("u:"), split), part)
    if sorted(expected.get(part, []), key=repr) != sorted(legs, key=repr):
        findings.append(f"journal {entry_id} sponsored gift {fields.get('id')}: legs do not match the gift rules")


async def check(
    redis: aioredis.Redis, findings: list[str], totals: dict[str, int], snapshot: CampaignJournal,
    latest: CampaignJournal,
) -> None:  # fmt: skip
    """Budgets as of the snapshot (`totals`: coin balances), records against the snapshot's or the newest journal."""
    for account, balance in totals.items():
        campaign = campaign_of(account)
        if campaign is not None and balance < 0:
            findings.append(f"coins {account}: budget {balance} below zero")
    for campaign, returns in latest.returns.items():
        if len(returns) > 1:
            findings.append(f"campaign {campaign}: budget returned {len(returns)} times")
    for campaign in set(latest.funded) | set(latest.spent) | set(latest.returns):
        record = await redis.hmget(keys.campaign(campaign), "status", "funded", "spent", "returned")
        _check_record(findings, campaign, record, totals.get(keys.campaign_account(campaign), 0), snapshot, latest)


def _check_record(
    findings: list[str], campaign: str, record: list[Any], held: int, snapshot: CampaignJournal,
    latest: CampaignJournal,
) -> None:  # fmt: skip
    status, funded, spent, returned = record
    if status is None:
        findings.append(f"campaign {campaign}: in the journal but has no record")
        return
    flows = [
        (j.funded.get(campaign, 0), j.spent.get(campaign, 0), sum(j.returns.get(campaign, [])))
        for j in (snapshot, latest)
    ]
    if (int(funded), int(spent), int(returned)) not in flows:
        findings.append(
            f"campaign {campaign}: record says funded {funded} spent {spent} returned {returned}, journal says {flows}"
        )
    funded_then, spent_then, returned_then = flows[0]
    if funded_then != spent_then + returned_then + held:
        findings.append(
            f"campaign {campaign}: funded {funded_then} != spent {spent_then} + returned {returned_then} + held {held}"
        )
    if snapshot.returns.get(campaign) and held != 0:
        findings.append(f"campaign {campaign}: closed but its budget holds {held}")
