"""gifting.wire.messages: every typed message and room event has exactly the wire shape the code built as a dict."""

from __future__ import annotations

from typing import Any

import msgpack
import orjson
import pytest

from gifting.wire import messages as m
from gifting.wire.protocol import Codec, encode

POOL = {"id": "p_0123456789abcdef", "room": "r1", "gift": "rocket", "price": 500, "status": "open"}
GOAL = {"id": "g1", "kind": "gift", "gift": "rose", "target": 10, "progress": 3, "status": "active"}
LIMITS = m.Limits(1024, 99, 10.0, 20, 8, 20.0, 40, 5)

# (typed value, the dict literal the code built before the types), keys in the order they were built.
CASES: list[tuple[m.ServerMessage | m.RoomEvent, dict[str, Any]]] = [
    (
        m.Welcome("u1", "viewer", "U", LIMITS),
        {
            "type": "welcome",
            "user": "u1",
            "role": "viewer",
            "name": "U",
            "limits": {
                "message_bytes_max": 1024,
                "gift_count_max": 99,
                "gift_rate_per_s": 10.0,
                "gift_burst": 20,
                "rooms_per_connection_max": 8,
                "message_rate_per_s": 20.0,
                "message_burst": 40,
                "join_cost": 5,
            },
        },
    ),
    (
        m.Joined("r1", "e1", 7, "live", "T", "c1", "C", 3, None, [], [POOL], ref="j"),
        {
            "type": "joined",
            "room": "r1",
            "epoch": "e1",
            "offset": 7,
            "status": "live",
            "title": "T",
            "creator": "c1",
            "creator_name": "C",
            "viewers": 3,
            "goal": None,
            "top": [],
            "pools": [POOL],
            "ref": "j",
        },
    ),
    (
        m.Joined("r1", "e1", 7, "ended", "", "c1", "", 0, GOAL, [], [], recovered=False, recent=[]),
        {
            "type": "joined",
            "room": "r1",
            "epoch": "e1",
            "offset": 7,
            "status": "ended",
            "title": "",
            "creator": "c1",
            "creator_name": "",
            "viewers": 0,
            "goal": GOAL,
            "top": [],
            "pools": [],
            "recovered": False,
            "recent": [],
        },
    ),
    (
        m.Events("r1", [{"kind": "viewers", "count": 2}]),
        {"type": "events", "room": "r1", "events": [{"kind": "viewers", "count": 2}]},
    ),
    (m.Events("r1", [], 3, 9), {"type": "events", "room": "r1", "events": [], "from": 3, "to": 9}),
    (
        m.GiftResult("g", "rejected", "rate_limited"),
        {"type": "gift_result", "gift_id": "g", "status": "rejected", "reason": "rate_limited"},
    ),
    (m.GiftResult("g", "pending", None), {"type": "gift_result", "gift_id": "g", "status": "pending", "reason": None}),
    (
        m.GiftResult("g", "settled", None, 90),
        {"type": "gift_result", "gift_id": "g", "status": "settled", "reason": None, "coins": 90},
    ),
    (
        m.PledgeResult("p", "rejected", "overloaded"),
        {"type": "pledge_result", "pledge_id": "p", "status": "rejected", "reason": "overloaded"},
    ),
    (
        m.PledgeResult("p", "accepted", None, True, POOL, 40),
        {"type": "pledge_result", "pledge_id": "p", "pool": POOL, "coins": 40, "status": "accepted", "reason": None},
    ),
    (
        m.PledgeResult("p", "rejected", "unknown_pool", True, None, 40),
        {
            "type": "pledge_result",
            "pledge_id": "p",
            "pool": None,
            "coins": 40,
            "status": "rejected",
            "reason": "unknown_pool",
        },
    ),
    (m.PoolStarted(POOL), {"type": "pool_started", "pool": POOL}),
    (m.PoolStarted(POOL, "r"), {"type": "pool_started", "pool": POOL, "ref": "r"}),
    (m.Left("r1"), {"type": "left", "room": "r1"}),
    (m.Left("r1", "r"), {"type": "left", "room": "r1", "ref": "r"}),
    (m.Pong(), {"type": "pong"}),
    (m.Pong("r"), {"type": "pong", "ref": "r"}),
    (m.Error("bad_count", "no"), {"type": "error", "code": "bad_count", "message": "no"}),
    (m.Error("bad_count", "no", "r"), {"type": "error", "code": "bad_count", "message": "no", "ref": "r"}),
    (
        m.Error("gift_id_conflict", "used", gift_id="g"),
        {"type": "error", "code": "gift_id_conflict", "message": "used", "gift_id": "g"},
    ),
    (
        m.GiftEvent("g", "rose", 2, 20, 10, "u1", "U", 3, 1700),
        {
            "kind": "gift",
            "gift_id": "g",
            "gift": "rose",
            "count": 2,
            "coins": 20,
            "diamonds": 10,
            "sender": "u1",
            "sender_name": "U",
            "level": 3,
            "ts": 1700,
        },
    ),
    (m.GoalProgress(GOAL), {"kind": "goal_progress", "goal": GOAL}),
    (m.GoalCompleted(GOAL), {"kind": "goal_completed", "goal": GOAL}),
    (m.PoolProgress(POOL), {"kind": "pool_progress", "pool": POOL}),
    (
        m.PoolCompleted(POOL, "rocket", 1, 500, 250),
        {"kind": "pool_completed", "pool": POOL, "gift": "rocket", "count": 1, "coins": 500, "diamonds": 250},
    ),
    (m.PoolClosed(m.EventKind.POOL_EXPIRED, POOL), {"kind": "pool_expired", "pool": POOL}),
    (m.PoolClosed(m.EventKind.POOL_CANCELLED, POOL), {"kind": "pool_cancelled", "pool": POOL}),
    (m.PoolClosed(m.EventKind.POOL_VOIDED, POOL), {"kind": "pool_voided", "pool": POOL}),
    (m.RoomEnded(1700), {"kind": "room_ended", "ts": 1700}),
    (m.StreamSummary({"room": "r1"}), {"kind": "stream_summary", "summary": {"room": "r1"}}),
    (
        m.ComboEnd({"id": "c", "count": 4}, "rose", "u1", "U"),
        {"kind": "combo_end", "combo": {"id": "c", "count": 4}, "gift": "rose", "sender": "u1", "sender_name": "U"},
    ),
    (m.Viewers(12), {"kind": "viewers", "count": 12}),
    (m.Leaderboard([{"user": "u1"}]), {"kind": "leaderboard", "top": [{"user": "u1"}]}),
    (m.TickSummary(3, 30), {"kind": "tick_summary", "gifts": 3, "coins": 30}),
    (m.TickSummary(3, 30, ["g"]), {"kind": "tick_summary", "gifts": 3, "coins": 30, "gift_ids": ["g"]}),
    (m.Stage(["g1"]), {"kind": "stage", "guests": ["g1"]}),
    (
        m.GiftEvent("g", "rose", 1, 1, 0, "u1", "U", 0, 1700, to="g1"),
        {
            "kind": "gift",
            "gift_id": "g",
            "gift": "rose",
            "count": 1,
            "coins": 1,
            "diamonds": 0,
            "sender": "u1",
            "sender_name": "U",
            "level": 0,
            "ts": 1700,
            "to": "g1",
        },
    ),
    (m.MatchInvited({"id": "m1"}), {"kind": "match_invited", "match": {"id": "m1"}}),
    (
        m.HighlightEvent("v1:k", "v1", "V", "hi", 50, 1000),
        {
            "kind": "highlight",
            "purchase_id": "v1:k",
            "user": "v1",
            "name": "V",
            "message": "hi",
            "coins": 50,
            "until_ms": 1000,
        },
    ),
    (m.EntranceEvent("v1", "V", 1000), {"kind": "entrance", "user": "v1", "name": "V", "until_ms": 1000}),
    (m.MatchStarted({"id": "m1"}), {"kind": "match_started", "match": {"id": "m1"}}),
    (
        m.MatchScore("m1", "g", "a", 10, 5),
        {"kind": "match_score", "match": "m1", "gift_id": "g", "side": "a", "points_a": 10, "points_b": 5},
    ),
    (m.MatchEnded({"id": "m1"}), {"kind": "match_ended", "match": {"id": "m1"}}),
]


