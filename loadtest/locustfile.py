"""Locust scenarios for the gifting server: the real roles over the real protocol (docs/LOADTEST.md).

    export GIFTING_SECRET=...   # the server's token secret (`gifting dev`: the data directory's `secret` file)
    locust -f loadtest/locustfile.py --headless -u 20 -r 10 -t 20s --host http://127.0.0.1:8000 \\
        [--scenario steady|gift-storm|big-room|reconnect-storm|purchase-rush|battle|campaign] [UserClass ...]

User classes (each its own user id; tokens are minted here from GIFTING_SECRET):
  Viewer       joins a room and reads every frame
  Gifter       buys coins over HTTP, sends gifts over the websocket at --gift-rate per second
  Creator      opens a room (or takes one the scenario opened) and reads the full feed, with earnings
  Purchaser    the HTTP purchase flow: Idempotency-Key, replay, decline, key conflict, balance
  Reconnector  reads a room, drops the socket, resumes with `since`; counts gaps
  BattleViewer a Viewer of one side of the `battle` scenario's match: its last score must equal the result
  Brand        the `campaign` scenario's brand: reads its campaign's report, which must add up
  SponsoredGifter sends the campaign's gift free until the budget runs out (`campaign` scenario)

Everything a client must get right is checked and a miss is a failure in locust's statistics: a gap, a
duplicate or an out-of-order event (loadtest/scenarios/feed.py), a gift without exactly one result, a gift
rejected although it should have settled, a settled gift that never appears in its sender's feed, a wrong
balance. Legitimate back-pressure (rate_limited, overloaded) and resume gaps beyond the replay limit are
counted under their own names, not as failures.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import requests
from locust import FastHttpUser, between, constant, constant_pacing, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner
from websockets.exceptions import ConnectionClosed

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gifting import auth  # noqa: E402
from loadtest.scenarios import DEFAULT, SCENARIOS, Scenario  # noqa: E402
from loadtest.scenarios.feed import FeedChecker, OwnGifts, merged_gift_ids  # noqa: E402
from loadtest.ws_client import CODECS, ClientError, Message, WsSession, report  # noqa: E402

log = logging.getLogger("loadtest")

TOKEN_TTL_S = 86400
HTTP_TIMEOUT_S = 15.0
WS_TIMEOUT_S = 10.0
# After a restart close (1012/1001) the next web process may take a few seconds to listen.
RECONNECT_WITHIN_S = 30.0  # total time a reconnect may take before it is a failure
RECONNECT_FIRST_DELAY_S = 0.1  # backoff between attempts: doubles up to RECONNECT_MAX_DELAY_S
RECONNECT_MAX_DELAY_S = 2.0
DRAIN_S = 2.0  # on stop, how long a gifter waits for its last results before its balance check
INFLIGHT_MAX = 400  # a gifter pauses when this many of its gifts await a result
TOP_UP_BUNDLE = "coins_16500"
GIFT_MIX = (  # (gift, weight): mostly cheap gifts (they combo and merge), now and then a big one
    ("rose", 30),
    ("heart", 20),
    ("thumbs_up", 15),
    ("finger_heart", 15),
    ("coffee", 10),
    ("perfume", 5),
    ("money_rain", 1),
)
COUNTS = (1, 1, 1, 1, 2, 3, 5)
ROOM_CLASSES = ("Viewer", "BattleViewer", "Gifter", "Reconnector")  # classes that need a room to join


# Command line -----------------------------------------------------------------------------------------------


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    """The scenario options; each also reads LOCUST_<NAME> from the environment, like locust's own."""
    group = parser.add_argument_group("gifting scenarios", "loadtest/locustfile.py; see docs/LOADTEST.md")

    def option(name: str, **kwargs: Any) -> None:
        group.add_argument(name, env_var="LOCUST_" + name.removeprefix("--").replace("-", "_").upper(), **kwargs)

    option(
        "--scenario",
        choices=sorted(SCENARIOS),
        default=DEFAULT,
        help=f"which users, rooms and rates (default {DEFAULT}); user classes named on the command line win",
    )
    option("--rooms", type=int, default=None, help="rooms to open (default: the scenario's)")
    option("--gift-rate", type=float, default=None, help="gifts per second per gifter (default: the scenario's)")
    option("--reconnect-every", type=float, default=None, help="seconds between a reconnector's drops")
    option("--fanout-every", type=int, default=10, help="report every Nth fan-out latency per socket (default 10)")
    option("--result-timeout", type=float, default=10.0, help="seconds a gift may take to settle, then to appear")
    option("--codec", choices=sorted(CODECS), default="json", help="websocket subprotocol (default json)")
    option("--keep-rooms", action="store_true", default=False, help="do not end the rooms when the test stops")
    option("--match-duration", type=int, default=None, help="seconds of the battle's match (default: the scenario's)")


# Shared state of one test run (one locust process) ----------------------------------------------------------


@dataclass
class Room:
    room: str
    creator: str
    creator_name: str
    claimed: bool = False


@dataclass
class Run:
    """What the scenario set up through the public API, shared by this process's users."""

    id: str = ""
    secret: str = ""
    scenario: Scenario = SCENARIOS[DEFAULT]
    rooms: list[Room] = field(default_factory=list)
    prices: dict[str, int] = field(default_factory=dict)  # gift -> coins
    bundles: dict[str, int] = field(default_factory=dict)  # bundle -> coins
    gift_choices: list[str] = field(default_factory=list)
    gift_weights: list[int] = field(default_factory=list)
    users: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    room_turn: itertools.count[int] = field(default_factory=itertools.count)
    gift_rate: float = 0.0
    match: str = ""  # the battle's match id
    match_end_s: float = 0.0  # when it ends, wall clock (time.time())
    warned_rate: bool = False
    ready: bool = False

    def user_id(self, kind: str) -> str:
        return f"lt{self.id}-{kind}{next(self.users)}"

    def token(self, user: str, role: auth.Role, name: str) -> str:
        return auth.mint(self.secret, user, role, name, TOKEN_TTL_S)

    def next_room(self) -> Room:
        if not self.rooms:
            raise ClientError("no room to join: the scenario opened none")
        return self.rooms[next(self.room_turn) % len(self.rooms)]


