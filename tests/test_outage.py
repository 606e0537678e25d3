"""When Valkey goes away: documented answers while it is down, nothing lost or half-done when it returns.

Each test starts its own embedded Valkey (own port and data directory, AOF on), so killing it with -9 leaves
the session's server alone. The web app and the settlement worker run in-process (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Mount, Route, WebSocketRoute

from gifting import clock, keys
from gifting.app import redis_client
from gifting.config import Settings
from gifting.embedded import EmbeddedValkey, free_port
from gifting.ledger import partitions, rules
from gifting.ledger.audit import run_audit
from gifting.ledger.store import Ledger
from tests.conftest import REPO, SECRET, System, WsClient, make_settings, run_web, run_worker, token
from workers.settlement import SettlementWorker

pytestmark = pytest.mark.timeout(120)

STORE_UNAVAILABLE = "store_unavailable"
VIEWER_COINS = 100_000


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path / "own", announce=False)
    server.start()
    yield server
    server.stop()


def kill_valkey(server: EmbeddedValkey) -> None:
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)


@contextlib.asynccontextmanager
async def own_system(valkey: EmbeddedValkey, settings: Settings) -> AsyncIterator[System]:
    """Web app and worker on `valkey`; the test's own client does not share their connection pools."""
    redis = redis_client(valkey.url)
    async with (
        run_web(settings, valkey.url) as (base_url, app),
        httpx.AsyncClient(base_url=base_url, timeout=15) as http,
        run_worker(settings, valkey.url) as worker,
    ):
        system = System(settings, redis, base_url, http, app, worker)
        try:
            yield system
        finally:
            for client in system._clients:
                with contextlib.suppress(Exception):
                    await client.close()
            await redis.aclose()


# Every HTTP route ---------------------------------------------------------------------------------------

# Routes that never touch Valkey (static pages, the in-memory catalog, liveness): they keep answering.
STORE_FREE = {
    ("GET", "/healthz"),
    ("GET", "/metrics"),  # the process's own counters: an outage is when they matter most
    ("GET", "/openapi.json"),
    ("GET", "/asyncapi.json"),
    ("GET", "/v1/catalog/gifts"),
    ("GET", "/v1/catalog/bundles"),
    ("GET", "/dev/token"),
    ("POST", "/v1/overlay-tokens"),  # signed with the secret alone
    ("GET", "/"),
    ("GET", "/watch/{room}"),
    ("GET", "/studio"),
    ("GET", "/brand"),
    ("GET", "/overlay/{room}"),
    ("GET", "/dev"),
    ("GET", "/static"),
}


