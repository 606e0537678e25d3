"""The gift path end to end, in-process: buy coins, open a room, send a gift, see it in the room."""

from __future__ import annotations

import pytest

from tests.conftest import System

pytestmark = pytest.mark.cluster  # on a standalone Valkey and on a Valkey Cluster (tests/conftest.py)


async def test_gift_settles_and_reaches_room_and_creator(system: System) -> None:
    """A settled gift debits the viewer, credits the creator's share, and reaches viewers and the creator."""
    await system.buy("viewer1", "coins_328")
    room = await system.open_room("creator1")
    creator = await system.connect("creator1", "creator")
    viewer = await system.connect("viewer1")
    other = await system.connect("viewer2")
    for client in (creator, viewer, other):
        joined = await client.join(room)
        assert joined["type"] == "joined" and joined["status"] == "live"
    gid = await viewer.gift(room, "confetti", 2)
    result = await viewer.result(gid)
    assert result == {"type": "gift_result", "gift_id": gid, "status": "settled", "reason": None, "coins": 128}
    seen = await other.wait_type("events")
    assert [(e["kind"], e["gift_id"], e["gift"], e["count"], e["sender"]) for e in seen["events"]] == [
        ("gift", gid, "confetti", 2, "viewer1")
    ]
    assert "diamonds" not in seen["events"][0]
    feed = await creator.wait_type("events")
    assert feed["events"][0]["diamonds"] == 100 and feed["events"][0]["offset"] == 1
    assert await system.wallet("viewer1") == {"coins": 128, "diamonds": 0}
    assert await system.wallet("creator1") == {"coins": 0, "diamonds": 100}
