"""The live room as a sans-I/O state machine: events in, frames and actions out. No awaits, no sockets, no Valkey.

In the manner of websockets' `Protocol`: the hub (gifting/live/hub.py) owns the sockets, pub/sub, timers and
history reads; it tells a `LiveRoom` what happened (a join started or finished, a live announcement arrived, a
gap was filled, a tick is due, a connection left) and executes what the room answers (fill this gap from
history, write these frames to these connections).

Membership is one dict, `members`: each connection's `Member` says which phase of its life in the room it is in.

- JOINING: its snapshot is being read; live events that arrive meanwhile are kept for it (`Member.during_join`).
- FRESH: it got its snapshot and catch-up frame up to `Member.floor`; its first tick sends it only events above.
- STEADY: it gets the tick's frame for its audience (creator or viewers) and codec.

Three indexes over `members` exist for speed and are kept in step by `_place` (and `leave`) alone: `shared`
(steady JSON viewers on a direct socket: a tick writes them one prebuilt frame in one loop), `others` (everyone
else, written one by one) and `joining` (who keeps the live events of its join). `check()` asserts they agree
with `members`.

Offsets: history offsets are dense, so a jump in the live feed is a gap: the room asks for it to be filled
(`FillGap`) and queues later events behind it until `gap_filled`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from gifting.config import Settings
from gifting.live import coalesce
from gifting.live.output import Connection, Encoded
from gifting.wire import protocol
from gifting.wire.messages import ComboEnd, Events
from gifting.wire.protocol import Codec

if TYPE_CHECKING:
    import asyncio

Event = dict[str, Any]


class Phase(Enum):
    JOINING = "joining"
    FRESH = "fresh"
    STEADY = "steady"


@dataclass(frozen=True, slots=True)
class Member:
    """A connection's place in a room. Steady members all share STEADY: a big room holds no object per member."""

    phase: Phase = Phase.JOINING
    during_join: list[Event] = field(default_factory=list)  # JOINING: live events that arrived during the snapshot
    floor: int = -1  # FRESH: the last offset its join already delivered


STEADY = Member(Phase.STEADY)


@dataclass(frozen=True, slots=True)
class FillGap:
    """Action: read history offsets after < o < before, then call `gap_filled` with them."""

    after: int
    before: int


@dataclass(frozen=True, slots=True)
class JoinPlan:
    """How a join reads history, for a room at `offset` of `epoch`: the snapshot's recent events start at
    `first`; a resume missed `missed` events (-1: its `since` is of another epoch) and replays them if `replay`."""

    first: int
    missed: int
    replay: bool

    def recovered(self, since_offset: int, replayed: list[Event]) -> bool:
        """Nothing missed, or every missed event is still in history (at most GIFTING_REPLAY_EVENTS_MAX)."""
        if self.missed == 0:
            return True
        return self.replay and len(replayed) == self.missed and replayed[0]["offset"] == since_offset + 1


def plan_join(
    offset: int, epoch: str, since: protocol.Since | None, snapshot_events: int, replay_events_max: int
) -> JoinPlan:
    missed = offset - since.offset if since is not None and since.epoch == epoch else -1
    return JoinPlan(max(offset - snapshot_events + 1, 0), missed, 0 < missed <= replay_events_max)


class TickFrames:
    """What one tick of one room sends. `sends`: one encoded frame per connection written one by one. `shared`
    (the room's index, not a copy) gets `shared_frame`, except a connection whose user is in `own`: it gets
    `own_frame(user)`, the viewers' frame whose tick_summary also lists that sender's gifts (coalesce.py, 4)."""

    __slots__ = ("_bodies", "_encoded", "_events", "_own_frames", "own", "room", "sends", "shared")

    def __init__(
        self, room: LiveRoom, events: list[Event], bodies: tuple[list[Event], list[Event]], own: dict[str, list[str]]
    ) -> None:
        """`bodies`: the viewers' entries, then the creator's (every event, then the counters)."""
        self.room, self._events, self._bodies, self.own = room, events, bodies, own
        self.shared = room.shared
        self.sends: list[tuple[Connection, Encoded]] = []
        self._encoded: dict[tuple[bool, Codec], Encoded] = {}
        self._own_frames: dict[tuple[str, Codec], Encoded] = {}

    def encoded(self, creator: bool, codec: Codec) -> Encoded:
        """The audience's frame in `codec`, encoded once per tick."""
        out = self._encoded.get((creator, codec))
        if out is None:
            body = self._bodies[creator]
            out = self._encoded[(creator, codec)] = Encoded.of(self.room.frame(self._events, body), codec)
        return out

    @property
    def shared_frame(self) -> bytes:
        return self.encoded(False, Codec.JSON).frame

    def own_frame(self, user: str, codec: Codec = Codec.JSON) -> Encoded:
        out = self._own_frames.get((user, codec))
        if out is None:
            message = self.room.frame(self._events, coalesce.own_copy(self._bodies[0], self.own[user]))
            out = self._own_frames[(user, codec)] = Encoded.of(message, codec)
        return out