def route_requests(room: str) -> dict[tuple[str, str], dict[str, Any]]:
    """A valid request for each (method, route): valid, so that it gets as far as Valkey."""
    viewer, creator, admin, brand = (
        {"Authorization": f"Bearer {token(user, role)}"}  # type: ignore[arg-type]
        for user, role in (("v1", "viewer"), ("creator1", "creator"), ("admin1", "admin"), ("brand1", "brand"))
    )
    key = {"Idempotency-Key": "key-1"}
    gift = {"gift": "rose", "count": 1, "gift_id": str(uuid.uuid4())}
    return {
        ("GET", "/healthz"): {},
        ("GET", "/metrics"): {},
        ("GET", "/openapi.json"): {},
        ("GET", "/asyncapi.json"): {},
        ("GET", "/readyz"): {},
        ("GET", "/v1/catalog/gifts"): {},
        ("GET", "/v1/catalog/bundles"): {},
        ("GET", "/v1/rooms"): {},
        ("POST", "/v1/rooms"): {"headers": creator, "json": {"title": "Live"}},
        ("GET", "/v1/rooms/{room}"): {},
        ("POST", "/v1/rooms/{room}/end"): {"headers": creator},
        ("POST", "/v1/rooms/{room}/gifts"): {"headers": viewer, "json": gift},
        ("GET", "/v1/rooms/{room}/leaderboard"): {},
        ("POST", "/v1/rooms/{room}/goals"): {"headers": creator, "json": {"diamonds": 100}},
        ("DELETE", "/v1/rooms/{room}/goals"): {"headers": creator},
        ("GET", "/v1/rooms/{room}/summary"): {},
        ("POST", "/v1/rooms/{room}/pools"): {"headers": viewer, "json": {"gift": "universe", "deadline_s": 60}},
        ("GET", "/v1/pools/{pool}"): {},
        ("POST", "/v1/pools/{pool}/pledges"): {
            "headers": viewer,
            "json": {"coins": 1, "pledge_id": str(uuid.uuid4())},
        },
        ("POST", "/v1/pools/{pool}/cancel"): {"headers": viewer},
        ("GET", "/v1/creators/{creator}/live"): {},
        ("POST", "/v1/overlay-tokens"): {"headers": creator},
        ("POST", "/v1/admin/users/{user}/revoke-tokens"): {"headers": admin},
        ("GET", "/dev/token"): {},
        ("GET", "/v1/wallet"): {"headers": viewer},
        ("GET", "/v1/rewards"): {"headers": viewer},
        ("POST", "/v1/rewards/streak"): {"headers": viewer},
        ("GET", "/v1/admin/rewards/budget"): {"headers": admin},
        ("POST", "/v1/admin/rewards/budget"): {"headers": admin | key, "json": {"coins": 100}},
        ("POST", "/v1/wallet/purchases"): {
            "headers": viewer | key,
            "json": {"bundle_id": "coins_65", "payment_token": "tok_sandbox_ok"},
        },
        ("GET", "/v1/wallet/purchases"): {"headers": viewer},
        ("POST", "/v1/wallet/withdrawals"): {"headers": creator | key, "json": {"diamonds": 1000}},
        ("GET", "/v1/wallet/withdrawals"): {"headers": viewer},
        ("GET", "/v1/wallet/transactions"): {"headers": viewer},
        ("GET", "/v1/wallet/limits"): {"headers": viewer},
        ("PUT", "/v1/wallet/limits"): {"headers": viewer, "json": {"daily_spend_coins_max": 100}},
        ("GET", "/v1/wallet/sessions"): {"headers": creator},
        ("GET", "/v1/rooms/{room}/earnings"): {"headers": creator},
        ("POST", "/v1/matches"): {"headers": creator, "json": {"opponent": "creator2"}},
        ("GET", "/v1/matches/{match}"): {},
        ("POST", "/v1/matches/{match}/{action}"): {"headers": creator, "path": "/v1/matches/m1/accept"},
        ("GET", "/v1/rooms/{room}/stage"): {},
        ("GET", "/v1/rooms/{room}/top"): {},
        ("POST", "/v1/rooms/{room}/stage/invites"): {"headers": creator, "json": {"guest": "g1"}},
        ("POST", "/v1/rooms/{room}/stage/accept"): {"headers": viewer},
        ("POST", "/v1/rooms/{room}/stage/leave"): {"headers": viewer},
        ("POST", "/v1/admin/purchases/{purchase}/{mode}"): {"headers": admin},
        ("POST", "/v1/admin/withdrawals/{withdrawal}/{action}"): {"headers": admin},
        ("PUT", "/v1/admin/gifts/{gift}"): {
            "headers": admin,
            "json": {"name": "Rose", "coins": 2, "asset": "rose.svg", "tier": "basic"},
        },
        ("POST", "/v1/admin/gifts/{gift}/retire"): {"headers": admin},
        ("PUT", "/v1/admin/bundles/{bundle}"): {
            "headers": admin,
            "json": {"coins": 65, "price_minor": 99, "currency": "USD"},
        },
        ("POST", "/v1/admin/bundles/{bundle}/retire"): {"headers": admin},
        ("POST", "/v1/campaigns"): {
            "headers": brand,
            "json": {"name": "C", "gift": "rose", "end_ms": clock.now_ms() + 3_600_000},
        },
        ("GET", "/v1/campaigns"): {"headers": brand},
        ("GET", "/v1/campaigns/{campaign}"): {"headers": brand},
        ("POST", "/v1/campaigns/{campaign}/fund"): {"headers": brand | key, "json": {"coins": 10}},
        ("POST", "/v1/campaigns/{campaign}/end"): {"headers": brand},
        ("POST", "/v1/admin/campaigns/{campaign}/grant"): {
            "headers": admin | key,
            "json": {"coins": 10, "invoice": "INV-1"},
        },
        ("GET", "/v1/rooms/{room}/campaigns"): {},
        ("GET", "/v1/catalog/perks"): {},
        ("PUT", "/v1/fanclub"): {"headers": creator, "json": {"membership_gift": "heart", "free_premium": True}},
        ("GET", "/v1/fanclub/members"): {"headers": creator},
        ("GET", "/v1/creators/{creator}/fanclub"): {},
        ("PUT", "/v1/admin/perks/{perk}"): {
            "headers": admin,
            "json": {"kind": "highlight", "name": "Highlight", "coins": 50},
        },
        ("POST", "/v1/admin/perks/{perk}/retire"): {"headers": admin},
        ("POST", "/v1/rooms/{room}/perks"): {
            "headers": viewer | key,
            "json": {"perk": "highlight_small", "message": "hi"},
        },
        ("POST", "/v1/rooms/{room}/ticket"): {"headers": viewer | key, "json": {"coins": 10}},
        ("POST", "/v1/rooms/{room}/premium"): {"headers": creator, "json": {"coins": 10}},
        ("GET", "/"): {},
        ("GET", "/watch/{room}"): {},
        ("GET", "/studio"): {},
        ("GET", "/brand"): {},
        ("GET", "/overlay/{room}"): {},
        ("GET", "/dev"): {},
        ("GET", "/static"): {"path": "/static/css/app.css"},
    }


