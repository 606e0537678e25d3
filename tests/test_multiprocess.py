"""Real processes: two `gifting serve` and a `gifting worker` on one Valkey, and `gifting dev` end to end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]
import pytest
import redis.asyncio as aioredis
import websockets

from gifting.embedded import free_port
from tests.conftest import REPO, WsClient, gift_id, spawn, stop, token

START_TIMEOUT_S = 30.0


def tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-3000:]


async def wait_status(
    http: httpx.AsyncClient, path: str, status: int, process: subprocess.Popen[bytes], log_path: Path
) -> None:
    """Poll `path` until it answers `status`; fail early if the process exits. Bounded by START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args!r} exited with {process.returncode}:\n{tail(log_path)}")
        try:
            response = await http.get(path)
            if response.status_code == status:
                return
            last = f"{response.status_code} {response.text}"
        except httpx.TransportError as exc:
            last = repr(exc)
        await asyncio.sleep(0.1)
    pytest.fail(f"{http.base_url}{path} never answered {status} (last: {last}):\n{tail(log_path)}")


async def ws_client(base_url: str, user: str, role: str = "viewer") -> WsClient:
    url = base_url.replace("http://", "ws://") + f"/v1/ws?token={token(user, role)}"  # type: ignore[arg-type]
    conn = await websockets.connect(url, subprotocols=["gifting.v1.json"], max_queue=None)  # type: ignore[list-item]
    client = WsClient(conn)
    assert (await client.recv())["type"] == "welcome"
    return client


@pytest.mark.cluster  # on a cluster: REDIS_URL names one node; rooms fan out by sharded pub/sub
async def test_two_web_processes_share_rooms_through_valkey(
    redis: aioredis.Redis, valkey_url: str, tmp_path: Path
) -> None:
    """A gift sent through web process A reaches sockets on A and on B; /readyz turns 200 once the worker beats."""
    ports = [free_port(), free_port()]
    base = [f"http://127.0.0.1:{port}" for port in ports]
    common = {"REDIS_URL": valkey_url, "GIFTING_DATA_DIR": str(tmp_path), "GIFTING_TICK_MS": "20"}
    processes: list[subprocess.Popen[bytes]] = []
    clients: list[WsClient] = []
    try:
        logs = [tmp_path / "serve-a.log", tmp_path / "serve-b.log"]
        for port, log in zip(ports, logs, strict=True):
            processes.append(spawn("serve", {**common, "GIFTING_PORT": str(port)}, log))
        async with (
            httpx.AsyncClient(base_url=base[0], timeout=10) as http_a,
            httpx.AsyncClient(base_url=base[1], timeout=10) as http_b,
        ):
            https = (http_a, http_b)
            for http, process, log in zip(https, processes, logs, strict=True):
                await wait_status(http, "/healthz", 200, process, log)
                assert (await http.get("/readyz")).status_code == 503  # no settlement worker yet
            worker_log = tmp_path / "worker.log"
            worker = spawn("worker", common, worker_log)
            processes.append(worker)
            for http in https:
                await wait_status(http, "/readyz", 200, worker, worker_log)

            opened = await http_a.post(
                "/v1/rooms", headers={"Authorization": f"Bearer {token('creator1', 'creator')}"}, json={"title": "mp"}
            )
            assert opened.status_code == 201, opened.text
            room = opened.json()["room"]
            bought = await http_b.post(
                "/v1/wallet/purchases",
                headers={"Authorization": f"Bearer {token('sender')}", "Idempotency-Key": gift_id()},
                json={"bundle_id": "coins_65", "payment_token": "tok_sandbox_ok"},
            )
            assert bought.status_code == 201, bought.text

            sender = await ws_client(base[0], "sender")
            on_a = await ws_client(base[0], "viewer_a")
            on_b = await ws_client(base[1], "viewer_b")
            creator_on_b = await ws_client(base[1], "creator1", "creator")
            clients += [sender, on_a, on_b, creator_on_b]
            for client in (on_a, on_b, creator_on_b):
                assert (await client.join(room))["type"] == "joined"

            gid = await sender.gift(room, "coffee", 2)
            result = await sender.result(gid)
            assert result["type"] == "gift_result" and result["status"] == "settled", result
            frames = {client: await client.wait_type("events") for client in (on_a, on_b, creator_on_b)}
            for frame in frames.values():
                assert [(e["offset"], e["gift_id"], e["count"]) for e in frame["events"]] == [(1, gid, 2)]
            assert frames[creator_on_b]["events"][0]["diamonds"] == 10  # 2 coffees: 20 coins, half to the creator
            assert "diamonds" not in frames[on_b]["events"][0] and "diamonds" not in frames[on_a]["events"][0]

            # And the other way round, through B's HTTP gift endpoint.
            second = str(uuid.uuid4())
            sent = await http_b.post(
                f"/v1/rooms/{room}/gifts",
                headers={"Authorization": f"Bearer {token('sender')}"},
                json={"gift": "rose", "count": 1, "gift_id": second},
            )
            assert sent.status_code == 200 and sent.json()["status"] == "settled", sent.text
            for client in (on_a, on_b):
                frame = await client.wait_type("events")
                assert [(e["offset"], e["gift_id"]) for e in frame["events"]] == [(2, second)]
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
        for process in reversed(processes):
            stop(process)


