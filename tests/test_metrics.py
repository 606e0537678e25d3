"""Real `gifting serve` and `gifting worker` processes: /metrics on both during a gift storm, and their JSON logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from gifting import logs
from gifting.embedded import free_port
from tests.conftest import REPO, SECRET, WsClient, gift_id, spawn, stop, token
from tests.test_multiprocess import wait_status, ws_client

pytestmark = pytest.mark.timeout(120)

SENDERS = 4
GIFTS_PER_SENDER = 25


@dataclass
class Run:
    web: httpx.AsyncClient
    web_url: str
    worker: httpx.AsyncClient
    logs: list[Path]


@contextlib.asynccontextmanager
async def serve_and_work(valkey_url: str, tmp_path: Path, **env: str) -> AsyncIterator[Run]:
    """A web process and a worker on `valkey_url`, each with its own log file; stopped on exit."""
    port, metrics_port = free_port(), free_port()
    common = {
        "REDIS_URL": valkey_url,
        "GIFTING_DATA_DIR": str(tmp_path),
        "GIFTING_TICK_MS": "20",
        "GIFTING_WORKER_METRICS_PORT": str(metrics_port),
        **env,
    }
    log_paths = [tmp_path / "serve.log", tmp_path / "worker.log"]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(spawn("serve", {**common, "GIFTING_PORT": str(port)}, log_paths[0]))
        processes.append(spawn("worker", common, log_paths[1]))
        web_url = f"http://127.0.0.1:{port}"
        async with (
            httpx.AsyncClient(base_url=web_url, timeout=10) as web,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}", timeout=10) as worker,
        ):
            await wait_status(web, "/readyz", 200, processes[0], log_paths[0])
            await wait_status(worker, "/metrics", 200, processes[1], log_paths[1])
            yield Run(web, web_url, worker, log_paths)
    finally:
        for process in reversed(processes):
            stop(process)


async def storm(run: Run) -> tuple[str, list[str], dict[str, dict[str, float]]]:
    """SENDERS viewers each send GIFTS_PER_SENDER gifts at once; both endpoints are scraped while they settle.
    Returns the room, the senders and the scrapes taken during the storm."""
    opened = await run.web.post(
        "/v1/rooms", headers={"Authorization": f"Bearer {token('creator1', 'creator')}"}, json={"title": "storm"}
    )
    assert opened.status_code == 201, opened.text
    room: str = opened.json()["room"]
    senders = [f"sender{i}" for i in range(SENDERS)]
    clients: list[WsClient] = []
    try:
        for user in senders:
            bought = await run.web.post(
                "/v1/wallet/purchases",
                headers={"Authorization": f"Bearer {token(user)}", "Idempotency-Key": gift_id()},
                json={"bundle_id": "coins_328", "payment_token": "tok_sandbox_ok"},
            )
            assert bought.status_code == 201, bought.text
            clients.append(await ws_client(run.web_url, user))
        watcher = await ws_client(run.web_url, "watcher")
        clients.append(watcher)
        assert (await watcher.join(room))["type"] == "joined"
        ids = [[gift_id() for _ in range(GIFTS_PER_SENDER)] for _ in senders]
        for client, gifts in zip(clients, ids, strict=False):
            for gid in gifts:
                await client.gift(room, "rose", 1, gid)
        during = {"web": await scrape(run.web), "worker": await scrape(run.worker)}
        for client, gifts in zip(clients, ids, strict=False):
            await results(client, gifts)
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
    return room, senders, during


async def results(client: WsClient, gifts: list[str]) -> None:
    """Wait until every gift of `gifts` has its result on `client`; each must be settled."""
    waiting = set(gifts)
    while waiting:
        for message in client.seen:
            if message.get("type") == "gift_result" and message["gift_id"] in waiting:
                assert message["status"] == "settled", message
                waiting.discard(message["gift_id"])
        if waiting:
            await client.recv()


async def scrape(http: httpx.AsyncClient) -> dict[str, float]:
    """GET /metrics, parsed by prometheus_client's own parser: sample name{labels} -> value."""
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


async def eventually(http: httpx.AsyncClient, sample: str, value: float) -> dict[str, float]:
    """Scrape until `sample` reaches `value` (counters land after the result is sent); bounded."""
    samples: dict[str, float] = {}
    for _ in range(100):
        samples = await scrape(http)
        if samples.get(sample, 0) >= value:
            return samples
        await asyncio.sleep(0.1)
    pytest.fail(f"{sample} never reached {value}: {samples.get(sample)}")


