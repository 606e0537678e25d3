"""The live room's state machine (gifting/live/room.py) alone: no socket, no Valkey, no event loop."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import orjson
import pytest

from gifting.auth import Identity
from gifting.config import Settings
from gifting.live.output import Connection
from gifting.live.room import FillGap, LiveRoom, Phase, plan_join
from gifting.wire.protocol import Codec, Since

SETTINGS = Settings(combo_window_ms=1000, big_gift_coins=100, frame_events_max=50)
QUEUE_BYTES_MAX = 1 << 20


def conn(user: str, codec: Codec = Codec.JSON, direct: bool = True) -> Connection:
    """A connection the room can hold: on a direct socket (a transport the room never writes to) or not."""
    transport = asyncio.WriteTransport() if direct else None
    return Connection(Identity(user, "viewer", user), codec, QUEUE_BYTES_MAX, transport)


def gift(offset: int, sender: str = "s", combo: str | None = None, count: int = 1) -> dict[str, Any]:
    event: dict[str, Any] = {"kind": "gift", "offset": offset, "gift_id": f"g{offset}", "gift": "rose"}
    event |= {"sender": sender, "count": 1, "coins": 1, "diamonds": 1}
    if combo is not None:
        event["combo"] = {"id": combo, "count": count}
    return event


def room_with(*members: Connection, creator: str = "c1") -> LiveRoom:
    """A room whose members all joined at offset 0 and had their first tick."""
    room = LiveRoom("r1", SETTINGS, creator=creator)
    for member in members:
        room.begin_join(member)
        room.finish_join(member, 0, [])
    room.add_counter({"kind": "viewers", "count": len(members)})
    tick(room, 0.0)
    return room


def tick(room: LiveRoom, now_s: float) -> dict[Connection, dict[str, Any]]:
    """One tick, executed as the hub does: the frame each connection got (decoded)."""
    frames = room.tick(now_s)
    got: dict[Connection, dict[str, Any]] = {}
    if frames is not None:
        for member in frames.shared:
            user = member.identity.user
            out = frames.own_frame(user) if user in frames.own else frames.encoded(False, Codec.JSON)
            got[member] = orjson.loads(out.data)
        for member, out in frames.sends:
            got[member] = decode(member, out.data)
        room.written()
    room.check()
    return got


def decode(member: Connection, data: str | bytes) -> dict[str, Any]:
    if member.codec is Codec.MSGPACK:
        assert isinstance(data, bytes)
        unpacked: dict[str, Any] = msgpack.unpackb(data)
        return unpacked
    decoded: dict[str, Any] = orjson.loads(data)
    return decoded


def offsets(frame: dict[str, Any]) -> list[int]:
    return [e["offset"] for e in frame["events"] if "offset" in e]


def test_a_gap_in_the_live_feed_asks_for_a_fill_and_holds_later_events_behind_it() -> None:
    """Offsets 1, 2 then 5: fill 3..4; events arriving meanwhile wait; after the fill the tick covers 1..7 in order."""
    viewer = conn("v")
    room = room_with(viewer)
    assert room.announce([gift(1), gift(2)], 0.0) is None
    assert room.announce([gift(5), gift(6)], 0.0) == FillGap(2, 5)
    assert room.announce([gift(7)], 0.0) is None
    assert room.gap_filled([gift(2), gift(3), gift(4), gift(5)], 0.0) is None  # history may overlap the edges
    frame = tick(room, 0.1)[viewer]
    assert offsets(frame) == [1, 2, 3, 4, 5, 6, 7] and (frame["from"], frame["to"]) == (1, 7)


def test_a_gap_history_no_longer_holds_is_skipped_and_the_feed_goes_on() -> None:
    """A fill that finds nothing (history trimmed or unreadable): the feed resumes after the gap, and a later jump
    is not taken for a new gap (clients see the jump in offsets and resume)."""
    viewer = conn("v")
    room = room_with(viewer)
    room.announce([gift(1)], 0.0)
    assert room.announce([gift(4)], 0.0) == FillGap(1, 4)
    assert room.gap_filled([], 0.0) is None
    assert offsets(tick(room, 0.1)[viewer]) == [1, 4]
    assert room.announce([gift(5)], 0.0) is None and offsets(tick(room, 0.2)[viewer]) == [5]


def test_a_fill_missing_the_first_offsets_restarts_from_what_history_has() -> None:
    """History holds 3 but not 2: the fill is incomplete, so the room takes what follows (3, 4) as the new start."""
    viewer = conn("v")
    room = room_with(viewer)
    room.announce([gift(1)], 0.0)
    assert room.announce([gift(4)], 0.0) == FillGap(1, 4)
    assert room.gap_filled([gift(3)], 0.0) is None
    assert offsets(tick(room, 0.1)[viewer]) == [1, 3, 4]


def test_events_already_delivered_are_not_delivered_again() -> None:
    """An announcement overlapping what the room already took (a replay during a fill) adds only newer offsets."""
    viewer = conn("v")
    room = room_with(viewer)
    room.announce([gift(1), gift(2)], 0.0)
    room.announce([gift(2), gift(3)], 0.0)
    assert offsets(tick(room, 0.1)[viewer]) == [1, 2, 3]


def test_a_join_during_a_storm_gets_every_offset_once() -> None:
    """Live events keep coming while a joiner reads its snapshot (which ends at 3): its catch-up frame has 4, the
    next tick does not repeat it, and from its first tick on it takes the room's shared frame."""
    steady, joiner = conn("a"), conn("b")
    room = room_with(steady)
    room.announce([gift(1)], 0.0)
    room.begin_join(joiner)
    room.announce([gift(2), gift(3)], 0.0)
    got = tick(room, 0.1)
    assert joiner not in got and offsets(got[steady]) == [1, 2, 3]  # a joiner gets no tick
    room.announce([gift(4)], 0.0)
    catch_up = room.finish_join(joiner, 3, [])
    assert catch_up is not None and offsets(catch_up) == [4] and (catch_up["from"], catch_up["to"]) == (4, 4)
    assert room.members[joiner].phase is Phase.FRESH and joiner not in room.shared
    got = tick(room, 0.2)
    assert offsets(got[steady]) == [4] and joiner not in got  # it has 4 already: nothing for it this tick
    assert room.members[joiner].phase is Phase.STEADY and joiner in room.shared
    room.announce([gift(5)], 0.0)
    got = tick(room, 0.3)
    assert offsets(got[steady]) == offsets(got[joiner]) == [5]