RUN = Run()


def resolve_secret() -> str:
    """GIFTING_SECRET; else the dev secret of `gifting dev` in GIFTING_DATA_DIR (default .gifting)."""
    secret = os.environ.get("GIFTING_SECRET", "").strip()
    if secret:
        return secret
    path = Path(os.environ.get("GIFTING_DATA_DIR", ".gifting")) / "secret"
    if path.is_file():
        log.info("GIFTING_SECRET not set: using the dev secret in %s", path)
        return path.read_text().strip()
    return ""


def options(env: Environment) -> Any:
    return env.parsed_options


@events.init.add_listener
def apply_scenario(environment: Environment, **_: Any) -> None:
    """Pick the scenario's user classes (unless classes were named) with its weights and rates."""
    opts = options(environment)
    if opts is None:  # used as a library, without locust's command line
        return
    RUN.secret = resolve_secret()
    if not RUN.secret:
        logging.error(
            "no token secret: export GIFTING_SECRET (for `gifting dev`: export GIFTING_SECRET=$(cat .gifting/secret))"
        )
        sys.exit(2)
    scenario = RUN.scenario = SCENARIOS[opts.scenario]
    named = set(opts.user_classes or [])
    for cls in environment.user_classes:
        name = cls.__name__
        cls.weight = scenario.weights.get(name, 1 if name in named else 0)
        cls.fixed_count = scenario.fixed.get(name, 0)
    if not named:
        environment.user_classes[:] = [c for c in environment.user_classes if c.__name__ in scenario.classes]
    rate = opts.gift_rate if opts.gift_rate is not None else scenario.gift_rate
    if rate <= 0:
        logging.error("--gift-rate must be > 0 gifts per second per gifter, got %s", rate)
        sys.exit(2)
    RUN.gift_rate = rate
    Gifter.wait_time = constant_pacing(1.0 / rate)
    Purchaser.wait_time = between(*scenario.purchase_wait_s)
    log.info(
        "scenario %s: %s; classes %s; %g gifts/s per gifter",
        scenario.name,
        scenario.measures,
        ", ".join(f"{c.__name__}(weight {c.weight}, fixed {c.fixed_count})" for c in environment.user_classes),
        rate,
    )


@events.test_start.add_listener
def set_up(environment: Environment, **_: Any) -> None:
    """Read the catalog and open the scenario's rooms, through the public API (once per run)."""
    if isinstance(environment.runner, MasterRunner) or options(environment) is None:
        return
    opts = options(environment)
    host = (environment.host or "").rstrip("/")
    RUN.id = uuid.uuid4().hex[:6]
    RUN.rooms, RUN.ready = [], False
    try:
        with requests.Session() as http:
            gifts = _get(http, f"{host}/v1/catalog/gifts")["gifts"]
            RUN.prices = {g["id"]: int(g["coins"]) for g in gifts}
            RUN.bundles = {b["id"]: int(b["coins"]) for b in _get(http, f"{host}/v1/catalog/bundles")["bundles"]}
            mix = [(g, w) for g, w in GIFT_MIX if g in RUN.prices] or [(min(RUN.prices, key=RUN.prices.__getitem__), 1)]
            RUN.gift_choices, RUN.gift_weights = [g for g, _ in mix], [w for _, w in mix]
            wanted = opts.rooms if opts.rooms is not None else RUN.scenario.rooms
            if any(c.__name__ in ROOM_CLASSES for c in environment.user_classes):
                wanted = max(wanted, 1)
            for i in range(wanted):
                creator = f"lt{RUN.id}-c{i}"
                name = f"Load Creator {i}"
                RUN.rooms.append(open_room(http, host, creator, name, f"loadtest {RUN.scenario.name} {i}"))
            if RUN.scenario.match_s and len(RUN.rooms) >= 2:
                start_match(http, host, opts.match_duration or RUN.scenario.match_s)
    except Exception as exc:
        hint = " (is GIFTING_SECRET the server's secret?)" if "401" in str(exc) else ""
        logging.error("scenario set-up failed against %s: %s%s", host, exc, hint)
        report("set-up", 0.0, f"{type(exc).__name__}: {exc}")
        gevent.spawn_later(0, environment.runner.quit)  # type: ignore[union-attr]
        return
    RUN.ready = True
    log.info("run %s: rooms %s", RUN.id, ", ".join(r.room for r in RUN.rooms) or "none")


@events.test_stop.add_listener
def tear_down(environment: Environment, **_: Any) -> None:
    """End the rooms this run opened (the users have stopped by now)."""
    opts = options(environment)
    if opts is None or opts.keep_rooms or isinstance(environment.runner, MasterRunner):
        return
    host = (environment.host or "").rstrip("/")
    rooms, RUN.rooms = RUN.rooms, []
    with requests.Session() as http:
        for room in rooms:
            token = RUN.token(room.creator, "creator", room.creator_name)
            try:
                http.post(
                    f"{host}/v1/rooms/{room.room}/end",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=HTTP_TIMEOUT_S,
                )
            except requests.RequestException as exc:
                log.warning("could not end room %s: %s", room.room, exc)


@events.quitting.add_listener
def print_summary(environment: Environment, **_: Any) -> None:
    """A compact table (locust prints none with --json-file) and every distinct failure, most frequent first."""
    runner = environment.runner
    if runner is None or isinstance(runner, WorkerRunner) or options(environment) is None:
        return
    stats = runner.stats
    lines = [f"{'type':<5} {'name':<44} {'requests':>9} {'failures':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"]
    for entry in sorted(stats.entries.values(), key=lambda e: (e.method or "", e.name)):
        lines.append(
            f"{entry.method or '':<5} {entry.name:<44} {entry.num_requests:>9} {entry.num_failures:>9} "
            f"{entry.get_response_time_percentile(0.5):>8.0f} {entry.get_response_time_percentile(0.95):>8.0f} "
            f"{entry.get_response_time_percentile(0.99):>8.0f}"
        )
    total = stats.total
    lines.append(f"{'':<5} {'total':<44} {total.num_requests:>9} {total.num_failures:>9}")
    errors = sorted(stats.errors.values(), key=lambda e: -e.occurrences)
    for error in errors[:20]:
        lines.append(f"FAILED {error.occurrences}x {error.method} {error.name}: {str(error.error)[:300]}")
    if len(errors) > 20:
        lines.append(f"... and {len(errors) - 20} more distinct failures")
    print("\n".join(lines), flush=True)