def dev_env(data_dir: Path, port: int) -> dict[str, str]:
    """The environment of a developer's shell: no REDIS_URL and no GIFTING_* settings but ours."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("GIFTING_")}
    env.update(GIFTING_DATA_DIR=str(data_dir), GIFTING_PORT=str(port), PYTHONUNBUFFERED="1")
    return env


def wait_ready(http: httpx.Client, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gifting dev exited with {process.returncode}:\n{tail(log_path)}")
        with contextlib.suppress(httpx.TransportError):
            if http.get("/readyz").status_code == 200:
                return
        time.sleep(0.1)
    pytest.fail(f"gifting dev never became ready:\n{tail(log_path)}")


@pytest.mark.parametrize("valkey_args", [[], ["--cluster", "2", "--replicas", "1"]], ids=["standalone", "cluster"])
def test_dev_runs_everything_stops_cleanly_and_keeps_balances(tmp_path: Path, valkey_args: list[str]) -> None:
    """`gifting dev` (and `--cluster 2 --replicas 1`) runs on embedded Valkey, `gifting token` works, SIGINT ends
    all children, restarts keep coins."""
    data_dir = tmp_path / "data"
    for run in ("first", "restart"):
        env = dev_env(data_dir, free_port())
        log_path = tmp_path / f"dev-{run}.log"
        with open(log_path, "wb") as log:
            dev = subprocess.Popen(
                [sys.executable, "-m", "gifting.cli", "dev", *valkey_args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        children: list[psutil.Process] = []
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{env['GIFTING_PORT']}", timeout=10) as http:
                wait_ready(http, dev, log_path)
                children = psutil.Process(dev.pid).children(recursive=True)
                commands = []
                for child in children:  # a process that just exited (valkey's AOF-rewrite fork) has no command
                    with contextlib.suppress(psutil.ZombieProcess, psutil.NoSuchProcess):
                        commands.append(" ".join(child.cmdline()))
                valkeys = 4 if valkey_args else 1  # 2 primaries and a replica each
                assert sum("valkey-server" in c for c in commands) == valkeys, commands
                assert any(c.endswith("gifting.cli serve") for c in commands), commands
                assert any(c.endswith("gifting.cli worker") for c in commands), commands

                minted = subprocess.run(
                    [sys.executable, "-m", "gifting.cli", "token", "u1", "--role", "viewer"],
                    env=env,
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=True,
                )
                auth = {"Authorization": f"Bearer {minted.stdout.strip()}"}
                wallet = http.get("/v1/wallet", headers=auth)
                assert wallet.status_code == 200 and wallet.json()["user"] == "u1", wallet.text
                if run == "first":
                    assert wallet.json()["coins"] == 0
                    bought = http.post(
                        "/v1/wallet/purchases",
                        headers={**auth, "Idempotency-Key": "buy-1"},
                        json={"bundle_id": "coins_65", "payment_token": "tok_sandbox_ok"},
                    )
                    assert bought.status_code == 201, bought.text
                    assert http.get("/v1/wallet", headers=auth).json()["coins"] == 65
                else:
                    assert wallet.json()["coins"] == 65  # survived the restart

            dev.send_signal(signal.SIGINT)
            assert dev.wait(30) == 0, tail(log_path)
            _, alive = psutil.wait_procs(children, timeout=15)
            assert alive == [], [p.cmdline() for p in alive]
        finally:
            stop(dev)
            for child in children:
                with contextlib.suppress(psutil.Error):
                    if child.is_running():
                        child.kill()
