"""Matches (PK battles): two live creators' audiences gift against each other for a timed match.

Life of a match: `invite` (the inviter's live room is side a) -> `accept` by the invitee (side b) or `decline`,
or the invite expires after GIFTING_MATCH_INVITE_TIMEOUT_S -> live for its duration -> ended exactly once.

Scoring comes from settlement only: the worker passes each settled gift to `score` (one script on the match's
own keys) before it acks the gift, and the script records the gift id, so a resent or redelivered gift never
scores twice; its recorded score snapshot is announced to both rooms under the gift's id, once.

The cutoff: a gift scores when it entered the inbound gift stream (its entry id: Valkey's clock, the moment
the hub accepted it) in [started_at_ms, end_ms), however late it settles. The viewer who tapped in time scores,
even when settlement lags. So the match ends (`finish`) only once no gift stream entry older than end_ms is
left: the worker deletes entries as it acks them, so by then every gift in flight at the end has scored.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis

from gifting import clock, keys, valkey
from gifting.config import Settings
from gifting.errors import GiftingError
from gifting.gifts import GiftRequest
from gifting.ledger import partitions, rules
from gifting.ledger.store import GiftToSettle
from gifting.rooms.store import RoomStore, top_entries
from gifting.wire.messages import MatchEnded, MatchInvited, MatchScore, MatchStarted

log = logging.getLogger(__name__)

SIDES = ("a", "b")
# A seat is one creator's place in a match: a (the inviter) and b (the opponent); in a team match also a2 (the
# inviter's partner) and b2 (the opponent's). A seat's side is its first letter. Every seat but a is an invitee.
SEATS = ("a", "b", "a2", "b2")
INVITEES = ("b", "a2", "b2")
DUE_PAGE_MAX = 100  # matches the worker looks at per sweep

# KEYS: meta, scored, gifters of side a, of side b. ARGV: n, then n rows 'gift id \t room \t coins \t accepted ms
# \t sender account \t catalog gift \t contributors' (a pooled gift's pledgers, 'account coins|account coins', each
# an MVP for their pledge; '': the sender gave it all). In mode 'gift' only the match's named gift scores.
# A team match's partners' rooms (a2, b2) score for their side. Returns {a_room, b_room, a2_room, b2_room,
# {{gift id, snapshot}, ...}} for each gift that scored, now or on an earlier delivery (snapshot: 'side points_a
# points_b'); gifts that do not score are not recorded.
SCORE = """
local meta, scored = KEYS[1], KEYS[2]
local m = redis.call('HMGET', meta, 'status', 'a_room', 'b_room', 'started_at_ms', 'end_ms', 'points_a', 'points_b',
  'gift', 'a2_room', 'b2_room')