def _get(http: requests.Session, url: str) -> Any:
    response = http.get(url, timeout=HTTP_TIMEOUT_S)
    response.raise_for_status()
    return response.json()


def start_match(http: requests.Session, host: str, duration_s: int) -> None:
    """The first room's creator invites the second's, who accepts: the battle starts now."""
    (a, b) = RUN.rooms[:2]
    headers = {"Authorization": f"Bearer {RUN.token(a.creator, 'creator', a.creator_name)}"}
    invite = http.post(
        f"{host}/v1/matches", headers=headers, json={"opponent": b.creator, "duration_s": duration_s},
        timeout=HTTP_TIMEOUT_S,
    )  # fmt: skip
    invite.raise_for_status()
    match = invite.json()["id"]
    headers = {"Authorization": f"Bearer {RUN.token(b.creator, 'creator', b.creator_name)}"}
    accepted = http.post(f"{host}/v1/matches/{match}/accept", headers=headers, timeout=HTTP_TIMEOUT_S)
    accepted.raise_for_status()
    RUN.match = match
    RUN.match_end_s = time.time() + (accepted.json()["end_ms"] - accepted.json()["started_at_ms"]) / 1000


def open_room(http: requests.Session, host: str, creator: str, name: str, title: str) -> Room:
    """POST /v1/rooms as `creator`, reported to locust's statistics."""
    started = time.perf_counter()
    response = http.post(
        f"{host}/v1/rooms",
        headers={"Authorization": f"Bearer {RUN.token(creator, 'creator', name)}"},
        json={"title": title},
        timeout=HTTP_TIMEOUT_S,
    )
    elapsed_ms = (time.perf_counter() - started) * 1000
    problem = None if response.status_code == 201 else ClientError(f"{response.status_code}: {response.text[:200]}")
    events.request.fire(
        request_type="POST",
        name="POST /v1/rooms",
        response_time=elapsed_ms,
        response_length=len(response.content),
        exception=problem,
        context={},
    )
    if problem is not None:
        raise problem
    return Room(response.json()["room"], creator, name)


# Users ------------------------------------------------------------------------------------------------------


class GiftingUser(FastHttpUser):
    """A user with an identity (its own user id and token) and, for the websocket roles, one session."""

    abstract = True
    role: auth.Role = "viewer"
    kind = "user"
    full_feed = False  # the creator's feed (every event, with diamonds)

    session: WsSession | None = None
    active = False  # set once on_start completed; a user whose set-up never happened stops quietly
    stopped = False

    def on_start(self) -> None:
        if not RUN.ready:  # the scenario's set-up failed (reported) and the runner is quitting
            return
        self.user_id = RUN.user_id(self.kind)
        self.display_name = f"Load {self.kind} {self.user_id.rsplit(self.kind, 1)[-1]}"
        self.token = RUN.token(self.user_id, self.role, self.display_name)
        self.auth = {"Authorization": f"Bearer {self.token}"}
        self.session = None
        self.room: Room | None = None
        self.checker = FeedChecker(self.full_feed)
        self.joining_since: dict[str, Any] | None = None
        self.fanout_seen = 0
        self.fanout_every = max(1, int(options(self.environment).fanout_every or 1))
        self.fanout_name = "creator fan-out (sampled)" if self.full_feed else "fan-out (sampled)"
        try:
            self.begin()
        except BaseException:
            self.on_stop()  # locust calls on_stop only after a started user stops: close what was opened
            raise
        self.active = True

    def begin(self) -> None:
        """The role's own start: connect, join, buy."""

    def alive(self) -> None:
        """At the top of every task: stop this user if it never started or its socket is gone (reported); after
        a restart close (a deploy), reconnect and resume instead."""
        if not self.active:
            raise StopUser()
        if self.session is not None and not self.session.open and self.session.restart_requested:
            self.reconnect()
        if self.session is not None and not self.session.open:
            log.warning("%s: socket closed (code %s); the user stops", self.user_id, self.session.close_code)
            raise StopUser()

    def on_stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.active:
            self.finish()
        else:
            self.disconnect()

    def finish(self) -> None:
        """The role's own stop (once)."""
        self.disconnect()

    # websocket --------------------------------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        return self.host.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/v1/ws"

    def connect(self, quiet: bool = False) -> None:
        self.session = WsSession(self.ws_url, self.token, self.handle, options(self.environment).codec)
        self.session.connect(WS_TIMEOUT_S, quiet)

    def reconnect(self) -> None:
        """The server closed with 1012/1001: connect again with backoff within RECONNECT_WITHIN_S, resume the room
        from the feed checker's (epoch, last offset), then the role's own catch-up. Reported as `reconnect`."""
        started = time.perf_counter()
        self.disconnect()
        delay = RECONNECT_FIRST_DELAY_S
        while True:
            try:
                self.connect(quiet=True)
                break
            except Exception as exc:  # the next process is not listening yet
                if time.perf_counter() - started + delay > RECONNECT_WITHIN_S:
                    problem = f"no web process answered within {RECONNECT_WITHIN_S:g} s: {exc}"
                    report("reconnect", time.perf_counter() - started, problem)
                    raise StopUser() from exc
                gevent.sleep(delay)
                delay = min(2 * delay, RECONNECT_MAX_DELAY_S)
        if self.room is not None:
            self.resume(self.room)
        report("reconnect", time.perf_counter() - started)
        self.reconnected()

    def resume(self, room: Room) -> None:
        """Join `room` again with `since` = what the checker has: the replay continues with no gap or duplicate."""
        epoch, offset = self.checker.epoch, self.checker.last
        if epoch is None or offset is None:
            self.join(room)
            return
        joined = self.join(room, since={"epoch": epoch, "offset": offset})
        if not joined.get("recovered"):
            report("reconnect", 0.0, f"resume after a restart lost history: joined {joined.get('offset')} > {offset}")

    def reconnected(self) -> None:
        """The role's own catch-up after a reconnect."""

    def disconnect(self) -> None:
        if self.session is not None:
            self.session.close()

    def join(self, room: Room, since: dict[str, Any] | None = None) -> Message:
        """join (or resume with `since`), reported as `join` / `resume`; the reader checks what follows."""
        assert self.session is not None
        name = "join" if since is None else "resume"
        self.joining_since = since
        message: Message = {"type": "join", "room": room.room}
        if since is not None:
            message["since"] = since
        started = time.perf_counter()
        try:
            joined = self.session.call(message, WS_TIMEOUT_S)
            if joined.get("type") != "joined":
                raise ClientError(f"{name} {room.room}: {joined.get('code')}: {joined.get('message')}")
        except Exception as exc:
            report(name, time.perf_counter() - started, exc)
            raise
        report(name, time.perf_counter() - started)
        self.room = room
        return joined

    def handle(self, message: Message, now: float) -> None:
        """Every server message, in order, in the session's reader greenlet."""
        kind = message.get("type")
        if kind == "events":
            self.on_events(message, now)
        elif kind == "joined":
            self.on_joined(message)
        elif kind == "gift_result":
            self.on_gift_result(message, now)
        elif kind == "error":
            if message.get("gift_id"):
                self.on_gift_result(message, now)
            elif message.get("ref") is None:
                report("server error", 0.0, f"{message.get('code')}: {message.get('message')}")

    def on_joined(self, joined: Message) -> None:
        since = self.joining_since
        if since is not None and joined.get("recovered"):
            self.checker.start(joined["epoch"], since["offset"])
        else:
            self.checker.start(joined["epoch"], joined["offset"])

    def on_events(self, frame: Message, now: float) -> None:
        for problem in self.checker.frame(frame):
            report("feed order", 0.0, problem)
        wall_ms = time.time() * 1000
        for event in frame.get("events") or ():
            if event.get("kind") != "gift":
                continue
            if self.full_feed:
                if not isinstance(event.get("diamonds"), int):
                    report("creator feed", 0.0, f"a gift without the creator's diamonds: {event}")
            elif "diamonds" in event:
                report("viewer feed", 0.0, f"a viewer received the creator's earnings: {event}")
            if event.get("sender") == self.user_id:
                continue
            self.fanout_seen += 1
            if self.fanout_seen % self.fanout_every == 0 and isinstance(event.get("ts"), int):
                report(self.fanout_name, max(0.0, wall_ms - event["ts"]) / 1000)

    def on_gift_result(self, message: Message, now: float) -> None:
        report("gift -> result", 0.0, f"a gift_result for a gift this user did not send: {message}")

    # http -------------------------------------------------------------------------------------------------

    def buy(self, bundle: str, payment_token: str = "tok_sandbox_ok", key: str | None = None) -> int:
        """One purchase (201 expected); returns the coins bought, 0 if it failed (reported by locust)."""
        key = key or uuid.uuid4().hex
        with self.client.post(
            "/v1/wallet/purchases",
            headers={**self.auth, "Idempotency-Key": key},
            json={"bundle_id": bundle, "payment_token": payment_token},
            name="POST /v1/wallet/purchases",
            catch_response=True,
        ) as response:
            if response.status_code != 201:
                response.failure(f"expected 201, got {response.status_code}: {(response.text or '')[:200]}")
                return 0
            coins = int(response.json()["purchase"]["coins"])
            response.success()
            return coins


