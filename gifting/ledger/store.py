"""The ledger's Redis adapter: runs the Lua scripts and reads balances. Rules live in rules.py."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError, WatchError

from gifting import keys, valkey
from gifting.clock import hour_number, now_ms, utc_day
from gifting.config import ConfigError, Settings
from gifting.errors import GiftingError
from gifting.ledger import partitions, pools, rules

if TYPE_CHECKING:
    from gifting.history.reader import ArchiveReader

log = logging.getLogger(__name__)
SPEND_LIMIT_ATTEMPTS_MAX = 20  # optimistic retries of a spend limit change (WATCH on the shared limits hash)
# Set inside Ledger.group_commit(): the partitions the task wrote to, each waited for once when the block ends
# (None: not in a block). Per task (a context variable), because one Ledger serves every request of a web process.
_GROUP_COMMIT: ContextVar[set[str | None] | None] = ContextVar("ledger_group_commit", default=None)


def count_store_error(component: str) -> None:
    """gifting_store_errors_total{component}. metrics is imported here, not at the top: the CLI imports this
    module (through gifting/ops.py) before it sets each process's Prometheus directory, which must come first."""
    from gifting import metrics

    metrics.store_errors.labels(component=component).inc()


def load_script(name: str) -> str:
    return resources.files("gifting").joinpath(f"ledger/{name}").read_text()


def load_script_with(name: str, *rules: str) -> str:
    """A script with the shared rules it uses (spend_cap.lua, top_gifters.lua, legs.lua) in front of it."""
    return "\n".join([*map(load_script, rules), load_script(name)])


@dataclass(frozen=True, slots=True)
class GiftToSettle:
    """One gift as the worker hands it to settle.lua: amounts already computed by rules.split_gift."""

    gift_id: str
    viewer: str
    creator: str
    coins: int
    diamonds: int
    fingerprint: str
    reject: str  # a reason decided before the ledger (room not live, ...), or ""
    room: str
    gift: str
    count: int
    host: str = ""  # the room's creator; `creator` differs when the gift went to a guest on stage

    def __post_init__(self) -> None:
        if not self.host:
            object.__setattr__(self, "host", self.creator)


def settle_arg(g: GiftToSettle, now: int, part: str) -> tuple[str, str, str]:
    """One gift as settle.lua takes it in the viewer's partition `part`: fields separated by US (0x1f); and the
    creator's partition and credit line when that is another partition (else ''). The journal row and statement
    rows it writes if it settles the gift are built here, not in Lua: the Valkey thread is the scarce core."""
    viewer, creator = keys.account(g.viewer), keys.account(g.creator)
    row = viewer_row = creator_row = reward_row = reward_viewer_row = dest = credit = ""
    if not g.reject:
        split = rules.GiftSplit(g.coins, g.diamonds, g.coins - g.diamonds)
        creator_part = keys.part_of(creator)
        here = creator_part == part
        row = rules.gift_journal_row(g.gift_id, g.viewer, g.creator, split, g.room, g.gift, g.count, here)
        viewer_row = rules.statement_row(now, "gift_sent", "coins", -g.coins, creator, g.gift_id, g.gift, str(g.count))
        # The same gift paid with reward coins (settle.lua picks: rules.pays_with_rewards).
        reward_row = rules.reward_gift_journal_row(g.gift_id, g.viewer, g.creator, split, g.room, g.gift, g.count, here)
        # The same row on the rewards ledger (statement_row's layout: ts, kind, ledger, ...).
        reward_viewer_row = viewer_row.replace("\tcoins\t", "\trewards\t", 1)
        if g.diamonds > 0:
            creator_row = rules.statement_row(
                now, "gift_received", "diamonds", g.diamonds, viewer, g.gift_id, g.gift, str(g.count)
            )
        if not here:  # the creator's side is owed to their partition (the same however the gift is paid)
            dest = creator_part
            credit = rules.gift_credit_line(
                g.gift_id, creator, viewer, split, now, creator_row, g.room, g.gift, g.count, part
            )
    fields = (g.gift_id, viewer, creator, str(g.coins), str(g.diamonds), g.fingerprint, g.reject, row, viewer_row)
    return "\x1f".join((*fields, creator_row, reward_row, reward_viewer_row, dest, credit)), dest, credit


def settled_credits(credits: list[tuple[str, str]], outcomes: list[rules.GiftOutcome | None]) -> dict[str, str]:
    """The outbox entry settle.lua wrote for one call, rebuilt from what it was given: the credit lines of the
    call's newly settled gifts (each gift id once), by destination partition. Applying it from here saves
    reading it back."""
    fields: dict[str, list[str]] = {}
    seen: set[str] = set()
    for (dest, credit), outcome in zip(credits, outcomes, strict=True):
        if dest and outcome is not None and outcome.settled and not outcome.replay and outcome.gift_id not in seen:
            seen.add(outcome.gift_id)
            fields.setdefault(dest, []).append(credit)
    return {dest: "\n".join(lines) for dest, lines in fields.items()}


class DurabilityError(RuntimeError):
    """Valkey did not confirm the AOF fsync in time: nothing may be announced yet."""


class LedgerError(GiftingError):
    """A ledger operation was refused; `code` goes on the wire (HTTP status: gifting/web/http.py), nothing moved."""


