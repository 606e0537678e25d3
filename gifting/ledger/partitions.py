"""Ledger partitions: which hash tag holds an account's money (pure; docs/SCALING.md "Stage 2").

The ledger is split into GIFTING_LEDGER_PARTITIONS partitions, each its own hash tag, so a cluster spreads them
over its primaries and every ledger script touches one partition (one slot). An account lives in exactly one
partition, chosen by a stable hash of its name; system accounts (sys:coin_issuance, ...) exist once per
partition, so every transfer whose legs all name accounts of one partition balances inside it. The layout is the
same on a standalone server, so an installation moves to a cluster (or back) with Valkey's own tools.

Tags are chosen so partition p's slot lies in the p-th of `count` equal slot ranges: a cluster whose primaries
own equal contiguous slot ranges (what `valkey-cli --cluster create` and `gifting dev --cluster` make) gets an
equal share of partitions on each primary, and moving slots moves whole partitions.

The count is fixed per installation (`ledger:partitions` in Valkey; gifting/valkey.py refuses a process whose
setting disagrees), so it is process-wide state here, set once from the settings at start (`configure`).
"""

from __future__ import annotations

import functools
import zlib

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

PARTITIONS_DEFAULT = 16
PARTITIONS_MAX = 1024
PARTITIONS_KEY = "ledger:partitions"  # the installation's count (untagged: read alone, once per process)

_count = PARTITIONS_DEFAULT


def configure(count: int) -> None:
    """Use `count` partitions in this process (from GIFTING_LEDGER_PARTITIONS)."""
    global _count
    if not 1 <= count <= PARTITIONS_MAX:
        raise ValueError(f"ledger partitions: expected 1..{PARTITIONS_MAX}, got {count}")
    _count = count


def count() -> int:
    return _count


def of_account(account: str) -> int:
    """The partition holding `account` (u:<user> or a system account such as sys:campaign:<id>). CRC-32, not
    Python's hash(): the same in every process and release."""
    return zlib.crc32(account.encode()) % _count


def tag(partition: int) -> str:
    """The hash tag of a partition, e.g. '{ledger:3.41}'."""
    return _tags(_count)[partition]


def tag_of(account: str) -> str:
    return tag(of_account(account))


def all_tags() -> tuple[str, ...]:
    return _tags(_count)


@functools.cache
def _tags(n: int) -> tuple[str, ...]:
    """'{ledger:p.k}' with the smallest k whose slot falls in the p-th of n equal slot ranges (about n tries)."""
    tags = []
    for p in range(n):
        low, high = p * REDIS_CLUSTER_HASH_SLOTS // n, (p + 1) * REDIS_CLUSTER_HASH_SLOTS // n
        k = 0
        while not low <= key_slot(f"ledger:{p}.{k}".encode()) < high:
            k += 1
        tags.append(f"{{ledger:{p}.{k}}}")
    return tuple(tags)


# System accounts every partition has its own row of (its share). Every other account (u:<user>,
# sys:campaign:<id>, sys:rewards_budget) is placed in one partition by of_account.
SHARED_ACCOUNTS = frozenset(
    {
        "sys:coin_issuance",
        "sys:platform_revenue",
        "sys:creator_earnings",
        "sys:diamond_issuance",
        "sys:payout_clearing",
        "sys:diamonds_paid_out",
        "sys:pool_escrow",
        "sys:rewards_issuance",
        "sys:rewards_spent",
        "sys:transit",
    }
)


def is_shared(account: str) -> bool:
    return account in SHARED_ACCOUNTS