class Viewer(GiftingUser):
    """Joins a room and reads every frame: order, no creator-only fields, sampled fan-out latency."""

    kind = "viewer"
    wait_time = constant(1.0)

    def begin(self) -> None:
        self.connect()
        self.join(RUN.next_room())

    @task
    def watch(self) -> None:
        self.alive()


class BattleViewer(Viewer):
    """Watches one side of the battle (the scenario's match): keeps the last `match_score` it saw (from the
    joined snapshot, replays and live frames, by offset) and, at `match_ended`, checks it against the final
    result, reported as `match score = result`. Both rooms' viewers check the same match."""

    kind = "battleviewer"

    def begin(self) -> None:
        self.score: tuple[int, int] = (0, 0)
        self.score_offset = 0
        self.checked = False
        super().begin()

    def on_joined(self, joined: Message) -> None:
        super().on_joined(joined)
        self.match_events(joined.get("recent") or [])

    def on_events(self, frame: Message, now: float) -> None:
        super().on_events(frame, now)
        self.match_events(frame.get("events") or [])

    def match_events(self, entries: list[Message]) -> None:
        for event in entries:
            kind, offset = event.get("kind"), event.get("offset") or 0
            if kind == "match_score" and event.get("match") == RUN.match and offset > self.score_offset:
                self.score, self.score_offset = (event["points_a"], event["points_b"]), offset
            elif kind == "match_ended" and event["match"]["id"] == RUN.match and not self.checked:
                self.checked = True
                points = event["match"]["result"]["points"]
                final = (points["a"], points["b"])
                problem = None if final == self.score else f"last score seen {self.score}, final result {final}"
                report("match score = result", 0.0, problem)


class Creator(GiftingUser):
    """Takes a room the scenario opened (else opens one) and reads the full feed, with earnings."""

    role: auth.Role = "creator"
    kind = "creator"
    full_feed = True
    wait_time = constant(5.0)

    def begin(self) -> None:
        room = next((r for r in RUN.rooms if not r.claimed), None)
        if room is not None:
            room.claimed = True
            self.user_id, self.display_name = room.creator, room.creator_name
            self.token = RUN.token(self.user_id, self.role, self.display_name)
            self.auth = {"Authorization": f"Bearer {self.token}"}
        else:
            with requests.Session() as http:
                room = open_room(
                    http, self.host.rstrip("/"), self.user_id, self.display_name, f"loadtest {self.user_id}"
                )
            room.claimed = True
            RUN.rooms.append(room)
        self.gift_ids: set[str] = set()
        self.gifts_seen = 0
        self.connect()
        self.join(room)

    def on_events(self, frame: Message, now: float) -> None:
        super().on_events(frame, now)
        for event in frame.get("events") or ():
            if event.get("kind") == "gift":
                gift_id = event.get("gift_id")
                if gift_id in self.gift_ids:
                    report("feed order", 0.0, f"gift {gift_id} appeared twice in the creator's feed")
                self.gift_ids.add(gift_id)
                self.gifts_seen += 1

    @task
    def earnings(self) -> None:
        """The live session's totals count at least the gifts this creator has seen."""
        self.alive()
        assert self.room is not None
        seen = self.gifts_seen
        with self.client.get(
            f"/v1/rooms/{self.room.room}/earnings",
            headers=self.auth,
            name="GET /v1/rooms/{room}/earnings",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"expected 200, got {response.status_code}: {(response.text or '')[:200]}")
            elif int(response.json().get("gifts", -1)) < seen:
                response.failure(f"earnings count {response.json().get('gifts')} gifts; the feed showed {seen}")
            else:
                response.success()


