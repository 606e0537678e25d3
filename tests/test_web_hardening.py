"""Hardening of the web edge (issue #10): earnings, logs, overlay tokens, body and connection limits, the lobby,
page headers. Real uvicorn on 127.0.0.1, real sockets, real Valkey."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets

from gifting import keys, logs
from gifting.embedded import free_port
from tests.conftest import REPO, SECRET, System, SystemFactory, gift_id, stop, token
from tests.test_multiprocess import dev_env, tail, wait_ready


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
    resumed = await system.connect("w3")  # a resume from offset 0 replays the whole history
    assert (await resumed.join(room, since={"epoch": joined["epoch"], "offset": 0}))["recovered"] is True
    replay = await resumed.wait_type("events")
    assert any(e["kind"] == "stream_summary" for e in replay["events"]), replay
    assert "diamonds" not in keys_anywhere(replay), replay
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


# Item 8: no credential in any log line ---------------------------------------------------------------------

PAYMENT_TOKENS = ("tok_sandbox_ok", "tok_sandbox_declined")


class Lines(logging.Handler):
    """Every record as its handler would print it, traceback included."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Every log line of this process meanwhile: the root logger's and uvicorn's (which do not propagate)."""
    handler = Lines()
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.access")]
    root_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        logging.getLogger().setLevel(root_level)


def leaked(text: str, credentials: list[str]) -> list[str]:
    """The credentials (and JWT-looking strings) that appear in `text`."""
    return [c for c in [*credentials, "eyJ"] if c in text]


async def exercise_credentials(base_url: str, tokens: list[str]) -> None:
    """Requests that carry tokens every way a client may send them, payment tokens, and a refused token."""
    viewer, creator = tokens
    async with httpx.AsyncClient(base_url=base_url, timeout=15) as http:
        assert (await http.get(f"/v1/wallet?token={viewer}")).status_code == 200
        assert (await http.get("/v1/wallet", headers={"Authorization": f"Bearer {creator}"})).status_code == 200
        for payment_token in PAYMENT_TOKENS:
            await http.post(
                "/v1/wallet/purchases",
                headers={"Authorization": f"Bearer {viewer}", "Idempotency-Key": gift_id()},
                json={"bundle_id": "coins_65", "payment_token": payment_token},
            )
        assert (await http.get(f"/v1/wallet?token={viewer[:-4]}AAAA")).status_code == 401
    ws_url = base_url.replace("http://", "ws://") + "/v1/ws"
    for tok in (viewer, creator, viewer[:-4] + "AAAA"):
        async with websockets.connect(f"{ws_url}?token={tok}", open_timeout=10) as conn:
            await asyncio.wait_for(conn.recv(), 10)


async def test_no_token_secret_or_payment_token_reaches_a_log_line(start_system: SystemFactory) -> None:
    """With uvicorn's access and websocket lines on, a run's logs hold no token, secret or payment token."""
    system = await start_system(server={"log_level": "debug", "access_log": True})
    with captured_logs() as lines:  # after the start: uvicorn's logging setup replaces its loggers' handlers
        minted = (await system.http.get("/dev/token?user=v9&role=admin")).json()["token"]
        tokens = [token("v1"), token("c1", "creator")]
        await exercise_credentials(system.base_url, tokens)
    text = "\n".join(lines)
    assert '"WebSocket /v1/ws?' in text, "uvicorn's websocket line was not captured: the test would prove nothing"
    assert not leaked(text, [*tokens, minted, SECRET, *PAYMENT_TOKENS]), text[-3000:]


def test_scrub_removes_credentials_in_any_shape() -> None:
    """The scrubber: query strings, bearer headers, JWTs, payment tokens, key/value credentials, the secret."""
    logs.install("a-registered-secret-value")
    jwt = token("v1")
    for line in (
        f'127.0.0.1:5 - "WebSocket /v1/ws?token={jwt}" [accepted]',
        f'127.0.0.1:5 - "GET /v1/wallet?limit=5&token={jwt} HTTP/1.1" 200',
        f"Authorization: Bearer {jwt}",
        f"{{'payment_token': 'tok_live_123', 'token': '{jwt}'}}",
        "config secret=a-registered-secret-value",
        f"bare {jwt} in text",
    ):
        clean = logs.scrub(line)
        assert not leaked(clean, [jwt, "tok_live_123", "a-registered-secret-value"]), (line, clean)
    assert logs.scrub("gift g-1 settled in room r_1") == "gift g-1 settled in room r_1"


