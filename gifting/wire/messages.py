"""Every websocket message, in and out, every room-event kind and every close code, as typed values. Pure.

Client messages are what `protocol.parse_message` returns. Server messages and room events turn into the dicts
the codecs encode with `to_dict()`: the keys, their order and which ones are left out when empty are exactly
the wire's (tests/test_messages.py compares them with the dicts the code built before these types). Reject
reasons live beside these, in gifting/wire/reasons.py. docs/PROTOCOL.md documents every name defined here, and
tests/test_wire_doc.py checks that it does, both ways.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, ClassVar

import msgspec

# Client -> server ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Since:
    epoch: str
    offset: int


@dataclass(frozen=True, slots=True)
class Join:
    room: str
    since: Since | None = None
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Leave:
    room: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class SendGift:
    room: str
    gift: str
    count: int
    gift_id: str
    price: int | None = None  # coins per gift as the viewer saw it; settlement rejects if it changed
    ref: str | None = None
    to: str | None = None  # the recipient on stage (a guest's user id); None: the host
    campaign: str | None = None  # a sponsored gift: the campaign whose budget pays it (the sender pays nothing)
    match: str | None = None  # the match whose side (the room's) the gift targets; refused once it ended


@dataclass(frozen=True, slots=True)
class StartPool:
    room: str
    gift: str
    deadline_s: int
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Pledge:
    pool: str
    coins: int
    pledge_id: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    ref: str | None = None


ClientMessage = Join | Leave | SendGift | StartPool | Pledge | Ping
# The `type` of each client message, as the client spells it.
CLIENT_TYPES: dict[str, type[ClientMessage]] = {
    "join": Join,
    "leave": Leave,
    "gift": SendGift,
    "pool_start": StartPool,
    "pledge": Pledge,
    "ping": Ping,
}


# Close codes --------------------------------------------------------------------------------------------


class CloseCode(IntEnum):
    """Why the server closed a websocket (docs/PROTOCOL.md, Close codes)."""

    GOING_AWAY = 1001  # server shutting down: reconnect and resume
    UNSUPPORTED_SUBPROTOCOL = 1002  # RFC 6455 "protocol error": the client offered no subprotocol we speak
    FRAME_TOO_LARGE = 1009  # sent by uvicorn's websockets protocol, over GIFTING_WS_FRAME_BYTES_HARD_MAX
    SERVICE_RESTART = 1012  # sent by uvicorn on SIGTERM (a deploy): reconnect, to another process, and resume
    UNAUTHORIZED = 4001
    TOO_MANY_INVALID = 4002
    SLOW_CONSUMER = 4008
    TOO_MANY_CONNECTIONS = 4029


# Server -> client ---------------------------------------------------------------------------------------


class _Out(msgspec.Struct, frozen=True):
    """A server message or a room event: `to_dict()` is its wire shape, fields in declaration order, the ones
    named in OMIT_NONE left out when None (the others are sent as null).

    msgspec Structs rather than frozen dataclasses: one is built for every settled gift and every frame, and a
    frozen dataclass's constructor costs ~2 us for nine fields on CPython 3.11 where a Struct's costs ~0.1 us.
    """

    OMIT_NONE: ClassVar[frozenset[str]] = frozenset()

    def _fields(self, head: dict[str, Any]) -> dict[str, Any]:
        head.update(msgspec.structs.asdict(self))
        for name in self.OMIT_NONE:
            if head[name] is None:
                del head[name]
        return head


class ServerMessage(_Out, frozen=True):
    TYPE: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return self._fields({"type": self.TYPE})


class Limits(msgspec.Struct, frozen=True):
    """The connection's limits, told in `welcome` so a client can stay within them."""

    message_bytes_max: int
    gift_count_max: int
    gift_rate_per_s: float
    gift_burst: int
    rooms_per_connection_max: int
    message_rate_per_s: float
    message_burst: int
    join_cost: int


class Welcome(ServerMessage, frozen=True):
    TYPE: ClassVar[str] = "welcome"
    user: str
    role: str
    name: str
    limits: Limits

    def to_dict(self) -> dict[str, Any]:
        limits = msgspec.structs.asdict(self.limits)
        return {"type": self.TYPE, "user": self.user, "role": self.role, "name": self.name, "limits": limits}


class Joined(ServerMessage, frozen=True):
    """The answer to `join`: the room's live state; `recovered` only on a resume, `recent` when not recovered."""

    TYPE: ClassVar[str] = "joined"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"ref", "recovered", "recent", "recipient_top", "pins"})
    room: str
    epoch: str
    offset: int
    status: str
    title: str
    creator: str
    creator_name: str
    viewers: int
    goal: dict[str, Any] | None
    top: list[dict[str, Any]]
    pools: list[dict[str, Any]]
    ref: str | None = None
    recovered: bool | None = None
    recent: list[dict[str, Any]] | None = None
    recipient_top: dict[str, list[dict[str, Any]]] | None = None  # with guests on stage: each one's top gifters
    pins: list[dict[str, Any]] | None = None  # highlighted messages still pinned (gifting/perks.py); absent: none