async def test_metrics_of_web_and_worker_during_a_gift_storm(
    redis: aioredis.Redis, valkey_url: str, tmp_path: Path
) -> None:
    """Both /metrics endpoints answer during a storm; gifts, frames, batches and latencies add up; no id labels."""
    total = SENDERS * GIFTS_PER_SENDER
    async with serve_and_work(valkey_url, tmp_path) as run:
        room, senders, during = await storm(run)
        web = await eventually(run.web, "gifting_gifts_accepted_total{}", total)
        worker = await eventually(run.worker, "gifting_gifts_settled_total{}", total)
        web = await eventually(run.web, "gifting_ws_server_closes_total{code=1001}", 0)  # the clients closed
    assert during["web"]["gifting_gifts_accepted_total{}"] <= total
    assert "gifting_settlement_batch_size_count{}" in during["worker"]
    assert web["gifting_gifts_accepted_total{}"] == total
    assert web["gifting_ws_connections{}"] == 0  # the clients left
    assert during["web"]["gifting_ws_connections{}"] == SENDERS + 1
    assert during["web"]["gifting_live_rooms{}"] == 1
    assert web["gifting_ws_inbound_messages_total{kind=SendGift}"] == total
    assert web["gifting_ws_frames_written_total{}"] > 0 and web["gifting_ws_bytes_written_total{}"] > 0
    assert worker["gifting_gifts_settled_total{}"] == total
    assert worker["gifting_settlement_batch_size_sum{}"] == total
    assert worker["gifting_gift_settled_latency_seconds_count{}"] == total
    assert worker["gifting_gift_announced_latency_seconds_count{}"] == total
    assert worker["gifting_settlement_batch_duration_seconds_count{}"] >= 1
    # Bounded labels: no user, room or gift id ever becomes a label value.
    ids = {room, "watcher", "creator1", *senders}
    for name in [*web, *worker]:
        assert not any(i in name for i in ids), name


async def test_json_logs_of_a_full_run_hold_no_credentials(
    redis: aioredis.Redis, valkey_url: str, tmp_path: Path
) -> None:
    """GIFTING_LOG_FORMAT=json: every line of both processes is one JSON object; no token or secret in any."""
    async with serve_and_work(valkey_url, tmp_path, GIFTING_LOG_FORMAT="json") as run:
        await storm(run)
        # Tokens in query strings (one refused) and a declined payment token: what could leak, if anything did.
        leaked = token("sender0")
        await run.web.get(f"/v1/wallet?token={leaked}")
        await run.web.get(f"/v1/wallet?token={leaked}x")
        await run.web.post(
            "/v1/wallet/purchases",
            headers={"Authorization": f"Bearer {leaked}", "Idempotency-Key": gift_id()},
            json={"bundle_id": "coins_65", "payment_token": "tok_sandbox_declined"},
        )
    lines = [line for path in run.logs for line in path.read_text().splitlines() if line.strip()]
    assert len(lines) >= 4  # both processes said they started and stopped
    for line in lines:
        record = orjson.loads(line)
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        for secret in (SECRET, leaked, "tok_sandbox", "eyJ"):
            assert secret not in line, line
    loggers = {orjson.loads(line)["logger"] for line in lines}
    assert "uvicorn.error" in loggers and "workers.settlement" in loggers  # uvicorn's own lines are JSON too


def test_json_line_names_the_ids_it_is_about() -> None:
    """A log line about a gift or a withdrawal carries its id as a field, and scrubs a token in an exception."""
    formatter = logs.JsonFormatter()
    record = logging.LogRecord("workers.payouts", logging.INFO, __file__, 1, "withdrawal %s: %s", ("w_7", "post"), None)
    assert orjson.loads(formatter.format(record))["withdrawal_id"] == "w_7"
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "gift %s: not queued", ("g-1",), None)
    line = orjson.loads(formatter.format(record))
    assert line["gift_id"] == "g-1" and line["level"] == "WARNING" and line["time"].endswith("Z")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "settled", (), None)
    record.transfer_id = "t-9"
    assert orjson.loads(formatter.format(record))["transfer_id"] == "t-9"
    try:
        raise ValueError(f"bad token={token('u')}")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = orjson.loads(formatter.format(record))
    assert "eyJ" not in line["exception"] and "ValueError" in line["exception"]


def test_the_cli_imports_no_metrics_before_it_sets_the_prometheus_directory() -> None:
    """Importing gifting.cli loads no prometheus_client: each process sets PROMETHEUS_MULTIPROC_DIR first (a
    module imported at the CLI's top that imports gifting.metrics would leave /metrics without the app's)."""
    code = "import sys, gifting.cli; sys.exit(1 if 'prometheus_client' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode == 0
