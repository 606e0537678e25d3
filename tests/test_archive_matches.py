"""Ended matches past their hot window move to a real PostgreSQL exactly once and leave Valkey only then;
GET /v1/matches/{id} answers the same from there. Invites never played expire from Valkey instead."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from gifting import keys
from gifting.history import matches as archive
from tests.conftest import SystemFactory
from tests.test_matches import FAST, _ended, start_match, wait_until

FAR_FUTURE_MS = 2**62


@pytest.fixture
async def records(history: psycopg.AsyncConnection[Any]) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """The history database with no archived match, before and after the test."""
    await history.execute("TRUNCATE matches")
    yield history
    await history.execute("TRUNCATE matches")


async def match_keys_left(system: Any, match: str) -> int:
    names = [keys.match_meta(match), keys.match_scored(match), *(keys.match_gifters(match, s) for s in "ab")]
    return int(await system.redis.exists(*names))


@pytest.mark.cluster
async def test_ended_matches_move_once_and_are_read_after_they_leave_valkey(
    start_system: SystemFactory, records: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    """A played match stays in Valkey until its hot window passes, then moves once (a round that crashed between
    commit and drop adds no row when repeated) and its keys leave Valkey; GET /v1/matches/{id} is unchanged."""
    system = await start_system(database_url=database_url, **FAST)
    await system.grant("v1", 100)
    match, room_a, _room_b = await start_match(system, duration_s=1)
    client = await system.connect("v1")
    assert (await client.result(await client.gift(room_a, "rose", 1)))["status"] == "settled"
    await wait_until(lambda: _ended(system, match), "match ended")
    await wait_until(lambda: _swept(system, match), "match swept")
    view = (await system.http.get(f"/v1/matches/{match}")).json()
    assert view["result"]["winner"] == "a" and await match_keys_left(system, match) >= 2
    assert await archive.archive_due(system.redis, records, 0, 10) == 0  # ended after that: still hot
    assert await archive.commit_due(system.redis, records, FAR_FUTURE_MS, 10) == [(match, True)]  # then a crash
    assert await match_keys_left(system, match) >= 2  # nothing dropped before the drop
    assert await archive.archive_due(system.redis, records, FAR_FUTURE_MS, 10) == 1
    assert await match_keys_left(system, match) == 0 and not await system.redis.zcard(keys.MATCHES_ENDED)
    assert [r[0] for r in await (await records.execute("SELECT id FROM matches")).fetchall()] == [match]
    assert (await system.http.get(f"/v1/matches/{match}")).json() == view
    missing = await system.http.get("/v1/matches/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "match_not_found", missing.text


async def test_a_declined_invite_expires_after_the_hot_window_and_is_not_archived(
    start_system: SystemFactory, records: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    """Declined (never played): once the worker sweeps it past its invite deadline, its record has a TTL of
    GIFTING_MATCH_HOT_S and is never indexed for the archive."""
    system = await start_system(database_url=database_url, **FAST, match_invite_timeout_s=1, match_hot_s=3600)
    await system.open_room("ca")
    await system.open_room("cb")
    invite = await system.http.post("/v1/matches", headers=system.auth("ca", "creator"), json={"opponent": "cb"})
    assert invite.status_code == 201, invite.text
    match = invite.json()["id"]
    declined = await system.http.post(f"/v1/matches/{match}/decline", headers=system.auth("cb", "creator"))
    assert declined.json()["status"] == "declined", declined.text
    await wait_until(lambda: _swept(system, match), "invite swept")
    assert 0 < await system.redis.ttl(keys.match_meta(match)) <= 3600
    assert not await system.redis.zcard(keys.MATCHES_ENDED)


async def _swept(system: Any, match: str) -> bool:
    return await system.redis.zscore(keys.MATCHES_DUE, match) is None