class Events(ServerMessage, frozen=True):
    """Room events, coalesced: `from`..`to` are the offsets covered (absent when none has an offset)."""

    TYPE: ClassVar[str] = "events"
    room: str
    events: list[dict[str, Any]]
    from_: int | None = None  # `from` on the wire
    to: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE, "room": self.room, "events": self.events}
        if self.from_ is not None:
            out["from"] = self.from_
        if self.to is not None:
            out["to"] = self.to
        return out


class GiftResult(ServerMessage, frozen=True):
    """Only to the sender. `coins` (the balance after) once settlement decided; absent on an immediate answer."""

    TYPE: ClassVar[str] = "gift_result"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"coins"})
    gift_id: str
    status: str  # settled | rejected | pending (HTTP only)
    reason: str | None
    coins: int | None = None


class PledgeResult(ServerMessage, frozen=True):
    """Only to the pledger. A worker's answer (`settled`) carries the pool and the balance after; an immediate
    one does not."""

    TYPE: ClassVar[str] = "pledge_result"
    pledge_id: str
    status: str  # accepted | rejected | pending (HTTP only)
    reason: str | None
    settled: bool = False
    pool: dict[str, Any] | None = None
    coins: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE, "pledge_id": self.pledge_id}
        if self.settled:
            out |= {"pool": self.pool, "coins": self.coins}
        return out | {"status": self.status, "reason": self.reason}


class PoolStarted(ServerMessage, frozen=True):
    TYPE: ClassVar[str] = "pool_started"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"ref"})
    pool: dict[str, Any]
    ref: str | None = None


class Left(ServerMessage, frozen=True):
    TYPE: ClassVar[str] = "left"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"ref"})
    room: str
    ref: str | None = None


class Pong(ServerMessage, frozen=True):
    TYPE: ClassVar[str] = "pong"
    ref: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "ref": self.ref} if self.ref else {"type": self.TYPE}


class Error(ServerMessage, frozen=True):
    """A message could not be accepted. `gift_id` / `pledge_id` name the gift or pledge of an id conflict."""

    TYPE: ClassVar[str] = "error"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"ref", "gift_id", "pledge_id"})
    code: str
    message: str
    ref: str | None = None
    gift_id: str | None = None
    pledge_id: str | None = None


SERVER_MESSAGES: tuple[type[ServerMessage], ...] = (
    Welcome,
    Joined,
    Events,
    GiftResult,
    PledgeResult,
    PoolStarted,
    Left,
    Pong,
    Error,
)


# Room events --------------------------------------------------------------------------------------------


class EventKind(StrEnum):
    """The `kind` of every room event: spelled here once (announce.lua's are checked against it)."""

    # Recorded in the room's history, with an offset.
    GIFT = "gift"
    GOAL_PROGRESS = "goal_progress"
    GOAL_COMPLETED = "goal_completed"
    POOL_PROGRESS = "pool_progress"
    POOL_COMPLETED = "pool_completed"
    POOL_EXPIRED = "pool_expired"
    POOL_CANCELLED = "pool_cancelled"
    POOL_VOIDED = "pool_voided"
    ROOM_ENDED = "room_ended"
    STREAM_SUMMARY = "stream_summary"
    STAGE = "stage"
    MATCH_INVITED = "match_invited"
    MATCH_STARTED = "match_started"
    MATCH_SCORE = "match_score"
    MATCH_ENDED = "match_ended"
    HIGHLIGHT = "highlight"
    ENTRANCE = "entrance"
    # Ephemeral: pushed by the hub, no offset, never replayed.
    COMBO_END = "combo_end"
    VIEWERS = "viewers"
    LEADERBOARD = "leaderboard"
    TICK_SUMMARY = "tick_summary"


class RoomEvent(_Out, frozen=True):
    KIND: ClassVar[EventKind]

    def to_dict(self) -> dict[str, Any]:
        return self._fields({"kind": self.KIND.value})


class GiftEvent(RoomEvent, frozen=True):
    """A settled gift (announce.lua adds the offset and the combo). `diamonds` reaches the creator only."""

    KIND: ClassVar[EventKind] = EventKind.GIFT
    gift_id: str
    gift: str
    count: int
    coins: int
    diamonds: int
    sender: str
    sender_name: str
    level: int
    ts: int
    to: str | None = None  # a guest on stage who received it (and its diamonds); absent: the host
    sponsor: str | None = None  # a sponsored gift: the brand whose budget paid it ("sponsored by ..."); absent: none
    fan: dict[str, int] | None = None  # the sender's fan-club badge with the recipient ({"level"}); absent: none

    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"to", "sponsor", "fan"})


