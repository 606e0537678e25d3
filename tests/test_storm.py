"""A gift storm at the hub: every settled gift is shown to its room exactly once, merged, summarized or not.

Many senders send the same cheap gift (which combos and merges) across many ticks, with a few big gifts, a
sender whose coins run out (rejections), rate-limited gifts resent with the same gift_id, and one lost pub/sub
announcement in the middle (the hub fills the gap from history). Then every socket's frames are checked: by
the gift ids that entries, merged entries (`gift_ids`) and a sender's own copy of a `tick_summary` name.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from typing import Any

from gifting import keys
from gifting.live import coalesce
from gifting.live.hub import Hub
from gifting.live.room import LiveRoom
from tests.conftest import System, SystemFactory, WsClient

SENDERS = 10
GIFTS_PER_SENDER = 24
BURST = 8  # gifts sent back to back: more than the bucket (GIFT_BURST), so some are rate_limited
GIFT_BURST = 5
POOR_COINS = 6  # the poor sender can pay for this many roses; the rest are rejected insufficient_coins
RESULT_TIMEOUT_S = 30.0


def plan(sender: int) -> list[str]:
    """Mostly roses (1 coin: merged into combos), now and then a money_rain (500: never merged)."""
    return ["money_rain" if (sender + i) % 11 == 0 else "rose" for i in range(GIFTS_PER_SENDER)]


async def send_storm(client: WsClient, room: str, gifts: list[str], retried: set[str]) -> dict[str, dict[str, Any]]:
    """Send `gifts` in bursts; resend a rate_limited one with the same gift_id; every final result by id."""
    waiting: dict[str, str] = {}
    for start in range(0, len(gifts), BURST):
        for gift in gifts[start : start + BURST]:
            waiting[await client.gift(room, gift)] = gift
        await asyncio.sleep(0.03)  # the next burst lands in a later tick
    results: dict[str, dict[str, Any]] = {}
    while waiting:
        result = await client.wait_for(
            lambda m: m.get("type") == "gift_result" and m.get("gift_id") in waiting, RESULT_TIMEOUT_S
        )
        gift_id = result["gift_id"]
        if result["reason"] == "rate_limited":
            retried.add(gift_id)
            await asyncio.sleep(0.05)
            await client.gift(room, waiting[gift_id], gid=gift_id)
            continue
        results[gift_id] = result
        del waiting[gift_id]
    return results


def lose_one_announcement(hub: Hub, lost: list[dict[str, Any]]) -> None:
    """The hub misses the fourth announcement of gifts on pub/sub, as if its subscriber connection dropped it."""
    accept = hub._accept_events
    calls = itertools.count(1)

    def accept_events(room: LiveRoom, events: list[dict[str, Any]]) -> None:
        if not lost and any(e.get("kind") == "gift" for e in events) and next(calls) == 4:
            lost.extend(events)
            return
        accept(room, events)

    hub._accept_events = accept_events  # type: ignore[method-assign]


async def read_until(client: WsClient, room_offset: int) -> list[dict[str, Any]]:
    """Every events frame this socket got, once its frames cover the room's last offset."""
    while max((m.get("to", 0) for m in client.seen if m.get("type") == "events"), default=0) < room_offset:
        await client.wait_type("events", RESULT_TIMEOUT_S)
    return [m for m in client.seen if m.get("type") == "events"]


def shown_ids(frames: list[dict[str, Any]], user: str | None) -> Counter[str]:
    """Gift ids the frames account for: each entry's `gift_ids` (merged) or `gift_id`, and the ids a sender's
    own copy of a tick_summary lists (`user`: that sender's socket)."""
    shown: Counter[str] = Counter()
    for entry in (e for f in frames for e in f["events"]):
        if entry.get("kind") == "gift":
            ids = entry.get("gift_ids", [entry["gift_id"]])
            assert len(ids) == entry.get("merged", 1), entry
            shown.update(ids)
        elif entry.get("kind") == "tick_summary" and user is not None:
            shown.update(entry.get("gift_ids", []))
    return shown


def tiled(frames: list[dict[str, Any]], joined_offset: int, last: int) -> bool:
    """The frames cover every offset after the join exactly once (merged entries skip offsets, frames do not)."""
    covered = [(f["from"], f["to"]) for f in frames if "from" in f]
    return (
        covered[0][0] == joined_offset + 1
        and covered[-1][1] == last
        and all(b[0] == a[1] + 1 for a, b in itertools.pairwise(covered))
    )


