"""What an on-call person runs (`gifting dead-letters|replay|wallet|backlog|withdrawal`): each reads or changes
Valkey directly and is safe to run twice. Answers are JSON (one object), for reading and for scripts.

- replay moves a dead-letter entry back to the gifts stream in one atomic step (a second run finds nothing to
  move); settlement is idempotent by gift id, so a gift that did settle meanwhile is answered, not charged again.
- Every ledger partition has its own gift stream and dead letters (keys.py): dead-letters walks the partitions,
  naming each entry 'PARTITION/ID' (stream ids are per stream), which is what replay takes; backlog shows each
  stream kind summed, its longest partition and the partitions holding any (gifting/ledger/backlog.py).
- withdrawal post|void goes through the ledger's own exactly-once transfer; on a resolved withdrawal it answers
  what the withdrawal is instead of failing.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from gifting import clock, embedded_pg, keys
from gifting.config import Settings
from gifting.history.reader import ArchiveReader
from gifting.history.statements import Statements
from gifting.ledger import backlog as backlogs
from gifting.ledger import partitions
from gifting.ledger.store import Ledger, LedgerError

ENTRIES_MAX = 1000  # entries one dead-letters or replay run reads (run again for more)
STATEMENT_ROWS_MAX = 100  # the ledger's own page bound caps this too
DEAD_LETTER_FIELDS = ("entry_id", "error", "ts")  # what dead_letter() adds to the original entry

# Move one dead-letter entry (ARGV[1]) back to the gifts stream, without the fields dead_letter() added; one atomic
# step, so two replays of one entry move it once. 1: moved, 0: not there (replayed already, or never), -1: empty.
REPLAY_SCRIPT = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return 0 end
local fields, out = found[1][2], {}
for i = 1, #fields, 2 do
  if fields[i] ~= 'entry_id' and fields[i] ~= 'error' and fields[i] ~= 'ts' then
    out[#out + 1] = fields[i]
    out[#out + 1] = fields[i + 1]
  end
end
if #out == 0 then return -1 end
redis.call('XADD', KEYS[2], '*', unpack(out))
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
"""
REPLAY_STATUS = {1: "replayed", 0: "not_found", -1: "empty_entry"}


def add_commands(sub: Any) -> None:
    """The on-call subcommands of `gifting` (`sub`: the main parser's subparsers)."""
    dead = sub.add_parser("dead-letters", help="list the dead-letter stream (entries settlement gave up on)")
    dead.add_argument("--count", type=_count, default=20, help=f"entries, oldest first (at most {ENTRIES_MAX})")
    replay = sub.add_parser("replay", help="move dead-letter entries back to the gifts stream (idempotent by gift id)")
    replay.add_argument(
        "entry_ids", nargs="*", metavar="ENTRY_ID", help="dead-letter entries as 'PARTITION/ID' (see dead-letters)"
    )
    replay.add_argument("--all", action="store_true", help=f"the oldest entries, up to {ENTRIES_MAX}")
    wallet = sub.add_parser("wallet", help="a user's balances, pending withdrawals and newest statement rows")
    wallet.add_argument("user")
    wallet.add_argument(
        "--rows", type=int, default=20, help=f"statement rows, newest first (at most {STATEMENT_ROWS_MAX})"
    )
    sub.add_parser("backlog", help="stream backlogs, pending entries, consumers and worker heartbeats")
    withdrawal = sub.add_parser("withdrawal", help="show, post (paid) or void (diamonds back) a stuck withdrawal")
    withdrawal.add_argument("withdrawal_id")
    withdrawal.add_argument("action", nargs="?", choices=("show", "post", "void"), default="show")
    withdrawal.add_argument("--reason", default="voided_by_operator", help="recorded with a void")


COMMANDS = ("dead-letters", "replay", "wallet", "backlog", "withdrawal")


