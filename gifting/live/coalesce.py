"""What a viewer's frame holds when a room is busy: the big-room policy. Pure; no I/O.

Per room and tick, the creator gets every event. Viewers get the same events with these changes:

1. Creator-only fields (`diamonds`) are removed.
2. Cheap gifts (below `big_gift_coins`) of one combo (same sender, same gift, within the combo window) merge
   into one entry: the last one, whose `combo.count` is the running total; `merged` says how many gift
   messages it stands for, `gift_ids` which ones (in offset order, its own `gift_id` last), and its `count`
   and `coins` are their sums. So every client can account for every gift exactly, whatever order a sender's
   gifts settled in (settlement runs batches concurrently: a sender's gifts need not reach the room in the
   order they were sent). One entry stands for at most `merged_gifts_max` gifts (its `gift_ids` bound the
   frame's bytes); the combo's next gift starts a new entry. Gifts at or above `big_gift_coins` are never
   merged.
3. A `match_score` is a snapshot of the whole score: of a tick's `match_score` events of one match, viewers get
   only the last (a storm scores hundreds of gifts a tick; the frame's `from`/`to` still cover every offset).
4. At most `frame_events_max` entries, counting the tick's entries without an offset (`combo_end`,
   `viewers`, `leaderboard`). Over that, entries are kept in priority order: big gifts, then goal, pool and
   other room events, then combos by value, then counters; the cheap gifts that do not fit are counted in one
   `tick_summary` entry (`gifts`, `coins`, no offset). Counters that do not fit are dropped: a later push
   carries fresh ones. (The sender's own `gift_result` does not wait for a tick at all.)
5. A sender whose own gifts went into the `tick_summary` gets its own copy of the frame, whose summary also
   lists them (`gift_ids`): so a sender accounts for each of its gifts exactly, while everyone else's copy
   stays one encoding per tick and the summary stays small however many gifts it counts.

The frame says which offsets it covers (`from`, `to`), so a client can check continuity even though merged
entries skip offsets, and resume from `to`.
"""

from __future__ import annotations

from typing import Any

from gifting.wire.messages import EventKind, TickSummary
from gifting.wire.protocol import for_viewers

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
    events: list[Event],
    big_gift_coins: int,
    frame_events_max: int,
    counters: list[Event] | None = None,
    merged_gifts_max: int = 20,
) -> list[Event]:
    """The viewers' entries for one tick of one room (history `events`, then `counters`), per the policy above."""
    return shape_for_viewers(events, big_gift_coins, frame_events_max, counters, merged_gifts_max)[0]


def shape_for_viewers(
    events: list[Event],
    big_gift_coins: int,
    frame_events_max: int,
    counters: list[Event] | None = None,
    merged_gifts_max: int = 20,
) -> tuple[list[Event], dict[str, list[str]]]:
    """The viewers' entries (as for_viewers_frame), and per sender the ids of its gifts the tick_summary counts."""
    merged: list[Event] = []
    last_index: dict[str, int] = {}  # combo id -> index in merged
    last_score = {e["match"]: i for i, e in enumerate(events) if e.get("kind") == EventKind.MATCH_SCORE}
    for i, event in enumerate(events):
        if event.get("kind") == EventKind.MATCH_SCORE and last_score[event["match"]] != i:
            continue  # superseded within the tick (rule 3)
        entry = for_viewers(event)
        combo = entry.get("combo")
        if entry.get("kind") == EventKind.GIFT and combo and entry.get("coins", 0) < big_gift_coins:
            previous = last_index.get(combo["id"])
            if previous is not None and merged[previous].get("merged", 1) < merged_gifts_max:
                entry = _merge(merged[previous], entry)
                merged[previous] = {}  # replaced by the later entry, which carries the running combo count
            last_index[combo["id"]] = len(merged)
        merged.append(entry)
    entries = [e for e in merged if e] + (counters or [])
    if len(entries) <= frame_events_max:
        return entries, {}
    return _cap(entries, big_gift_coins, frame_events_max)


def own_copy(entries: list[Event], gift_ids: list[str]) -> list[Event]:
    """A sender's copy of the viewers' entries: its tick_summary also lists the sender's own gifts it counts."""
    return [{**e, "gift_ids": gift_ids} if e.get("kind") == EventKind.TICK_SUMMARY else e for e in entries]


def _merge(before: Event, entry: Event) -> Event:
    """`entry` standing for itself and the gifts `before` stands for: what each merged entry says exactly."""
    gift_ids = before.get("gift_ids", [before["gift_id"]])
    return {
        **entry,
        "merged": len(gift_ids) + 1,
        "gift_ids": [*gift_ids, entry["gift_id"]],
        "count": before["count"] + entry["count"],
        "coins": before["coins"] + entry["coins"],
    }


def _priority(entry: Event, big_gift_coins: int) -> int:
    if "offset" not in entry:
        return PRIORITY_COUNTER
    if entry.get("kind") != EventKind.GIFT:
        return PRIORITY_ROOM
    return PRIORITY_BIG_GIFT if entry.get("coins", 0) >= big_gift_coins else PRIORITY_COMBO


def _cap(entries: list[Event], big_gift_coins: int, frame_events_max: int) -> tuple[list[Event], dict[str, list[str]]]:
    ranked = sorted(
        range(len(entries)),
        key=lambda i: (-_priority(entries[i], big_gift_coins), -entries[i].get("coins", 0), i),
    )
    keep = set(ranked[: frame_events_max - 1])  # one place for the summary
    dropped = [entries[i] for i in range(len(entries)) if i not in keep and entries[i].get("kind") == EventKind.GIFT]
    kept = [entries[i] for i in sorted(keep)]
    summary = TickSummary(
        gifts=sum(e.get("merged", 1) for e in dropped), coins=sum(e.get("coins", 0) for e in dropped)
    ).to_dict()
    own: dict[str, list[str]] = {}
    for entry in dropped:
        own.setdefault(entry.get("sender", ""), []).extend(entry.get("gift_ids", [entry["gift_id"]]))
    return [*kept, summary], own
