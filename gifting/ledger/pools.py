"""Pooled gifts on ledger partitions: the calls of pool.lua (the pool's partition) and pledge.lua (the
pledger's), built from ledger/rules.py (docs/SCALING.md "Pooled gifts").

A pool lives in its room's creator's partition (rules.pool_part reads it from the pool id). A pledge is three
single-partition steps, each idempotent by the user-scoped pledge id:
  1. debit (pledger's partition): spend cap, balance, coins -> sys:transit, record 'debited', indexed in flight;
  2. land (pool's partition): transit -> escrow if the pool takes it (may complete the pool), else refused;
  3. finish (pledger's partition): record accepted, or refused and the coins back from transit.
A crash between steps leaves the record 'debited' in flight: a resend of the pledge, or the redrive
(workers/pool_sweep.py, GIFTING_PLEDGE_REDRIVE_MS), runs 2 and 3 again, and step 2 answers what it decided.
So a pledge is accepted or refunded exactly once, whatever crashes.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from gifting import keys
from gifting.clock import hour_number, now_ms, utc_day
from gifting.ledger import audit_partitions, rules

if TYPE_CHECKING:
    from gifting.ledger.store import Ledger

log = logging.getLogger(__name__)
POOL_ATTEMPTS_MAX = 20  # retries of a pool operation whose pool changed between its read and its script
REDRIVE_BATCH_MAX = 100  # in-flight pledges pushed again per partition and run

PoolResult = tuple[str, str, int, bool, dict[str, Any] | None]  # status, reason, balance, replay, pool


@dataclass(frozen=True, slots=True)
class PoolRead:
    """The fields of a pool record that pool.lua's caller builds legs and rows from (None: absent)."""

    room: str | None
    starter: str | None
    creator: str | None
    price: str | None
    pledged: str | None
    bps: str | None
    gift: str | None
    contributors: str | None
    status: str | None
    deadline_ms: str | None


async def read_pool(ledger: Ledger, part: str, pool_id: str) -> PoolRead:
    return PoolRead(*await ledger.redis.hmget(keys.pool(part, pool_id), *PoolRead.__slots__))


def pool_index_keys(part: str, room: str, starter: str) -> list[str]:
    """pool.lua's KEYS 7..9: the room's open pools, the opener's open pools, the room's end marker."""
    return [keys.room_pools(part, room), keys.opener_pools(part, starter), keys.room_ended(part, room)]


def _decode(reply: list[Any]) -> PoolResult:
    status, reason, balance, replay, pool = reply[:5]
    return status, reason, int(balance), bool(int(replay)), (orjson.loads(pool) if pool else None)


# Opening ---------------------------------------------------------------------------------------------------


async def pool_open(ledger: Ledger, room: str, starter: str, record: dict[str, Any]) -> tuple[str, Any]:
    """Open a pool unless its room ended or a cap is reached, atomically in the pool's partition. The opener's
    coins are read in their own partition first (a gate against empty wallets; it moves no money)."""
    s, pool_id = ledger.settings, record["id"]
    part = rules.pool_part(pool_id)
    assert part is not None, pool_id
    held = int(await ledger.redis.hget(keys.coins(keys.part_of_user(starter)), keys.account(starter)) or 0)
    keys_ = [keys.coins(part), keys.diamonds(part), keys.journal(part), keys.pool(part, pool_id)]
    keys_ += [keys.pools_open(part), keys.pool(part, pool_id), *pool_index_keys(part, room, starter)]
    args: list[Any] = ["open", now_ms(), pool_id, s.pools_per_room_max, s.pools_per_user_max]
    args += ["1" if held >= s.pool_open_coins_min else "0", *(x for pair in record.items() for x in pair)]
    _status, reason, _balance, _replay, pool = _decode(await ledger._pool(keys=keys_, args=args))
    return reason, pool


# Pledges ---------------------------------------------------------------------------------------------------


