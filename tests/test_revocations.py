"""A socket lives no longer than its token: closed at `exp`, and on every web process when an admin revokes the
user's tokens, even by a process that missed the revocation's pub/sub message."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest
import websockets

from gifting import auth, keys
from tests.conftest import SECRET, System, SystemFactory, WsClient

REVOKED_WITHIN_S = 10.0


async def closed_with(client: WsClient, timeout_s: float = REVOKED_WITHIN_S) -> tuple[int | None, list[str]]:
    """Read until the server closes the socket: (close code, error codes received before it)."""
    errors: list[str] = []
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            message = await client.recv(timeout_s)
            if message.get("type") == "error":
                errors.append(message["code"])
    return (info.value.rcvd.code if info.value.rcvd is not None else None), errors


def token_issued_at(user: str, issued_at: int) -> str:
    """A token as the platform would mint it at `issued_at` (unix seconds)."""
    claims: dict[str, Any] = {"sub": user, "role": "viewer", "name": user, "iat": issued_at, "exp": issued_at + 3600}
    return jwt.encode(claims, SECRET, algorithm=auth.ALGORITHM)


async def revoke_quietly(system: System, user: str) -> int:
    """A revocation whose pub/sub message every process missed: the table and version change, nothing is
    published."""
    second = int(time.time())
    await system.redis.hset(keys.AUTH_NOT_BEFORE, user, second)
    await system.redis.incr(keys.AUTH_VERSION)
    return second


async def test_socket_closes_when_its_token_expires(system: System) -> None:
    """A socket opened with a token about to expire is closed with 4001 (`token_expired`) when `exp` passes."""
    room = await system.open_room("c1")
    client = await system.connect("v1", raw_token=auth.mint(SECRET, "v1", "viewer", ttl_s=3))
    assert (await client.recv())["type"] == "welcome"
    await client.send({"type": "join", "room": room})
    code, errors = await closed_with(client)
    assert (code, errors) == (4001, ["token_expired"])
    assert any(m["type"] == "joined" for m in client.seen)  # it worked until then


async def test_admin_revocation_closes_sockets_on_every_process(start_system: SystemFactory) -> None:
    """Revoking a user's tokens closes their sockets on both web processes and refuses their old token over HTTP;
    a token issued after the revocation works."""
    first = await start_system()
    second = await start_system(worker=False)
    on_first, on_second = await first.connect("v1"), await second.connect("v1")
    bystander = await second.connect("v2")
    old = {"Authorization": f"Bearer {token_issued_at('v1', int(time.time()))}"}
    assert (await second.http.get("/v1/wallet", headers=old)).status_code == 200
    response = await first.http.post("/v1/admin/users/v1/revoke-tokens", headers=first.auth("admin", "admin"))
    assert response.status_code == 200, response.text
    not_before = response.json()["not_before"]
    for client in (on_first, on_second):
        assert await closed_with(client) == (4001, ["token_revoked"])
    for system in (first, second):
        refused = await system.http.get("/v1/wallet", headers=old)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "token_revoked"
    await asyncio.sleep(max(0.0, not_before + 1 - time.time()))  # a token issued in a later second
    fresh = auth.mint(SECRET, "v1", "viewer")
    assert (await second.http.get("/v1/wallet", headers={"Authorization": f"Bearer {fresh}"})).status_code == 200
    again = await second.connect("v1", raw_token=fresh)
    assert (await again.recv())["type"] == "welcome"
    await bystander.send({"type": "ping", "ref": "still here"})
    assert (await bystander.wait_type("pong"))["ref"] == "still here"


async def test_revoked_token_is_refused_at_the_handshake(system: System) -> None:
    """A socket opened with a revoked token is told `token_revoked` and closed with 4001."""
    issued = int(time.time())
    await system.http.post("/v1/admin/users/v1/revoke-tokens", headers=system.auth("admin", "admin"))
    client = await system.connect("v1", raw_token=token_issued_at("v1", issued))
    assert await closed_with(client) == (4001, ["token_revoked"])


async def test_a_missed_revocation_is_caught_up_periodically(start_system: SystemFactory) -> None:
    """A revocation whose pub/sub message was lost still closes the socket, at the next version check."""
    system = await start_system(sync_check_interval_s=0.2)
    client = await system.connect("v1")
    await revoke_quietly(system, "v1")
    assert await closed_with(client) == (4001, ["token_revoked"])


async def test_a_missed_revocation_is_caught_up_on_resubscribe(start_system: SystemFactory) -> None:
    """When the hub's pub/sub connection is dropped, it re-subscribes and compares versions at once."""
    system = await start_system(sync_check_interval_s=3600.0)
    client = await system.connect("v1")
    await revoke_quietly(system, "v1")
    await asyncio.sleep(0.3)  # nothing announced it: the socket stays open until something checks
    await client.send({"type": "ping"})
    assert (await client.wait_type("pong"))["type"] == "pong"
    await system.redis.client_kill_filter(_type="pubsub")
    assert await closed_with(client) == (4001, ["token_revoked"])


async def test_revoke_bad_input(system: System) -> None:
    """Only admins revoke, and the user id must be one."""
    viewer = await system.http.post("/v1/admin/users/v1/revoke-tokens", headers=system.auth("v2"))
    assert viewer.status_code == 403
    bad = await system.http.post("/v1/admin/users/a%20b/revoke-tokens", headers=system.auth("admin", "admin"))
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_user"


def test_verify_refuses_tokens_issued_up_to_the_not_before_second() -> None:
    """A revoked user's tokens issued at or before their not-before second, or without `iat`, are refused;
    later ones and other users' are not."""
    now = int(time.time())
    table = {"v1": now - 10}
    for issued_at, ok in ((now - 20, False), (now - 10, False), (now - 9, True)):
        token = token_issued_at("v1", issued_at)
        if ok:
            assert auth.verify(SECRET, token, table).issued_at == issued_at
        else:
            with pytest.raises(auth.AuthError) as info:
                auth.verify(SECRET, token, table)
            assert info.value.code == "token_revoked"
    no_iat = jwt.encode({"sub": "v1", "role": "viewer", "exp": now + 60}, SECRET, algorithm=auth.ALGORITHM)
    with pytest.raises(auth.AuthError, match="revoked"):
        auth.verify(SECRET, no_iat, table)
    assert auth.verify(SECRET, token_issued_at("v2", now - 20), table).user == "v2"
    assert auth.verify(SECRET, no_iat).expires_at == now + 60
