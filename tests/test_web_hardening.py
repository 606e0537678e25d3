"""Hardening of the web edge (issue #10): earnings, logs, overlay tokens, body and connection limits, the lobby,
page headers. Real uvicorn on 127.0.0.1, real sockets, real Valkey."""

from __future__ import annotations

from typing import Any

from tests.conftest import System, gift_id


def keys_anywhere(value: Any) -> set[str]:
    """Every dict key at any depth of a JSON value."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_anywhere(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_anywhere(v)}
    return set()


# Item 6: earnings are the creator's ------------------------------------------------------------------------


async def test_earnings_reach_only_the_creator_and_admins(system: System) -> None:
    """The stream summary's diamonds reach the creator's socket and the creator's/admins' HTTP reads only."""
    await system.grant("v1", 5000)
    room = await system.open_room("c1")
    viewer, creator = await system.connect("w"), await system.connect("c1", "creator")
    await viewer.join(room)
    await creator.join(room)
    response = await system.http.post(
        f"/v1/rooms/{room}/gifts",
        headers=system.auth("v1"),
        json={"gift": "money_rain", "count": 1, "gift_id": gift_id()},
    )
    assert response.status_code == 200, response.text
    await system.http.post(f"/v1/rooms/{room}/end", headers=system.auth("c1", "creator"))
    for client, sees in ((viewer, False), (creator, True)):
        message = await client.wait_for(
            lambda m: m.get("type") == "events" and any(e["kind"] == "stream_summary" for e in m["events"])
        )
        assert ("diamonds" in keys_anywhere(message)) is sees, message
    rejoined = await system.connect("w2")
    joined = await rejoined.join(room)
    assert "diamonds" not in keys_anywhere(joined), joined
    url = f"/v1/rooms/{room}/summary"
    for headers, sees in (
        ({}, False),
        (system.auth("v1"), False),
        (system.auth("c2", "creator"), False),
        ({"Authorization": "Bearer not-a-token"}, False),
        (system.auth("c1", "creator"), True),
        (system.auth("ops", "admin"), True),
    ):
        body = (await system.http.get(url, headers=headers)).json()
        assert ("diamonds" in keys_anywhere(body)) is sees, (headers, body)
