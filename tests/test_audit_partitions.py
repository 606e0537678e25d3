"""The audit across ledger partitions: clean on consistent cross-partition transfers (applied or in flight), and a
finding naming the partition(s) for each cross-partition defect, planted by hand in each partition's keys."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gifting import keys
from gifting.ledger import audit_partitions, partitions, rules
from gifting.ledger.audit import run_audit
from gifting.ledger.rules import Credit, Leg
from tests.conftest import System
from tests.test_audit import run_cli_audit

pytestmark = pytest.mark.cluster  # on a standalone Valkey and on a Valkey Cluster (tests/conftest.py)

TS_MS = 1_700_000_000_000


def users_in_distinct_partitions(n: int) -> list[str]:
    """`n` user ids whose accounts live in `n` different partitions."""
    found: dict[str, str] = {}
    names: Iterator[str] = (f"user{i}" for i in count())
    while len(found) < n:
        user = next(names)
        found.setdefault(keys.part_of_user(user), user)
    return list(found.values())


def by_partition(item: tuple[str, int]) -> int:
    return partitions.all_tags().index(item[0])


async def plant(redis: aioredis.Redis, part: str, fields: dict[str, str], legs: list[Leg]) -> str:
    """Write a journal entry in `part` and move its stored balances exactly as `legs` say."""
    for leg in legs:
        balances = dict(keys.ledgers(part))[leg.ledger]
        await redis.hincrby(balances, leg.debit, -leg.amount)
        await redis.hincrby(balances, leg.credit, leg.amount)
    entry_id: str = await redis.xadd(keys.journal(part), fields)
    return entry_id


async def grant(redis: aioredis.Redis, user: str, transfer: str, coins: int) -> None:
    """Coins granted to `user` (a purchase without a record: the audit knows 'grant:' ids have none)."""
    legs = rules.purchase_legs(user, coins)
    await plant(redis, keys.part_of_user(user), {"kind": "purchase", "id": "grant:" + transfer,
                                                 "legs": rules.encode_legs(legs)}, legs)  # fmt: skip


async def pay_gift(redis: aioredis.Redis, viewer: str, creator: str, gift: str, coins: int = 100) -> Credit:
    """The source step of a gift at 50 %: the viewer's coins in its partition; returns the creator's credit."""
    await grant(redis, viewer, gift, coins)
    legs = rules.gift_legs(viewer, creator, rules.split_gift(coins, 5000))
    placed = rules.place_legs(legs, keys.part_of_user(viewer))
    mine = placed[keys.part_of_user(viewer)]
    await plant(redis, keys.part_of_user(viewer), {"kind": "gift", "id": gift, "legs": rules.encode_legs(mine),
                                                  "bps": "5000"}, mine)  # fmt: skip
    return Credit(id=gift, kind="gift_received", legs=placed[keys.part_of_user(creator)], ts_ms=TS_MS)


async def pay_transfer(redis: aioredis.Redis, payer: str, payee: str, transfer: str, coins: int) -> Credit:
    """The source step of a plain coin transfer between two partitions: payer -> sys:transit in the payer's."""
    part = keys.part_of_user(payer)
    await grant(redis, payer, transfer, coins)
    placed = rules.place_legs([Leg("coins", keys.account(payer), keys.account(payee), coins)], part)
    await plant(
        redis, part, {"kind": "transfer", "id": transfer, "legs": rules.encode_legs(placed[part])}, placed[part]
    )
    return Credit(id=transfer, kind="transfer_in", legs=placed[keys.part_of_user(payee)], ts_ms=TS_MS)


async def in_flight(redis: aioredis.Redis, source: str, *credits: Credit) -> str:
    """An outbox entry of `source` holding `credits` (by their destination partitions)."""
    by_dest: dict[str, list[Credit]] = {}
    for credit in credits:
        by_dest.setdefault(keys.part_of(next(a for leg in credit.legs for a in (leg.debit, leg.credit)
                                             if not partitions.is_shared(a))), []).append(credit)  # fmt: skip
    fields = rules.outbox_fields(by_dest)
    entry_id: str = await redis.xadd(keys.outbox(source), dict(zip(fields[::2], fields[1::2], strict=True)))
    return entry_id


async def apply(redis: aioredis.Redis, dest: str, *credits: Credit) -> str:
    """What credit.lua does in `dest`: the credits' legs and one `credits` journal entry with a row each."""
    legs = [leg for credit in credits for leg in credit.legs]
    rows = "\n".join(credit.journal_row() for credit in credits)
    return await plant(redis, dest, {"kind": "credits", "rows": rows, "ts": str(TS_MS)}, legs)