def test_dev_run_logs_hold_no_credentials(tmp_path: Path) -> None:
    """`gifting dev` with its output redirected (a log): no demo token, secret, client token or payment token."""
    env = dev_env(tmp_path / "data", free_port())
    log_path = tmp_path / "dev.log"
    with open(log_path, "wb") as log:
        dev = subprocess.Popen(
            [sys.executable, "-m", "gifting.cli", "dev"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )
    try:
        base_url = f"http://127.0.0.1:{env['GIFTING_PORT']}"
        with httpx.Client(base_url=base_url, timeout=10) as http:
            wait_ready(http, dev, log_path)
        tokens = [mint_cli(env, "v1", "viewer"), mint_cli(env, "c1", "creator")]
        asyncio.run(exercise_credentials(base_url, tokens))
        dev.send_signal(signal.SIGINT)
        assert dev.wait(30) == 0, tail(log_path)
    finally:
        stop(dev)
    text = log_path.read_text(errors="replace")
    secret = (tmp_path / "data" / "secret").read_text().strip()
    assert "demo-links.txt" in text and "WebSocket /v1/ws" in text, text
    assert not leaked(text, [*tokens, secret, *PAYMENT_TOKENS]), text
    links = tmp_path / "data" / "demo-links.txt"
    assert "#token=eyJ" in links.read_text() and links.stat().st_mode & 0o077 == 0


def mint_cli(env: dict[str, str], user: str, role: str) -> str:
    command = [sys.executable, "-m", "gifting.cli", "token", user, "--role", role]
    return subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()


# Items 10 and 11: bounded bodies, request heads and connections -------------------------------------------------

READ_S = 10.0  # how long a test waits for an answer or a close it expects (never a timing assertion)


async def open_raw(system: System) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = system.base_url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of one answer (the server closes the connection after it)."""
    raw = await asyncio.wait_for(reader.read(), READ_S)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), orjson.loads(body)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server closes the connection (within READ_S), False if it is still open."""
    try:
        return await asyncio.wait_for(reader.read(), READ_S) == b""
    except TimeoutError:
        return False


async def test_body_over_the_limit_is_refused_on_content_length_without_reading_it(system: System) -> None:
    """A 150 MiB Content-Length gets 413 body_too_large after the head alone, on any route, the body unsent."""
    for path in ("/v1/wallet/limits", "/healthz", "/v1/no-such-route"):
        reader, writer = await open_raw(system)
        writer.write(
            f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {150 << 20}\r\nAuthorization: Bearer {token('v1')}\r\n\r\n".encode()
            + b'{"daily_spend_coins_max": 1'
        )
        await writer.drain()
        status, body = await read_answer(reader)
        assert (status, body["error"]["code"]) == (413, "body_too_large"), (path, body)
        writer.close()


async def test_streamed_body_is_cut_at_the_limit(start_system: SystemFactory) -> None:
    """A chunked body with no length is answered 413 as soon as it passes the limit; the rest is never read."""
    system = await start_system(http_body_bytes_max=1024)
    reader, writer = await open_raw(system)
    writer.write(
        b"PUT /v1/wallet/limits HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        + f"Authorization: Bearer {token('v1')}\r\n\r\n".encode()
    )
    for _ in range(3):  # 1,536 bytes of a body that never ends
        writer.write(b"200\r\n" + b" " * 512 + b"\r\n")
    await writer.drain()
    status, body = await read_answer(reader)
    assert (status, body["error"]["code"]) == (413, "body_too_large"), body
    writer.close()
    ok = await system.http.put("/v1/wallet/limits", headers=system.auth("v1"), json={"daily_spend_coins_max": 5})
    assert ok.status_code == 200, ok.text


async def read_one_response(reader: asyncio.StreamReader) -> bytes:
    """The head of one keep-alive answer, its body read and dropped."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_S)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await asyncio.wait_for(reader.readexactly(length), READ_S)
    return head


async def sends_slowly_until_cut_off(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Send a request head one line every 0.2 s for up to READ_S; True once the server has closed it."""
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    for i in range(int(READ_S / 0.2)):
        try:
            writer.write(f"X-Slow-{i}: 1\r\n".encode())
            await writer.drain()
        except ConnectionError:
            return True
        with contextlib.suppress(TimeoutError):
            if await asyncio.wait_for(reader.read(1), 0.2) == b"":
                return True
    return False


async def test_slow_request_head_is_closed_at_the_header_timeout(start_system: SystemFactory) -> None:
    """One header line every 0.2 s (slowloris), on a fresh connection or after an answered request, is cut off
    once the head's deadline passes; others are served."""
    system = await start_system(http_header_timeout_s=1.0)
    reader, writer = await open_raw(system)
    assert await sends_slowly_until_cut_off(reader, writer), "a request head sent one line at a time stayed open"
    writer.close()
    reader, writer = await open_raw(system)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_one_response(reader)).startswith(b"HTTP/1.1 200")
    assert await sends_slowly_until_cut_off(reader, writer), "a second request's slow head stayed open"
    writer.close()
    assert (await system.http.get("/healthz")).status_code == 200