local out = {}
if m[1] == false then return {'', '', '', '', out} end
local started, ending = tonumber(m[4] or '0'), tonumber(m[5] or '0')
local pa, pb = tonumber(m[6] or '0'), tonumber(m[7] or '0')
local moved = false
for i = 1, tonumber(ARGV[1]) do
  local id, room, coins, at, sender, gift, contributors =
    string.match(ARGV[1 + i], '^([^\\t]*)\\t([^\\t]*)\\t(%d+)\\t(%d+)\\t([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)$')
  if not id then return redis.error_reply('match_score: malformed gift argument ' .. i) end
  local earlier = redis.call('HGET', scored, id)
  if earlier then
    out[#out + 1] = {id, earlier}
  else
    local side = nil
    if room == m[2] or room == m[9] then side = 'a' elseif room == m[3] or room == m[10] then side = 'b' end
    at = tonumber(at)
    local counts = m[8] == false or m[8] == '' or m[8] == gift
    if side and counts and m[1] == 'live' and at >= started and at < ending and tonumber(coins) > 0 then
      if side == 'a' then pa = pa + tonumber(coins) else pb = pb + tonumber(coins) end
      local gifters = side == 'a' and KEYS[3] or KEYS[4]
      if contributors == '' then
        redis.call('ZINCRBY', gifters, coins, sender)
      else
        for who, given in string.gmatch(contributors, '([^ |]+) (%d+)') do
          redis.call('ZINCRBY', gifters, given, who)
        end
      end
      local snapshot = side .. ' ' .. pa .. ' ' .. pb
      redis.call('HSET', scored, id, snapshot)
      out[#out + 1] = {id, snapshot}
      moved = true
    end
  end
end
if moved then redis.call('HSET', meta, 'points_a', pa, 'points_b', pb) end
return {m[2], m[3], m[9] or '', m[10] or '', out}
"""

# Answer an invite. ARGV: 1 the answer (accept | decline | expire: the sweep, past the deadline), 2 now ms, 3 the
# answering invitee's seat. A team match goes live at the last of its three accepts; one decline declines it.
# Returns 'ok', 'waiting' (accepted; other invitees have not yet), 'not_pending' or 'expired'.
ANSWER = """
local m = redis.call('HMGET', KEYS[1], 'status', 'invite_deadline_ms', 'duration_s', 'team')
if m[1] == 'expired' then return 'expired' end
if m[1] ~= 'invited' then return 'not_pending' end
local now = tonumber(ARGV[2])
if now > tonumber(m[2]) or ARGV[1] == 'expire' then
  redis.call('HSET', KEYS[1], 'status', 'expired')
  return 'expired'
end
if ARGV[1] == 'decline' then
  redis.call('HSET', KEYS[1], 'status', 'declined')
  return 'ok'
end
if redis.call('HSETNX', KEYS[1], 'accepted_' .. ARGV[3], now) == 0 then return 'not_pending' end
if m[4] == '1' then
  for _, at in ipairs(redis.call('HMGET', KEYS[1], 'accepted_b', 'accepted_a2', 'accepted_b2')) do
    if not at then return 'waiting' end
  end
end
redis.call('HSET', KEYS[1], 'status', 'live', 'started_at_ms', now, 'end_ms', now + 1000 * tonumber(m[3]))
return 'ok'
"""

# A side's creator ended their stream: the match ends now (gifts accepted before still score), the other side
# wins. ARGV: 1 the forfeiting side, 2 now ms. Returns 1 if the match was live.
FORFEIT = """
local m = redis.call('HMGET', KEYS[1], 'status', 'end_ms')
if m[1] ~= 'live' then return 0 end
if tonumber(ARGV[2]) < tonumber(m[2]) then redis.call('HSET', KEYS[1], 'end_ms', ARGV[2]) end
redis.call('HSETNX', KEYS[1], 'forfeit', ARGV[1])
return 1
"""

# 1 if the server's clock is past ARGV[1] (ms) and the gift stream KEYS[1] holds no entry older: a script, so the
# clock and the stream are read on the stream's own node in one atomic step (a cluster pipeline may not send TIME).
ALL_SCORED = """
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) < tonumber(ARGV[1]) then return 0 end
if #redis.call('XRANGE', KEYS[1], '-', '(' .. ARGV[1] .. '-0', 'COUNT', 1) > 0 then return 0 end
return 1
"""

# Delete KEYS[1] (a creator's match marker, a room meta's match field) only while it still names ARGV[1].
RELEASE = """
if ARGV[2] == '' then
  if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
elseif redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[1] then
  return redis.call('HDEL', KEYS[1], ARGV[2])
end
return 0
"""


class MatchError(GiftingError):
    """An invite, answer or match lookup was refused; `code` goes on the wire (status: gifting/web/http.py)."""


class MatchStore:
    def __init__(self, redis: aioredis.Redis, settings: Settings, rooms: RoomStore) -> None:
        self.redis = redis
        self.settings = settings
        self.rooms = rooms
        self._score = redis.register_script(SCORE)
        self._answer = redis.register_script(ANSWER)
        self._release_lua = redis.register_script(RELEASE)
        self._forfeit = redis.register_script(FORFEIT)
        self._all_scored_lua = redis.register_script(ALL_SCORED)

    async def invite(
        self,
        inviter: str,
        opponent: str,
        duration_s: int | None,
        gift: str | None = None,
        partner: str | None = None,
        opponent_partner: str | None = None,
    ) -> dict[str, Any]:
        """The inviter's live room against the opponent's; the opponent has the invite timeout to accept.
        With `gift` (a catalog gift id, checked by the caller) only that gift scores (mode 'gift'). With a
        `partner` for each side the mode is 'team' (2 v 2, four rooms): all three invitees must accept."""
        s = self.settings
        duration_s = s.match_duration_s if duration_s is None else duration_s
        if not 1 <= duration_s <= s.match_duration_s_max:
            raise MatchError("bad_duration", f"duration_s: expected 1..{s.match_duration_s_max}, got {duration_s}")
        if opponent == inviter:
            raise MatchError("bad_opponent", "a creator cannot invite themselves to a match")
        if (partner is None) != (opponent_partner is None):
            raise MatchError("bad_partner", "a team match names a partner for each side: partner and opponent_partner")
        seated = {"a": inviter, "b": opponent}
        if partner is not None and opponent_partner is not None:
            seated |= {"a2": partner, "b2": opponent_partner}
        if len(set(seated.values())) != len(seated):
            raise MatchError("bad_partner", "the four creators of a team match must be four different creators")
        rooms = await self._live_rooms(seated)
        match, now_ms = uuid.uuid4().hex, clock.now_ms()
        deadline_ms = now_ms + 1000 * s.match_invite_timeout_s
        # The marker outlives any match it may name; `finish` and the sweep release it earlier.
        marker_ttl_s = s.match_invite_timeout_s + s.match_duration_s_max + 3600
        if not await self.redis.set(keys.creator_match(inviter), match, nx=True, ex=marker_ttl_s):
            raise MatchError("already_in_match", "you are already invited to or playing a match")
        meta = {
            "id": match, "mode": "team" if partner else "gift" if gift else "solo", "gift": gift or "",
            "status": "invited", "duration_s": duration_s, "team": "1" if partner else "",
            "invited_at_ms": now_ms, "invite_deadline_ms": deadline_ms, "points_a": 0, "points_b": 0,
        }  # fmt: skip
        for seat, creator in seated.items():
            meta |= {seat + "_creator": creator, seat + "_room": rooms[seat]}
        # Two single-slot steps, due first: the sweep finds a due match without meta done (not before the deadline).
        await self.redis.zadd(keys.MATCHES_DUE, {match: deadline_ms})
        await self.redis.hset(keys.match_meta(match), mapping=meta)
        view = await self.get(match)
        for seat in INVITEES:
            if seat in rooms:
                await self.rooms.announce(rooms[seat], [(f"match:{match}:invited", MatchInvited(view).to_dict())])
        return view

    async def _live_rooms(self, seated: dict[str, str]) -> dict[str, str]:
        """Each seated creator's live room; every invitee free of other matches (the inviter's marker is taken
        atomically after this)."""
        rooms: dict[str, str] = {}
        for seat, creator in seated.items():
            live = await self.rooms.creator_live(creator)
            if live is None:
                code = {"a": "room_not_live", "b": "opponent_not_live"}.get(seat, "partner_not_live")
                raise MatchError(code, "go live before inviting someone to a match" if seat == "a" else
                                 f"{creator!r} is not live")  # fmt: skip
            if seat != "a" and await self.redis.exists(keys.creator_match(creator)):
                raise MatchError("already_in_match", f"{creator!r} is already invited to or playing a match")
            rooms[seat] = live.room
        return rooms

    async def answer(self, match: str, user: str, accept: bool) -> dict[str, Any]:
        """An invitee accepts (the match starts now, or at the last accept of a team match's three) or declines
        (for everyone); a second answer or a late one is refused."""
        meta = await self._meta(match)
        seat = next((s for s in INVITEES if meta.get(s + "_creator") == user), None)
        if seat is None:
            raise MatchError("forbidden", "only an invited creator can answer this invite")
        if meta["status"] == "expired":
            raise MatchError("invite_expired", "the invite expired before it was answered")
        if meta["status"] != "invited":
            raise MatchError("invite_not_pending", f"this invite was already answered ({meta['status']})")
        if accept:
            await self._prepare_start(match, meta, user)
        answer = "accept" if accept else "decline"
        outcome = await self._answer(keys=[keys.match_meta(match)], args=[answer, clock.now_ms(), seat])
        if outcome == "waiting":
            return await self.get(match)
        if outcome == "not_pending" and (await self._meta(match))["status"] == "invited":
            raise MatchError("invite_not_pending", "you already accepted this invite")
        if outcome != "ok" or not accept:
            await self._release_all(match, await self._meta(match))
            if outcome == "expired":
                raise MatchError("invite_expired", "the invite expired before it was answered")
            if outcome == "not_pending":
                raise MatchError("invite_not_pending", "this invite was already answered")
            return await self.get(match)
        await self._started(match)
        return await self.get(match)

    async def _prepare_start(self, match: str, meta: dict[str, str], user: str) -> None:
        """Before the match goes live: the invitee's marker, every room still live and naming the match (so the
        worker scores their gifts from the first one settled after the start)."""
        marker_ttl_s = self.settings.match_duration_s_max + 3600
        marked = await self.redis.set(keys.creator_match(user), match, nx=True, ex=marker_ttl_s)
        if not marked and await self.redis.get(keys.creator_match(user)) != match:
            raise MatchError("already_in_match", "you are already invited to or playing another match")
        for seat in seats(meta):
            if (await self.rooms.get(meta[seat + "_room"])).status != "live":
                await self._release(keys.creator_match(user), match)
                raise MatchError("room_not_live", f"the room of {meta[seat + '_creator']!r} is no longer live")
        async with self.redis.pipeline(transaction=False) as pipe:
            for room in match_rooms(meta):
                pipe.hset(keys.room_meta(room), "match", match)
            await pipe.execute()

    async def _started(self, match: str) -> None:
        """Announce the start to every room (once: dedupe id) and schedule the end. Repeated by the sweep if the
        process died between the accept and here."""
        view = await self.get(match)
        await self.redis.zadd(keys.MATCHES_DUE, {match: view["end_ms"]})
        event = MatchStarted(view).to_dict()
        for room in view["rooms"]:
            await self.rooms.announce(room, [(f"match:{match}:started", event)])

    async def get(self, match: str) -> dict[str, Any]:
        return public_view(await self._meta(match))

    async def view(self, match: str) -> dict[str, Any]:
        """GET /v1/matches/{id}: Valkey's record, else (ended longer ago than GIFTING_MATCH_HOT_S) the archived one."""
        meta: dict[str, str] = await self.redis.hgetall(keys.match_meta(match))
        if not meta and self.rooms.archive is not None:
            meta = await self.rooms.archive.match(match) or {}
        if not meta:
            raise MatchError("match_not_found", f"no match {match!r}")
        return public_view(meta)

    async def _meta(self, match: str) -> dict[str, str]:
        meta: dict[str, str] = await self.redis.hgetall(keys.match_meta(match))
        if not meta:
            raise MatchError("match_not_found", f"no match {match!r}")
        return meta

    async def score(
        self,
        match: str,
        gifts: list[tuple[str, str, int, int, str, str]],
        contributors: dict[str, list[tuple[str, int]]] | None = None,
    ) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
        """Score settled gifts (gift id, room, coins, accepted ms, sender, catalog gift): each once. Returns the
        match's rooms and the `match_score` events (dedupe id, event) of the gifts that scored, now or on an
        earlier delivery, for both rooms. The caller makes them durable before announcing them. `contributors`:
        gift id -> (user, coins) of a pooled gift's pledgers, the MVPs it makes (default: its sender)."""
        pledgers = contributors or {}
        rows = [
            f"{gift_id}\t{room}\t{coins}\t{at}\t{keys.account(sender)}\t{gift}\t"
            + "|".join(f"{keys.account(user)} {given}" for user, given in pledgers.get(gift_id, []))
            for gift_id, room, coins, at, sender, gift in gifts
        ]
        match_keys = [keys.match_meta(match), keys.match_scored(match), *(keys.match_gifters(match, s) for s in SIDES)]
        *rooms, scored = await self._score(keys=match_keys, args=[len(rows), *rows])
        events = []
        for gift_id, snapshot in scored:
            side, a, b = snapshot.split(" ")
            event = MatchScore(match, gift_id, side, int(a), int(b)).to_dict()
            events.append((f"match:{match}:{gift_id}", event))
        return [r for r in rooms if r], events

    async def score_pool(self, pool: dict[str, Any], accepted_ms: int) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        """A completed pool is one gift to its room's creator: it scores its price for the room's side, once (its
        id: 'pool:' + pool id), by the cutoff of the pledge that completed it (`accepted_ms`: its stream entry);
        each pledger is an MVP for their pledge. Returns room -> `match_score` events (none: no match)."""
        match = await self.redis.hget(keys.room_meta(pool["room"]), "match")
        if not match:
            return {}
        gift_id = "pool:" + pool["id"]
        given = [(c["user"], int(c["coins"])) for c in pool["contributors"]]
        row = (gift_id, pool["room"], pool["price"], accepted_ms, given[0][0] if given else "", pool["gift"])
        rooms, scored = await self.score(match, [row], {gift_id: given})
        return {room: scored for room in rooms} if scored else {}

    async def gate(
        self, requests: list[GiftRequest], batch: list[GiftToSettle], accepted_ms: list[int]
    ) -> list[GiftToSettle]:
        """Gifts that name a match (its side: their room) and would not score there are rejected before the
        ledger, so nothing moves (rules.match_side_reject); gifts that name none are left as they are."""
        named = sorted({r.match for r, g in zip(requests, batch, strict=True) if r.match and not g.reject})
        if not named:
            return batch
        async with self.redis.pipeline(transaction=False) as pipe:
            for match in named:
                pipe.hmget(keys.match_meta(match), "started_at_ms", "end_ms", *(s + "_room" for s in SEATS))
            metas = dict(zip(named, await pipe.execute(), strict=True))
        gated = []
        for request, settled, at in zip(requests, batch, accepted_ms, strict=True):
            if request.match and not settled.reject:
                started, end, *rooms = metas[request.match]
                reject = rules.match_side_reject(
                    request.room, rooms, int(started) if started else None, int(end) if end else None, at
                )
                if reject:
                    settled = dataclasses.replace(settled, reject=reject, coins=0, diamonds=0)
            gated.append(settled)
        return gated

    async def sweep(self) -> int:
        """Expire unanswered invites, end matches whose gifts have all scored, finish interrupted starts.
        Every step is safe to repeat, so a crash anywhere is finished by the next sweep. Returns matches done."""
        now_ms = clock.now_ms()
        due = await self.redis.zrangebyscore(keys.MATCHES_DUE, "-inf", now_ms, start=0, num=DUE_PAGE_MAX)
        done = 0
        for match in due:
            try:
                done += await self._sweep_one(match, now_ms)
            except GiftingError as exc:  # one match's trouble (say, its record expired) never stops the worker
                log.warning("match %s: sweep step failed: %s; retried next sweep", match, exc.message)
        return done

    async def _sweep_one(self, match: str, now_ms: int) -> int:
        """One due match's next step; 1 once nothing is left to do for it (it leaves MATCHES_DUE)."""
        meta = await self.redis.hgetall(keys.match_meta(match))
        status = meta.get("status")
        if status == "invited":
            await self._answer(keys=[keys.match_meta(match)], args=["expire", now_ms])
            meta = await self.redis.hgetall(keys.match_meta(match))
            status = meta.get("status")
        running = status == "live" and int(meta["end_ms"]) > now_ms
        if running and not await self._forfeited(match, meta, now_ms):
            await self._started(match)  # the accept died before scheduling the end
            return 0
        if status in ("live", "ended") and not await self.finish(match):
            return 0
        if meta:
            await self._release_all(match, meta)
        if status in ("declined", "expired"):  # never played, so not archived: kept as long as an ended one is hot
            await self.redis.expire(keys.match_meta(match), self.settings.match_hot_s)
        await self.redis.zrem(keys.MATCHES_DUE, match)
        return 1

    async def _forfeited(self, match: str, meta: dict[str, str], now_ms: int) -> bool:
        """A side with a room no longer live forfeits (a creator ended the stream mid-match; in a team match
        either of the side's two creators)."""
        for seat in seats(meta):
            status = await self.redis.hget(keys.room_meta(meta[seat + "_room"]), "status")
            if status != "live":
                await self._forfeit(keys=[keys.match_meta(match)], args=[seat[0], now_ms])
                return True
        return False

    async def finish(self, match: str) -> bool:
        """End a live match exactly once, when every gift that entered the stream before its end has settled
        (and so scored). False while some may still be in flight."""
        meta = await self._meta(match)
        if meta["status"] == "live":
            if not await self._all_scored(int(meta["end_ms"])):
                return False
            result = await self._result(match, meta)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(keys.match_meta(match), "result", orjson.dumps(result))
                pipe.hset(keys.match_meta(match), "status", "ended")
                for key in (keys.match_meta(match), keys.match_scored(match), *self._gifter_keys(match)):
                    pipe.expire(key, self.settings.match_record_ttl_s)
                await pipe.execute()
        view = await self.get(match)
        # Indexed for the archiver, which moves it to PostgreSQL after GIFTING_MATCH_HOT_S (apart from the
        # transaction above: another slot in a cluster); a crash before this repeats finish.
        await self.redis.zadd(keys.MATCHES_ENDED, {match: view["end_ms"]}, nx=True)
        event = MatchEnded(view).to_dict()
        for room in view["rooms"]:
            await self.redis.hset(keys.room_matches(room), match, orjson.dumps(view))  # the stream summary's
            if await self.redis.hget(keys.room_meta(room), "status") != "live":  # it expires with the ended room
                await self.redis.expire(keys.room_matches(room), self.settings.ended_room_ttl_s, nx=True)
                await self.rooms.summary_matches(room)  # the forfeiting room's summary was stored before the end
            await self.rooms.announce(room, [(f"match:{match}:ended", event)])
        return True

    async def _all_scored(self, end_ms: int) -> bool:
        """Past the end, with no gift stream entry older than it, in every partition's stream: per stream one
        atomic read of its server's clock and the stream, so no entry older than the end can be added to it after
        it answers yes (new entry ids follow that clock); all streams yes, then all gifts before the end are in."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for part in partitions.all_tags():
                await valkey.queue_script(pipe, self._all_scored_lua, [keys.gifts_stream(part)], [end_ms])
            return all(bool(r) for r in await pipe.execute())

    async def _result(self, match: str, meta: dict[str, str]) -> dict[str, Any]:
        points = {side: int(meta["points_" + side]) for side in SIDES}
        winner = "a" if points["a"] > points["b"] else "b" if points["b"] > points["a"] else None
        forfeit = meta.get("forfeit")
        if forfeit:
            winner = "b" if forfeit == "a" else "a"
        mvps = {}
        for side, key in zip(SIDES, self._gifter_keys(match), strict=True):
            mvps[side] = await top_entries(self.redis, key, self.settings.match_mvps_max)
        return {"winner": winner, "draw": winner is None, "forfeit": forfeit, "points": points, "mvps": mvps}

    def _gifter_keys(self, match: str) -> list[str]:
        return [keys.match_gifters(match, side) for side in SIDES]

    async def _release_all(self, match: str, meta: dict[str, str]) -> None:
        for seat in seats(meta):
            await self._release(keys.creator_match(meta[seat + "_creator"]), match)
            await self._release(keys.room_meta(meta[seat + "_room"]), match, field="match")

    async def _release(self, key: str, match: str, field: str = "") -> None:
        await self._release_lua(keys=[key], args=[match, field])


def seats(meta: dict[str, str]) -> list[str]:
    """The match's seats: a and b, and a2 and b2 in a team match."""
    return [seat for seat in SEATS if meta.get(seat + "_creator")]