class Gifter(GiftingUser):
    """Buys coins over HTTP and sends gifts over the websocket at --gift-rate per second, into one room.

    Reports `gift -> result` (until its gift_result) and `gift -> own animation` (until it shows in this
    user's own feed). Retriable rejections (rate_limited, overloaded) are counted as
    `gift rejected: <reason>` and resent with the same gift_id; any other rejection is a failure (coins are
    bought before they run out, so insufficient_coins means the ledger is wrong). On stop, the balance must
    equal what was bought minus what settled.
    """

    kind = "gifter"
    wait_time = constant_pacing(0.5)  # set from the scenario / --gift-rate at init

    def begin(self) -> None:
        self.gifts = OwnGifts()
        self.bought = 0
        self.retries: dict[str, Message] = {}
        self.messages: dict[str, Message] = {}
        self.timeout_s = float(options(self.environment).result_timeout)
        self.connect()
        assert self.session is not None
        limit = (self.session.welcome.get("limits") or {}).get("gift_rate_per_s")
        if isinstance(limit, int | float) and RUN.gift_rate > limit and not RUN.warned_rate:
            RUN.warned_rate = True
            log.warning(
                "--gift-rate %g is over the server's %g gifts/s per user: expect rate_limited", RUN.gift_rate, limit
            )
        self.join(RUN.next_room())
        self.top_up()

    def top_up(self) -> None:
        bundle = TOP_UP_BUNDLE if TOP_UP_BUNDLE in RUN.bundles else max(RUN.bundles, key=RUN.bundles.__getitem__)
        self.bought += self.buy(bundle)

    def available(self) -> int:
        return self.bought - self.gifts.settled_cost - self.gifts.inflight_cost()

    @task
    def send_gift(self) -> None:
        self.alive()
        assert self.session is not None and self.room is not None
        self.report_overdue()
        now = time.perf_counter()
        for gift_id, message in list(self.retries.items()):  # retriable rejections first, same gift_id
            del self.retries[gift_id]
            self.gifts.sent(gift_id, message["gift"], self.cost(message), now)
            self.transmit(message)
        for _ in range(self.storm_factor()):
            self.send_one()

    def storm_factor(self) -> int:
        """In a match's last seconds (the battle scenario), several gifts per tick: the storm."""
        scenario = RUN.scenario
        left_s = RUN.match_end_s - time.time()
        return scenario.storm_factor if RUN.match and 0 < left_s <= scenario.storm_last_s else 1

    def send_one(self) -> None:
        assert self.session is not None and self.room is not None
        if self.gifts.unresolved() >= INFLIGHT_MAX:
            return
        gift = random.choices(RUN.gift_choices, RUN.gift_weights)[0]
        count = random.choice(COUNTS)
        message = {"type": "gift", "room": self.room.room, "gift": gift, "count": count, "gift_id": str(uuid.uuid4())}
        if self.available() < self.cost(message):
            self.top_up()
            if self.available() < self.cost(message):
                return
        self.messages[message["gift_id"]] = message
        self.gifts.sent(message["gift_id"], gift, self.cost(message), time.perf_counter())
        self.transmit(message)

    def transmit(self, message: Message) -> None:
        assert self.session is not None
        try:
            self.session.send(message)
        except ConnectionClosed:  # a close raced this send: resent after a reconnect, else alive() stops the user
            log.debug("%s: gift %s not sent, the socket closed", self.user_id, message["gift_id"])

    def reconnected(self) -> None:
        """Resend every gift still awaiting its result, with the SAME gift_id: the server settles each at most once
        and answers a settled one with its original outcome, so nothing is counted twice."""
        now, resent = time.perf_counter(), 0
        for record in list(self.gifts.pending.values()):
            message = self.messages.get(record.gift_id)
            if record.status is None and record.queued and message is not None:
                self.gifts.sent(record.gift_id, record.gift, record.cost, now)
                self.transmit(message)
                resent += 1
        if resent:  # the "size" column counts the gifts resent
            report("gifts resent after a restart", 0.0, None, length=resent)

    @staticmethod
    def cost(message: Message) -> int:
        return RUN.prices[message["gift"]] * int(message["count"])

    def on_gift_result(self, message: Message, now: float) -> None:
        gift_id = message.get("gift_id", "")
        reason = message.get("reason")
        if message.get("status") == "rejected" and reason == "insufficient_coins":
            # We never send without coins: the ledger or the accounting is wrong.
            report("gift -> result", 0.0, f"gift {gift_id} rejected insufficient_coins; expected to settle")
            self.gifts.result(message, now)
            self.messages.pop(gift_id, None)
            return
        out = self.gifts.result(message, now)
        for status, seconds in out.result_s:
            if status == "settled":
                report("gift -> result", seconds)
            elif status.removeprefix("rejected: ") in ("rate_limited", "overloaded"):
                report(f"gift {status}", seconds)
            else:
                report("gift -> result", seconds, f"gift {gift_id} {status}; expected to settle")
        for problem in out.problems:
            report("gift -> result", 0.0, problem)
        for retry in out.retry:
            if retry in self.messages:
                self.retries[retry] = self.messages[retry]
        if gift_id not in self.gifts.pending:
            self.messages.pop(gift_id, None)

    def on_events(self, frame: Message, now: float) -> None:
        super().on_events(frame, now)
        entries = frame.get("events") or []
        own = [e for e in entries if e.get("kind") == "gift" and e.get("sender") == self.user_id]
        summarized = [g for e in entries if e.get("kind") == "tick_summary" for g in e.get("gift_ids", [])]
        if not own and not summarized:
            return
        out = self.gifts.frame(own, summarized, now)
        for seconds in out.animation_s:
            report("gift -> own animation", seconds)
        for _ in range(out.summarized):
            report("own gift in a tick summary")
        for problem in out.problems:
            report("gift -> own animation", 0.0, problem)
        for gift_id in [g for entry in own for g in merged_gift_ids(entry)] + summarized:
            if gift_id not in self.gifts.pending:
                self.messages.pop(gift_id, None)

    def report_overdue(self) -> None:
        out = self.gifts.overdue(time.perf_counter(), self.timeout_s)
        for problem in out.problems:
            report("gift -> own animation" if "appear" in problem else "gift -> result", 0.0, problem)
        if out.problems:
            self.messages = {k: v for k, v in self.messages.items() if k in self.gifts.pending}

    def finish(self) -> None:
        """Wait briefly for the last results, then check the balance against what was bought and settled."""
        try:
            deadline = time.perf_counter() + DRAIN_S
            while self.awaiting_results() and time.perf_counter() < deadline:
                gevent.sleep(0.05)
            if not self.awaiting_results():
                self.check_balance()
        finally:
            self.disconnect()

    def awaiting_results(self) -> bool:
        return any(p.status is None and p.queued for p in self.gifts.pending.values())

    def check_balance(self) -> None:
        expected = self.bought - self.gifts.settled_cost
        name = "GET /v1/wallet (after gifts)"
        with self.client.get("/v1/wallet", headers=self.auth, name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"expected 200, got {response.status_code}")
            elif response.json().get("coins") != expected:
                response.failure(
                    f"balance {response.json().get('coins')} coins; bought {self.bought}, "
                    f"settled {self.gifts.settled_cost}: expected {expected}"
                )
            else:
                response.success()