class GoalProgress(RoomEvent, frozen=True):
    KIND: ClassVar[EventKind] = EventKind.GOAL_PROGRESS
    goal: dict[str, Any]


class PoolProgress(RoomEvent, frozen=True):
    KIND: ClassVar[EventKind] = EventKind.POOL_PROGRESS
    pool: dict[str, Any]


class PoolCompleted(RoomEvent, frozen=True):
    """The pooled gift's one animation (always one gift); `diamonds` reaches the creator only."""

    KIND: ClassVar[EventKind] = EventKind.POOL_COMPLETED
    pool: dict[str, Any]
    gift: str
    count: int
    coins: int
    diamonds: int


class PoolClosed(RoomEvent, frozen=True):
    """A pool voided for good: `kind` is pool_expired, pool_cancelled or pool_voided."""

    kind: EventKind
    pool: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        assert self.kind in POOL_CLOSED_KINDS.values(), self.kind
        return {"kind": str(self.kind), "pool": self.pool}


# A closed pool's status -> the event that announces it.
POOL_CLOSED_KINDS = {
    "expired": EventKind.POOL_EXPIRED,
    "cancelled": EventKind.POOL_CANCELLED,
    "voided": EventKind.POOL_VOIDED,
}


class RoomEnded(RoomEvent, frozen=True):
    KIND: ClassVar[EventKind] = EventKind.ROOM_ENDED
    ts: int


class StreamSummary(RoomEvent, frozen=True):
    KIND: ClassVar[EventKind] = EventKind.STREAM_SUMMARY
    summary: dict[str, Any]


class ComboEnd(RoomEvent, frozen=True):
    KIND: ClassVar[EventKind] = EventKind.COMBO_END
    combo: dict[str, Any]  # {"id", "count"}
    gift: str
    sender: str
    sender_name: str


class Viewers(RoomEvent, frozen=True):
    KIND: ClassVar[EventKind] = EventKind.VIEWERS
    count: int


class Leaderboard(RoomEvent, frozen=True):
    KIND: ClassVar[EventKind] = EventKind.LEADERBOARD
    top: list[dict[str, Any]]


class TickSummary(RoomEvent, frozen=True):
    """Cheap gifts of a tick that did not fit in a viewer's frame; a sender's copy adds their own `gift_ids`."""

    KIND: ClassVar[EventKind] = EventKind.TICK_SUMMARY
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"gift_ids"})
    gifts: int
    coins: int
    gift_ids: list[str] | None = None


class GoalCompleted(RoomEvent, frozen=True):
    KIND: ClassVar[EventKind] = EventKind.GOAL_COMPLETED
    goal: dict[str, Any]


class MatchStarted(RoomEvent, frozen=True):
    """Both rooms of a match get it once: `match` is the match's public view (gifting/rooms/matches.py)."""

    KIND: ClassVar[EventKind] = EventKind.MATCH_STARTED
    match: dict[str, Any]


class MatchScore(RoomEvent, frozen=True):
    """The score after one gift scored: in both rooms, once per gift (its dedupe id is the gift's)."""

    KIND: ClassVar[EventKind] = EventKind.MATCH_SCORE
    match: str
    gift_id: str
    side: str
    points_a: int
    points_b: int


class MatchEnded(RoomEvent, frozen=True):
    KIND: ClassVar[EventKind] = EventKind.MATCH_ENDED
    match: dict[str, Any]


class Stage(RoomEvent, frozen=True):
    """Who is on the room's stage (valid gift recipients besides the host), after every change."""

    KIND: ClassVar[EventKind] = EventKind.STAGE
    guests: list[str]


class MatchInvited(RoomEvent, frozen=True):
    """In the invited creator's room: an invite to answer (their studio shows Accept / Decline)."""

    KIND: ClassVar[EventKind] = EventKind.MATCH_INVITED
    match: dict[str, Any]


class HighlightEvent(RoomEvent, frozen=True):
    """A highlighted message bought with coins (gifting/perks.py): pinned until `until_ms`, then unpinned."""

    KIND: ClassVar[EventKind] = EventKind.HIGHLIGHT
    purchase_id: str
    user: str
    name: str
    message: str
    coins: int
    until_ms: int


class EntranceEvent(RoomEvent, frozen=True):
    """A viewer with a running entrance effect joined the room (effect paid until `until_ms`)."""

    KIND: ClassVar[EventKind] = EventKind.ENTRANCE
    user: str
    name: str
    until_ms: int
