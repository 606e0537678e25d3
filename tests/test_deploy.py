"""Deploys lose nothing: during a gift storm the web process and the settlement worker are restarted with SIGTERM
(real `gifting serve` / `gifting worker` subprocesses); clients told 1012 reconnect to the other web process,
resume by offset and resend gifts without a result. Every gift settles once, is shown once, and the money adds up.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import websockets

from gifting.embedded import free_port
from gifting.ledger.audit import run_audit
from tests.conftest import REPO, SECRET, spawn, stop, token
from tests.test_locust_smoke import read_stats
from tests.test_multiprocess import tail, wait_status

SENDERS = 3
GIFTS_PER_SENDER = 60
SEND_GAP_S = 0.02
EXIT_TIMEOUT_S = 15.0  # GIFTING_SHUTDOWN_GRACE_S (2 here) plus interpreter start and stop, generously
RESULTS_TIMEOUT_S = 45.0


class Resilient:
    """A websocket client that survives a deploy as the pages' client does: on a close it reconnects to the next
    web process, rejoins with `since` (epoch, last offset) and resends every gift whose result it has not seen."""

    def __init__(self, urls: list[str], user: str, role: str, room: str) -> None:
        self.urls, self.user, self.role, self.room = urls, user, role, room
        self.url_index = 0
        self.epoch: str | None = None
        self.offset = 0
        self.gift_events: list[dict[str, Any]] = []
        self.pending: dict[str, str] = {}  # gift_id -> gift, sent without a result yet
        self.results: dict[str, dict[str, Any]] = {}
        self.close_codes: list[int | None] = []
        self.conn: Any = None
        self.ready = asyncio.Event()
        self.done = False
        self.errors: list[Exception] = []

    async def run(self) -> None:
        while not self.done:
            url = self.urls[self.url_index % len(self.urls)]
            try:
                async with websockets.connect(
                    f"{url}?token={token(self.user, self.role)}",  # type: ignore[arg-type]
                    subprotocols=["gifting.v1.json"],  # type: ignore[list-item]
                    max_queue=None,
                ) as conn:
                    await self.session(conn)
            except websockets.ConnectionClosed as exc:
                self.close_codes.append(exc.rcvd.code if exc.rcvd else None)
            except OSError:
                pass  # that process is down: the next one
            except Exception as exc:  # a broken check: kept for the test to report, the client stops
                self.errors.append(exc)
                return
            self.ready.clear()
            self.conn = None
            self.url_index += 1
            await asyncio.sleep(0.05)

    async def session(self, conn: Any) -> None:
        join: dict[str, Any] = {"type": "join", "room": self.room}
        if self.epoch is not None:
            join["since"] = {"epoch": self.epoch, "offset": self.offset}
        await conn.send(orjson.dumps(join).decode())
        self.conn = conn
        async for raw in conn:
            message = orjson.loads(raw)
            kind = message.get("type")
            if kind == "joined":
                assert message.get("recovered", True) is not False, "a resume lost history"
                if self.epoch is None:  # a first join starts at the room's offset; a resume replays what followed ours
                    self.epoch, self.offset = message["epoch"], message["offset"]
                for gift_id, gift in list(self.pending.items()):  # results lost with the old process
                    await self.send_gift(gift, gift_id)
                self.ready.set()
            elif kind == "events":
                self.take(message)
            elif kind == "gift_result" and message["status"] != "pending":
                self.results[message["gift_id"]] = message
                self.pending.pop(message["gift_id"], None)

    def take(self, message: dict[str, Any]) -> None:
        """A frame's offsets (`from`..`to`) follow the last one seen: no gap, no duplicate."""
        if message.get("from") is not None:
            assert message["from"] == self.offset + 1, f"{self.user}: frame from {message['from']} after {self.offset}"
            self.offset = message["to"]
        self.gift_events += [event for event in message["events"] if event.get("kind") == "gift"]

    async def send_gift(self, gift: str, gift_id: str | None = None) -> None:
        gift_id = gift_id or str(uuid.uuid4())
        self.pending[gift_id] = gift
        if self.conn is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                message = {"type": "gift", "room": self.room, "gift": gift, "count": 1, "gift_id": gift_id}
                await self.conn.send(orjson.dumps(message).decode())