PATH_PARAMS = {
    "pool": "p_0000456789abcdef",  # names partition 0 (a pool id names its partition: gifting/ledger/pools.py)
    "purchase": "v1:key-1",
    "mode": "refund",
    "withdrawal": "w_1",
    "action": "post",
    "gift": "rose",
    "bundle": "coins_65",
    "creator": "creator1",
    "user": "v1",
    "match": "m1",
    "campaign": "c_0123456789abcdef",
    "perk": "highlight_small",
}


def app_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every HTTP route the app has (HEAD is checked with its GET)."""
    found = []
    for route in app.routes:
        if isinstance(route, Route):
            found += [(method, route.path) for method in sorted(route.methods or ()) if method != "HEAD"]
        elif isinstance(route, Mount):
            found.append(("GET", route.path))
        else:
            assert isinstance(route, WebSocketRoute), f"a route of an unknown kind: {route!r}"
    return found


async def test_every_http_route_answers_503_store_unavailable_while_valkey_is_down(
    own_valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    """With Valkey killed, every route that needs it answers 503 `store_unavailable` (JSON envelope, Retry-After),
    the others keep answering; none answers 500. The app's routes are enumerated: a new one must join the table."""
    settings = make_settings(tmp_path, store_retry_after_s=3)
    async with own_system(own_valkey, settings) as system:
        room = await system.open_room()
        requests = route_requests(room)
        routes = app_routes(system.app)
        assert set(routes) == set(requests), "add new routes to route_requests (and STORE_FREE if they need no Valkey)"
        kill_valkey(own_valkey)
        for method, path in routes:
            options = dict(requests[(method, path)])
            url = options.pop("path", path.format(room=room, **PATH_PARAMS))
            for verb in (method, "HEAD") if method == "GET" else (method,):
                response = await system.http.request(verb, url, **options)
                where = f"{verb} {path}: {response.status_code} {response.text[:200]}"
                if (method, path) in STORE_FREE:
                    assert response.status_code < 500, where
                    continue
                assert response.status_code == 503, where
                assert response.headers["retry-after"] == "3", where
                if verb != "HEAD":
                    assert response.json()["error"]["code"] == STORE_UNAVAILABLE, where


# Websocket answers --------------------------------------------------------------------------------------


