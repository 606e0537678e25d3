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
import websockets

from gifting import logs
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