async def restart(
    process: subprocess.Popen[bytes], command: str, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """SIGTERM the process, check it exits cleanly within EXIT_TIMEOUT_S, start a new one in its place."""
    process.terminate()
    returncode = await asyncio.to_thread(process.wait, EXIT_TIMEOUT_S)
    # uvicorn re-raises the SIGTERM it caught once it has shut down gracefully: -15 is its clean exit.
    assert returncode in (0, -15), tail(log)
    assert "Traceback" not in tail(log), tail(log)
    return spawn(command, env, log.with_suffix(".2.log"))


async def until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_restarting_web_and_worker_during_a_gift_storm_loses_nothing(
    redis: aioredis.Redis, valkey_url: str, tmp_path: Path
) -> None:
    """Web process A and the worker get SIGTERM mid-storm (a rolling deploy, each replaced): A's clients get 1012,
    move to B and back, resume by offset with no gap or duplicate, resend unanswered gifts; every gift settles
    exactly once, the creator sees each exactly once, the senders' coins and the audit agree."""
    ports = [free_port(), free_port()]
    env = {
        "REDIS_URL": valkey_url,
        "GIFTING_DATA_DIR": str(tmp_path),
        "GIFTING_TICK_MS": "20",
        "GIFTING_SHUTDOWN_GRACE_S": "2",
        "GIFTING_CLAIM_IDLE_MS": "1000",
        "GIFTING_GIFT_RATE_PER_S": "1000",
        "GIFTING_GIFT_BURST": "1000",
        "GIFTING_WS_MESSAGE_RATE_PER_S": "1000",
        "GIFTING_WS_MESSAGE_BURST": "1000",
        "GIFTING_CONNECTIONS_PER_ADDRESS_MAX": "0",
    }
    web_env = [{**env, "GIFTING_PORT": str(port)} for port in ports]
    logs = [tmp_path / "web-a.log", tmp_path / "web-b.log", tmp_path / "worker.log"]
    processes = [spawn("serve", web_env[0], logs[0]), spawn("serve", web_env[1], logs[1])]
    processes.append(spawn("worker", env, logs[2]))
    clients: list[Resilient] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        base = [f"http://127.0.0.1:{port}" for port in ports]
        async with httpx.AsyncClient(base_url=base[0], timeout=10) as http:
            for url, process, log in zip(base, processes, logs, strict=False):
                await wait_status(http, f"{url}/healthz", 200, process, log)
            await wait_status(http, "/readyz", 200, processes[2], logs[2])
            creator = {"Authorization": f"Bearer {token('deploy_creator', 'creator')}"}
            opened = await http.post("/v1/rooms", headers=creator, json={"title": "deploy"})
            assert opened.status_code == 201, opened.text
            room = opened.json()["room"]
            coins_before = {}
            for i in range(SENDERS):
                headers = {"Authorization": f"Bearer {token(f'deploy_sender{i}')}", "Idempotency-Key": uuid.uuid4().hex}
                bought = await http.post(
                    "/v1/wallet/purchases",
                    headers=headers,
                    json={"bundle_id": "coins_328", "payment_token": "tok_sandbox_ok"},
                )
                assert bought.status_code == 201, bought.text
                coins_before[f"deploy_sender{i}"] = bought.json()["wallet"]["coins"]

        ws_urls = [url.replace("http://", "ws://") + "/v1/ws" for url in base]
        watcher = Resilient(ws_urls, "deploy_creator", "creator", room)
        senders = [Resilient(ws_urls, f"deploy_sender{i}", "viewer", room) for i in range(SENDERS)]
        clients = [watcher, *senders]
        tasks = [asyncio.create_task(client.run()) for client in clients]
        for client in clients:
            await asyncio.wait_for(client.ready.wait(), 15)

        async def storm(gifts: int) -> None:
            """Each sender sends `gifts` roses, one every SEND_GAP_S; they are in flight when this returns."""
            for _ in range(gifts):
                for sender in senders:
                    await sender.send_gift("rose")
                await asyncio.sleep(SEND_GAP_S)

        third = GIFTS_PER_SENDER // 3
        await storm(third)
        processes[0] = await restart(processes[0], "serve", web_env[0], logs[0])  # web A: its clients move to B
        await storm(third)
        processes[2] = await restart(processes[2], "worker", env, logs[2])
        await storm(GIFTS_PER_SENDER - 2 * third)
        no_errors = lambda: all(not c.errors for c in clients)  # noqa: E731
        await until(lambda: all(not s.pending for s in senders) or not no_errors(), RESULTS_TIMEOUT_S, "results")
        assert no_errors(), [c.errors for c in clients]
        settled = {gid for s in senders for gid, r in s.results.items() if r["status"] == "settled"}
        await until(lambda: len(watcher.gift_events) >= len(settled), RESULTS_TIMEOUT_S, "every gift shown")
        await asyncio.sleep(0.3)  # a duplicate, if any, would arrive now
        assert no_errors(), [c.errors for c in clients]

        assert len(settled) == SENDERS * GIFTS_PER_SENDER  # roses, coins enough: none is rejected
        shown = [event["gift_id"] for event in watcher.gift_events]
        assert sorted(shown) == sorted(settled), "a gift shown twice, or not at all"
        assert any(code == 1012 for client in clients for code in client.close_codes), "no client saw 1012"
        async with httpx.AsyncClient(base_url=base[1], timeout=10) as http:
            for user, before in coins_before.items():
                wallet = await http.get("/v1/wallet", headers={"Authorization": f"Bearer {token(user)}"})
                assert wallet.json()["coins"] == before - GIFTS_PER_SENDER
        report = await run_audit(redis)
        assert report.clean, report.findings
    finally:
        for client in clients:
            client.done = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for process in processes:
            stop(process)


LOCUST_SECONDS = 14
LOCUST_TIMEOUT_S = 50.0
RESTART_AFTER_S = 5.0


@pytest.mark.timeout(LOCUST_TIMEOUT_S + 10)
async def test_locust_users_ride_through_a_web_restart(valkey_url: str, tmp_path: Path) -> None:
    """Locust gifters and viewers get 1012 when the web process is SIGTERMed mid-run, reconnect to its successor on
    the same port, resume by offset and resend unanswered gifts: the run ends with 0 failures (feed order, one
    result per gift, own animations, balance) and counts its server restarts and reconnects."""
    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust is not installed: pip install -e '.[dev]'")
    port = free_port()
    env = {
        "REDIS_URL": valkey_url,
        "GIFTING_DATA_DIR": str(tmp_path),
        "GIFTING_TICK_MS": "20",
        "GIFTING_SHUTDOWN_GRACE_S": "2",
        "GIFTING_CONNECTIONS_PER_ADDRESS_MAX": "0",
    }
    web_env = {**env, "GIFTING_PORT": str(port)}
    web_log, worker_log = tmp_path / "web.log", tmp_path / "worker.log"
    processes = [spawn("serve", web_env, web_log), spawn("worker", env, worker_log)]
    base = f"http://127.0.0.1:{port}"
    report = tmp_path / "deploy"
    locust: asyncio.subprocess.Process | None = None
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            await wait_status(http, "/healthz", 200, processes[0], web_log)
            await wait_status(http, "/readyz", 200, processes[1], worker_log)
        # Gifters buy once (coins_16500) at start-up and check their balance at the end: no HTTP call falls
        # into the restart, only websocket traffic does.
        command = [
            *(sys.executable, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py")),
            *("--headless", "-u", "6", "-r", "6", "-t", f"{LOCUST_SECONDS}s", "--stop-timeout", "5"),
            *("--host", base, "--json-file", str(report), "--only-summary"),
            *("--scenario", "steady", "--rooms", "1", "--gift-rate", "10", "Gifter", "Viewer"),
        ]
        locust_env = {**os.environ, "GIFTING_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
        locust = await asyncio.create_subprocess_exec(
            *command, cwd=REPO, env=locust_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output = asyncio.create_task(locust.communicate())
        await asyncio.sleep(RESTART_AFTER_S)
        assert not output.done(), (await output)[0].decode(errors="replace")
        processes[0] = await restart(processes[0], "serve", web_env, web_log)
        try:
            out, _ = await asyncio.wait_for(output, LOCUST_TIMEOUT_S - RESTART_AFTER_S)
        except TimeoutError:
            pytest.fail(f"locust did not finish within {LOCUST_TIMEOUT_S:g} s")
        log = out.decode(errors="replace")
        stats = read_stats(Path(f"{report}.json"))
        assert stats is not None, f"locust wrote no --json-file (exit {locust.returncode})\n{log}"
        failures = {(s["method"], s["name"]): s["num_failures"] for s in stats if s["num_failures"]}
        assert not failures, f"{failures}\n{log}"
        requests = {(s["method"], s["name"]): s["num_requests"] for s in stats}
        for name in ("server restart", "reconnect", "resume", "gift -> result"):
            assert requests.get(("WS", name)), f"no {name!r} in the run\n{log}"
        assert requests.get(("GET", "GET /v1/wallet (after gifts)")), f"no balance check\n{log}"
        assert locust.returncode == 0, log
    finally:
        if locust is not None and locust.returncode is None:
            locust.kill()
            await locust.wait()
        for process in processes:
            stop(process)
