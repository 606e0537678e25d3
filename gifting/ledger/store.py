"""The ledger's Redis adapter: runs the Lua scripts and reads balances. Rules live in rules.py."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError, WatchError

from gifting import keys, valkey
from gifting.clock import hour_number, now_ms, utc_day
from gifting.config import Settings
from gifting.errors import GiftingError
from gifting.ledger import pools, rules

if TYPE_CHECKING:
    from gifting.history.reader import ArchiveReader

log = logging.getLogger(__name__)
SPEND_LIMIT_ATTEMPTS_MAX = 20  # optimistic retries of a spend limit change (WATCH on the shared limits hash)
# Set inside Ledger.group_commit(): the task's writes wait for durability once, when the block ends. Per task
# (a context variable), because one Ledger serves every request of a web process at once.
_GROUP_COMMIT: ContextVar[bool] = ContextVar("ledger_group_commit", default=False)


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


def settle_arg(g: GiftToSettle, now: int) -> str:
    """One gift as settle.lua takes it: fields separated by US (0x1f). The journal row and statement rows it
    writes if it settles the gift are built here, not in Lua: the Valkey thread is the scarce core."""
    viewer, creator = keys.account(g.viewer), keys.account(g.creator)
    row = viewer_row = creator_row = reward_row = reward_viewer_row = ""
    if not g.reject:
        split = rules.GiftSplit(g.coins, g.diamonds, g.coins - g.diamonds)
        row = rules.gift_journal_row(g.gift_id, g.viewer, g.creator, split, g.room, g.gift, g.count)
        viewer_row = rules.statement_row(now, "gift_sent", "coins", -g.coins, creator, g.gift_id, g.gift, str(g.count))
        # The same gift paid with reward coins (settle.lua picks: rules.pays_with_rewards).
        reward_row = rules.reward_gift_journal_row(g.gift_id, g.viewer, g.creator, split, g.room, g.gift, g.count)
        # The same row on the rewards ledger (statement_row's layout: ts, kind, ledger, ...).
        reward_viewer_row = viewer_row.replace("\tcoins\t", "\trewards\t", 1)
        if g.diamonds > 0:
            creator_row = rules.statement_row(
                now, "gift_received", "diamonds", g.diamonds, viewer, g.gift_id, g.gift, str(g.count)
            )
    return "\x1f".join(
        (
            g.gift_id,
            viewer,
            creator,
            str(g.coins),
            str(g.diamonds),
            g.fingerprint,
            g.reject,
            row,
            viewer_row,
            creator_row,
            reward_row,
            reward_viewer_row,
        )
    )


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
        self.waitaof_supported: bool | None = None  # learned on first use

    # Gifts -------------------------------------------------------------------------------------------------

    async def settle(self, gifts: list[GiftToSettle], durable_timeout_ms: int | None = None) -> list[rules.GiftOutcome]:
        """Settle a batch in one atomic Lua call; resends get their stored outcome (replay=True).

        With `durable_timeout_ms`, the group commit (WAITAOF, see `durable`) goes in the same round trip.
        """
        if not gifts:
            return []
        now = now_ms()
        s = self.settings
        buckets, expire_at = rules.record_buckets(now // 1000, s.idempotency_ttl_s)
        rejected_buckets, rejected_expire_at = rules.record_buckets(now // 1000, s.rejected_gift_ttl_s)
        accounts = list(dict.fromkeys(a for g in gifts for a in (keys.account(g.viewer), keys.account(g.creator))))
        creators = list(dict.fromkeys(keys.account(g.creator) for g in gifts))
        keys_ = [keys.LEDGER_COINS, keys.LEDGER_DIAMONDS, keys.LEDGER_JOURNAL, keys.LEDGER_SPEND_LIMITS]
        keys_ += [keys.spent_on(utc_day(now)), keys.LEDGER_LIFETIME_SPENT, keys.LEDGER_REWARDS]
        keys_ += map(keys.gift_records, buckets)
        keys_ += map(keys.rejected_gift_records, rejected_buckets)
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
        args += [settle_arg(g, now) for g in gifts]
        args += accounts + creators
        wait = durable_timeout_ms is not None and self.waitaof_supported is not False
        for attempt in range(2):
            async with self.redis.pipeline(transaction=False) as pipe:
                valkey.queue_evalsha(pipe, self.settle_script.sha, keys_, args)
                if wait:  # on the node of the ledger's writes (a cluster), right after them
                    pipe.execute_command(
                        "WAITAOF",
                        1,
                        s.durable_replicas,
                        durable_timeout_ms,
                        **await valkey.on_node_of(self.redis, keys_[0]),
                    )
                replies = await pipe.execute(raise_on_error=False)
            if attempt == 0 and isinstance(replies[0], NoScriptError):  # Valkey lost its scripts (a restart)
                await self.redis.script_load(self.settle_script.script)
                continue
            break
        if isinstance(replies[0], Exception):
            raise replies[0]
        if wait:
            self._check_waitaof(replies[1], durable_timeout_ms or 0)
        elif durable_timeout_ms is not None:
            await self.durable(durable_timeout_ms)
        lines = replies[0].split("\n")
        assert len(lines) == len(gifts), "settle.lua returns one line per gift"
        outcomes = []
        for g, line in zip(gifts, lines, strict=True):
            status, reason, coins, replay, spent = line.split("|")
            outcomes.append(rules.GiftOutcome(g.gift_id, status, reason, int(coins), replay == "1", int(spent)))
        return outcomes

    async def gift_outcomes(self, gift_ids: list[str]) -> dict[str, rules.GiftOutcome]:
        """The stored outcome of each gift id that was decided (settled within GIFTING_IDEMPOTENCY_TTL_S, rejected
        within GIFTING_REJECTED_GIFT_TTL_S)."""
        now_s = now_ms() // 1000
        buckets, _ = rules.record_buckets(now_s, self.settings.idempotency_ttl_s)
        rejected_buckets, _ = rules.record_buckets(now_s, self.settings.rejected_gift_ttl_s)
        record_keys = [*map(keys.gift_records, buckets), *map(keys.rejected_gift_records, rejected_buckets)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in record_keys:
                pipe.hmget(key, gift_ids)
            found = await pipe.execute()
        outcomes: dict[str, rules.GiftOutcome] = {}
        for records in reversed(found):  # an id is recorded once; a settled record wins over a stale rejection
            for gift_id, record in zip(gift_ids, records, strict=True):
                if record is not None:
                    outcomes[gift_id] = rules.parse_gift_record(gift_id, record, replay=True)
        return outcomes

    async def committed(self) -> None:
        """Every write method ends here: its changes are fsynced (GIFTING_WAITAOF_TIMEOUT_MS) before it returns,
        so no caller can announce or answer what Valkey could still lose. Inside group_commit() the wait is once,
        at the end of the block."""
        if not _GROUP_COMMIT.get():
            await self.durable(self.settings.waitaof_timeout_ms)

    @contextlib.asynccontextmanager
    async def group_commit(self) -> AsyncIterator[None]:
        """Several writes, one durability wait when the block ends without an error (WAITAOF covers every write
        before it). Raises DurabilityError like each write would."""
        token = _GROUP_COMMIT.set(True)
        try:
            yield
        finally:
            _GROUP_COMMIT.reset(token)
        await self.committed()

    async def durable(self, timeout_ms: int) -> None:
        """Group commit: wait until everything written so far is fsynced to the AOF (WAITAOF 1 0)."""
        if self.waitaof_supported is False:
            return
        # WAITAOF waits only for the writes of its own connection, and the writes it must cover went through
        # other pooled connections. A write on its connection first (in the ledger's slot, so on the ledger's
        # node) gives it the server's newest replication offset, which every earlier write is below.
        waitaof = ("WAITAOF", 1, self.settings.durable_replicas, timeout_ms)
        if valkey.is_cluster_client(self.redis):  # one connection per node: the two in one pipeline
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.incr(keys.LEDGER_DURABLE_PROBE)
                pipe.execute_command(*waitaof, **await valkey.on_node_of(self.redis, keys.LEDGER_DURABLE_PROBE))
                probe, reply = await pipe.execute(raise_on_error=False)
            if isinstance(probe, Exception):
                raise probe  # not written, so the wait would cover nothing: not confirmed
        else:
            # One pinned connection, two round trips: sent together, WAITAOF would arrive before the write is
            # even in the AOF buffer and, on an idle server, wait for the next cron tick (~100 ms at hz 10) to
            # see the fsync; sent after the write's reply it usually finds it fsynced already.
            pinned = self.redis.client()
            try:
                await pinned.incr(keys.LEDGER_DURABLE_PROBE)  # its errors are the caller's, as any write's
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
        now = now_ms()
        legs = rules.encode_legs(rules.purchase_legs(user, coins))
        row = rules.statement_row(now, "purchase", "coins", coins, keys.SYS_COIN_ISSUANCE, purchase_id)
        stored, stored_fp, replay = await self._purchase(
            keys=[
                keys.LEDGER_COINS,
                keys.LEDGER_JOURNAL,
                keys.purchase_record(purchase_id),
                keys.purchases_of(user),
                keys.statement(user),
                keys.PURCHASES_HOT,
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
        await self.committed()
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
        legs = rules.encode_legs(rules.reversal_legs(user, int(coins)))
        row = rules.statement_row(now, mode, "coins", -int(coins), keys.SYS_COIN_ISSUANCE, purchase_id)
        code, balance = await self._reverse(
            keys=[keys.LEDGER_COINS, keys.LEDGER_JOURNAL, keys.purchase_record(purchase_id), keys.statement(user)],
            args=[mode, now, purchase_id, f"{mode}:{purchase_id}", user_account, coins, legs, row],
        )
        if code != "ok":
            raise LedgerError(code, REVERSE_ERRORS.get(code, code))
        await self.committed()
        return int(balance)

    # Withdrawals -------------------------------------------------------------------------------------------

    async def request_withdrawal(
        self, user: str, withdrawal_id: str, diamonds: int, payout_account: str, fingerprint: str
    ) -> tuple[dict[str, Any], bool]:
        """Put diamonds on hold for a payout (pending transfer). Returns (withdrawal, replay)."""
        s, now, account = self.settings, now_ms(), keys.account(user)
        if (archived := await self._archived_withdrawal_replay(account, withdrawal_id, fingerprint)) is not None:
            return archived, True
        await self._refuse_past_archive_backlog(withdrawal_id)
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
        await self.committed()
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

    async def _refuse_past_archive_backlog(self, withdrawal_id: str) -> None:
        """A new withdrawal is a debit: refused past the archive backlog bound like gifts and pledges (one rule:
        rules.archive_backlog_reject); a resend of an existing one still answers it."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(keys.LEDGER_JOURNAL)
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
        await self.committed()
        withdrawal = await self.withdrawal(withdrawal_id)
        assert withdrawal is not None
        return withdrawal

    def _withdraw_keys(self, user: str, withdrawal_id: str, day: str) -> list[str]:
        return [
            keys.LEDGER_DIAMONDS,
            keys.LEDGER_JOURNAL,
            keys.withdrawal(withdrawal_id),
            keys.WITHDRAWALS_PENDING,
            keys.withdrawals_of(user),
            keys.statement(user),
            keys.earned(user),
            keys.withdrawn_on(day),
            keys.WITHDRAWALS_PENDING_BY_USER,
            keys.WITHDRAWALS_DONE,
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

    async def pending_withdrawals(self, limit: int, offset: int = 0) -> list[str]:
        """Pending withdrawal ids by deadline, `limit` from position `offset`."""
        ids: list[str] = await self.redis.zrange(keys.WITHDRAWALS_PENDING, offset, offset + limit - 1)
        return ids

    # Wallet, statements, limits ------------------------------------------------------------------------------

    async def wallet(self, user: str) -> dict[str, int]:
        account = keys.account(user)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.LEDGER_COINS, account)
            pipe.hget(keys.LEDGER_DIAMONDS, account)
            pipe.hget(keys.LEDGER_REWARDS, account)
            coins, diamonds, reward_coins = await pipe.execute()
        return {"coins": int(coins or 0), "diamonds": int(diamonds or 0), "reward_coins": int(reward_coins or 0)}

    async def set_spend_limit(self, user: str, coins_per_day: int) -> None:
        """A viewer's own cap (0: none): lowered at once, raised or removed after the cooling-off
        (rules.change_own_spend_limit). Read and write under WATCH, so two changes at once cannot both apply."""
        account = keys.account(user)
        async with self.redis.pipeline(transaction=True) as pipe:
            for _attempt in range(SPEND_LIMIT_ATTEMPTS_MAX):
                try:
                    await pipe.watch(keys.LEDGER_SPEND_LIMITS)
                    stored = await pipe.hget(keys.LEDGER_SPEND_LIMITS, account)
                    changed = rules.change_own_spend_limit(
                        stored, coins_per_day, now_ms(), self.settings.spend_limit_cooloff_s
                    ).encode()
                    pipe.multi()
                    if changed is None:
                        pipe.hdel(keys.LEDGER_SPEND_LIMITS, account)
                    else:
                        pipe.hset(keys.LEDGER_SPEND_LIMITS, account, changed)
                    await pipe.execute()
                    return
                except WatchError:
                    continue
        raise LedgerError("busy", "the spend limit changed concurrently too often; retry")

    async def spend_limit(self, user: str) -> dict[str, Any]:
        now = now_ms()
        stored = await self.redis.hget(keys.LEDGER_SPEND_LIMITS, keys.account(user))
        own = rules.own_spend_limit(stored, now)
        spent = int(await self.redis.hget(keys.spent_on(utc_day(now)), keys.account(user)) or 0)
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
