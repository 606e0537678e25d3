"""What a viewer's frame holds when a room is busy: the big-room policy. Pure; no I/O.

Per room and tick, the creator gets every event. Viewers get the same events with these changes:

1. Creator-only fields (`diamonds`) are removed.
2. Cheap gifts (below `big_gift_coins`) of one combo (same sender, same gift, within the combo window) merge
   into one entry: the last one, whose `combo.count` is the running total; `merged` says how many gift
   messages it stands for, and its `count` and `coins` are their sums. Gifts at or above `big_gift_coins`
   are never merged.
3. At most `frame_events_max` entries, counting the tick's entries without an offset (`combo_end`,
   `viewers`, `leaderboard`). Over that, entries are kept in priority order: big gifts, then goal, pool and
   other room events, then combos by value, then counters; the cheap gifts that do not fit are counted in one
   `tick_summary` entry (`gifts`, `coins`, no offset). Counters that do not fit are dropped: a later push
   carries fresh ones. (The sender's own `gift_result` does not wait for a tick at all.)

The frame says which offsets it covers (`from`, `to`), so a client can check continuity even though merged
entries skip offsets, and resume from `to`.
"""

from __future__ import annotations

from typing import Any

from gifting.protocol import for_viewers

Event = dict[str, Any]

# Higher keeps its place first when a frame is over its entry limit.
PRIORITY_BIG_GIFT = 3
PRIORITY_ROOM = 2  # goal_*, pool_*, room_ended, stream_summary: events with an offset that are not gifts
PRIORITY_COMBO = 1
PRIORITY_COUNTER = 0  # combo_end, viewers, leaderboard: no offset, and a later push supersedes them


def offsets_covered(events: list[Event]) -> tuple[int, int] | None:
    offsets = [e["offset"] for e in events if "offset" in e]
    return (min(offsets), max(offsets)) if offsets else None


def for_viewers_frame(
    events: list[Event], big_gift_coins: int, frame_events_max: int, counters: list[Event] | None = None
) -> list[Event]:
    """The viewers' entries for one tick of one room (history `events`, then `counters`), per the policy above."""
    merged: list[Event] = []
    last_index: dict[str, int] = {}  # combo id -> index in merged
    for event in events:
        entry = for_viewers(event)
        combo = entry.get("combo")
        if entry.get("kind") == "gift" and combo and entry.get("coins", 0) < big_gift_coins:
            previous = last_index.get(combo["id"])
            if previous is not None:
                before = merged[previous]
                merged[previous] = {}  # replaced by the later entry, which carries the running combo count
                entry = {
                    **entry,
                    "merged": before.get("merged", 1) + 1,
                    "count": before["count"] + entry["count"],
                    "coins": before["coins"] + entry["coins"],
                }
            last_index[combo["id"]] = len(merged)
        merged.append(entry)
    entries = [e for e in merged if e] + (counters or [])
    if len(entries) <= frame_events_max:
        return entries
    return _cap(entries, big_gift_coins, frame_events_max)


def _priority(entry: Event, big_gift_coins: int) -> int:
    if "offset" not in entry:
        return PRIORITY_COUNTER
    if entry.get("kind") != "gift":
        return PRIORITY_ROOM
    return PRIORITY_BIG_GIFT if entry.get("coins", 0) >= big_gift_coins else PRIORITY_COMBO


def _cap(entries: list[Event], big_gift_coins: int, frame_events_max: int) -> list[Event]:
    ranked = sorted(
        range(len(entries)),
        key=lambda i: (-_priority(entries[i], big_gift_coins), -entries[i].get("coins", 0), i),
    )
    keep = set(ranked[: frame_events_max - 1])  # one place for the summary
    dropped = [entries[i] for i in range(len(entries)) if i not in keep and entries[i].get("kind") == "gift"]
    kept = [entries[i] for i in sorted(keep)]
    summary = {
        "kind": "tick_summary",
        "gifts": sum(e.get("merged", 1) for e in dropped),
        "coins": sum(e.get("coins", 0) for e in dropped),
    }
    return [*kept, summary]