def test_a_fresh_joiner_gets_only_the_events_above_its_floor() -> None:
    """A joiner whose snapshot ended at 2 while the tick holds 1..4 gets 3..4; the steady viewer gets 1..4."""
    steady, joiner = conn("a"), conn("b")
    room = room_with(steady)
    room.announce([gift(1), gift(2)], 0.0)
    room.begin_join(joiner)
    assert room.finish_join(joiner, 2, []) is None  # the live events it saw are in its snapshot already
    room.announce([gift(3), gift(4)], 0.0)
    got = tick(room, 0.1)
    assert offsets(got[steady]) == [1, 2, 3, 4]
    assert offsets(got[joiner]) == [3, 4] and (got[joiner]["from"], got[joiner]["to"]) == (3, 4)


def test_a_resume_replay_is_followed_by_the_live_events_that_arrived_during_it() -> None:
    """Replayed 3..4 from history, live 4..5 during the join: the catch-up frame covers 3..5, each offset once."""
    joiner = conn("b")
    room = room_with(conn("a"))
    room.announce([gift(1), gift(2)], 0.0)
    room.begin_join(joiner)
    room.announce([gift(3), gift(4), gift(5)], 0.0)
    catch_up = room.finish_join(joiner, 4, [gift(3), gift(4)])
    assert catch_up is not None and offsets(catch_up) == [3, 4, 5]


def test_membership_paths_creator_msgpack_and_fallback_are_written_one_by_one() -> None:
    """Only JSON viewers on a direct socket share the one prebuilt frame; the creator (who sees diamonds), a
    msgpack viewer and a fallback connection get their own encodings."""
    viewer, creator, packed, fallback = conn("v"), conn("c1"), conn("m", Codec.MSGPACK), conn("f", direct=False)
    room = room_with(viewer, creator, packed, fallback, creator="c1")
    assert set(room.shared) == {viewer} and room.others == {creator, packed, fallback}
    room.announce([gift(1)], 0.0)
    frames = room.tick(0.1)
    assert frames is not None
    sent = {c.identity.user: decode(c, out.data) for c, out in frames.sends}
    assert sent["c1"]["events"][0]["diamonds"] == 1 and "diamonds" not in sent["f"]["events"][0]
    assert "diamonds" not in sent["m"]["events"][0] and isinstance(frames.sends[0][1].data, str | bytes)
    assert "diamonds" not in orjson.loads(frames.encoded(False, Codec.JSON).data)["events"][0]