async def test_idle_connections_are_closed(start_system: SystemFactory) -> None:
    """A connection that never sends a byte, and a keep-alive one idle after its answer, are closed."""
    system = await start_system(http_header_timeout_s=1.0, http_idle_timeout_s=1)
    reader, writer = await open_raw(system)
    assert await closed_by_server(reader), "a connection that sent nothing stayed open"
    writer.close()
    reader, writer = await open_raw(system)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_one_response(reader)).startswith(b"HTTP/1.1 200")
    assert await closed_by_server(reader), "an idle keep-alive connection stayed open"
    writer.close()


async def wait_served(system: System) -> None:
    """A fresh connection is served again (the server has seen the client's closes); bounded by READ_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READ_S
    while True:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=READ_S) as http:
            if (await http.get("/healthz")).status_code == 200:
                return
        assert loop.time() < deadline, "the server never served a new connection after closes"
        await asyncio.sleep(0.05)


async def test_connections_per_address_are_capped_websockets_included(start_system: SystemFactory) -> None:
    """Over GIFTING_CONNECTIONS_PER_ADDRESS_MAX, a new connection gets 503 too_many_connections; closing frees it."""
    system = await start_system(connections_per_address_max=3)
    websocket = await system.connect("v1")
    held = [await open_raw(system) for _ in range(2)]
    reader, writer = await open_raw(system)
    status, body = await read_answer(reader)
    assert (status, body["error"]["code"]) == (503, "too_many_connections"), body
    writer.close()
    await websocket.close()  # a websocket's place is given back when it closes
    await wait_served(system)
    for _, held_writer in held:
        held_writer.close()


async def test_connections_per_process_are_capped(start_system: SystemFactory) -> None:
    """Over GIFTING_CONNECTIONS_MAX, a new connection gets 503 too_many_connections at once."""
    system = await start_system(connections_max=2)
    held = [await open_raw(system) for _ in range(2)]
    reader, writer = await open_raw(system)
    status, body = await read_answer(reader)
    assert (status, body["error"]["code"]) == (503, "too_many_connections"), body
    writer.close()
    for _, held_writer in held:
        held_writer.close()
    await wait_served(system)


# Item 22: page headers and dev endpoints -------------------------------------------------------------------------


def csp_directives(response: httpx.Response) -> dict[str, str]:
    """The Content-Security-Policy header as {directive: sources}; a repeated directive fails the test."""
    directives: dict[str, str] = {}
    for part in response.headers["content-security-policy"].split(";"):
        name, _, sources = part.strip().partition(" ")
        assert name not in directives, f"directive {name} twice: {response.headers['content-security-policy']}"
        directives[name] = sources
    return directives


async def test_every_page_and_asset_has_the_security_headers(system: System) -> None:
    """Pages and static assets carry CSP (frame-ancestors 'none') and nosniff; pages are not served as static."""
    for path in ("/", "/watch/r_x", "/studio", "/overlay/r_x", "/dev", "/static/js/client.js", "/static/css/app.css"):
        response = await system.http.get(path)
        assert response.headers.get("x-content-type-options") == "nosniff", path
        assert csp_directives(response)["frame-ancestors"] == "'none'", path
        assert response.headers.get("x-frame-options") == "DENY", path
    for name in ("index.html", "dev.html", "studio.html", "INDEX.HTML"):
        assert (await system.http.get(f"/static/{name}")).status_code == 404, name


async def test_host_header_cannot_inject_a_csp_directive(system: System) -> None:
    """A Host header with CSP syntax is never copied into the policy; a plain one still names the socket."""
    for host in ("x; script-src *", "x script-src *", "x,y", "a'b"):
        directives = csp_directives(await system.http.get("/", headers={"Host": host}))
        assert directives["script-src"] == "'self'" and directives["connect-src"] == "'self'", (host, directives)
    plain = csp_directives(await system.http.get("/", headers={"Host": "live.example:8443"}))
    assert plain["connect-src"] == "'self' ws://live.example:8443 wss://live.example:8443"


async def test_dev_token_answers_only_loopback_hosts(system: System) -> None:
    """DNS rebinding: /dev/token and /dev refuse a Host that is not localhost, 127.0.0.1 or [::1]."""
    port = system.base_url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil.example"):
        refused = await system.http.get("/dev/token?role=admin", headers={"Host": host})
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "dev_host_refused"), host
        assert (await system.http.get("/dev", headers={"Host": host})).status_code == 403, host
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
        minted = await system.http.get("/dev/token?role=admin", headers={"Host": host})
        assert minted.status_code == 200 and minted.json()["token"], host


# Item 14: the lobby is paginated, live rooms are capped per creator ------------------------------------------------


async def test_one_live_room_per_creator(system: System) -> None:
    """Going live while live is 409 already_live; after the stream ends the creator can go live again."""
    room = await system.open_room("c1")
    again = await system.http.post("/v1/rooms", headers=system.auth("c1", "creator"), json={"title": "Again"})
    assert (again.status_code, again.json()["error"]["code"]) == (409, "already_live"), again.text
    assert room in again.json()["error"]["message"]
    await system.http.post(f"/v1/rooms/{room}/end", headers=system.auth("c1", "creator"))
    assert await system.open_room("c1") != room


async def lobby_pages(system: System, limit: int) -> list[list[str]]:
    """Every page of GET /v1/rooms, following next_cursor (at most 100 pages)."""
    pages: list[list[str]] = []
    cursor = None
    for _ in range(100):
        params = {"limit": str(limit)} | ({"cursor": cursor} if cursor else {})
        body = (await system.http.get("/v1/rooms", params=params)).json()
        pages.append([r["room"] for r in body["rooms"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError("next_cursor never ran out")


async def test_lobby_pages_through_every_live_room_once(system: System) -> None:
    """Pages of the lobby hold every live room exactly once, newest first, even with equal start times."""
    rooms = [await system.open_room(f"c{i}") for i in range(7)]
    # Opened within one ms, rooms would tie: the order is pinned first, then every start time made equal.
    await system.redis.zadd(keys.ROOMS_LIVE, {room: 1_700_000_000_000 + i for i, room in enumerate(rooms)})
    pages = await lobby_pages(system, 3)
    assert [len(p) for p in pages] == [3, 3, 1] and [r for p in pages for r in p] == rooms[::-1]
    await system.redis.zadd(keys.ROOMS_LIVE, dict.fromkeys(rooms, 1_700_000_000_000))
    tied = [r for p in await lobby_pages(system, 2) for r in p]
    assert sorted(tied) == sorted(rooms) and len(tied) == len(rooms)
    default = (await system.http.get("/v1/rooms")).json()
    assert len(default["rooms"]) == 7 and default["next_cursor"] is None
    for query, code in (("limit=0", "bad_limit"), ("limit=101", "bad_limit"), ("limit=x", "bad_limit"),
                        ("cursor=nope", "bad_cursor"), ("cursor=1.r_a%20b", "bad_cursor")):  # fmt: skip
        response = await system.http.get(f"/v1/rooms?{query}")
        assert (response.status_code, response.json()["error"]["code"]) == (400, code), query


async def test_a_creators_live_room_is_found_directly_behind_a_full_lobby(system: System) -> None:
    """With 120 newer rooms ahead of it in the lobby, GET /v1/creators/{c}/live still finds the creator's room."""
    room = await system.open_room("c1")
    for i in range(120):
        await system.app.state.rooms.open(f"flood{i}", "Flood", "newer")
    first_page = (await system.http.get("/v1/rooms?limit=100")).json()
    assert room not in [r["room"] for r in first_page["rooms"]] and first_page["next_cursor"]
    found = (await system.http.get("/v1/creators/c1/live")).json()
    assert found["room"]["room"] == room and found["room"]["creator"] == "c1"
    assert (await system.http.get("/v1/creators/nobody/live")).json() == {"room": None}
    bad = await system.http.get("/v1/creators/a%20b/live")
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "bad_creator")