class Reconnector(GiftingUser):
    """Reads a room, drops the socket, resumes with `since` {epoch, offset}; nothing may be missed or repeated.

    A resume answered `recovered: false` is a gap the server owned up to: counted as `resume gap`, a failure
    only if it missed fewer events than the replay limit (GIFTING_REPLAY_EVENTS_MAX).
    """

    kind = "reconnector"

    def wait_time(self) -> float:
        scenario = RUN.scenario
        every = options(self.environment).reconnect_every or scenario.reconnect_every_s
        if scenario.synchronized:  # everyone drops at the same wall-clock moment: a storm
            return every - (time.time() % every) + random.uniform(0, 0.02)
        return random.uniform(0.5, 1.5) * every

    def begin(self) -> None:
        self.replay_max = int(os.environ.get("GIFTING_REPLAY_EVENTS_MAX", "1000"))
        self.drops = 0
        self.connect()
        self.join(RUN.next_room())

    @task
    def drop_and_resume(self) -> None:
        self.alive()
        self.drops += 1
        if self.drops == 1:  # locust runs a task right after on_start: the first drop comes after a wait
            return
        assert self.room is not None
        self.disconnect()
        epoch, offset = self.checker.epoch, self.checker.last
        gevent.sleep(random.uniform(0.1, 0.5))  # offline for a moment: events pile up to replay
        self.connect()
        assert epoch is not None and offset is not None
        joined = self.join(self.room, since={"epoch": epoch, "offset": offset})
        if not joined.get("recovered"):
            missed = int(joined.get("offset", 0)) - offset
            if joined.get("epoch") == epoch and 0 <= missed <= self.replay_max:
                report("resume", 0.0, f"recovered: false after missing only {missed} events (epoch {epoch})")
            else:  # owned up to by the server: counted, with the events missed as its "size"
                report("resume gap", 0.0, None, length=max(0, missed))


class Purchaser(GiftingUser):
    """The HTTP purchase flow with idempotency keys; the balance must count each purchase exactly once."""

    kind = "purchaser"
    wait_time = between(0.5, 2.0)  # set from the scenario at init

    def begin(self) -> None:
        self.expected = 0
        self.paid_keys: list[tuple[str, str]] = []  # (key, bundle) of paid purchases

    def on_start(self) -> None:
        super().on_start()
        if self.active:
            self.purchase()  # every purchaser checks the buy-and-retry path once, however short the run

    def post(self, key: str, bundle: str, payment_token: str, name: str) -> Any:
        return self.client.post(
            "/v1/wallet/purchases",
            headers={**self.auth, "Idempotency-Key": key},
            json={"bundle_id": bundle, "payment_token": payment_token},
            name=name,
            catch_response=True,
        )

    @task(6)
    def purchase(self) -> None:
        """Buy, then retry with the same key: one purchase, the same id, the balance credited once."""
        self.alive()
        bundle, key = random.choice(list(RUN.bundles)), uuid.uuid4().hex
        with self.post(key, bundle, "tok_sandbox_ok", "POST /v1/wallet/purchases") as first:
            body = _json(first)
            if first.status_code != 201 or body.get("replay") is not False:
                first.failure(f"expected 201 replay=false, got {first.status_code}: {(first.text or '')[:200]}")
                return
            self.expected += RUN.bundles[bundle]
            if body["purchase"].get("status") != "paid" or body["wallet"].get("coins") != self.expected:
                first.failure(f"purchase {body['purchase']}; wallet {body['wallet']}, expected {self.expected}")
                return
            first.success()
        self.paid_keys.append((key, bundle))
        with self.post(key, bundle, "tok_sandbox_ok", "POST /v1/wallet/purchases (replay)") as again:
            replay = _json(again)
            if again.status_code != 200 or replay.get("replay") is not True:
                again.failure(f"expected 200 replay=true, got {again.status_code}: {(again.text or '')[:200]}")
            elif replay["purchase"].get("purchase_id") != body["purchase"].get("purchase_id"):
                again.failure(f"replay returned another purchase: {replay['purchase']} vs {body['purchase']}")
            elif replay["wallet"].get("coins") != self.expected:
                again.failure(f"replay moved the balance: {replay['wallet']}, expected {self.expected}")
            else:
                again.success()

    @task(2)
    def declined(self) -> None:
        """A declined payment is 402 payment_declined, again on retry, and credits nothing."""
        self.alive()
        bundle, key = random.choice(list(RUN.bundles)), uuid.uuid4().hex
        for name in ("POST /v1/wallet/purchases (declined)", "POST /v1/wallet/purchases (declined replay)"):
            with self.post(key, bundle, "tok_sandbox_declined", name) as response:
                body = _json(response)
                code = (body.get("error") or {}).get("code")
                if response.status_code != 402 or code != "payment_declined":
                    response.failure(f"expected 402 payment_declined, got {response.status_code} {code}")
                elif (body.get("wallet") or {}).get("coins", self.expected) != self.expected:
                    response.failure(f"a declined payment moved the balance: {body.get('wallet')}")
                else:
                    response.success()

    @task(1)
    def key_conflict(self) -> None:
        """The same Idempotency-Key for a different purchase is 409 idempotency_key_conflict."""
        self.alive()
        if not self.paid_keys:
            return
        key, bundle = random.choice(self.paid_keys)
        other = next((b for b in RUN.bundles if b != bundle), None)
        if other is None:
            return
        with self.post(key, other, "tok_sandbox_ok", "POST /v1/wallet/purchases (key conflict)") as response:
            code = (_json(response).get("error") or {}).get("code")
            if response.status_code != 409 or code != "idempotency_key_conflict":
                response.failure(f"expected 409 idempotency_key_conflict, got {response.status_code} {code}")
            else:
                response.success()

    @task(1)
    def balance(self) -> None:
        """The balance is every paid purchase, once."""
        self.alive()
        with self.client.get("/v1/wallet", headers=self.auth, name="GET /v1/wallet", catch_response=True) as response:
            coins = _json(response).get("coins")
            if response.status_code != 200 or coins != self.expected:
                response.failure(f"balance {coins} ({response.status_code}); expected {self.expected}")
            else:
                response.success()