def _count(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= ENTRIES_MAX:
        raise argparse.ArgumentTypeError(f"expected 1..{ENTRIES_MAX}, got {value}")
    return value


async def run(redis: aioredis.Redis, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """The answer of one on-call command."""
    if args.command == "dead-letters":
        return await dead_letters(redis, args.count)
    if args.command == "replay":
        if not args.entry_ids and not args.all:
            raise ValueError("name the entries to replay (ENTRY_ID ...), or --all")
        return await replay(redis, args.entry_ids or None)
    if args.command == "wallet":
        return await wallet(redis, settings, args.user, args.rows)
    if args.command == "backlog":
        return await backlog(redis, settings)
    assert args.command == "withdrawal"
    return await withdrawal(redis, settings, args.withdrawal_id, args.action, args.reason)


async def dead_letters(redis: aioredis.Redis, count: int) -> dict[str, Any]:
    """The oldest `count` dead-letter entries of each partition, partitions in order, `count` in all: their id
    ('PARTITION/ID'), the original entry's id, the error and the gift."""
    lengths = await backlogs.stream_lengths(redis, keys.gifts_dead_letter)
    listed: list[dict[str, Any]] = []
    for part, length in lengths.items():
        if not length or len(listed) >= min(count, ENTRIES_MAX):
            continue
        entries = await redis.xrange(keys.gifts_dead_letter(part), count=min(count, ENTRIES_MAX) - len(listed))
        listed += [
            {
                "id": f"{part}/{entry_id}",
                "entry_id": fields.get("entry_id"),
                "error": fields.get("error"),
                "ts": int(fields["ts"]) if fields.get("ts", "").isdigit() else None,
                "fields": {k: v for k, v in fields.items() if k not in DEAD_LETTER_FIELDS},
            }
            for entry_id, fields in entries
        ]
    return {"stream": keys.gifts_dead_letter(backlogs.ALL), "total": sum(lengths.values()), "entries": listed}


async def replay(redis: aioredis.Redis, entry_ids: list[str] | None) -> dict[str, Any]:
    """Each entry ('PARTITION/ID'; None: the oldest ENTRIES_MAX) back to its partition's gifts stream, once. An id
    naming no partition answers `unknown_partition`."""
    if entry_ids is None:
        entry_ids = [entry["id"] for entry in (await dead_letters(redis, ENTRIES_MAX))["entries"]]
    script = redis.register_script(REPLAY_SCRIPT)
    outcomes = {}
    tags = set(partitions.all_tags())
    for named in entry_ids[:ENTRIES_MAX]:
        part, _, entry_id = named.rpartition("/")
        if part not in tags:
            outcomes[named] = "unknown_partition"
            continue
        moved = await script(keys=[keys.gifts_dead_letter(part), keys.gifts_stream(part)], args=[entry_id])
        outcomes[named] = REPLAY_STATUS[int(moved)]
    return {"replayed": sum(1 for s in outcomes.values() if s == "replayed"), "entries": outcomes}


async def wallet(redis: aioredis.Redis, settings: Settings, user: str, rows: int) -> dict[str, Any]:
    """Balances, withdrawals and the newest statement rows of `user`, as the ledger keeps them."""
    # Rows past GIFTING_STATEMENT_HOT_ROWS are in PostgreSQL: the configured one, or a running `gifting dev`'s.
    database_url = settings.database_url or embedded_pg.find_running(Path(settings.data_dir)) or ""
    ledger, history = Ledger(redis, settings), ArchiveReader(database_url) if database_url else None
    try:
        statement, _cursor = await Statements(redis, history).page(user, None, max(1, min(rows, STATEMENT_ROWS_MAX)))
    finally:
        if history is not None:
            await history.close()
    return {
        "user": user,
        **await ledger.wallet(user),
        "withdrawals": await ledger.withdrawals(user, 10),
        "statement": statement,
    }


async def backlog(redis: aioredis.Redis, settings: Settings) -> dict[str, Any]:
    """The gift streams (length, pending, lag, consumers: summed over the partitions, with the partitions holding
    any), the dead letters, journals (the archive backlog) and outboxes (credits in flight) per partition, and
    every worker's heartbeat."""
    now = clock.now_ms()
    lengths = await backlogs.snapshot(redis)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrange(keys.WORKER_HEARTBEATS, 0, -1, withscores=True)
        for part in partitions.all_tags():
            pipe.zcard(keys.withdrawals_pending(part))
        beats, *withdrawals = await pipe.execute()
    gifts = await _gift_groups(redis)
    fresh_ms = settings.heartbeat_ttl_s * 1000
    streams = {name: {"stream": stream_of(backlogs.ALL), **backlogs.by_partition(lengths[name])}
               for name, stream_of in backlogs.STREAMS}  # fmt: skip
    return {
        "gifts": {**streams["gifts"], **gifts},
        "dead_letters": streams["gifts:dead"],
        "journal": streams["journal"],
        "outbox": {**streams["outbox"], "oldest_age_ms": await backlogs.oldest_outbox_age_ms(redis, now)},
        "withdrawals_pending": sum(withdrawals),
        "workers": [
            {"consumer": name, "beat_ago_ms": now - int(ms), "alive": now - int(ms) <= fresh_ms} for name, ms in beats
        ],
    }


async def _gift_groups(redis: aioredis.Redis) -> dict[str, Any]:
    """The settlement group of every partition's gift stream: pending and lag summed, and each consumer's pending
    summed over the partitions it reads (its idle time: the least). A few calls per partition: an on-call
    command's price, bounded by GIFTING_LEDGER_PARTITIONS."""
    pending, lag, consumers = 0, 0, dict[str, dict[str, Any]]()
    for part in partitions.all_tags():
        stream = keys.gifts_stream(part)
        if not await redis.exists(stream):
            continue
        group = next((g for g in await redis.xinfo_groups(stream) if g["name"] == keys.SETTLEMENT_GROUP), None)
        if group is None:
            continue
        pending, lag = pending + int(group.get("pending") or 0), lag + int(group.get("lag") or 0)
        for c in await redis.xinfo_consumers(stream, keys.SETTLEMENT_GROUP):
            seen = consumers.setdefault(c["name"], {"name": c["name"], "pending": 0, "idle_ms": c["idle"]})
            seen["pending"] += c["pending"]
            seen["idle_ms"] = min(seen["idle_ms"], c["idle"])
    return {"pending": pending, "lag": lag, "consumers": list(consumers.values())}


async def withdrawal(
    redis: aioredis.Redis, settings: Settings, withdrawal_id: str, action: str, reason: str
) -> dict[str, Any]:
    """Show, post or void a withdrawal. On one already resolved (by the payout run, or an earlier run of this
    command), nothing moves and the answer says what it is."""
    ledger = Ledger(redis, settings)
    before = await ledger.withdrawal(withdrawal_id)
    if before is None:
        raise LookupError(f"no withdrawal {withdrawal_id!r}")
    if action == "show":
        return {"withdrawal": before}
    try:
        after = await ledger.resolve_withdrawal(withdrawal_id, action, reason if action == "void" else "")
    except LedgerError as exc:
        current = await ledger.withdrawal(withdrawal_id)
        return {"changed": False, "message": exc.message, "withdrawal": current}
    return {"changed": True, "withdrawal": after}