def test_leave_empties_the_room_and_a_failed_join_leaves_no_trace() -> None:
    """A join that fails midway (leave while JOINING) stops the room keeping live events; the last leave empties it."""
    viewer, joiner = conn("a"), conn("b")
    room = room_with(viewer)
    room.begin_join(joiner)
    assert set(room.joining) == {joiner} and room.leave(joiner) is False
    assert not room.joining and joiner not in room.members
    assert room.finish_join(joiner, 0, []) is None and joiner not in room.members  # its snapshot came back late
    room.check()
    assert room.leave(viewer) is True and not room.members and not room.shared and not room.others


def test_a_combo_ends_one_window_after_its_last_gift() -> None:
    """A combo extended within the window goes on; one combo_end (with the last count) once a window passes idle."""
    viewer = conn("v")
    room = room_with(viewer)
    room.announce([gift(1, combo="k", count=1)], 0.0)
    tick(room, 0.0)
    room.announce([gift(2, combo="k", count=2)], 0.8)  # within the window: now ends at 1.8
    assert all(e["kind"] == "gift" for e in tick(room, 0.8)[viewer]["events"])
    assert tick(room, 1.5) == {}
    ended = tick(room, 1.8)[viewer]["events"]
    assert ended == [
        {"kind": "combo_end", "combo": {"id": "k", "count": 2}, "gift": "rose", "sender": "s"} | {"sender_name": ""}
    ]
    assert tick(room, 5.0) == {} and not room.combos


def test_cheap_repeats_merge_for_viewers_but_not_for_the_creator() -> None:
    """Three gifts of one combo in one tick: viewers get one merged entry (merged 3), the creator all three."""
    viewer, creator = conn("v"), conn("c1")
    room = room_with(viewer, creator, creator="c1")
    room.announce([gift(i, combo="k", count=i) for i in (1, 2, 3)], 0.0)
    got = tick(room, 0.1)
    (entry,) = got[viewer]["events"]
    assert entry["merged"] == 3 and entry["gift_ids"] == ["g1", "g2", "g3"] and got[viewer]["to"] == 3
    assert offsets(got[creator]) == [1, 2, 3]


@pytest.mark.parametrize(
    ("since", "offset", "expected"),
    [
        (None, 10, (-1, False)),  # a plain join: a snapshot
        (Since("e1", 10), 10, (0, False)),  # exactly at the end: nothing missed, recovered without a replay
        (Since("e1", 7), 10, (3, True)),  # 3 missed: replayed
        (Since("e1", 4), 10, (6, False)),  # more missed than GIFTING_REPLAY_EVENTS_MAX (5): a fresh snapshot
        (Since("e0", 7), 10, (-1, False)),  # another epoch (history was lost): a fresh snapshot
        (Since("e1", 12), 10, (-2, False)),  # beyond the room's history: a fresh snapshot
    ],
)
def test_plan_join_resume_edge_cases(since: Since | None, offset: int, expected: tuple[int, bool]) -> None:
    """What a resume replays, per since: at the end, within the replay limit, over it, another epoch, beyond."""
    plan = plan_join(offset, "e1", since, snapshot_events=4, replay_events_max=5)
    assert (plan.missed, plan.replay) == expected and plan.first == 7
    if since is not None:
        assert plan.recovered(since.offset, []) is (plan.missed == 0)


def test_a_replay_with_holes_is_not_recovered() -> None:
    """History trimmed under the resume: the replay lacks its first event, so the client gets a fresh snapshot."""
    plan = plan_join(10, "e1", Since("e1", 7), snapshot_events=4, replay_events_max=5)
    assert plan.recovered(7, [gift(8), gift(9), gift(10)]) is True
    assert plan.recovered(7, [gift(9), gift(10)]) is False
    assert plan_join(3, "e1", None, snapshot_events=50, replay_events_max=5).first == 0