def _json(response: Any) -> dict[str, Any]:
    with contextlib.suppress(Exception):
        body = response.json()
        if isinstance(body, dict):
            return body
    return {}


# Sponsored gifts (the `campaign` scenario) --------------------------------------------------------------------


@dataclass
class Campaign:
    """The run's sponsored-gift campaign and what this process's sponsored gifters saw of it."""

    id: str = ""
    brand: str = ""
    brand_name: str = ""
    gift: str = ""
    price: int = 0
    funded: int = 0
    settled: int = 0  # sponsored gifts settled (first outcome; a resend's replay is not counted again)
    exhausted: bool = False  # some send was rejected budget_exhausted
    unresolved: int = 0  # sends still without a result when their gifter stopped


CAMPAIGN = Campaign()


@events.init_command_line_parser.add_listener
def add_campaign_arguments(parser: Any) -> None:
    parser.add_argument(
        "--campaign-coins",
        type=int,
        default=None,
        env_var="LOCUST_CAMPAIGN_COINS",
        help="the sponsored-gift campaign's budget in coins (default: the scenario's; 0: no campaign)",
    )


@events.init.add_listener
def pace_sponsored_gifters(environment: Environment, **_: Any) -> None:
    if options(environment) is not None:
        SponsoredGifter.wait_time = constant_pacing(1.0 / max(RUN.gift_rate, 0.001))