async def test_websocket_answers_store_unavailable_and_stays_open(own_valkey: EmbeddedValkey, tmp_path: Path) -> None:
    """While Valkey is down, a gift and a pledge are rejected `store_unavailable`, a join gets error
    `store_unavailable`; the socket stays open, and once Valkey is back the same gift_id settles."""
    settings = make_settings(tmp_path)
    async with own_system(own_valkey, settings) as system:
        room = await system.open_room()
        await grant(system, "v1", 100)
        client = await system.connect("v1")
        kill_valkey(own_valkey)
        gid = await client.gift(room)
        assert (await client.result(gid))["reason"] == STORE_UNAVAILABLE
        pledge_id = str(uuid.uuid4())
        await client.send({"type": "pledge", "pool": "p_0000456789abcdef", "coins": 1, "pledge_id": pledge_id})
        pledged = await client.wait_for(lambda m: m.get("pledge_id") == pledge_id)
        assert (pledged["status"], pledged["reason"]) == ("rejected", STORE_UNAVAILABLE)
        await client.send({"type": "join", "room": room, "ref": "j1"})
        failed = await client.wait_for(lambda m: m.get("ref") == "j1")
        assert (failed["type"], failed["code"]) == ("error", STORE_UNAVAILABLE)
        await asyncio.to_thread(own_valkey.start)
        result = await resend_until_decided(client, room, gid)
        assert result["status"] == "settled", result
        joined = await client.join(room)
        assert joined["type"] == "joined", joined