# Item 9: the overlay link carries a read-only token ---------------------------------------------------------------


async def overlay_token_of(system: System, creator: str) -> str:
    response = await system.http.post("/v1/overlay-tokens", headers=system.auth(creator, "creator"))
    assert response.status_code == 201, response.text
    minted: str = response.json()["token"]
    return minted


async def test_overlay_token_reads_the_creators_feed_and_nothing_else(system: System) -> None:
    """An overlay token joins its creator's rooms and sees gifts (the viewers' copy); it cannot gift, start
    pools, join other creators' rooms, or use any HTTP endpoint (wallet, withdrawals, more tokens)."""
    await system.grant("v1", 1000)
    room, other_room = await system.open_room("c1"), await system.open_room("c2")
    overlay = await overlay_token_of(system, "c1")
    viewer_only = await system.http.post("/v1/overlay-tokens", headers=system.auth("v1"))
    assert viewer_only.status_code == 403
    bearer = {"Authorization": f"Bearer {overlay}"}
    for method, path, body in (
        ("GET", "/v1/wallet", None),
        ("POST", "/v1/wallet/withdrawals", {"diamonds": 1000}),
        ("PUT", "/v1/wallet/limits", {"daily_spend_coins_max": 1}),
        ("POST", "/v1/overlay-tokens", None),
        ("POST", f"/v1/rooms/{room}/end", None),
        ("GET", f"/v1/rooms/{room}/earnings", None),
    ):
        response = await system.http.request(method, path, headers={**bearer, "Idempotency-Key": gift_id()}, json=body)
        assert (response.status_code, response.json()["error"]["code"]) == (403, "token_scope"), (path, response.text)
    summary = (await system.http.get(f"/v1/rooms/{room}/summary", headers=bearer)).json()
    assert "diamonds" not in summary

    client = await system.connect("ignored", raw_token=overlay)
    assert (await client.recv())["type"] == "welcome"
    assert (await client.join(room))["type"] == "joined"
    refused = await client.join(other_room)
    assert (refused["type"], refused["code"]) == ("error", "token_scope"), refused
    for message in (
        {"type": "gift", "room": room, "gift": "rose", "count": 1, "gift_id": gift_id()},
        {"type": "pool_start", "room": room, "gift": "galaxy", "deadline_s": 60},
    ):
        await client.send(message)
        error = await client.wait_type("error")
        assert error["code"] == "token_scope", error
    response = await system.http.post(
        f"/v1/rooms/{room}/gifts", headers=system.auth("v1"), json={"gift": "rose", "count": 1, "gift_id": gift_id()}
    )
    assert response.status_code == 200, response.text
    frame = await client.wait_for(lambda m: m.get("type") == "events" and any(e["kind"] == "gift" for e in m["events"]))
    assert "diamonds" not in keys_anywhere(frame), frame


def test_tokens_with_an_unknown_scope_are_refused() -> None:
    """A token whose scope this server does not know is invalid, not a full-power token."""
    import jwt

    from gifting import auth

    forged = jwt.encode({"sub": "c1", "role": "creator", "scope": "admin-ish", "exp": 2**40}, SECRET, "HS256")
    try:
        auth.verify(SECRET, forged)
    except auth.AuthError as exc:
        assert exc.code == "unauthorized"
    else:
        raise AssertionError("a token with an unknown scope was accepted")