def precheck(read: PoolRead, user: str, coins: int, now: int) -> str:
    """A reject reason the pool as read already decides (each is final: a pool only fills and closes), so the
    common refusal moves no coin at all; '' when only the pool's partition can tell (pool.lua 'land')."""
    if read.status is None:
        return "unknown_pool"
    if read.status != "open":
        return {"completed": "pool_completed", "expired": "pool_expired"}.get(read.status, f"pool_{read.status}")
    if now >= int(read.deadline_ms or 0):
        return "pool_expired"
    if read.creator == user:
        return "self_gift"
    if coins > int(read.price or 0) - int(read.pledged or 0):
        return "pledge_exceeds_remaining"
    return ""


async def pledge(
    ledger: Ledger, pool_id: str, pledge_id: str, user: str, coins: int, name: str, reject: str = ""
) -> PoolResult:
    """A pledge, all three steps. A resend gets the recorded outcome, or finishes a pledge left in flight.
    `reject`: a reason decided by the caller (archive_backlog), recorded like the scripts' own."""
    part, sid, now = rules.pool_part(pool_id), keys.user_scoped_id(user, pledge_id), now_ms()
    read = await read_pool(ledger, part, pool_id) if part else None
    reject = reject or (precheck(read, user, coins, now) if read else "unknown_pool")
    status, reason, balance, replay = await _debit(ledger, pool_id, sid, user, coins, name, reject, now)
    view: dict[str, Any] | None = None
    if status == "debited":
        assert part is not None
        status, reason, balance, view = await _land_and_finish(ledger, part, pool_id, sid)
    elif part is not None and read is not None and read.status is not None:
        view = await _snapshot(ledger, part, pool_id)
    await ledger.committed()
    return status, reason, balance, replay, view


async def _debit(
    ledger: Ledger, pool_id: str, sid: str, user: str, coins: int, name: str, reject: str, now: int
) -> tuple[str, str, int, bool]:
    """Step 1, in the pledger's partition (pledge.lua 'debit')."""
    s, p, account = ledger.settings, keys.part_of_user(user), keys.account(user)
    keys_ = [keys.coins(p), keys.journal(p), keys.pledge_record(p, sid), keys.pledges_in_flight(p)]
    keys_ += [keys.spend_limits(p), keys.spent_on(p, utc_day(now)), keys.account_statement(account)]
    row = rules.statement_row(now, "pledge", "coins", -coins, keys.SYS_POOL_ESCROW, pool_id)
    args: list[Any] = ["debit", now, sid, account, coins, rules.fingerprint(pool_id, user, coins), pool_id]
    args += [s.rejected_gift_ttl_s, s.daily_spend_coins_max, rules.SPENT_DAY_TTL_S]
    args += [rules.encode_legs(rules.pledge_debit_legs(user, coins)), row, reject, name]
    status, reason, balance, replay = await ledger._pledge(keys=keys_, args=args)
    return status, reason, int(balance), bool(int(replay))


async def _land_and_finish(ledger: Ledger, part: str, pool_id: str, sid: str) -> tuple[str, str, int, Any]:
    """Steps 2 and 3 of a pledge recorded 'debited' (by its first call, a resend or the redrive)."""
    user = keys.scoped_user(sid)
    p = keys.part_of_user(user)
    coins_, name, debited_ms = await ledger.redis.hmget(keys.pledge_record(p, sid), "coins", "name", "debited_ms")
    coins = int(coins_ or 0)
    landed, reason, view = await _land(ledger, part, pool_id, sid, user, coins, name or user)
    answer = "accepted" if landed == "accepted" else reason
    now = now_ms()
    keys_ = [keys.coins(p), keys.journal(p), keys.pledge_record(p, sid), keys.pledges_in_flight(p)]
    keys_ += [keys.spent_on(p, utc_day(int(debited_ms or now))), keys.account_statement(keys.account(user))]
    row = rules.statement_row(now, "pledge_refunded", "coins", coins, keys.SYS_POOL_ESCROW, pool_id)
    args: list[Any] = ["finish", now, sid, answer, rules.encode_legs(rules.pledge_refund_legs(user, coins)), row]
    args.append(ledger.settings.idempotency_ttl_s)
    status, reason, balance, _replay = await ledger._pledge(keys=keys_, args=args)
    return status, reason, int(balance), view