@pytest.mark.parametrize(("value", "expected"), CASES, ids=lambda v: type(v).__name__)
def test_typed_value_has_the_dict_shape_it_replaced(
    value: m.ServerMessage | m.RoomEvent, expected: dict[str, Any]
) -> None:
    """to_dict() is the old dict, keys in the same order, so JSON and msgpack bytes are unchanged."""
    out = value.to_dict()
    assert out == expected
    assert list(out) == list(expected)
    assert orjson.dumps(out) == orjson.dumps(expected)
    assert msgpack.packb(out, use_bin_type=True) == msgpack.packb(expected, use_bin_type=True)


def test_every_server_message_type_and_event_kind_has_a_case() -> None:
    """The table above covers every server message and every event kind defined."""
    types = {d["type"] for _, d in CASES if "type" in d}
    kinds = {d["kind"] for _, d in CASES if "kind" in d}
    assert types == {cls.TYPE for cls in m.SERVER_MESSAGES}
    assert kinds == set(m.EventKind)


def test_enum_values_encode_as_plain_strings() -> None:
    """An EventKind or a RejectReason in a message encodes as its string in both codecs."""
    message = m.GiftResult("g", "rejected", m.EventKind.GIFT).to_dict()
    assert orjson.loads(encode(message, Codec.JSON))["reason"] == "gift"
    assert msgpack.unpackb(encode(message, Codec.MSGPACK))["reason"] == "gift"


def test_pool_closed_refuses_a_kind_that_does_not_close_a_pool() -> None:
    """PoolClosed is only for pool_expired, pool_cancelled and pool_voided."""
    with pytest.raises(AssertionError):
        m.PoolClosed(m.EventKind.GIFT, POOL).to_dict()


def test_close_codes_are_the_documented_numbers() -> None:
    """Close codes keep their numbers (clients act on them)."""
    assert {c.name: int(c) for c in m.CloseCode} == {
        "GOING_AWAY": 1001,
        "UNSUPPORTED_SUBPROTOCOL": 1002,
        "FRAME_TOO_LARGE": 1009,
        "SERVICE_RESTART": 1012,
        "UNAUTHORIZED": 4001,
        "TOO_MANY_INVALID": 4002,
        "SLOW_CONSUMER": 4008,
        "TOO_MANY_CONNECTIONS": 4029,
    }
