"""Test fixtures: a real embedded Valkey (one per session, flushed per test) and the system run in-process.

No fake Redis and no mocked sockets: tests talk to valkey-server over TCP and to the web app over real
websockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import redis.asyncio as aioredis
import uvicorn
import websockets
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from starlette.applications import Starlette

from gifting import auth
from gifting.app import create_app, redis_client, server_config
from gifting.config import Settings
from gifting.embedded import EmbeddedValkey, free_port
from gifting.embedded_cluster import EmbeddedCluster
from gifting.embedded_pg import EmbeddedPostgres
from gifting.history.schema import migrate
from gifting.live.hub import Hub
from workers.settlement import SettlementWorker

SECRET = "test-secret-not-for-production-0123456789"
REPO = Path(__file__).resolve().parent.parent
RECV_TIMEOUT_S = 10.0


# The property tests (tests/test_*_property.py): one system (or ledger) shared by every example, so a
# function-scoped fixture is fine; examples derandomized (the same sequence on every run, so CI is repeatable) and
# never timed (a loaded machine is slow); a failure prints its blob to reproduce it. A plain run (`make test`, CI)
# runs half of each test's examples; GIFTING_TEST_LONG=1 (`make test-long`) runs the full count.
PROPERTY_LONG = os.environ.get("GIFTING_TEST_LONG", "") not in ("", "0")
hypothesis_settings.register_profile(
    "gifting-property",
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def property_settings(full_examples: int) -> hypothesis_settings:
    """The property tests' settings: `full_examples` under GIFTING_TEST_LONG=1, half of them (at least 1) otherwise."""
    examples = full_examples if PROPERTY_LONG else max(1, full_examples // 2)
    return hypothesis_settings(hypothesis_settings.get_profile("gifting-property"), max_examples=examples)


# The system-level tests run on both a standalone Valkey and a 3-primary Valkey Cluster: a module (or test)
# marked `cluster` gets `valkey_url` parametrized over BACKENDS. GIFTING_TEST_BACKEND=cluster runs every test
# that takes `valkey_url` on the cluster alone (to find what a cluster breaks).
BACKENDS = ("standalone", "cluster")
CLUSTER_PRIMARIES = 3


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "valkey_url" in metafunc.fixturenames and metafunc.definition.get_closest_marker("cluster"):
        metafunc.parametrize("valkey_url", BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def standalone_valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"), announce=False)
    url = server.start()
    yield url
    server.stop()


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """A real Valkey Cluster of 3 primaries (no replicas) from the embedded binary, started once, on first use."""
    cluster = EmbeddedCluster(tmp_path_factory.mktemp("valkey-cluster"), CLUSTER_PRIMARIES, 0, announce=False)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def cluster_valkey_url(valkey_cluster: EmbeddedCluster) -> str:
    return valkey_cluster.url


@pytest.fixture(scope="module")  # module: some modules' own fixtures are (a server per module)
def valkey_url(request: pytest.FixtureRequest) -> str:
    """The URL of the Valkey this test runs on: standalone, or the cluster (parametrized by the `cluster` mark)."""
    backend = getattr(request, "param", None) or os.environ.get("GIFTING_TEST_BACKEND", "standalone")
    assert backend in BACKENDS, f"GIFTING_TEST_BACKEND: expected one of {BACKENDS}, got {backend!r}"
    url: str = request.getfixturevalue(f"{backend}_valkey_url")
    return url


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """GIFTING_DATABASE_URL, else a private PostgreSQL for the session (it dies with the test process)."""
    if os.environ.get("GIFTING_DATABASE_URL"):
        yield os.environ["GIFTING_DATABASE_URL"]
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres"), announce=False)
    url = server.start()
    migrate(url)
    yield url
    server.stop()


@pytest.fixture
async def history(database_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A connection to the history database, emptied for this test."""
    conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    await conn.execute("TRUNCATE journal, legs, archive_cursor, statements, statement_cursor")
    yield conn
    await conn.close()


@pytest.fixture
async def redis(valkey_url: str) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(valkey_url)
    await client.flushall()
    yield client
    await client.aclose()


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for tests: short tick and claim times so tests are quick, not so short they are flaky."""
    defaults: dict[str, Any] = {
        "secret": SECRET,
        "data_dir": str(tmp_path),
        "tick_ms": 20,
        "claim_idle_ms": 1000,
        "settle_block_ms": 50,
        "gift_rate_per_s": 1000.0,
        "gift_burst": 1000,
        "ws_message_rate_per_s": 1000.0,
        "ws_message_burst": 1000,
        "dev_mode": True,
    }
    defaults.update(overrides)
    return Settings.from_env({}, **defaults)


def token(user: str, role: auth.Role = "viewer", name: str | None = None, ttl_s: int = 3600) -> str:
    return auth.mint(SECRET, user, role, name, ttl_s)


def gift_id() -> str:
    return str(uuid.uuid4())


class WsClient:
    """A real websocket client with helpers to wait for the message a test expects."""

    def __init__(self, conn: websockets.ClientConnection, codec: str = "json") -> None:
        self.conn = conn
        self.codec = codec
        self.seen: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        if self.codec == "msgpack":
            import msgpack

            await self.conn.send(msgpack.packb(message))
        else:
            await self.conn.send(orjson.dumps(message).decode())

    async def recv(self, timeout_s: float = RECV_TIMEOUT_S) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.recv(), timeout_s)
        if isinstance(raw, bytes) and self.codec == "msgpack":
            import msgpack

            message: dict[str, Any] = msgpack.unpackb(raw)
        else:
            message = orjson.loads(raw)
        self.seen.append(message)
        return message

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = RECV_TIMEOUT_S
    ) -> dict[str, Any]:
        """The next message matching `predicate`; messages before it are kept in `seen`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            message = await self.recv(max(0.01, deadline - loop.time()))
            if predicate(message):
                return message

    async def wait_type(self, kind: str, timeout_s: float = RECV_TIMEOUT_S) -> dict[str, Any]:
        return await self.wait_for(lambda m: m.get("type") == kind, timeout_s)

    async def join(self, room: str, since: dict[str, Any] | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "join", "room": room}
        if since is not None:
            message["since"] = since
        await self.send(message)
        return await self.wait_for(lambda m: m.get("type") in ("joined", "error"))

    async def gift(self, room: str, gift: str = "rose", count: int = 1, gid: str | None = None) -> str:
        gid = gid or gift_id()
        await self.send({"type": "gift", "room": room, "gift": gift, "count": count, "gift_id": gid})
        return gid

    async def result(self, gid: str, timeout_s: float = RECV_TIMEOUT_S) -> dict[str, Any]:
        return await self.wait_for(lambda m: m.get("gift_id") == gid and m.get("type") != "events", timeout_s)

    def events(self) -> list[dict[str, Any]]:
        """Every room event received so far, in order."""
        return [e for m in self.seen if m.get("type") == "events" for e in m["events"]]

    async def close(self) -> None:
        await self.conn.close()


@dataclass
class System:
    """The web app (uvicorn, in this event loop) plus a settlement worker task, on one Valkey."""

    settings: Settings
    redis: aioredis.Redis
    base_url: str
    http: httpx.AsyncClient
    app: Starlette
    worker: SettlementWorker | None = None
    _clients: list[WsClient] = field(default_factory=list)

    @property
    def hub(self) -> Hub:
        hub: Hub = self.app.state.hub
        return hub

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/v1/ws"

    async def connect(
        self, user: str, role: auth.Role = "viewer", codec: str = "json", raw_token: str | None = None, **kw: Any
    ) -> WsClient:
        tok = raw_token if raw_token is not None else token(user, role)
        subprotocols = [f"gifting.v1.{codec}"] if codec else None
        conn = await websockets.connect(
            f"{self.ws_url}?token={tok}",
            subprotocols=subprotocols,
            max_queue=None,
            **kw,  # type: ignore[arg-type]
        )
        client = WsClient(conn, codec or "json")
        self._clients.append(client)
        if raw_token is None:
            welcome = await client.recv()
            assert welcome["type"] == "welcome", welcome
        return client

    def auth(self, user: str, role: auth.Role = "viewer") -> dict[str, str]:
        return {"Authorization": f"Bearer {token(user, role)}"}

    async def buy(self, user: str, bundle: str = "coins_65", key: str | None = None) -> dict[str, Any]:
        response = await self.http.post(
            "/v1/wallet/purchases",
            headers={**self.auth(user), "Idempotency-Key": key or gift_id()},
            json={"bundle_id": bundle, "payment_token": "tok_sandbox_ok"},
        )
        assert response.status_code in (200, 201), response.text
        body: dict[str, Any] = response.json()
        return body

    async def grant(self, user: str, coins: int) -> None:
        """Credit coins the way a purchase does (issuance -> user), with a journal entry the audit accepts."""
        from gifting import keys

        part = keys.part_of_user(user)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(keys.coins(part), keys.account(user), coins)
            pipe.hincrby(keys.coins(part), keys.SYS_COIN_ISSUANCE, -coins)
            pipe.xadd(
                keys.journal(part),
                {"kind": "purchase", "id": f"grant:{gift_id()}", "legs": f"coins sys:coin_issuance u:{user} {coins}"},
            )
            await pipe.execute()

    async def open_room(self, creator: str = "creator1", title: str = "Live") -> str:
        response = await self.http.post("/v1/rooms", headers=self.auth(creator, "creator"), json={"title": title})
        assert response.status_code == 201, response.text
        room: str = response.json()["room"]
        return room

    async def wallet(self, user: str) -> dict[str, int]:
        response = await self.http.get("/v1/wallet", headers=self.auth(user))
        assert response.status_code == 200, response.text
        return {"coins": response.json()["coins"], "diamonds": response.json()["diamonds"]}


@contextlib.asynccontextmanager
async def run_web(settings: Settings, redis_url: str, **server: Any) -> AsyncIterator[tuple[str, Starlette]]:
    """The web app on a free port of 127.0.0.1, served by uvicorn inside this event loop: (base URL, app).

    `server` overrides uvicorn options of gifting.app.server_config (e.g. the stock websocket protocol).
    """
    port = free_port()
    app = create_app(settings, redis_url, SECRET)
    config = server_config(app, settings, "127.0.0.1", port, **({"log_level": "warning"} | server))
    server = PromptServer(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.exit()
        await asyncio.wait_for(task, 15)


class PromptServer(uvicorn.Server):
    """uvicorn's Server, stopping as soon as the test is done instead of on its next 100 ms poll.

    uvicorn looks at `should_exit` every 100 ms, then sleeps a fixed 100 ms and polls every 100 ms for its
    connections to close: about 0.2 s of every test that starts the system (a minute of the suite). The same
    shutdown runs here (connections asked to close, waited for within timeout_graceful_shutdown, then the
    lifespan's shutdown), waking on the test's exit and polling every 10 ms. `gifting serve` keeps uvicorn's.
    """

    POLL_S = 0.01

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit_requested = asyncio.Event()

    def exit(self) -> None:
        self.should_exit = True
        self._exit_requested.set()

    async def main_loop(self) -> None:
        counter = 0  # ticks of 100 ms, as uvicorn counts them (its Date header is renewed every 10)
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit_requested.wait(), 0.1)
            should_exit = await self.on_tick(counter)

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        for listener in self.servers:
            listener.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        if await self._drained(self.config.timeout_graceful_shutdown or 0):
            for listener in self.servers:
                await listener.wait_closed()
        else:
            for running in self.server_state.tasks:
                running.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        if not self.force_exit:
            await self.lifespan.shutdown()

    async def _drained(self, grace_s: float) -> bool:
        """Whether every connection and its task ended within `grace_s`."""
        for _ in range(int(grace_s / self.POLL_S) + 1):
            if not (self.server_state.connections or self.server_state.tasks) or self.force_exit:
                return True
            await asyncio.sleep(self.POLL_S)
        return False


@contextlib.asynccontextmanager
async def run_worker(
    settings: Settings, redis_url: str, consumer: str | None = None
) -> AsyncIterator[SettlementWorker]:
    client = redis_client(redis_url)
    worker = SettlementWorker(client, settings, consumer=consumer)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await client.aclose()


SystemFactory = Callable[..., Awaitable[System]]


@pytest.fixture
async def start_system(redis: aioredis.Redis, valkey_url: str, tmp_path: Path) -> AsyncIterator[SystemFactory]:
    """start_system(worker=True, server=None, **setting_overrides) -> a running System; everything stops after
    the test. `server`: uvicorn options over server_config's."""
    stack = contextlib.AsyncExitStack()

    async def start(worker: bool = True, server: dict[str, Any] | None = None, **overrides: Any) -> System:
        settings = make_settings(tmp_path, **overrides)
        base_url, app = await stack.enter_async_context(run_web(settings, valkey_url, **(server or {})))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=base_url, timeout=15))
        system = System(settings, redis, base_url, http, app)
        if worker:
            system.worker = await stack.enter_async_context(run_worker(settings, valkey_url))
        stack.push_async_callback(_close_clients, system)
        return system

    async with stack:
        yield start


@pytest.fixture
async def system(start_system: SystemFactory) -> System:
    return await start_system()


async def _close_clients(system: System) -> None:
    for client in system._clients:
        with contextlib.suppress(Exception):
            await client.close()


def spawn(command: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """A real `gifting <command>` process (for multi-process and crash tests)."""
    full_env = {**os.environ, **env, "GIFTING_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "gifting.cli", command], env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )


def stop(process: subprocess.Popen[bytes], kill: bool = False) -> None:
    if process.poll() is None:
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