def match_rooms(meta: dict[str, str]) -> list[str]:
    return [meta[seat + "_room"] for seat in seats(meta)]


def public_view(meta: dict[str, str]) -> dict[str, Any]:
    """A match as clients see it (GET /v1/matches/{id}, match_started, match_ended). A side's `creator` and
    `room` are its lead's; a team match's side also has its `partner` ({creator, room}); `rooms` lists them all.
    While invited, `waiting_for` names the invitees who have not accepted yet."""
    view: dict[str, Any] = {
        "id": meta["id"],
        "mode": meta["mode"],
        "gift": meta.get("gift") or None,
        "status": meta["status"],
        "duration_s": int(meta["duration_s"]),
        "invite_deadline_ms": int(meta["invite_deadline_ms"]),
        "started_at_ms": int(meta["started_at_ms"]) if "started_at_ms" in meta else None,
        "end_ms": int(meta["end_ms"]) if "end_ms" in meta else None,
        "result": orjson.loads(meta["result"]) if "result" in meta else None,
    }
    for side in SIDES:
        view[side] = {
            "creator": meta[side + "_creator"],
            "room": meta[side + "_room"],
            "points": int(meta["points_" + side]),
        }
        if meta.get(side + "2_creator"):
            view[side]["partner"] = {"creator": meta[side + "2_creator"], "room": meta[side + "2_room"]}
    view["rooms"] = match_rooms(meta)
    if meta["status"] == "invited":
        view["waiting_for"] = [
            meta[s + "_creator"] for s in INVITEES if s in seats(meta) and "accepted_" + s not in meta
        ]
    return view