async def _land(
    ledger: Ledger, part: str, pool_id: str, sid: str, user: str, coins: int, name: str
) -> tuple[str, str, dict[str, Any] | None]:
    """Step 2, in the pool's partition (pool.lua 'land'), built from the pool as read; again while stale."""
    for _attempt in range(POOL_ATTEMPTS_MAX):
        read = await read_pool(ledger, part, pool_id)
        keys_, args = _land_call(ledger, part, pool_id, read, sid, user, coins, name)
        status, reason, _balance, _replay, pool = _decode(await ledger._pool(keys=keys_, args=args))
        if status != "stale":
            return status, reason, pool
    raise ledger_busy(pool_id)


def ledger_busy(pool_id: str) -> Exception:
    from gifting.ledger.store import LedgerError  # store imports this module

    return LedgerError("busy", f"pool {pool_id} changed concurrently too often; retry")


def _land_call(
    ledger: Ledger, part: str, pool_id: str, read: PoolRead, sid: str, user: str, coins: int, name: str
) -> tuple[list[str], list[Any]]:
    s, now = ledger.settings, now_ms()
    pool_key = keys.pool(part, pool_id)
    keys_ = [keys.coins(part), keys.diamonds(part), keys.journal(part), pool_key, keys.pools_open(part)]
    keys_ += [keys.pledge_landing(part, sid), *pool_index_keys(part, read.room or "", read.starter or "")]
    creator = keys.account(read.creator) if read.creator else ""
    if creator:
        keys_ += [keys.account_statement(creator), keys.account_earned(creator)]
        keys_ += [*keys.account_top_boards(creator, now), keys.pools_closed(part)]
    else:  # no such pool: pool.lua refuses before touching these, but each key must be in the pool's slot
        keys_ += [pool_key] * 6
    args: list[Any] = ["land", now, sid, keys.account(user), coins, name, s.idempotency_ttl_s, hour_number(now)]
    args += [user, read.contributors or "", s.pool_record_ttl_s, creator]
    args += [rules.encode_legs(rules.pledge_landing_legs(coins)), *_completion(read, pool_id, user, coins, now)]
    return keys_, args


def _completion(read: PoolRead, pool_id: str, user: str, coins: int, now: int) -> list[Any]:
    """pool.lua 'land' ARGV 14..19: what completing the pool writes, if this pledge completes it as read."""
    if read.price is None or int(read.price) - int(read.pledged or 0) != coins:
        return ["", "", 0, "", rules.TOP_DAY_TTL_S, rules.TOP_WEEK_TTL_S]
    creator, price = read.creator or "", int(read.price)
    split = rules.split_gift(price, int(read.bps or 0))
    legs = rules.encode_legs(rules.pool_completion_legs(creator, split))
    row = rules.statement_row(now, "gift_received", "diamonds", split.diamonds, "pool", pool_id, read.gift or "", "1")
    gifters: dict[str, int] = {keys.account(user): coins}
    for c in orjson.loads(read.contributors or "[]"):
        gifters[keys.account(c["user"])] = gifters.get(keys.account(c["user"]), 0) + int(c["coins"])
    by_gifter = "|".join(f"{account} {amount}" for account, amount in gifters.items())
    return [legs, row, split.diamonds, by_gifter, rules.TOP_DAY_TTL_S, rules.TOP_WEEK_TTL_S]


async def _snapshot(ledger: Ledger, part: str, pool_id: str) -> dict[str, Any] | None:
    raw = await ledger.redis.hgetall(keys.pool(part, pool_id))
    if not raw:
        return None
    return {**raw, "contributors": orjson.loads(raw.get("contributors") or "[]")}


async def redrive_pledges(ledger: Ledger, part: str, older_than_ms: int, count: int = REDRIVE_BATCH_MAX) -> int:
    """Steps 2 and 3 again for the partition's pledges debited more than `older_than_ms` ago and still in
    flight (their caller died between steps). Returns how many; raises on errors (the caller retries)."""
    due = await ledger.redis.zrangebyscore(
        keys.pledges_in_flight(part), "-inf", now_ms() - older_than_ms, start=0, num=count
    )
    for sid in due:
        pool_id = await ledger.redis.hget(keys.pledge_record(part, sid), "pool")
        pool_part = rules.pool_part(pool_id or "")
        if pool_part is None:  # cannot be: step 1 records only pledges to a pool id of a partition
            log.error("pledge %s: in flight to %r, no pool partition; left for an operator", sid, pool_id)
            continue
        status, reason, _balance, _view = await _land_and_finish(ledger, pool_part, pool_id or "", sid)
        log.info("pledge %s to pool %s: redriven, %s %s", sid, pool_id, status, reason)
    if due:
        await ledger.committed()
    return len(due)