async def test_result_published_while_the_hub_was_cut_off_still_reaches_the_sender(
    own_valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    """A gift settled while its web process's pub/sub connection was down (its result published to no one) still
    gets its gift_result: when the feed comes back, the hub reads the outcome back from the ledger."""
    settings = make_settings(tmp_path)
    redis = redis_client(own_valkey.url)
    async with (
        run_web(settings, own_valkey.url) as (base_url, app),
        httpx.AsyncClient(base_url=base_url, timeout=15) as http,
    ):
        system = System(settings, redis, base_url, http, app)
        room = await system.open_room()
        await grant(system, "v1", 10)
        client = await system.connect("v1")
        gid = await client.gift(room)  # queued; no worker yet
        await wait_until(lambda: gid in system.hub.waiters)
        hub_channel = keys.hub_channel(system.hub.id)
        await system.hub.pubsub.unsubscribe(hub_channel)  # the result will be published to no one
        worker = SettlementWorker(redis, settings)
        assert await worker.start_up(asyncio.Event())
        assert await worker.step(pending=False) == 1
        await system.hub.pubsub.subscribe(hub_channel)
        await redis.client_kill_filter(_type="pubsub")  # the feed breaks and comes back
        result = await client.result(gid)
        assert (result["status"], result["coins"]) == ("settled", 9), result
        await client.close()
    await redis.aclose()


async def wait_until(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# A storm across kill -9 and restart ------------------------------------------------------------------------


async def grant(system: System, user: str, coins: int) -> None:
    """Coins the way a purchase credits them (issuance -> user), with a journal entry the audit accepts."""
    part = keys.part_of_user(user)
    async with system.redis.pipeline(transaction=True) as pipe:
        pipe.hincrby(keys.coins(part), keys.account(user), coins)
        pipe.hincrby(keys.coins(part), keys.SYS_COIN_ISSUANCE, -coins)
        legs = f"coins sys:coin_issuance u:{user} {coins}"
        pipe.xadd(keys.journal(part), {"kind": "purchase", "id": f"grant:{uuid.uuid4()}", "legs": legs})
        await pipe.execute()


async def resend_until_decided(client: WsClient, room: str, gid: str, attempts_max: int = 60) -> dict[str, Any]:
    """Resend a gift (same gift_id) until it gets an outcome other than `store_unavailable` (Valkey reloading)."""
    for _ in range(attempts_max):
        await client.gift(room, gid=gid)
        result = await client.result(gid)
        if result.get("reason") != STORE_UNAVAILABLE:
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(f"gift {gid} still store_unavailable after {attempts_max} resends")


async def resend_until_settled(client: WsClient, room: str, gids: list[str], rounds_max: int = 50) -> None:
    """Resend these gifts (same gift_ids, all at once) until each settled; `store_unavailable` means Valkey is
    still coming back."""
    for _ in range(rounds_max):
        seen_from = len(client.seen)
        for gid in gids:
            await client.gift(room, gid=gid)
        answers = await outcomes(client, gids, seen_from=seen_from)
        for got in answers.values():
            assert got[0]["status"] == "settled" or got[0]["reason"] == STORE_UNAVAILABLE, got
        gids = [gid for gid, got in answers.items() if got[0]["status"] != "settled"]
        if not gids:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{len(gids)} gifts still store_unavailable after {rounds_max} resends")


async def storm(client: WsClient, room: str, stop: asyncio.Event, sent: list[str]) -> None:
    while not stop.is_set():
        sent.append(await client.gift(room))
        await asyncio.sleep(0.01)


async def outcomes(
    client: WsClient, sent: list[str], timeout_s: float = 30.0, seen_from: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """Every answer each sent gift got (among messages from `seen_from` on), once each has one (within `timeout_s`)."""
    found: dict[str, list[dict[str, Any]]] = {gid: [] for gid in sent}
    for message in client.seen[seen_from:]:
        if message.get("gift_id") in found and message.get("type") != "events":
            found[message["gift_id"]].append(message)
    deadline = time.monotonic() + timeout_s
    while any(not answers for answers in found.values()):
        left = [gid for gid, answers in found.items() if not answers]
        assert time.monotonic() < deadline, f"{len(left)} gifts got no answer, e.g. {left[:3]}"
        try:
            message = await client.recv(max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            raise AssertionError(f"{len(left)} gifts got no answer within {timeout_s} s, e.g. {left[:3]}") from None
        if message.get("gift_id") in found and message.get("type") != "events":
            found[message["gift_id"]].append(message)
    return found


async def test_gift_storm_across_kill_9_and_restart(own_valkey: EmbeddedValkey, tmp_path: Path) -> None:
    """Gifts sent before, during and after a kill -9 of Valkey each get exactly one documented answer (settled,
    or rejected `store_unavailable`); resending the rejected ones settles them; balances are exact, audit clean."""
    settings = make_settings(tmp_path)
    senders = ("v1", "v2", "v3")
    async with own_system(own_valkey, settings) as system:
        room = await system.open_room()
        for user in senders:
            await grant(system, user, VIEWER_COINS)
        clients = [await system.connect(user) for user in senders]
        sent: list[list[str]] = [[] for _ in senders]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(storm(c, room, stop, s)) for c, s in zip(clients, sent, strict=True)]
        await asyncio.sleep(0.5)
        kill_valkey(own_valkey)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(own_valkey.start)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)

        settled: dict[str, set[str]] = {}
        settled_at_once: dict[WsClient, list[str]] = {}
        rejected = 0
        for user, client, gids in zip(senders, clients, sent, strict=True):
            answers = await outcomes(client, gids)
            for gid, got in answers.items():
                assert len(got) == 1, f"gift {gid}: {got}"
                assert got[0]["type"] == "gift_result", got
                assert got[0]["status"] == "settled" or got[0]["reason"] == STORE_UNAVAILABLE, got
            retry = [gid for gid, got in answers.items() if got[0]["status"] != "settled"]
            settled_at_once[client] = [gid for gid in gids if gid not in retry]
            rejected += len(retry)
            await resend_until_settled(client, room, retry)
            settled[user] = set(gids)
        assert rejected > 0, "the storm never met the outage"
        for client, gids in settled_at_once.items():  # no late second answer arrived meanwhile
            answered = [m["gift_id"] for m in client.seen if m.get("type") == "gift_result"]
            assert all(answered.count(gid) == 1 for gid in gids)

        redis = redis_client(own_valkey.url)  # a fresh pool: the test's own connections died with the server
        try:
            ledger = Ledger(redis, settings)
            diamonds = 0
            for user in senders:
                price = 1  # rose
                assert (await ledger.wallet(user))["coins"] == VIEWER_COINS - price * len(settled[user])
                diamonds += len(settled[user]) * rules.split_gift(price, settings.creator_share_bps).diamonds
            assert (await ledger.wallet("creator1"))["diamonds"] == diamonds
            assert all([await redis.xlen(keys.gifts_dead_letter(p)) == 0 for p in partitions.all_tags()])
            report = await run_audit(redis)
            assert report.clean, report.summary()
        finally:
            await redis.aclose()


# gifting dev supervises its Valkey ------------------------------------------------------------------------


def start_dev(data_dir: Path, port: int, log_path: Path, **env: str) -> subprocess.Popen[bytes]:
    full_env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    full_env |= {"GIFTING_DATA_DIR": str(data_dir), "GIFTING_PORT": str(port), "GIFTING_SECRET": SECRET}
    full_env |= {"PYTHONUNBUFFERED": "1", **env}
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gifting.cli", "dev"], env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )


def wait_ready(base_url: str, dev: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert dev.poll() is None, log_path.read_text()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base_url + "/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"not ready within {timeout_s} s:\n{log_path.read_text()}")


def valkey_pid(data_dir: Path) -> int:
    import json

    return int(json.loads((data_dir / "valkey.json").read_text())["pid"])


def wait_valkey_replaced(data_dir: Path, old_pid: int, log_path: Path, timeout_s: float = 30.0) -> int:
    """The pid of the valkey-server that `gifting dev` started in place of `old_pid`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            if (pid := valkey_pid(data_dir)) != old_pid:
                return pid
        time.sleep(0.05)
    raise AssertionError(f"valkey-server {old_pid} not replaced within {timeout_s} s:\n{log_path.read_text()}")


def wallet_coins(base_url: str, headers: dict[str, str], attempts_max: int = 20) -> int:
    """The wallet's coins; a 503 (a pooled connection that died with the old server) is retried, as documented."""
    for _ in range(attempts_max):
        response = httpx.get(base_url + "/v1/wallet", headers=headers, timeout=5)
        if response.status_code != 503:
            assert response.status_code == 200, response.text
            coins: int = response.json()["coins"]
            return coins
        time.sleep(0.1)
    raise AssertionError(f"GET /v1/wallet still 503 after {attempts_max} attempts")


def stop_dev(dev: subprocess.Popen[bytes]) -> None:
    if dev.poll() is None:
        dev.terminate()
        try:
            dev.wait(20)
        except subprocess.TimeoutExpired:
            dev.kill()
            dev.wait()


def test_dev_restarts_its_embedded_valkey_after_kill_9(tmp_path: Path) -> None:
    """Under `gifting dev`, kill -9 of valkey-server: it is reaped and restarted from the same data (a purchase
    made before is still there), with a log line, and the system is ready again."""
    port, log_path = free_port(), tmp_path / "dev.log"
    base_url = f"http://127.0.0.1:{port}"
    dev = start_dev(tmp_path / "data", port, log_path)
    try:
        wait_ready(base_url, dev, log_path)
        viewer = {"Authorization": f"Bearer {token('v1')}", "Idempotency-Key": "buy-1"}
        body = {"bundle_id": "coins_65", "payment_token": "tok_sandbox_ok"}
        assert httpx.post(base_url + "/v1/wallet/purchases", headers=viewer, json=body).status_code == 201
        first = valkey_pid(tmp_path / "data")
        os.kill(first, signal.SIGKILL)
        wait_valkey_replaced(tmp_path / "data", first, log_path)
        wait_ready(base_url, dev, log_path)
        assert wallet_coins(base_url, viewer) == 65
        assert "restarting it" in log_path.read_text()
        with pytest.raises(ProcessLookupError):  # reaped, not a zombie
            os.kill(first, 0)
    finally:
        stop_dev(dev)
    assert dev.returncode == 0, log_path.read_text()


def test_dev_gives_up_when_valkey_keeps_crashing(tmp_path: Path) -> None:
    """Past GIFTING_DEV_VALKEY_RESTARTS_MAX restarts within the window, `gifting dev` logs that it gives up,
    stops everything and exits 1."""
    port, log_path = free_port(), tmp_path / "dev.log"
    base_url = f"http://127.0.0.1:{port}"
    dev = start_dev(tmp_path / "data", port, log_path, GIFTING_DEV_VALKEY_RESTARTS_MAX="1")
    try:
        wait_ready(base_url, dev, log_path)
        first = valkey_pid(tmp_path / "data")
        os.kill(first, signal.SIGKILL)
        second = wait_valkey_replaced(tmp_path / "data", first, log_path)
        wait_ready(base_url, dev, log_path)
        os.kill(second, signal.SIGKILL)
        dev.wait(30)
    finally:
        stop_dev(dev)
    assert dev.returncode == 1, log_path.read_text()
    assert "giving up" in log_path.read_text()
    with pytest.raises(httpx.HTTPError):
        httpx.get(base_url + "/healthz", timeout=2)