async def test_storm_shows_every_settled_gift_exactly_once(start_system: SystemFactory) -> None:
    """Merged, summarized or alone, across ticks, a gap fill and rate_limited resends: each settled gift is
    shown once to the room (creator, viewer, and its sender's own copy), and no rejected gift ever is."""
    system: System = await start_system(
        tick_ms=20, frame_events_max=8, gift_rate_per_s=40.0, gift_burst=GIFT_BURST, combo_window_ms=5000
    )
    users = [f"s{i}" for i in range(SENDERS)]
    for user in users[1:]:
        await system.grant(user, 1_000_000)
    await system.grant(users[0], POOR_COINS)
    room = await system.open_room("c1")
    creator, viewer = await system.connect("c1", "creator"), await system.connect("watcher")
    senders = [await system.connect(user) for user in users]
    joined = {id(c): (await c.join(room))["offset"] for c in (creator, viewer, *senders)}
    lost: list[dict[str, Any]] = []
    lose_one_announcement(system.hub, lost)
    retried: set[str] = set()

    outcomes = await asyncio.gather(*(send_storm(c, room, plan(i), retried) for i, c in enumerate(senders)))
    last = int(await system.redis.hget(keys.room_meta(room), "offset") or 0)
    settled = [{g for g, r in out.items() if r["status"] == "settled"} for out in outcomes]
    rejected = {g for out in outcomes for g, r in out.items() if r["status"] == "rejected"}
    all_settled = set().union(*settled)
    assert lost and retried and rejected  # the storm had each of its hazards
    assert {r["reason"] for out in outcomes for r in out.values() if r["status"] == "rejected"} == {
        "insufficient_coins"
    }
    assert len(all_settled) == SENDERS * GIFTS_PER_SENDER - len(rejected) == last - joined[id(viewer)]

    creator_shown = shown_ids(await read_until(creator, last), None)
    assert creator_shown == Counter(all_settled)  # the full feed: every settled gift once, nothing else
    viewer_frames = await read_until(viewer, last)
    assert tiled(viewer_frames, joined[id(viewer)], last)
    summarized = sum(e["gifts"] for f in viewer_frames for e in f["events"] if e.get("kind") == "tick_summary")
    viewer_shown = shown_ids(viewer_frames, None)
    entries = [e for f in viewer_frames for e in f["events"] if e.get("kind") == "gift"]
    frames_per_combo = Counter(e["combo"]["id"] for f in viewer_frames for e in f["events"] if e.get("kind") == "gift")
    assert any(e.get("merged", 1) > 1 for e in entries) and max(frames_per_combo.values()) > 1  # merged, across ticks
    assert summarized > 0 and max(viewer_shown.values()) == 1 and set(viewer_shown) <= all_settled
    assert viewer_shown.total() + summarized == len(all_settled)
    for client, user, own in zip(senders, users, settled, strict=True):
        frames = await read_until(client, last)
        assert tiled(frames, joined[id(client)], last)
        mine = {g: n for g, n in shown_ids(frames, user).items() if g in own or g in rejected}
        assert mine == dict.fromkeys(own, 1), user  # its own settled gifts once each, its rejected ones never


def test_policy_names_what_merged_entries_and_summaries_stand_for() -> None:
    """The pure policy: a merged entry lists its gift ids (at most merged_gifts_max), and the ids a tick_summary
    counts are returned per sender, for that sender's own copy only."""
    events = [
        {"offset": i + 1, "kind": "gift", "gift_id": f"g{i}", "gift": "rose", "count": 1, "coins": 1,
         "sender": "a" if i < 7 else f"u{i}", "combo": {"id": "ca" if i < 7 else f"c{i}", "count": i + 1}}
        for i in range(12)
    ]  # fmt: skip
    entries, own = coalesce.shape_for_viewers(events, 500, 50, None, merged_gifts_max=3)
    assert [e.get("gift_ids") for e in entries[:3]] == [["g0", "g1", "g2"], ["g3", "g4", "g5"], None]
    assert [e.get("merged", 1) for e in entries[:3]] == [3, 3, 1] and entries[2]["gift_id"] == "g6" and own == {}
    capped, own = coalesce.shape_for_viewers(events, 500, 2, None, merged_gifts_max=3)
    summary = capped[-1]
    assert summary == {"kind": "tick_summary", "gifts": 9, "coins": 9} and "gift_ids" not in summary
    assert own == {"a": ["g3", "g4", "g5", "g6"], **{f"u{i}": [f"g{i}"] for i in range(7, 12)}}
    mine = coalesce.own_copy(capped, own["a"])
    assert mine[-1]["gift_ids"] == own["a"] and capped[-1] == summary  # the shared copy is untouched