class Ledger:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.archive: ArchiveReader | None = None  # the history database, for records past their hot window
        self.settle_script = redis.register_script(load_script_with("settle.lua", "spend_cap.lua", "top_gifters.lua"))
        self._purchase = redis.register_script(load_script_with("purchase.lua", "legs.lua"))
        self._reverse = redis.register_script(load_script_with("reverse.lua", "legs.lua"))
        self._withdraw = redis.register_script(load_script_with("withdraw.lua", "legs.lua"))
        self._pledge = redis.register_script(load_script_with("pledge.lua", "spend_cap.lua", "legs.lua"))
        pool_rules = ("spend_cap.lua", "top_gifters.lua", "legs.lua")
        self._pool = redis.register_script(load_script_with("pool.lua", *pool_rules))
        self.credit_script = redis.register_script(load_script_with("credit.lua", "legs.lua", "top_gifters.lua"))
        self.waitaof_supported: bool | None = None  # learned on first use

    # Gifts -------------------------------------------------------------------------------------------------

    async def settle(self, gifts: list[GiftToSettle], durable_timeout_ms: int | None = None) -> list[rules.GiftOutcome]:
        """Settle a batch: one atomic Lua call per viewers' partition, all in one round trip; resends get their
        stored outcome (replay=True). Then the creators' credits in other partitions (apply_credits: best
        effort, a failure leaves them in the outbox for the redrive, never fails the batch).

        With `durable_timeout_ms`, the group commit (WAITAOF on each partition's node) goes in the same round
        trip, and the credits are applied only once the debits are durable.
        """
        if not gifts:
            return []
        by_part: dict[str, list[int]] = {}
        for i, g in enumerate(gifts):
            by_part.setdefault(keys.part_of_user(g.viewer), []).append(i)
        now = now_ms()
        calls = {part: self._settle_call([gifts[i] for i in idx], part, now) for part, idx in by_part.items()}
        wait = durable_timeout_ms is not None and self.waitaof_supported is not False
        for attempt in range(2):
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys_, args, _credits in calls.values():
                    valkey.queue_evalsha(pipe, self.settle_script.sha, keys_, args)
                if wait:  # on each partition's node, right after its writes (a cluster: per node)
                    await self._queue_waitaof(pipe, list(calls), durable_timeout_ms or 0)
                replies = await pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in replies[: len(calls)]):  # a restart
                await self.redis.script_load(self.settle_script.script)
                continue
            break
        for reply in replies[: len(calls)]:
            if isinstance(reply, Exception):
                raise reply
        if wait:
            self._check_waits(replies[len(calls) :], durable_timeout_ms or 0)
        elif durable_timeout_ms is not None:
            for part in calls:
                await self.durable(durable_timeout_ms, part)
        outcomes: list[rules.GiftOutcome | None] = [None] * len(gifts)
        owed: dict[str, dict[str, dict[str, str]]] = {}  # source partition -> outbox entry id -> its fields
        for (part, idx), reply in zip(by_part.items(), replies[: len(calls)], strict=True):
            *lines, outbox_id = reply.split("\n")
            assert len(lines) == len(idx), "settle.lua returns one line per gift, then the outbox id"
            for i, line in zip(idx, lines, strict=True):
                status, reason, coins, replay, spent = line.split("|")
                outcomes[i] = rules.GiftOutcome(gifts[i].gift_id, status, reason, int(coins), replay == "1", int(spent))
            if outbox_id:
                owed[part] = {outbox_id: settled_credits(calls[part][2], [outcomes[i] for i in idx])}
        if owed:
            try:
                await self._apply_entries_of(owed)
            except (ConnectionError, TimeoutError, ResponseError, OSError, DurabilityError) as exc:
                log.warning("credits of %d outbox entries left for redrive: %r", len(owed), exc)
                count_store_error("credits")
        return [o for o in outcomes if o is not None]

    def _settle_call(
        self, gifts: list[GiftToSettle], part: str, now: int
    ) -> tuple[list[str], list[Any], list[tuple[str, str]]]:
        """settle.lua's keys and arguments for the gifts of viewers of one partition, and each gift's (destination
        partition, credit line) ('' when its creator is in `part`)."""
        s = self.settings
        buckets, expire_at = rules.record_buckets(now // 1000, s.idempotency_ttl_s)
        rejected_buckets, rejected_expire_at = rules.record_buckets(now // 1000, s.rejected_gift_ttl_s)
        built = [settle_arg(g, now, part) for g in gifts]
        # Creators credited in this call: of gifts not refused before the ledger (a refused one names no creator
        # of consequence, maybe '?') and in this partition.
        local_creators = [
            keys.account(g.creator) for g, (_a, dest, _c) in zip(gifts, built, strict=True) if not dest and not g.reject
        ]
        accounts = list(dict.fromkeys(keys.account(g.viewer) for g in gifts)) + list(dict.fromkeys(local_creators))
        accounts = list(dict.fromkeys(accounts))
        creators = list(dict.fromkeys(local_creators))
        keys_ = [keys.coins(part), keys.diamonds(part), keys.journal(part), keys.spend_limits(part)]
        keys_ += [keys.spent_on(part, utc_day(now)), keys.lifetime_spent(part), keys.rewards(part), keys.outbox(part)]
        keys_ += [keys.gift_records(part, b) for b in buckets]
        keys_ += [keys.rejected_gift_records(part, b) for b in rejected_buckets]
        keys_ += map(keys.account_statement, accounts)
        for creator in creators:
            keys_ += [keys.account_earned(creator), *keys.account_top_boards(creator, now)]
        args: list[Any] = [now, s.creator_share_bps, s.daily_spend_coins_max, hour_number(now), expire_at]
        args += [rules.SPENT_DAY_TTL_S, len(buckets), len(rejected_buckets), rejected_expire_at]
        args += [rules.TOP_DAY_TTL_S, rules.TOP_WEEK_TTL_S, len(gifts), len(accounts), len(creators)]
        args += [
            keys.SYS_PLATFORM_REVENUE,
            keys.SYS_CREATOR_EARNINGS,
            keys.SYS_DIAMOND_ISSUANCE,
            keys.SYS_REWARDS_SPENT,
        ]
        args += [arg for arg, _dest, _credit in built]
        args += accounts + creators
        return keys_, args, [(dest, credit) for _arg, dest, credit in built]

    async def gift_outcomes(self, gift_ids: list[str]) -> dict[str, rules.GiftOutcome]:
        """The stored outcome of each gift id that was decided (settled within GIFTING_IDEMPOTENCY_TTL_S, rejected
        within GIFTING_REJECTED_GIFT_TTL_S), looked up in every partition (the caller knows ids, not payers)."""
        now_s = now_ms() // 1000
        buckets, _ = rules.record_buckets(now_s, self.settings.idempotency_ttl_s)
        rejected_buckets, _ = rules.record_buckets(now_s, self.settings.rejected_gift_ttl_s)
        per_part = len(buckets) + len(rejected_buckets)
        async with self.redis.pipeline(transaction=False) as pipe:  # every partition in one round trip
            for part in partitions.all_tags():
                for key in [keys.gift_records(part, b) for b in buckets]:
                    pipe.hmget(key, gift_ids)
                for key in [keys.rejected_gift_records(part, b) for b in rejected_buckets]:
                    pipe.hmget(key, gift_ids)
            found = await pipe.execute()
        outcomes: dict[str, rules.GiftOutcome] = {}
        for first in range(0, len(found), per_part):
            # An id is recorded once per partition; a settled record wins over a stale rejection.
            for records in reversed(found[first : first + per_part]):
                for gift_id, record in zip(gift_ids, records, strict=True):
                    if record is not None:
                        outcomes[gift_id] = rules.parse_gift_record(gift_id, record, replay=True)
        return outcomes

    # Credits across partitions (docs/SCALING.md "Stage 2") -------------------------------------------------

    async def apply_credits(self, source_part: str, outbox_ids: list[str]) -> bool:
        """Apply the credits of these outbox entries of `source_part` in their destination partitions, wait until
        they are durable there, then delete the entries. Idempotent (credit.lua applies each id once). Best
        effort: on any error the entries stay and the partition's worker applies them again later
        (redrive_outbox); returns whether all were applied."""
        ids = [i for i in outbox_ids if i]
        if not ids:
            return True
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for entry_id in ids:
                    pipe.xrange(keys.outbox(source_part), entry_id, entry_id)
                found = await pipe.execute()
            entries = {r[0][0]: r[0][1] for r in found if r}
            await self._apply_entries(source_part, entries)
        except (ConnectionError, TimeoutError, ResponseError, OSError, DurabilityError) as exc:
            log.warning("credits of %d outbox entries of %s left for redrive: %r", len(ids), source_part, exc)
            count_store_error("credits")
            return False
        return True

    async def redrive_outbox(self, source_part: str, older_than_ms: int, count: int = 100) -> int:
        """Apply the outbox entries of `source_part` written more than `older_than_ms` ago (their writer died
        or failed before applying them). Returns entries applied; raises on errors (the caller retries)."""
        newest = max(now_ms() - older_than_ms, 0)
        found = await self.redis.xrange(keys.outbox(source_part), "-", newest, count=count)
        if found:
            await self._apply_entries(source_part, dict(found))
        return len(found)

    async def _apply_entries(self, source_part: str, entries: dict[str, dict[str, str]]) -> None:
        await self._apply_entries_of({source_part: entries})

    async def _apply_entries_of(self, sources: dict[str, dict[str, dict[str, str]]]) -> None:
        """Outbox entries of any source partitions (source -> entry id -> fields): credit.lua once per
        destination partition for all of them (one pipeline, then WAITAOF on each destination's node), then XDEL
        of the entries: an entry is gone only once every credit of it is durable."""
        sources = {source: entries for source, entries in sources.items() if entries}
        if not sources:
            return
        by_part: dict[str, list[rules.Credit]] = {}
        for entries in sources.values():
            for fields in entries.values():
                for part, owed in rules.outbox_credits(fields).items():
                    by_part.setdefault(part, []).extend(owed)
        now = now_ms()
        if by_part:
            timeout_ms = self.settings.waitaof_timeout_ms
            wait = self.waitaof_supported is not False
            calls = [self._credit_call(part, owed, now) for part, owed in by_part.items()]
            for attempt in range(2):  # by sha, as settle.lua: a cluster pipeline would send EVAL with the text
                async with self.redis.pipeline(transaction=False) as pipe:
                    for keys_, args in calls:
                        valkey.queue_evalsha(pipe, self.credit_script.sha, keys_, args)
                    if wait:
                        await self._queue_waitaof(pipe, list(by_part), timeout_ms)
                    replies = await pipe.execute(raise_on_error=False)
                if attempt == 0 and any(isinstance(r, NoScriptError) for r in replies[: len(calls)]):
                    await self.redis.script_load(self.credit_script.script)  # a node restarted: on every primary
                    continue
                break
            for reply in replies[: len(by_part)]:
                if isinstance(reply, Exception):
                    raise reply
            self._check_waits(replies[len(by_part) :], timeout_ms)
        async with self.redis.pipeline(transaction=False) as pipe:
            for source, entries in sources.items():
                pipe.xdel(keys.outbox(source), *entries)
            await pipe.execute()

    async def _queue_waitaof(self, pipe: Any, parts: list[str], timeout_ms: int) -> None:
        """Per node holding any of `parts`: a probe write, then WAITAOF, queued after the pipeline's writes (so on
        that node's connection right after them). The probe is why a replay is safe: WAITAOF waits only for its
        connection's own writes, and a replayed script writes nothing, while the write it replays may have gone
        through another connection and not be fsynced yet; the probe is later than it in the node's AOF.
        Their replies go to _check_waits."""
        waitaof = ("WAITAOF", 1, self.settings.durable_replicas, timeout_ms)
        nodes: dict[str, tuple[str, dict[str, Any]]] = {}
        for part in parts:
            target = await valkey.on_node_of(self.redis, keys.durable_probe(part))
            nodes.setdefault(target["target_nodes"].name if target else "", (part, target))
        for part, target in nodes.values():
            pipe.incr(keys.durable_probe(part))
            pipe.execute_command(*waitaof, **target)

    def _check_waits(self, replies: list[Any], timeout_ms: int) -> None:
        """The replies of _queue_waitaof's (probe, WAITAOF) pairs: raises unless every node confirmed."""
        for probe in replies[0::2]:
            if isinstance(probe, Exception):
                raise probe  # not written, so the wait would cover nothing: not confirmed
        for reply in replies[1::2]:
            self._check_waitaof(reply, timeout_ms)

    def _credit_call(self, part: str, owed: list[rules.Credit], now: int) -> tuple[list[str], list[Any]]:
        """credit.lua's keys and arguments for `owed` (all in `part`)."""
        s = self.settings
        buckets, expire_at = rules.record_buckets(now // 1000, s.idempotency_ttl_s)
        keys_ = [keys.coins(part), keys.diamonds(part), keys.rewards(part), keys.journal(part)]
        keys_ += [keys.credit_records(part, b) for b in buckets]
        index: dict[str, int] = {}

        def key_index(key: str) -> int:  # 1-based, as Lua's KEYS
            if key not in index:
                keys_.append(key)
                index[key] = len(keys_)
            return index[key]

        args: list[Any] = [now, len(buckets), expire_at, rules.TOP_DAY_TTL_S, rules.TOP_WEEK_TTL_S]
        for c in owed:
            stmts = rules.GS.join(f"{key_index(keys.account_statement(a))}{rules.RS}{row}" for a, row in c.statement)
            earned = ""
            if c.earned:
                earned = f"{key_index(keys.account_earned(c.earned[0]))} {hour_number(c.ts_ms)} {c.earned[1]}"
            board = ""
            if c.board:
                boards = keys.account_top_boards(c.board[0], c.ts_ms)
                board = " ".join([*(str(key_index(k)) for k in boards), c.board[1], str(c.board[2])])
            args.append(rules.US.join((c.id, rules.encode_legs(c.legs), c.journal_row(), stmts, earned, board)))
        return keys_, args

    async def committed(self, part: str | None = None) -> None:
        """Every write method ends here: its changes are fsynced (GIFTING_WAITAOF_TIMEOUT_MS) before it returns,
        so no caller can announce or answer what Valkey could still lose. `part`: the ledger partition the write
        went to (its node is the one to wait on); None: every partition. Inside group_commit() the wait is once
        per partition, at the end of the block."""
        pending = _GROUP_COMMIT.get()
        if pending is not None:
            pending.add(part)
        else:
            await self.durable(self.settings.waitaof_timeout_ms, part)

    @contextlib.asynccontextmanager
    async def group_commit(self) -> AsyncIterator[None]:
        """Several writes, one durability wait per node written (a partition of each) when the block ends without an
        error (WAITAOF covers every write before it on its node). Raises DurabilityError like each write would."""
        pending: set[str | None] = set()
        token = _GROUP_COMMIT.set(pending)
        try:
            yield
        finally:
            _GROUP_COMMIT.reset(token)
        if None in pending:
            await self.durable(self.settings.waitaof_timeout_ms)  # every partition covers the others
        else:
            await self.durable_parts(self.settings.waitaof_timeout_ms, [p for p in pending if p is not None])

    async def durable_parts(self, timeout_ms: int, parts: Iterable[str]) -> None:
        """`durable` for the writes to each of `parts`: one wait per node holding any of them."""
        for part in await self._one_per_node(sorted(set(parts))):
            await self.durable(timeout_ms, part)

    async def durable(self, timeout_ms: int, part: str | None = None) -> None:
        """Group commit: wait until everything written so far to ledger partition `part` is fsynced to the AOF
        (WAITAOF 1 GIFTING_DURABLE_REPLICAS). None: every partition (on a cluster, each node holding one)."""
        if self.waitaof_supported is False:
            return
        for tag in [part] if part is not None else await self._one_per_node(partitions.all_tags()):
            await self._durable_on(timeout_ms, tag)

    async def _one_per_node(self, parts: Sequence[str]) -> list[str]:
        """One of `parts` per node holding any (a wait on a node covers every write to it): a standalone server
        holds them all."""
        if not parts or not valkey.is_cluster_client(self.redis):
            return list(parts[:1])
        nodes: dict[str, str] = {}
        for tag in parts:
            node = (await valkey.on_node_of(self.redis, keys.durable_probe(tag)))["target_nodes"]
            nodes.setdefault(node.name, tag)
        return list(nodes.values())

    async def _durable_on(self, timeout_ms: int, part: str) -> None:
        probe_key = keys.durable_probe(part)
        # WAITAOF waits only for the writes of its own connection, and the writes it must cover went through
        # other pooled connections. A write on its connection first (in the partition's slot, so on its
        # node) gives it the server's newest replication offset, which every earlier write is below.
        waitaof = ("WAITAOF", 1, self.settings.durable_replicas, timeout_ms)
        if valkey.is_cluster_client(self.redis):  # one connection per node: probe and wait in one pipeline
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.incr(probe_key)
                pipe.execute_command(*waitaof, **await valkey.on_node_of(self.redis, probe_key))
                probe, reply = await pipe.execute(raise_on_error=False)
            if isinstance(probe, Exception):
                raise probe  # not written, so the wait would cover nothing: not confirmed
        else:
            # One pinned connection, two round trips: sent together, WAITAOF would arrive before the write is
            # even in the AOF buffer and, on an idle server, wait for the next cron tick (~100 ms at hz 10) to
            # see the fsync; sent after the write's reply it usually finds it fsynced already.
            pinned = self.redis.client()
            try:
                await pinned.incr(probe_key)  # its errors are the caller's, as any write's
                try:
                    reply = await pinned.execute_command(*waitaof)
                except ResponseError as exc:  # a server without WAITAOF: _check_waitaof decides
                    reply = exc
            finally:
                await pinned.aclose(close_connection_pool=False)
        self._check_waitaof(reply, timeout_ms)

    def _check_waitaof(self, reply: Any, timeout_ms: int) -> None:
        if isinstance(reply, Exception) and not isinstance(reply, ResponseError):
            raise reply  # the connection broke after the script (a failover): not confirmed, the batch is retried
        if isinstance(reply, ResponseError):
            if self.waitaof_supported is None:
                self.waitaof_supported = False
                log.warning("durability: WAITAOF unavailable (%s); settled gifts are not fsync-confirmed", reply)
                return
            raise reply
        self.waitaof_supported = True
        local, replicas = reply
        if int(local) < 1:
            raise DurabilityError(f"WAITAOF: AOF fsync not confirmed within {timeout_ms} ms")
        if int(replicas) < self.settings.durable_replicas:  # GIFTING_DURABLE_REPLICAS
            raise DurabilityError(
                f"WAITAOF: {replicas} of {self.settings.durable_replicas} replicas confirmed within {timeout_ms} ms"
            )

    async def pool_op(
        self, op: str, pool_id: str, pledge_id: str = "", user: str = "", coins: int = 0, name: str = "",
        reject: str = "",
    ) -> tuple[str, str, int, bool, dict[str, Any] | None]:  # fmt: skip
        """A pledge to a pool, or its expiry, cancellation or voiding at its room's end (ledger/pools.py).
        Returns (status, reason, balance, replay, pool). `reject`: a pledge's reject reason decided by the
        caller (archive_backlog), recorded like the scripts' own."""
        if op == "pledge":
            return await pools.pledge(self, pool_id, pledge_id, user, coins, name, reject)
        return await pools.pool_end(self, op, pool_id)

    async def pool_open(self, room: str, starter: str, record: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        """Open a pool unless its room ended or a cap is reached, atomically (pool.lua). Returns (reason, pool):
        reason is '' when it opened."""
        return await pools.pool_open(self, room, starter, record)

    # Purchases ---------------------------------------------------------------------------------------------

    async def purchase(
        self, user: str, purchase_id: str, fingerprint: str, status: str, record: dict[str, Any], coins: int
    ) -> tuple[dict[str, Any], bool, bool]:
        """Record a purchase outcome once. Returns (stored record, fingerprint matches, replay); a record of
        another user under this id never matches (and its content is not returned)."""
        assert status in ("paid", "declined") and coins > 0
        if keys.scoped_user(purchase_id) != user:  # another user's id: its record is in their partition, private
            return {}, False, True
        now = now_ms()
        legs = rules.encode_legs(rules.purchase_legs(user, coins))
        row = rules.statement_row(now, "purchase", "coins", coins, keys.SYS_COIN_ISSUANCE, purchase_id)
        part = keys.part_of_user(user)  # the buyer's: sys:coin_issuance has a share in every partition
        stored, stored_fp, replay = await self._purchase(
            keys=[
                keys.coins(part),
                keys.journal(part),
                keys.purchase_record(purchase_id),
                keys.purchases_of(user),
                keys.statement(user),
                keys.purchases_hot(part),
            ],
            args=[
                orjson.dumps(record).decode(),
                fingerprint,
                status,
                keys.account(user),
                coins,
                now,
                purchase_id,
                legs,
                row,
                record.get("bundle_id", ""),
                record.get("currency", ""),
                record.get("price_minor", 0),
            ],
        )
        await self.committed(part)
        return orjson.loads(stored), stored_fp == fingerprint, bool(int(replay))

    async def purchase_record(self, purchase_id: str, owner: str | None = None) -> tuple[dict[str, Any], str] | None:
        """A purchase's record (with its current status) and request fingerprint, if it exists. With `owner`, a
        record of another user is refused (idempotency_key_conflict), never returned."""
        fp, record, status, user = await self.redis.hmget(
            keys.purchase_record(purchase_id), "fp", "record", "status", "user"
        )
        if fp is None and self.archive is not None:  # past its hot window: read from PostgreSQL
            archived = await self.archive.purchase(purchase_id) or {}
            fp, record, status, user = (archived.get(f) for f in ("fp", "record", "status", "user"))
        if fp is None:
            return None
        if owner is not None and user != keys.account(owner):
            raise LedgerError("idempotency_key_conflict", "Idempotency-Key was used for a different purchase")
        data: dict[str, Any] = orjson.loads(record)
        data["status"] = status  # paid | declined | refunded | charged_back
        return data, fp

    async def purchases(self, user: str, limit: int) -> list[dict[str, Any]]:
        ids = await self.redis.lrange(keys.purchases_of(user), -limit, -1)
        records = [await self.purchase_record(pid) for pid in reversed(ids)]
        found = [r[0] for r in records if r is not None]
        if len(ids) < limit and self.archive is not None:  # older ones: from PostgreSQL
            for row in await self.archive.purchases_of(keys.account(user), limit - len(found), set(ids)):
                # A record restored for a reversal is newer in Valkey until the archiver moves it back.
                status = await self.redis.hget(keys.purchase_record(row["id"]), "status") or row["status"]
                found.append({**orjson.loads(row["record"]), "status": status})
        return found

    async def reverse(self, purchase_id: str, mode: str) -> int:
        """Refund or charge back a paid purchase, once. Returns the user's coin balance after."""
        assert mode in ("refund", "chargeback")
        user_account, coins = await self.redis.hmget(keys.purchase_record(purchase_id), "user", "coins")
        if (
            user_account is None
            and self.archive is not None
            and await self.archive.restore_purchase(self.redis, purchase_id)
        ):  # past its hot window: back into Valkey first, then reversed like any purchase
            user_account, coins = await self.redis.hmget(keys.purchase_record(purchase_id), "user", "coins")
        if user_account is None:
            raise LedgerError("unknown_purchase", f"no purchase {purchase_id!r}")
        user, now = user_account.removeprefix(keys.ACCOUNT_PREFIX), now_ms()
        part = keys.part_of_user(user)
        legs = rules.encode_legs(rules.reversal_legs(user, int(coins)))
        row = rules.statement_row(now, mode, "coins", -int(coins), keys.SYS_COIN_ISSUANCE, purchase_id)
        code, balance = await self._reverse(
            keys=[keys.coins(part), keys.journal(part), keys.purchase_record(purchase_id), keys.statement(user)],
            args=[mode, now, purchase_id, f"{mode}:{purchase_id}", user_account, coins, legs, row],
        )
        if code != "ok":
            raise LedgerError(code, REVERSE_ERRORS.get(code, code))
        await self.committed(part)
        return int(balance)

    # Withdrawals -------------------------------------------------------------------------------------------

    async def request_withdrawal(
        self, user: str, withdrawal_id: str, diamonds: int, payout_account: str, fingerprint: str
    ) -> tuple[dict[str, Any], bool]:
        """Put diamonds on hold for a payout (pending transfer). Returns (withdrawal, replay)."""
        s, now, account = self.settings, now_ms(), keys.account(user)
        if keys.scoped_user(withdrawal_id) != user:  # another user's id: its record is in their partition
            raise LedgerError("idempotency_key_conflict", WITHDRAW_ERRORS["idempotency_key_conflict"])
        if (archived := await self._archived_withdrawal_replay(account, withdrawal_id, fingerprint)) is not None:
            return archived, True
        await self._refuse_past_archive_backlog(user, withdrawal_id)
        cutoff_hour = hour_number(now - s.diamond_hold_s * 1000) if s.diamond_hold_s > 0 else hour_number(now) + 1
        legs = rules.encode_legs(rules.withdrawal_legs("pending", user, diamonds))
        row = rules.statement_row(now, "withdrawal", "diamonds", -diamonds, keys.SYS_PAYOUT_CLEARING, withdrawal_id)
        code, _status, detail = await self._withdraw(
            keys=self._withdraw_keys(user, withdrawal_id, utc_day(now)),
            args=[
                "request", now, withdrawal_id, account, diamonds, legs, row, s.withdrawal_diamonds_min,
                s.withdrawal_diamonds_per_day_max, cutoff_hour, now + s.withdrawal_timeout_s * 1000,
                payout_account, fingerprint, utc_day(now), s.withdrawals_pending_per_user_max,
                rules.WITHDRAWN_DAY_TTL_S,
            ],
        )  # fmt: skip
        if code != "ok":
            raise LedgerError(code, WITHDRAW_ERRORS.get(code, code).format(detail=detail))
        await self.committed(keys.part_of_user(user))
        withdrawal = await self.withdrawal(withdrawal_id)
        assert withdrawal is not None
        return withdrawal, detail == "replay"

    async def _archived_withdrawal_replay(
        self, account: str, withdrawal_id: str, fingerprint: str
    ) -> dict[str, Any] | None:
        """A resend of a request whose withdrawal was archived answers it (as withdraw.lua does for one in Valkey).
        Valkey drops a record only after PostgreSQL committed it, so absent from both (read in this order) means
        it never existed."""
        if self.archive is None or await self.redis.exists(keys.withdrawal(withdrawal_id)):
            return None
        record = await self.archive.withdrawal(withdrawal_id)
        if record is None:
            return None
        if record.get("user") != account or record.get("fp") != fingerprint:
            raise LedgerError("idempotency_key_conflict", WITHDRAW_ERRORS["idempotency_key_conflict"])
        return withdrawal_view(withdrawal_id, record)

    async def _refuse_past_archive_backlog(self, user: str, withdrawal_id: str) -> None:
        """A new withdrawal is a debit: refused past the archive backlog bound of its partition's journal like gifts
        and pledges (one rule: rules.archive_backlog_reject); a resend of an existing one still answers it."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(keys.journal(keys.part_of_user(user)))
            pipe.exists(keys.withdrawal(withdrawal_id))
            journal_entries, exists = await pipe.execute()
        if not exists and rules.archive_backlog_reject(int(journal_entries), self.settings.archive_backlog_max):
            message = (
                f"{journal_entries} journal entries wait for the archiver (GIFTING_ARCHIVE_BACKLOG_MAX); retry later"
            )
            raise LedgerError("archive_backlog", message)

    async def resolve_withdrawal(self, withdrawal_id: str, mode: str, reason: str = "") -> dict[str, Any]:
        """Post (paid) or void (failed, diamonds returned) a pending withdrawal, exactly once."""
        assert mode in ("post", "void")
        account, diamonds, day = await self.redis.hmget(keys.withdrawal(withdrawal_id), "user", "diamonds", "day")
        if account is None and self.archive is not None and (old := await self.archive.withdrawal(withdrawal_id)):
            raise LedgerError("withdrawal_not_pending", f"withdrawal {withdrawal_id} is {old['status']}, not pending")
        if account is None:
            raise LedgerError("unknown_withdrawal", f"no withdrawal {withdrawal_id!r}")
        user, now = account.removeprefix(keys.ACCOUNT_PREFIX), now_ms()
        legs = rules.encode_legs(rules.withdrawal_legs("posted" if mode == "post" else "voided", user, int(diamonds)))
        row = ""
        if mode == "void":  # the statement shows the diamonds coming back; a payout was shown at the request
            clearing = keys.SYS_PAYOUT_CLEARING
            row = rules.statement_row(now, "withdrawal_returned", "diamonds", int(diamonds), clearing, withdrawal_id)
        code, status, _ = await self._withdraw(
            keys=self._withdraw_keys(user, withdrawal_id, day or utc_day(now)),
            args=[mode, now, withdrawal_id, account, diamonds, legs, row, reason],
        )
        if code != "ok":
            raise LedgerError(code, f"withdrawal {withdrawal_id} is {status}, not pending")
        await self.committed(keys.part_of_user(user))
        withdrawal = await self.withdrawal(withdrawal_id)
        assert withdrawal is not None
        return withdrawal

    def _withdraw_keys(self, user: str, withdrawal_id: str, day: str) -> list[str]:
        """withdraw.lua's KEYS: all in the user's partition (sys:payout_clearing has a share in each)."""
        part = keys.part_of_user(user)
        assert keys.scoped_user(withdrawal_id) == user, withdrawal_id  # the id names its user: one partition
        return [
            keys.diamonds(part),
            keys.journal(part),
            keys.withdrawal(withdrawal_id),
            keys.withdrawals_pending(part),
            keys.withdrawals_of(user),
            keys.statement(user),
            keys.earned(user),
            keys.withdrawn_on(part, day),
            keys.withdrawals_pending_by_user(part),
            keys.withdrawals_done(part),
        ]

    async def withdrawal(self, withdrawal_id: str) -> dict[str, Any] | None:
        data = await self.redis.hgetall(keys.withdrawal(withdrawal_id))
        if not data and self.archive is not None:  # resolved long ago: read from PostgreSQL
            data = await self.archive.withdrawal(withdrawal_id) or {}
        if not data:
            return None
        return withdrawal_view(withdrawal_id, data)

    async def withdrawals(self, user: str, limit: int) -> list[dict[str, Any]]:
        ids = await self.redis.lrange(keys.withdrawals_of(user), -limit, -1)
        found = [await self.withdrawal(wid) for wid in reversed(ids)]
        items = [w for w in found if w is not None]
        if len(ids) < limit and self.archive is not None:  # older ones: from PostgreSQL
            archived = await self.archive.withdrawals_of(keys.account(user), limit - len(items), set(ids))
            items += [withdrawal_view(wid, data) for wid, data in archived]
        return items

    async def pending_withdrawals(self, part: str, limit: int, offset: int = 0) -> list[str]:
        """A partition's pending withdrawal ids by deadline, `limit` from position `offset`."""
        ids: list[str] = await self.redis.zrange(keys.withdrawals_pending(part), offset, offset + limit - 1)
        return ids

    # Wallet, statements, limits ------------------------------------------------------------------------------

    async def wallet(self, user: str) -> dict[str, int]:
        account, part = keys.account(user), keys.part_of_user(user)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.coins(part), account)
            pipe.hget(keys.diamonds(part), account)
            pipe.hget(keys.rewards(part), account)
            coins, diamonds, reward_coins = await pipe.execute()
        return {"coins": int(coins or 0), "diamonds": int(diamonds or 0), "reward_coins": int(reward_coins or 0)}

    async def set_spend_limit(self, user: str, coins_per_day: int) -> None:
        """A viewer's own cap (0: none): lowered at once, raised or removed after the cooling-off
        (rules.change_own_spend_limit). Read and write under WATCH, so two changes at once cannot both apply."""
        account, limits = keys.account(user), keys.spend_limits(keys.part_of_user(user))
        async with self.redis.pipeline(transaction=True) as pipe:
            for _attempt in range(SPEND_LIMIT_ATTEMPTS_MAX):
                try:
                    await pipe.watch(limits)
                    stored = await pipe.hget(limits, account)
                    changed = rules.change_own_spend_limit(
                        stored, coins_per_day, now_ms(), self.settings.spend_limit_cooloff_s
                    ).encode()
                    pipe.multi()
                    if changed is None:
                        pipe.hdel(limits, account)
                    else:
                        pipe.hset(limits, account, changed)
                    await pipe.execute()
                    return
                except WatchError:
                    continue
        raise LedgerError("busy", "the spend limit changed concurrently too often; retry")

    async def spend_limit(self, user: str) -> dict[str, Any]:
        now, part = now_ms(), keys.part_of_user(user)
        stored = await self.redis.hget(keys.spend_limits(part), keys.account(user))
        own = rules.own_spend_limit(stored, now)
        spent = int(await self.redis.hget(keys.spent_on(part, utc_day(now)), keys.account(user)) or 0)
        return {"daily_spend_coins_max": own.coins, "pending_daily_spend_coins_max": own.pending_coins,
                "pending_effective_ms": own.pending_effective_ms,
                "global_daily_spend_coins_max": self.settings.daily_spend_coins_max,
                "spend_limit_cooloff_s": self.settings.spend_limit_cooloff_s, "spent_today": spent}  # fmt: skip


def withdrawal_view(withdrawal_id: str, data: dict[str, str]) -> dict[str, Any]:
    """A withdrawal as the API shows it, from its record (Valkey's hash, or the same fields archived)."""
    return {
        "withdrawal_id": withdrawal_id,
        "user": data["user"].removeprefix("u:"),
        "diamonds": int(data["diamonds"]),
        "status": data["status"],
        "reason": data.get("reason") or None,
        "payout_account": data.get("payout_account"),
        "created_ms": int(data["created_ms"]),
        "deadline_ms": int(data["deadline_ms"]),
        "resolved_ms": int(data["resolved_ms"]) if data.get("resolved_ms") else None,
    }


REVERSE_ERRORS = {
    "purchase_not_paid": "the purchase was declined; there is nothing to reverse",
    "already_reversed": "the purchase was already refunded or charged back",
    "coins_spent": "the purchase's coins were already spent; a refund needs them unspent (a chargeback does not)",
}
WITHDRAW_ERRORS = {
    "idempotency_key_conflict": "Idempotency-Key was used for a different withdrawal",
    "below_minimum": "withdrawals start at {detail} diamonds",
    "daily_cap_exceeded": "over the daily withdrawal cap; {detail} diamonds left today (UTC)",
    "insufficient_diamonds": "not enough diamonds; the balance is {detail}",
    "diamonds_on_hold": "recently earned diamonds are on hold; {detail} diamonds can be withdrawn now",
    "too_many_pending_withdrawals": "{detail} withdrawals are already pending; wait until one is paid or failed",
}


PRE_PARTITION_LEDGER = "{ledger}:coins"  # the one-slot ledger's balances (releases before stage 2)


async def claim_partition_count(redis: aioredis.Redis, count: int) -> None:
    """The installation's partition count is fixed by the first process that runs against it (stored in
    partitions.PARTITIONS_KEY); a process configured with another count would look for money in the wrong
    partitions, so it refuses to start (ConfigError: the CLI prints it and exits 2)."""
    if await redis.exists(PRE_PARTITION_LEDGER):
        raise ConfigError(
            f"this Valkey holds a ledger from before partitions ({PRE_PARTITION_LEDGER}); it would be ignored, so "
            "nothing starts: see docs/SCALING.md, 'Existing installations'"
        )
    await redis.set(partitions.PARTITIONS_KEY, count, nx=True)
    stored = int(await redis.get(partitions.PARTITIONS_KEY) or count)
    if stored != count:
        raise ConfigError(
            f"GIFTING_LEDGER_PARTITIONS is {count} but this installation's ledger has {stored} partitions "
            f"({partitions.PARTITIONS_KEY}); set it to {stored} (changing it needs a migration: docs/SCALING.md)"
        )