@dataclass(eq=False)
class LiveRoom:
    """One room's live state on this process (see the module docstring)."""

    id: str
    settings: Settings
    creator: str = ""
    members: dict[Connection, Member] = field(default_factory=dict)
    shared: dict[Connection, asyncio.WriteTransport] = field(default_factory=dict)  # index, see _place
    others: set[Connection] = field(default_factory=set)  # index, see _place
    joining: dict[Connection, Member] = field(default_factory=dict)  # index, see _place: phase JOINING
    graduates: list[Connection] = field(default_factory=list)  # turned STEADY this tick: see written()
    pending: list[Event] = field(default_factory=list)  # live events for the next tick, in offset order
    counters: list[Event] = field(default_factory=list)  # events without offset for the next tick
    last_offset: int = -1  # last offset taken from the live feed; -1: not known yet
    gap: FillGap | None = None  # being filled from history
    behind_gap: list[Event] = field(default_factory=list)  # live events that arrived while the gap is filled
    combos: dict[str, tuple[float, Event]] = field(default_factory=dict)  # id -> (ends at, monotonic s; last gift)
    viewers: int = 0  # approximate, across all web processes
    gifted: bool = False  # gifts arrived since the top gifters were last pushed
    top: list[Event] = field(default_factory=list)  # the top gifters last pushed

    # Membership ----------------------------------------------------------------------------------------

    def begin_join(self, conn: Connection) -> None:
        """`conn` starts reading its snapshot (after the room's channel is subscribed): keep live events for it."""
        self._place(conn, Member())

    def finish_join(self, conn: Connection, offset: int, replayed: list[Event]) -> Event | None:
        """The snapshot ends at `offset`, then `replayed` (a resume): the catch-up frame to send after `joined`, with
        the live events that arrived meanwhile, if any. Events the next tick brings up to here are not sent again."""
        member = self.members.get(conn)
        if member is None or member.phase is not Phase.JOINING:
            return None  # it left while its snapshot was read
        last = replayed[-1]["offset"] if replayed else offset
        events = replayed + [e for e in member.during_join if e["offset"] > last]
        self._place(conn, Member(Phase.FRESH, floor=events[-1]["offset"] if events else last))
        if not events:
            return None
        first, last = events[0]["offset"], events[-1]["offset"]
        return Events(self.id, self.audience(conn, events), first, last).to_dict()

    def leave(self, conn: Connection) -> bool:
        """`conn` left (or its join failed). True if the room is now empty: the hub forgets it."""
        self.members.pop(conn, None)
        self.joining.pop(conn, None)
        self.shared.pop(conn, None)
        self.others.discard(conn)
        return not self.members

    def _place(self, conn: Connection, member: Member) -> None:
        """The one place a member and the indexes change (besides leave)."""
        self.members[conn] = member
        if member.phase is Phase.JOINING:
            self.joining[conn] = member
        else:
            self.joining.pop(conn, None)
        transport = conn.transport
        if member.phase is Phase.STEADY and transport is not None and self._plain_viewer(conn):
            self.others.discard(conn)
            self.shared[conn] = transport
        else:
            self.shared.pop(conn, None)
            self.others.add(conn)

    def _plain_viewer(self, conn: Connection) -> bool:
        """Gets the room's one JSON viewers' frame every tick: not the creator, not closed."""
        return conn.codec is Codec.JSON and conn.identity.user != self.creator and not conn.closed

    def check(self) -> None:
        """Assert the indexes agree with `members` (for tests)."""
        assert set(self.shared).isdisjoint(self.others)
        assert set(self.shared) | self.others == set(self.members)
        assert all(self.members[c].phase is Phase.STEADY for c in self.shared)
        assert self.joining == {c: m for c, m in self.members.items() if m.phase is Phase.JOINING}

    # The live feed -------------------------------------------------------------------------------------

    def announce(self, events: list[Event], now_s: float) -> FillGap | None:
        """Live events from pub/sub, in offset order. A jump in offsets means some were missed: fill the gap."""
        if self.gap is not None:
            self.behind_gap.extend(events)
            return None
        for i, event in enumerate(events):
            offset = event["offset"]
            if offset <= self.last_offset:
                continue  # already delivered (replayed during a fill)
            if self.last_offset >= 0 and offset > self.last_offset + 1:
                self.gap = FillGap(self.last_offset, offset)
                self.behind_gap.extend(events[i:])
                return self.gap
            self.last_offset = offset
            self.pending.append(event)
            if event.get("kind") == "gift":
                self.gifted = True
                if "combo" in event:
                    self.combos[event["combo"]["id"]] = (now_s + self.settings.combo_window_ms / 1000, event)
            for member in self.joining.values():
                member.during_join.append(event)
        return None

    def gap_filled(self, history: list[Event], now_s: float) -> FillGap | None:
        """The gap's events as history holds them (empty if it could not be read). If history no longer has
        them all, the feed goes on from what follows (clients see the jump and resume by offset)."""
        gap, self.gap = self.gap, None
        assert gap is not None, "gap_filled without a FillGap"
        queued, self.behind_gap = self.behind_gap, []
        missing = [e for e in history if gap.after < e["offset"] < gap.before]
        if not missing or missing[0]["offset"] != gap.after + 1:
            self.last_offset = -1
        return self.announce(missing + queued, now_s)

    def add_counter(self, event: Event) -> None:
        """An event without offset (viewers, leaderboard) for the next tick."""
        self.counters.append(event)

    # The tick ------------------------------------------------------------------------------------------

    def tick(self, now_s: float) -> TickFrames | None:
        """End the combos due by `now_s`; then, if the room has anything to send, this tick's frames."""
        self._end_combos(now_s)
        if not self.pending and not self.counters:
            return None
        events, self.pending = self.pending, []
        counters, self.counters = self.counters, []
        s = self.settings
        body, own = coalesce.shape_for_viewers(
            events, s.big_gift_coins, s.frame_events_max, counters, s.merged_gifts_max
        )
        frames = TickFrames(self, events, (body, events + counters), own)
        for conn in self.others:
            member = self.members[conn]
            if member.phase is Phase.JOINING or conn.closed:
                continue
            if member.phase is Phase.FRESH:
                floor = self._graduate(conn, member)
                if events and events[0]["offset"] <= floor:
                    # A fresh joiner already has some of these: rare, so encoded for it alone.
                    self._send_above(frames, conn, [e for e in events if e["offset"] > floor], counters)
                    continue
            user = conn.identity.user
            if user != self.creator and user in own:
                frames.sends.append((conn, frames.own_frame(user, conn.codec)))
            else:
                frames.sends.append((conn, frames.encoded(user == self.creator, conn.codec)))
        return frames

    def _graduate(self, conn: Connection, member: Member) -> int:
        """A fresh member's first tick makes it STEADY (it stays in `others` until written()); returns its floor."""
        self.members[conn] = STEADY
        self.graduates.append(conn)
        return member.floor

    def written(self) -> None:
        """The hub wrote the tick's frames: members that turned STEADY in it may now join `shared` (not before:
        the tick sent them a frame of their own)."""
        graduates, self.graduates = self.graduates, []
        for conn in graduates:
            member = self.members.get(conn)
            if member is not None and member.phase is Phase.STEADY:
                self._place(conn, member)

    def _send_above(self, frames: TickFrames, conn: Connection, events: list[Event], counters: list[Event]) -> None:
        if not events and not counters:
            return
        user = conn.identity.user
        if user == self.creator:
            body = events + counters
        else:
            s = self.settings
            body, own = coalesce.shape_for_viewers(
                events, s.big_gift_coins, s.frame_events_max, counters, s.merged_gifts_max
            )
            if user in own:
                body = coalesce.own_copy(body, own[user])
        frames.sends.append((conn, Encoded.of(self.frame(events, body), conn.codec)))

    def frame(self, events: list[Event], body: list[Event]) -> Event:
        """An `events` frame of `body`, saying which offsets of `events` it covers (also those merged away)."""
        covered = coalesce.offsets_covered(events)
        return Events(self.id, body, *(covered or (None, None))).to_dict()

    def audience(self, conn: Connection, events: list[Event]) -> list[Event]:
        """`events` as `conn` may see them: all fields for the room's creator, the viewers' copy for others."""
        if conn.identity.user == self.creator:
            return events
        return [protocol.for_viewers(e) for e in events]

    def _end_combos(self, now_s: float) -> None:
        """A combo not extended within the window ends: one `combo_end` (no offset) for the room."""
        ended = [combo_id for combo_id, (ends_at, _) in self.combos.items() if ends_at <= now_s]
        for combo_id in ended:
            _, last = self.combos.pop(combo_id)
            combo = {"id": combo_id, "count": last["combo"]["count"]}
            self.counters.append(ComboEnd(combo, last["gift"], last["sender"], last.get("sender_name", "")).to_dict())