async def test_cross_partition_transfers_applied_or_in_flight_are_clean(redis: aioredis.Redis) -> None:
    """Gifts and transit transfers across partitions, some credited, some still in an outbox, audit clean, with
    sys:transit over the partitions equal to what the outboxes carry."""
    viewer, creator, payee = users_in_distinct_partitions(3)
    source = keys.part_of_user(viewer)
    credited = await pay_gift(redis, viewer, creator, "g-applied")
    await apply(redis, keys.part_of_user(creator), credited)
    await in_flight(redis, source, await pay_gift(redis, viewer, creator, "g-flying"))
    sent = await pay_transfer(redis, viewer, payee, "t-applied", 30)
    await in_flight(redis, source, sent)  # applied, its outbox entry not yet deleted: counted once
    await apply(redis, keys.part_of_user(payee), sent)
    await in_flight(redis, source, await pay_transfer(redis, viewer, payee, "t-flying", 20))
    report = await run_audit(redis)
    assert report.clean, report.summary()
    assert report.totals["coins"][keys.SYS_TRANSIT] == 20
    assert report.totals["diamonds"][keys.account(creator)] == 50
    assert report.kinds["credit"] == 2


async def test_a_credit_applied_twice_is_named_with_its_partitions(redis: aioredis.Redis) -> None:
    """The same credit id in two `credits` rows (a replay that escaped its records) names both entries."""
    viewer, creator = users_in_distinct_partitions(2)
    credit = await pay_gift(redis, viewer, creator, "g-twice")
    dest = keys.part_of_user(creator)
    first = await apply(redis, dest, credit)
    second = await apply(redis, dest, credit)
    report = await run_audit(redis)
    assert report.findings == [
        f"credit g-twice: applied 2 times, in {dest} (journal {dest}/{first}), {dest} (journal {dest}/{second})"
    ], report.summary()


async def test_an_outbox_credit_lost_is_named_with_its_source_partition(redis: aioredis.Redis) -> None:
    """A gift whose outbox line was dropped before its credit was applied: the creator's diamonds are owed by the
    gift's partition and found nowhere."""
    viewer, creator = users_in_distinct_partitions(2)
    await pay_gift(redis, viewer, creator, "g-lost")
    report = await run_audit(redis)
    source = keys.part_of_user(viewer)
    assert report.findings == [
        f"transfer g-lost (in {source}): owes 50 diamonds to other partitions, and no credit of it is applied or "
        "in an outbox (lost)"
    ], report.summary()


async def test_transit_not_balancing_is_named_per_partition(redis: aioredis.Redis) -> None:
    """A transit credit applied for less than its source sent: the transfer and the sys:transit sum (with the
    partitions holding it) are both findings."""
    payer, payee = users_in_distinct_partitions(2)
    source, dest = keys.part_of_user(payer), keys.part_of_user(payee)
    sent = await pay_transfer(redis, payer, payee, "t-short", 30)
    short = Credit(id=sent.id, kind=sent.kind, legs=[Leg("coins", keys.SYS_TRANSIT, keys.account(payee), 20)],
                   ts_ms=TS_MS)  # fmt: skip
    await apply(redis, dest, short)
    report = await run_audit(redis)
    held = " ".join(f"{p}={v}" for p, v in sorted({source: 30, dest: -20}.items(), key=by_partition))
    assert report.findings == [
        f"transfer t-short (in {source}): owes 30 transit:coins to other partitions, its credits "
        f"(t-short applied in {dest}) settle 20 transit:coins",
        f"coins {keys.SYS_TRANSIT}: the partitions hold 10 ({held}), the credits in flight carry 0",
    ], report.summary()


async def test_a_lost_transit_credit_is_named_twice(redis: aioredis.Redis) -> None:
    """Coins sent to sys:transit with no credit anywhere: named by transfer and in the transit sum."""
    payer, payee = users_in_distinct_partitions(2)
    source = keys.part_of_user(payer)
    await pay_transfer(redis, payer, payee, "t-lost", 30)
    report = await run_audit(redis)
    assert report.findings == [
        f"transfer t-lost (in {source}): owes 30 transit:coins to other partitions, and no credit of it is applied "
        "or in an outbox (lost)",
        f"coins {keys.SYS_TRANSIT}: the partitions hold 30 ({source}=30), the credits in flight carry 0",
    ], report.summary()


async def test_a_credit_no_transfer_owes_and_one_applied_in_the_wrong_partition_are_named(
    redis: aioredis.Redis,
) -> None:
    """A credit applied in a partition other than the one its outbox line names (moving an account that partition
    does not hold), and a credit no source entry owes, are findings naming the partitions."""
    viewer, creator, other = users_in_distinct_partitions(3)
    source, dest, wrong = (keys.part_of_user(u) for u in (viewer, creator, other))
    credit = await pay_gift(redis, viewer, creator, "g-astray")
    outbox_entry = await in_flight(redis, source, credit)
    await apply(redis, wrong, credit)
    stray = Credit(id="g-nobody", kind="gift_received",
                   legs=[Leg("diamonds", keys.SYS_DIAMOND_ISSUANCE, keys.account(other), 7)], ts_ms=TS_MS)  # fmt: skip
    await apply(redis, wrong, stray)
    report = await run_audit(redis)
    assert f"credit g-astray (outbox {source} {outbox_entry}): owed to {dest}, applied in {wrong}" in report.findings
    assert f"credit g-nobody (applied in {wrong}): no transfer of any partition owes it" in report.findings
    assert any(f.endswith(f"(gift_received g-astray): moves u:{creator}, of other partitions") for f in report.findings)
    assert len(report.findings) == 3, report.summary()


