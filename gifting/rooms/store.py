"""Rooms in Redis: open, end, read, list, and append events to a room's history (announce.lua)."""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis

from gifting import clock, keys, valkey
from gifting.clock import iso_week, utc_day
from gifting.config import Settings
from gifting.errors import GiftingError
from gifting.ledger import rules
from gifting.ledger.store import DurabilityError, Ledger
from gifting.wire.messages import EventKind, GoalProgress, RoomEnded, StreamSummary

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from gifting.history.reader import ArchiveReader

SESSIONS_KEPT = 1000  # ended-session summaries kept per creator
SUMMARY_TTL_S = 90 * 86400  # a room's own summary; the creator's session list keeps it longer
SUMMARY_SWAPS_MAX = 5  # tries to put a late match result into a stored summary while others rewrite it


class RoomError(GiftingError):
    """A room, goal or pool operation was refused; `code` goes on the wire (HTTP status: gifting/web/http.py)."""


@dataclass(frozen=True, slots=True)
class RoomInfo:
    room: str
    creator: str
    creator_name: str
    title: str
    status: str  # live | ended
    epoch: str
    offset: int
    started_at_ms: int
    ended_at_ms: int | None
    premium_coins: int = 0  # a premium stream's ticket price (gifting/perks.py); 0: anyone may join

    @classmethod
    def from_meta(cls, room: str, meta: dict[str, str]) -> RoomInfo:
        return cls(
            room=room,
            creator=meta.get("creator", ""),
            creator_name=meta.get("creator_name", ""),
            title=meta.get("title", ""),
            status=meta.get("status", "ended"),
            epoch=meta.get("epoch", ""),
            offset=int(meta.get("offset", 0)),
            started_at_ms=int(meta.get("started_at_ms", 0)),
            ended_at_ms=int(meta["ended_at_ms"]) if meta.get("ended_at_ms") else None,
            premium_coins=int(meta.get("premium_coins", 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "creator": self.creator,
            "creator_name": self.creator_name,
            "title": self.title,
            "status": self.status,
            "epoch": self.epoch,
            "offset": self.offset,
            "started_at_ms": self.started_at_ms,
            "ended_at_ms": self.ended_at_ms,
        } | ({"premium_coins": self.premium_coins} if self.premium_coins else {})


def new_room_id() -> str:
    return "r_" + secrets.token_urlsafe(9).replace("-", "x").replace("_", "y")


def new_epoch() -> str:
    return secrets.token_hex(4)


ANNOUNCE_LUA = resources.files("gifting.rooms").joinpath("announce.lua").read_text()

GOAL_TARGET_MAX = 1_000_000  # gifts (of one kind) or 10**12 diamonds is absurd for one stream
GOAL_DIAMONDS_MAX = 10**12
TOP_LIMIT_MAX = 100
LIVE_PAGE_MAX = 100  # rooms in one page of the lobby
ROOM_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
TOP_PERIODS = ("stream", "day", "week", "all")

# Start a goal only if none is active (one goal at a time; a completed or cancelled one may be replaced).
SET_GOAL = """
if redis.call('HGET', KEYS[1], 'status') == 'active' then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


# The creator's session list entry (KEYS[1]), once: a repeated end (after a crash) adds no second entry. The
# summary itself is stored first, in the room's own slot (SET NX), and ARGV[1] is the one stored.
STORE_SUMMARY = """
if not redis.call('LPOS', KEYS[1], ARGV[1]) then
  redis.call('LPUSH', KEYS[1], ARGV[1])
  redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
end
return 1
"""


# Replace a stored stream summary (KEYS[1]) only while it is still ARGV[1] (compare and swap). ARGV[2]: the new
# summary. Returns 1 if swapped. Its copy in the creator's session list (another slot on a cluster) is replaced
# first by SWAP_SESSION: the merged summary is a function of the stored one and the room's ended matches, so a
# crash between the two steps is finished by the next call (the list no longer holds the old copy; the summary does).
SWAP_SUMMARY = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
"""

# Replace ARGV[1] by ARGV[2] in the creator's session list (KEYS[1]), if it is there.
SWAP_SESSION = """
local at = redis.call('LPOS', KEYS[1], ARGV[1])
if at then redis.call('LSET', KEYS[1], at, ARGV[2]) end
return 1
"""

# List a room as live only if its creator has fewer than ARGV[1] live rooms; else return the newest live one's id.
# KEYS: the creator's live rooms, all live rooms (one slot: {rooms}). ARGV: max, room, started_at_ms.
OPEN_ROOM = """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return redis.call('ZREVRANGE', KEYS[1], 0, 0)[1] end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
return 1
"""


@contextlib.asynccontextmanager
async def not_durable_is_retry() -> AsyncIterator[None]:
    """A write whose AOF fsync is not confirmed (DurabilityError) becomes a RoomError (503) that asks the client to
    repeat the request, which redoes nothing and finishes what is left (every step before is idempotent)."""
    try:
        yield
    except DurabilityError as exc:
        raise RoomError("not_durable", f"{exc}; the change is recorded: repeat the request to finish it") from None


async def durable_or_retry(ledger: Ledger) -> None:
    """Wait for the AOF fsync of what was written (the room's own writes: the ledger's calls wait by themselves),
    else not_durable_is_retry."""
    async with not_durable_is_retry():
        await ledger.durable(ledger.settings.waitaof_timeout_ms)


def room_keys(room: str) -> list[str]:
    """The keys of a room's live session, expired together when it ends (GIFTING_ENDED_ROOM_TTL_S)."""
    return [keys.room_meta(room), keys.room_history(room), keys.room_stats(room), keys.room_top(room),
            keys.room_goal(room), keys.room_matches(room), keys.room_stage(room),
            keys.room_stage_invites(room), keys.room_recipients(room), keys.room_pins(room)]  # fmt: skip


async def recipient_board_keys(redis: aioredis.Redis, room: str) -> list[str]:
    """A room's top-gifter boards per recipient (gifting/rooms/recipients.py): they expire with the room."""
    return [keys.room_recipient_top(room, r) for r in sorted(await redis.smembers(keys.room_recipients(room)))]


class RoomStore:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.announce_script = redis.register_script(ANNOUNCE_LUA)
        self._set_goal = redis.register_script(SET_GOAL)
        self._store_summary = redis.register_script(STORE_SUMMARY)
        self._swap_summary = redis.register_script(SWAP_SUMMARY)
        self._swap_session = redis.register_script(SWAP_SESSION)
        self.ledger = Ledger(redis, settings)  # an ending room voids its pools
        self._open = redis.register_script(OPEN_ROOM)
        self.archive: ArchiveReader | None = None  # the history database, for summaries past their hot window
        self.sharded = valkey.is_cluster_client(redis)  # room fan-out by SPUBLISH on the room's own primary

    async def open(self, creator: str, creator_name: str, title: str) -> RoomInfo:
        room = new_room_id()
        now_ms = clock.now_ms()
        meta = {
            "creator": creator,
            "creator_name": creator_name,
            "title": title,
            "status": "live",
            "epoch": new_epoch(),
            "offset": "0",
            "started_at_ms": str(now_ms),
        }
        cap = self.settings.live_rooms_per_creator_max
        # Two single-slot steps (the room's own tag, then the live-room index): the meta first, so a listed room
        # always has one; a refused or interrupted open leaves only an unlisted meta, which expires.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.room_meta(room), mapping=meta)
            pipe.expire(keys.room_meta(room), self.settings.ended_room_ttl_s)
            await pipe.execute()
        opened = await self._open(keys=[keys.creator_live_rooms(creator), keys.ROOMS_LIVE], args=[cap, room, now_ms])
        if opened == 1:
            await self.redis.persist(keys.room_meta(room))
        else:
            await self.redis.delete(keys.room_meta(room))
            raise RoomError("already_live", f"{cap} live room(s) per creator is the limit; end {opened} first")
        return RoomInfo.from_meta(room, meta)

    async def get(self, room: str) -> RoomInfo:
        meta = await self.redis.hgetall(keys.room_meta(room))
        if not meta:
            raise RoomError("room_not_found", f"no room {room!r}")
        return RoomInfo.from_meta(room, meta)

    async def end(self, room: str, user: str, is_admin: bool) -> RoomInfo:
        """End a live room (its creator or an admin). Ending a room whose end was interrupted finishes it."""
        info = await self.get(room)
        if info.creator != user and not is_admin:
            raise RoomError("forbidden", "only the room's creator can end it")
        if info.status != "live" and await self.redis.zscore(keys.ROOMS_ENDING, room) is None:
            raise RoomError("room_not_live", f"room {room!r} has already ended")
        await self.finish_end(room)
        return await self.get(room)

    async def finish_end(self, room: str) -> None:
        """End a room in steps that are each safe to repeat. ROOMS_ENDING holds the room from the first step to
        the last, so an end interrupted by a crash is finished by the worker (GIFTING_ROOM_END_RETRY_S) or by
        ending the room again: every ended room gets its pools voided, its `room_ended` and its summary."""
        info = await self.get(room)  # room_not_found once its records expired: nothing to finish (or to make again)
        now_ms = clock.now_ms()
        ttl_s = self.settings.ended_room_ttl_s
        await self.redis.zadd(keys.ROOMS_ENDING, {room: now_ms}, nx=True)
        match = await self.redis.hget(keys.room_meta(room), "match")
        # First close the room to new pools and pledges (pool.lua checks the marker atomically), then void the
        # open pools: no coin moves to a room once its end has begun. Both in the creator's ledger partition.
        pools_part = keys.part_of_user(info.creator)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(keys.room_ended(pools_part, room), "*", now_ms)
            pipe.expire(keys.room_ended(pools_part, room), ttl_s)
            await pipe.execute()
        async with not_durable_is_retry(), self.ledger.group_commit():
            for pool_id in sorted(await self.redis.smembers(keys.room_pools(pools_part, room))):
                await self.ledger.pool_op("void", pool_id)
        boards = await recipient_board_keys(self.redis, room)
        from gifting.perks import refund_tickets  # perks build on rooms

        await refund_tickets(self, room, int(await self.redis.zscore(keys.ROOMS_ENDING, room) or now_ms))
        # One transaction per slot (the room's tag, the live-room index), each safe to repeat.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(keys.room_meta(room), "ended_at_ms", str(now_ms))
            pipe.hset(keys.room_meta(room), "status", "ended")
            for key in [*room_keys(room), *boards]:
                pipe.expire(key, ttl_s)
            await pipe.execute()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.ROOMS_LIVE, room)
            pipe.zrem(keys.creator_live_rooms(info.creator), room)
            await pipe.execute()
        if match:  # its creator forfeits: due now, after the room ended, so the sweep sees it ended
            await self.redis.zadd(keys.MATCHES_DUE, {match: now_ms})
        await durable_or_retry(self.ledger)  # announce only what is durable
        summary = await self.earnings(room)
        summary["top"] = await self.top(room, "stream", 5)
        await self.announce(room, await self._end_events(room, summary, pools_part))
        # Two single-slot steps, each safe to repeat: the room's summary, then the creator's list (gets it once).
        await self.redis.set(keys.room_summary(room), orjson.dumps(summary), nx=True, ex=SUMMARY_TTL_S)
        stored = await self.redis.get(keys.room_summary(room))
        await self._store_summary(keys=[keys.creator_sessions(summary["creator"])], args=[stored, SESSIONS_KEPT])
        await self.redis.zadd(keys.ROOMS_SUMMARIZED, {room: summary["ended_at_ms"] or now_ms})  # for the archiver
        await self.summary_matches(room)  # a match that ended while the summary was being made
        await self.redis.zrem(keys.ROOMS_ENDING, room)

    async def summary_matches(self, room: str) -> None:
        """Put the room's ended matches (keys.room_matches) into its stored stream summary. A match can end after
        the stream did (its creator forfeited by ending it): MatchStore.finish writes the result, then calls
        this; the room's end stores the summary, then calls this; so whichever comes second sees both."""
        for _ in range(SUMMARY_SWAPS_MAX):
            stored = await self.redis.get(keys.room_summary(room))
            if stored is None:
                return
            summary = orjson.loads(stored)
            known = {m["id"]: m for m in summary.get("matches", [])}
            ended = [orjson.loads(m) for m in (await self.redis.hgetall(keys.room_matches(room))).values()]
            merged = {**known, **{m["id"]: m for m in ended}}
            if merged == known:
                return
            summary["matches"] = sorted(merged.values(), key=lambda m: m["end_ms"])
            new = orjson.dumps(summary)
            await self._swap_session(keys=[keys.creator_sessions(summary["creator"])], args=[stored, new])
            if await self._swap_summary(keys=[keys.room_summary(room)], args=[stored, new]):
                return
        log.warning("room %s: its summary kept changing; its matches are added by the next match end", room)

    async def _end_events(
        self, room: str, summary: dict[str, Any], pools_part: str
    ) -> list[tuple[str, dict[str, Any]]]:
        """The pools the end voided, `room_ended` and the summary (the stream summary goes to the room and
        outlives it), from durable state: each announced once by its dedupe id, however often the end repeats."""
        from gifting.rooms.pools import closing_event, pool_view  # pools builds on rooms

        events: list[tuple[str, dict[str, Any]]] = []
        for pool_id in sorted(await self.redis.hkeys(keys.room_ended(pools_part, room))):
            raw = await self.redis.hgetall(keys.pool(pools_part, pool_id)) if pool_id != "*" else None
            event = closing_event(pool_view(raw)) if raw else None
            if event is not None:
                events.append(event)
        events.append(("room_ended:" + room, RoomEnded(summary["ended_at_ms"]).to_dict()))
        events.append(("summary:" + room, StreamSummary(summary).to_dict()))
        return events

    async def set_goal(self, room: str, user: str, gift: str | None, target: int) -> dict[str, Any]:
        """One LIVE goal at a time: N of a gift, or a diamond total. Its progress moves with settled gifts."""
        info = await self.get(room)
        if info.creator != user:
            raise RoomError("forbidden", "only the room's creator sets its goal")
        if info.status != "live":
            raise RoomError("room_not_live", f"room {room!r} is not live")
        goal = {
            "id": "g_" + secrets.token_hex(6),
            "kind": "gift" if gift else "diamonds",
            "gift": gift or "",
            "target": target,
            "progress": 0,
            "status": "active",
        }
        flat = [str(x) for pair in goal.items() for x in pair]
        if not await self._set_goal(keys=[keys.room_goal(room)], args=flat):
            raise RoomError("goal_active", "a goal is already active; cancel it or wait until it completes")
        await self.announce(room, [(f"goal:{goal['id']}", GoalProgress(goal).to_dict())])
        return goal

    async def cancel_goal(self, room: str, user: str) -> dict[str, Any]:
        info = await self.get(room)
        if info.creator != user:
            raise RoomError("forbidden", "only the room's creator cancels its goal")
        goal = await self.goal(room)
        if goal is None or goal["status"] != "active":
            raise RoomError("no_active_goal", "the room has no active goal")
        await self.redis.hset(keys.room_goal(room), "status", "cancelled")
        goal["status"] = "cancelled"
        await self.announce(room, [(f"goal:{goal['id']}:cancelled", GoalProgress(goal).to_dict())])
        return goal

    async def goal(self, room: str) -> dict[str, Any] | None:
        raw = await self.redis.hgetall(keys.room_goal(room))
        if not raw:
            return None
        return {**raw, "target": int(raw["target"]), "progress": int(raw["progress"])}

    async def top(self, room: str, period: str, limit: int) -> list[dict[str, Any]]:
        """Top gifters by coins: of this stream, or of the room's creator per UTC day, ISO week or all time.

        Ties are broken by user id (ascending), so every reader sees the same order.
        """
        assert period in TOP_PERIODS and 1 <= limit <= TOP_LIMIT_MAX
        if period == "stream":
            key = keys.room_top(room)
        else:
            creator = (await self.get(room)).creator
            now = clock.now_ms()
            bucket = {"day": utc_day(now), "week": iso_week(now), "all": ""}[period]
            key = keys.creator_top(creator, period, bucket)
        return await top_entries(self.redis, key, limit)

    async def sessions(self, creator: str, limit: int) -> list[dict[str, Any]]:
        """Summaries of the creator's ended live sessions, newest first (past GIFTING_SUMMARY_HOT_S: PostgreSQL)."""
        found = [orjson.loads(s) for s in await self.redis.lrange(keys.creator_sessions(creator), 0, limit - 1)]
        if len(found) < limit and self.archive is not None:
            found += await self.archive.sessions_of(creator, limit - len(found), {s["room"] for s in found})
        return found

    async def live(self, limit: int, cursor: str | None = None) -> tuple[list[RoomInfo], str | None]:
        """One page of live rooms, newest first, and the cursor of the next page (None: the last page).

        A cursor is the last room's start time and id ("ms.room"), not a position, so rooms opening or ending
        meanwhile neither repeat nor skip a room on the next page. Raises ValueError for a malformed cursor.
        """
        assert 1 <= limit <= LIVE_PAGE_MAX
        if cursor is None:
            rows = await self.redis.zrevrangebyscore(keys.ROOMS_LIVE, "+inf", "-inf", 0, limit + 1, withscores=True)
        else:
            after_ms, after_room = parse_live_cursor(cursor)
            ties = await self.redis.zcount(keys.ROOMS_LIVE, after_ms, after_ms)
            rows = await self.redis.zrevrangebyscore(
                keys.ROOMS_LIVE, after_ms, "-inf", 0, limit + 1 + ties, withscores=True
            )
            # Equal start times come in descending id order: the page goes on after the cursor's room.
            rows = [(r, ms) for r, ms in rows if ms < after_ms or r < after_room][: limit + 1]
        page = rows[:limit]
        rooms = await self._infos([r for r, _ in page])
        next_cursor = f"{int(page[-1][1])}.{page[-1][0]}" if len(rows) > limit else None
        return rooms, next_cursor

    async def creator_live(self, creator: str) -> RoomInfo | None:
        """The creator's newest live room, if any: how the studio and the overlay find it."""
        newest = await self.redis.zrevrange(keys.creator_live_rooms(creator), 0, 0)
        rooms = await self._infos(newest)
        return rooms[0] if rooms else None

    async def _infos(self, rooms: list[str]) -> list[RoomInfo]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for room in rooms:
                pipe.hgetall(keys.room_meta(room))
            metas = await pipe.execute()
        return [RoomInfo.from_meta(r, m) for r, m in zip(rooms, metas, strict=True) if m]

    async def announce(self, room: str, events: list[tuple[str, dict[str, Any]]], client: Any = None) -> Any:
        """Append events (dedupe id, event without offset) to the room's history once each, and publish them.

        With `client` a pipeline, the call is queued on it by sha (the worker announces every room of a batch in
        one round trip, and has loaded the script: `announce_script`).
        """
        s = self.settings
        buckets, expire_at = rules.record_buckets(clock.now_ms() // 1000, s.idempotency_ttl_s)
        channel = keys.room_channel(room, self.sharded)
        args: list[Any] = [channel, s.room_history_events_max, new_epoch(), s.combo_window_ms, expire_at, len(events)]
        fields = [announce_fields(dedupe_id, event) for dedupe_id, event in events]
        combos = list(dict.fromkeys(c for f in fields if (c := f.rsplit("\t", 1)[1])))
        args += fields
        args += [orjson.dumps(event) for _, event in events]
        args += [s.ended_room_ttl_s, len(buckets), *combos]
        keys_ = [
            keys.room_meta(room),
            keys.room_history(room),
            keys.room_stats(room),
            keys.room_top(room),
            keys.room_goal(room),
            *(keys.room_announced(room, bucket) for bucket in buckets),
            *(keys.room_combo(room, combo) for combo in combos),
        ]
        if client is not None:
            return valkey.queue_evalsha(client, self.announce_script.sha, keys_, args)
        return await self.announce_script(keys=keys_, args=args)

    async def earnings(self, room: str) -> dict[str, Any]:
        """The live session's totals: gifts, coins spent, diamonds earned, and duration."""
        info = await self.get(room)
        stats = await self.redis.hgetall(keys.room_stats(room))
        matches = [orjson.loads(m) for m in (await self.redis.hgetall(keys.room_matches(room))).values()]
        end_ms = info.ended_at_ms or clock.now_ms()
        return {
            "room": room,
            "creator": info.creator,
            "status": info.status,
            "started_at_ms": info.started_at_ms,
            "ended_at_ms": info.ended_at_ms,
            "duration_s": max(0, (end_ms - info.started_at_ms) // 1000),
            "gifts": int(stats.get("gifts", 0)),
            "coins": int(stats.get("coins", 0)),
            "diamonds": int(stats.get("diamonds", 0)),
            "goals_met": int(stats.get("goals_met", 0)),
            "matches": sorted(matches, key=lambda m: m["end_ms"]),
        }

    async def summary(self, room: str) -> dict[str, Any]:
        """The stored stream summary once ended; the running totals while live."""
        stored = await self.redis.get(keys.room_summary(room))
        if stored is not None:
            data: dict[str, Any] = orjson.loads(stored)
            return data
        if self.archive is not None and await self.redis.hget(keys.room_meta(room), "status") != "live":
            archived = await self.archive.summary(room)  # ended past GIFTING_SUMMARY_HOT_S
            if archived is not None:
                return archived
        summary = await self.earnings(room)
        summary["top"] = await self.top(room, "stream", 5)
        return summary


def parse_live_cursor(cursor: str) -> tuple[int, str]:
    started_ms, _, room = cursor.partition(".")
    if not started_ms.isdigit() or len(started_ms) > 16 or not ROOM_ID_PATTERN.fullmatch(room):
        raise ValueError(f"cursor: expected the next_cursor of a previous page, got {cursor[:80]!r}")
    return int(started_ms), room


async def top_entries(redis: aioredis.Redis, key: str, limit: int) -> list[dict[str, Any]]:
    """The top `limit` members by score with display names; ties broken by user id, ascending.

    At most 2 * `limit` members are read however many tie at the cut (an anonymous request must not make Valkey
    and this process walk 50,000 tied members): a sorted set orders equal scores by member bytes, and every
    member is `u:` + user id, so the first members of the last place's score, in set order, are the ones wanted.
    """
    rows = await redis.zrevrange(key, 0, limit - 1, withscores=True)
    if len(rows) == limit:  # ZREVRANGE takes the last place's ties from the wrong end: take them from the right one
        last = rows[-1][1]
        above = [r for r in rows if r[1] > last]
        rows = above + await redis.zrangebyscore(key, last, last, start=0, num=limit - len(above), withscores=True)
    rows.sort(key=lambda r: (-r[1], r[0].removeprefix("u:")))
    rows = rows[:limit]
    users = [member.removeprefix("u:") for member, _ in rows]
    if not users:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.USER_NAMES, users)
        for user in users:  # each in their own ledger partition
            pipe.hget(keys.lifetime_spent(keys.part_of_user(user)), keys.account(user))
        names, *spent = await pipe.execute()
    return [
        {"user": user, "name": name or user, "coins": int(score), "level": rules.level_for(int(lifetime or 0))}
        for user, name, lifetime, (_, score) in zip(users, names, spent, rows, strict=True)
    ]


def announce_fields(dedupe_id: str, event: dict[str, Any]) -> str:
    """What announce.lua needs to know of an event besides its JSON, tab-separated: dedupe id, coins, diamonds,
    gift, count, contributors, combo key (ids and account names have no tabs)."""
    kind = event.get("kind")
    contributors, combo = "", ""
    if kind == EventKind.GIFT:
        contributors = f"{event['sender']} {event['coins']}"
        combo = f"{event['sender']}:{event['gift']}"
        if event.get("sponsor"):  # a free gift never merges with paid ones: each entry says who paid for it
            combo += ":sponsored"
    elif kind == EventKind.POOL_COMPLETED:
        contributors = "|".join(f"{c['user']} {c['coins']}" for c in event["pool"]["contributors"])
    coins = event.get("coins", 0) if kind in (EventKind.GIFT, EventKind.POOL_COMPLETED) else 0
    diamonds = event.get("diamonds", 0) if kind in (EventKind.GIFT, EventKind.POOL_COMPLETED) else 0
    count = event.get("count", 1 if kind == EventKind.POOL_COMPLETED else 0)
    return f"{dedupe_id}\t{coins}\t{diamonds}\t{event.get('gift', '')}\t{count}\t{contributors}\t{combo}"


def announced_events(announcement: str | bytes) -> list[dict[str, Any]]:
    """The events of one announcement (a message on the room channel, or one history entry) with their offsets
    and combos. announce.lua writes each call's events once as {"from", "combos", "events"} (see there)."""
    data = orjson.loads(announcement)
    events: list[dict[str, Any]] = data["events"]
    first = data["from"]
    for i, event in enumerate(events):
        event["offset"] = first + i
    for i, combo_id, count in data["combos"]:
        events[i]["combo"] = {"id": combo_id, "count": count}
    return events


def history_events(entries: list[tuple[str, dict[str, str]]]) -> list[dict[str, Any]]:
    """The events of history entries (XRANGE order), in offset order. An entry holds one announcement and its id
    is the offset of its last event, so XRANGE from `N-0` starts with the entry that holds offset N."""
    return [event for _, fields in entries for event in announced_events(fields["e"])]
