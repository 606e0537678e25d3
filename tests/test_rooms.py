"""Room history as announce.lua stores it: one announcement per call, offsets dense, trimmed by offset."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from gifting import keys
from gifting.config import Settings
from gifting.rooms.store import RoomStore, announced_events, history_events, top_entries

pytestmark = pytest.mark.cluster  # on a standalone Valkey and on a Valkey Cluster (tests/conftest.py)


def test_announcement_gives_each_event_its_offset_and_combo() -> None:
    announcement = {
        "from": 7,
        "combos": [[1, "g-1", 3]],
        "events": [{"kind": "goal_progress"}, {"kind": "gift", "gift_id": "g-2"}],
    }
    events = announced_events(orjson.dumps(announcement))
    assert events == [
        {"kind": "goal_progress", "offset": 7},
        {"kind": "gift", "gift_id": "g-2", "offset": 8, "combo": {"id": "g-1", "count": 3}},
    ]
    entries = [
        ("8-0", {"e": orjson.dumps(announcement).decode()}),
        ("9-0", {"e": '{"from":9,"combos":[],"events":[{}]}'}),
    ]
    assert [e["offset"] for e in history_events(entries)] == [7, 8, 9]


def gift(n: int, sender: str = "v1") -> tuple[str, dict[str, Any]]:
    event = {"kind": "gift", "gift_id": f"g-{n}", "gift": "rose", "count": 1, "coins": 1, "diamonds": 0}
    return f"g-{n}", event | {"sender": sender, "sender_name": sender}


async def test_announce_appends_once_combos_and_trims_by_offset(redis: aioredis.Redis) -> None:
    store = RoomStore(redis, Settings.from_env({}, room_history_events_max=10))
    room = (await store.open("c1", "C1", "Live")).room
    assert await store.announce(room, [gift(1), gift(2), gift(1)]) == 2  # the same dedupe id twice: once
    assert await store.announce(room, [gift(2), gift(3)]) == 1  # announced earlier: skipped
    events = history_events(await redis.xrange(keys.room_history(room)))
    assert [(e["gift_id"], e["offset"], e["combo"]["count"]) for e in events] == [
        ("g-1", 1, 1),
        ("g-2", 2, 2),
        ("g-3", 3, 3),
    ]  # one sender, one gift, inside the combo window: one combo, its id the first gift's
    assert {e["combo"]["id"] for e in events} == {"g-1"}
    for n in range(4, 40):
        await store.announce(room, [gift(n, sender=f"v{n}")])
    kept = history_events(await redis.xrange(keys.room_history(room)))
    assert kept[-1]["offset"] == 39 and len(kept) >= 10  # MINID ~: at least the last 10 events stay
    assert [e["offset"] for e in kept] == list(range(kept[0]["offset"], 40))
    assert int(await redis.hget(keys.room_meta(room), "offset")) == 39


async def test_top_gifters_read_a_bounded_number_of_members_however_many_tie(redis: aioredis.Redis) -> None:
    """50,000 members tied at the last place: the top list is right and reads a few members, not all of them."""
    key = keys.room_top("r1")
    tied = {f"u:v{i:05d}": 1 for i in range(50_000)}
    for chunk in range(0, 50_000, 5000):
        await redis.zadd(key, dict(itertools.islice(tied.items(), chunk, chunk + 5000)))
    await redis.zadd(key, {"u:whale": 9, "u:dolphin": 5})
    sent_before = int((await redis.info("stats"))["total_net_output_bytes"])
    top = await top_entries(redis, key, 4)
    sent = int((await redis.info("stats"))["total_net_output_bytes"]) - sent_before
    assert [(t["user"], t["coins"]) for t in top] == [("whale", 9), ("dolphin", 5), ("v00000", 1), ("v00001", 1)]
    assert await top_entries(redis, key, 1) == [top[0]]
    assert sent < 64 * 1024, f"{sent} bytes read for a top 4"