async def test_an_outbox_entry_naming_no_partition_is_a_finding(redis: aioredis.Redis) -> None:
    """An outbox entry whose field is not another partition's tag is named with its own partition."""
    viewer, creator = users_in_distinct_partitions(2)
    source = keys.part_of_user(viewer)
    credit = await pay_gift(redis, viewer, creator, "g-nowhere")
    entry_id = await redis.xadd(keys.outbox(source), {"{ledger:nowhere}": credit.encode()})
    report = await run_audit(redis)
    assert f"outbox {source} {entry_id}: credits partition '{{ledger:nowhere}}', not another partition" in (
        report.findings
    ), report.summary()


async def test_an_outbox_longer_than_the_audit_reads_is_a_note_not_lost_credits(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past OUTBOX_ENTRIES_MAX entries in one outbox the audit says it read part of it and judges none of that
    partition's transfers (their credits may be in the entries it did not read)."""
    monkeypatch.setattr(audit_partitions, "OUTBOX_ENTRIES_MAX", 1)
    viewer, creator = users_in_distinct_partitions(2)
    source = keys.part_of_user(viewer)
    for gift in ("g-first", "g-second"):
        await in_flight(redis, source, await pay_gift(redis, viewer, creator, gift))
    report = await run_audit(redis)
    assert report.clean, report.summary()
    assert f"outbox {source}: read its oldest 1 entries only: its transfers not judged" in report.notes


async def test_a_tampered_balance_names_its_partition(redis: aioredis.Redis) -> None:
    """Each partition's balances are checked against its own journal: a finding starts with the partition's tag."""
    viewer, creator = users_in_distinct_partitions(2)
    await apply(redis, keys.part_of_user(creator), await pay_gift(redis, viewer, creator, "g-ok"))
    part = keys.part_of_user(viewer)
    await redis.hincrby(keys.coins(part), keys.account(viewer), 5)
    report = await run_audit(redis)
    assert report.findings == [
        f"{part} coins: stored balances sum to 5, expected 0",
        f"{part} coins u:{viewer}: stored balance 5, journal says 0",
    ], report.summary()


async def test_cli_audit_names_the_partition_of_a_finding(
    redis: aioredis.Redis, valkey_url: str, tmp_path: Path
) -> None:
    """`gifting audit` prints each finding with its partition and exits 1."""
    viewer, creator = users_in_distinct_partitions(2)
    await pay_gift(redis, viewer, creator, "g-cli")
    code, output = await run_cli_audit(valkey_url, tmp_path)
    assert code == 1, output
    assert f"FINDING transfer g-cli (in {keys.part_of_user(viewer)}): owes 50 diamonds" in output
    assert f"partitions: {partitions.count()}" in output


LIVE_VIEWERS = 6
LIVE_GIFTS = 8  # per viewer
LIVE_AUDITS = 6


async def test_audits_while_gifts_cross_partitions_find_nothing(system: System) -> None:
    """Audits racing a live storm of gifts between viewers and creators of other partitions (source steps,
    credits, outbox deletes between the audit's reads) report nothing; once quiet, the transit sum is checked."""
    viewers = users_in_distinct_partitions(LIVE_VIEWERS + 2)
    creators, viewers = viewers[:2], viewers[2:]
    rooms = [await system.open_room(creator) for creator in creators]
    for viewer in viewers:
        await system.grant(viewer, 1000)
    clients = [await system.connect(viewer) for viewer in viewers]

    async def send(i: int) -> None:
        for n in range(LIVE_GIFTS):
            gid = await clients[i].gift(rooms[(i + n) % 2], "rose", 1 + n % 3)
            assert (await clients[i].result(gid))["status"] == "settled"

    senders = asyncio.gather(*(send(i) for i in range(LIVE_VIEWERS)))
    try:
        for _ in range(LIVE_AUDITS):
            report = await run_audit(system.redis)
            assert report.clean, report.summary()
    finally:
        await senders
    for _ in range(100):  # the last credits land one round trip after their gifts are announced
        report = await run_audit(system.redis)
        outboxes = [await system.redis.xlen(keys.outbox(p)) for p in partitions.all_tags()]
        if not report.notes and not any(outboxes):
            break
        await asyncio.sleep(0.05)
    assert report.clean and not report.notes, report.summary()
    assert report.kinds["gift"] == LIVE_VIEWERS * LIVE_GIFTS
    assert report.totals["coins"][keys.SYS_TRANSIT] == 0
