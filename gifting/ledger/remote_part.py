"""The one-destination case of a cross-partition transfer, shared by sponsor.lua's and perk.lua's callers.

A sponsored gift, a perk and a ticket refund each move money in the payer's partition (the source) and touch at
most one other account: the creator's diamonds. rules.place_legs splits the legs; what falls in the creator's
partition travels as one credit line through the source partition's outbox (stage2 design: the script XADDs
it with its transfer, Ledger.apply_credits applies it once in the destination). When the creator shares the
source partition, everything is local and no credit is written.
"""

from __future__ import annotations

from dataclasses import dataclass

from gifting import keys
from gifting.ledger import rules


@dataclass(frozen=True, slots=True)
class Placed:
    """A transfer's legs as its source script takes them."""

    local_legs: str  # encoded legs of the source partition (its journal entry's legs)
    dest: str  # the creator's partition tag, '' when nothing is owed elsewhere
    credit: str  # the credit line for `dest` ('' with it)

    @property
    def remote(self) -> bool:
        return self.dest != ""


def place(
    legs: list[rules.Leg], source: str, creator_account: str, transfer_id: str, kind: str, row: str,
    earned: int, ts_ms: int, room: str = "", gift: str = "", count: int = 0,
) -> Placed:  # fmt: skip
    """Split `legs` between `source` and the creator's partition; the creator's part (legs, the statement row
    `row`, `earned` diamonds for the withdrawal hold: 0 for none) becomes one rules.Credit line."""
    placed = rules.place_legs(legs, source)
    dest = keys.part_of(creator_account)
    assert set(placed) <= {source, dest}, (placed, source, dest)  # only the creator's partition is touched
    local = rules.encode_legs(placed.get(source, []))
    if dest == source or not placed.get(dest):
        return Placed(local, "", "")
    credit = rules.Credit(
        id=rules.credit_id(transfer_id, source),
        kind=kind,
        legs=placed[dest],
        statement=[(creator_account, row)] if row else [],
        earned=(creator_account, earned) if earned > 0 else None,
        board=None,
        ts_ms=ts_ms,
        room=room,
        gift=gift,
        count=count,
    )
    return Placed(local, dest, credit.encode())