async def in_flight_lines(
    redis: Any, part: str, pledges: list[str], sources: dict[str, tuple[str, Counter[str]]]
) -> list[audit_partitions.OutboxLine]:
    """For the audit: the partition's pledges in flight at its snapshot, each as a credit in flight to its pool's
    partition (its coins in sys:transit), unless the journals as read already settle it (it landed in the pool's
    partition before that one's snapshot: its debit and landing sum to nothing)."""
    lines = []
    for sid in pledges:
        if not audit_partitions.nonzero(sources.get(sid, (part, Counter()))[1]):
            continue
        pool_id, coins = await redis.hmget(keys.pledge_record(part, sid), "pool", "coins")
        dest = rules.pool_part(pool_id or "") or part
        credit = rules.Credit(sid, "pledge_landing", rules.pledge_landing_legs(int(coins or 0)), 0)
        lines.append(audit_partitions.OutboxLine(part, "pledge", dest, credit))
    return lines


# A pool's end ----------------------------------------------------------------------------------------------


async def pool_end(ledger: Ledger, op: str, pool_id: str) -> PoolResult:
    """Expire, cancel or void an open pool (pool.lua): every pledge goes back, to contributors of other
    partitions through sys:transit and the partition's outbox, applied right after (Ledger.apply_credits; a
    crash leaves it to the outbox redrive)."""
    assert op in ("expire", "cancel", "void"), op
    part = rules.pool_part(pool_id)
    if part is None:
        return "noop", "", 0, False, None
    for _attempt in range(POOL_ATTEMPTS_MAX):
        read = await read_pool(ledger, part, pool_id)
        keys_, args = _end_call(ledger, op, part, pool_id, read)
        reply = await ledger._pool(keys=keys_, args=args)
        if reply[0] != "stale":
            if reply[5]:
                await ledger.apply_credits(part, [reply[5]])
            await ledger.committed()
            return _decode(reply)
    raise ledger_busy(pool_id)


def _end_call(ledger: Ledger, op: str, part: str, pool_id: str, read: PoolRead) -> tuple[list[str], list[Any]]:
    """pool.lua's KEYS and ARGV for the end of the pool as `read`."""
    now = now_ms()
    keys_ = [keys.coins(part), keys.diamonds(part), keys.journal(part), keys.pool(part, pool_id)]
    keys_ += [keys.pools_open(part), keys.pools_closed(part)]
    keys_ += [*pool_index_keys(part, read.room or "", read.starter or ""), keys.outbox(part)]
    local_legs: list[rules.Leg] = []
    local_rows: list[str] = []
    credits: dict[str, list[rules.Credit]] = {}
    for c in orjson.loads(read.contributors or "[]"):
        user, coins = c["user"], int(c["coins"])
        row = rules.statement_row(now, "pledge_returned", "coins", coins, keys.SYS_POOL_ESCROW, pool_id)
        placed = rules.pledge_return_placed(user, coins, part)
        local_legs += placed[part]
        user_part = keys.part_of_user(user)
        if user_part == part:
            keys_.append(keys.statement(user))
            local_rows.append(row)
            continue
        credit = rules.Credit(
            id=f"{pool_id}:{user}", kind="pledge_returned", legs=placed[user_part], ts_ms=now,
            statement=[(keys.account(user), row)], room=read.room or "", gift=read.gift or "",
        )  # fmt: skip
        credits.setdefault(user_part, []).append(credit)
    args: list[Any] = [op, now, ledger.settings.pool_record_ttl_s, read.contributors or ""]
    args += [rules.encode_legs(local_legs), len(local_rows), *local_rows, *rules.outbox_fields(credits)]
    return keys_, args