@events.test_start.add_listener
def set_up_campaign(environment: Environment, **_: Any) -> None:
    """A brand buys coins, creates a campaign for the first room and funds it (after set_up opened the rooms)."""
    opts = options(environment)
    if isinstance(environment.runner, MasterRunner) or opts is None or not RUN.ready:
        return
    coins = opts.campaign_coins if opts.campaign_coins is not None else RUN.scenario.campaign_coins
    CAMPAIGN.__init__()  # type: ignore[misc]
    if coins <= 0 or not RUN.rooms:
        return
    host = (environment.host or "").rstrip("/")
    brand = f"lt{RUN.id}-brand"
    headers = {"Authorization": f"Bearer {RUN.token(brand, 'brand', 'Load Brand ' + RUN.id)}"}
    gift = "coffee" if "coffee" in RUN.prices else min(RUN.prices, key=RUN.prices.__getitem__)
    try:
        with requests.Session() as http:
            bundle = max(RUN.bundles, key=RUN.bundles.__getitem__)
            for _ in range(-(-coins // RUN.bundles[bundle])):
                http.post(
                    f"{host}/v1/wallet/purchases", headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
                    json={"bundle_id": bundle, "payment_token": "tok_sandbox_ok"}, timeout=HTTP_TIMEOUT_S,
                ).raise_for_status()  # fmt: skip
            end_ms = int(time.time() * 1000) + 24 * 3600 * 1000
            body = {"name": f"loadtest {RUN.id}", "gift": gift, "end_ms": end_ms, "rooms": [RUN.rooms[0].room]}
            created = http.post(f"{host}/v1/campaigns", headers=headers, json=body, timeout=HTTP_TIMEOUT_S)
            created.raise_for_status()
            campaign = created.json()["campaign"]
            http.post(
                f"{host}/v1/campaigns/{campaign['id']}/fund", headers={**headers, "Idempotency-Key": "fund-1"},
                json={"coins": coins}, timeout=HTTP_TIMEOUT_S,
            ).raise_for_status()  # fmt: skip
    except Exception as exc:
        report("set-up", 0.0, f"campaign: {type(exc).__name__}: {exc}")
        return
    CAMPAIGN.id, CAMPAIGN.brand, CAMPAIGN.brand_name = campaign["id"], brand, campaign["brand_name"]
    CAMPAIGN.gift, CAMPAIGN.price, CAMPAIGN.funded = gift, RUN.prices[gift], coins
    log.info(
        "run %s: campaign %s, %d coins for %s gifts in room %s", RUN.id, campaign["id"], coins, gift, body["rooms"]
    )


@events.test_stop.add_listener
def check_campaign(environment: Environment, **_: Any) -> None:
    """The brand's report against what the sponsored gifters saw: every coin spent is a settled send, and a
    budget that refused a send holds less than one more gift (exactly 0 when it is a multiple of the price)."""
    if isinstance(environment.runner, MasterRunner) or not CAMPAIGN.id:
        return
    host = (environment.host or "").rstrip("/")
    headers = {"Authorization": f"Bearer {RUN.token(CAMPAIGN.brand, 'brand', CAMPAIGN.brand_name)}"}
    try:
        view = _get_with(f"{host}/v1/campaigns/{CAMPAIGN.id}", headers)["campaign"]
    except Exception as exc:
        report("campaign budget = sends", 0.0, f"report unreadable: {exc}")
        return
    CAMPAIGN.id = ""
    report("campaign budget = sends", 0.0, campaign_problem(view["report"]))


def campaign_problem(r: dict[str, Any]) -> str | None:
    spent, left, price = r["spent"], r["budget_left"], CAMPAIGN.price
    if r["funded"] != CAMPAIGN.funded or spent + left + r["returned"] != r["funded"] or left < 0:
        return f"budget does not add up: {r}"
    low, high = CAMPAIGN.settled * price, (CAMPAIGN.settled + CAMPAIGN.unresolved) * price
    if not low <= spent <= high or r["sends"] * price != spent:
        seen = f"{CAMPAIGN.settled} settle (+{CAMPAIGN.unresolved} without a result)"
        return f"spent {spent} coins in {r['sends']} sends; the gifters saw {seen}"
    if CAMPAIGN.exhausted and left >= price:
        return f"a send was rejected budget_exhausted while {left} coins were left (price {price})"
    return None


def _get_with(url: str, headers: dict[str, str]) -> Any:
    response = requests.get(url, headers=headers, timeout=HTTP_TIMEOUT_S)
    response.raise_for_status()
    return response.json()


class Brand(GiftingUser):
    """The campaign's brand: reads its report every second; it must always add up (funded = spent + left)."""

    kind = "brand"
    role: auth.Role = "brand"
    wait_time = constant(1.0)

    def begin(self) -> None:
        self.user_id, self.display_name = CAMPAIGN.brand or self.user_id, CAMPAIGN.brand_name or self.display_name
        self.token = RUN.token(self.user_id, self.role, self.display_name)
        self.auth = {"Authorization": f"Bearer {self.token}"}

    @task
    def read_report(self) -> None:
        self.alive()
        if not CAMPAIGN.id:
            return
        name = "GET /v1/campaigns/{campaign}"
        with self.client.get(f"/v1/campaigns/{CAMPAIGN.id}", headers=self.auth, name=name, catch_response=True) as r:
            report_ = (_json(r).get("campaign") or {}).get("report") or {}
            if r.status_code != 200:
                r.failure(f"expected 200, got {r.status_code}: {(r.text or '')[:200]}")
            elif (
                report_.get("spent", 0) + report_.get("budget_left", 0) + report_.get("returned", 0)
                != report_.get("funded")
                or report_.get("budget_left", 0) < 0
            ):
                r.failure(f"the report does not add up: {report_}")
            else:
                r.success()


class SponsoredGifter(GiftingUser):
    """Sends the campaign's gift free at --gift-rate per second into the campaign's room. Each must settle or be
    rejected budget_exhausted (rate_limited and overloaded are resent with the same gift_id); a settled one
    must show in its own feed `sponsored by` the brand. Reports `sponsored gift -> result` and `-> own animation`.
    """

    kind = "sgifter"
    wait_time = constant_pacing(0.1)  # set from the scenario / --gift-rate at init

    def begin(self) -> None:
        self.sent: dict[str, tuple[Message, float]] = {}  # gift id -> (message, sent at), until its result
        self.shown: dict[str, float] = {}  # settled gift id -> when it settled, until it shows
        self.retries: list[Message] = []
        self.connect()
        self.join(RUN.rooms[0])

    @task
    def send_sponsored(self) -> None:
        self.alive()
        if not CAMPAIGN.id or self.room is None or len(self.sent) >= INFLIGHT_MAX:
            return
        retries, self.retries = self.retries, []
        gift_id = str(uuid.uuid4())
        message = {"type": "gift", "room": self.room.room, "gift": CAMPAIGN.gift, "count": 1, "gift_id": gift_id}
        for m in [*retries, message | {"campaign": CAMPAIGN.id}]:
            self.sent[m["gift_id"]] = (m, time.perf_counter())
            with contextlib.suppress(ConnectionClosed):
                assert self.session is not None
                self.session.send(m)

    def on_gift_result(self, message: Message, now: float) -> None:
        sent = self.sent.pop(message.get("gift_id", ""), None)
        if sent is None:
            report("sponsored gift -> result", 0.0, f"a result for a gift this user did not send: {message}")
            return
        seconds, status, reason = now - sent[1], message.get("status"), message.get("reason")
        if status == "settled":
            CAMPAIGN.settled += 1
            self.shown[message["gift_id"]] = now
            report("sponsored gift -> result", seconds)
        elif reason == "budget_exhausted":
            CAMPAIGN.exhausted = True
            report("sponsored gift rejected: budget_exhausted", seconds)
        elif reason in ("rate_limited", "overloaded"):
            report(f"sponsored gift rejected: {reason}", seconds)
            self.retries.append(sent[0])
        else:
            report("sponsored gift -> result", seconds, f"{status} {reason}: expected settled or budget_exhausted")

    def on_events(self, frame: Message, now: float) -> None:
        super().on_events(frame, now)
        for event in frame.get("events") or ():
            ids = merged_gift_ids(event) if event.get("kind") == "gift" else []
            for gift_id in [g for g in ids if g in self.shown]:
                problem = None if event.get("sponsor") == CAMPAIGN.brand_name else f"no sponsor on {event}"
                report("sponsored gift -> own animation", now - self.shown.pop(gift_id), problem)

    def finish(self) -> None:
        try:
            deadline = time.perf_counter() + DRAIN_S
            while self.sent and time.perf_counter() < deadline:
                gevent.sleep(0.05)
            CAMPAIGN.unresolved += len(self.sent)
        finally:
            self.disconnect()
