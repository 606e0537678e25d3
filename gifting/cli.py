"""The `gifting` command: dev, serve, worker, archive, migrate, report, token, audit, config, and the on-call
commands (gifting/ops.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import psycopg
from redis import exceptions as redis_exceptions

from gifting import auth, embedded, embedded_pg, logs, ops, valkey
from gifting.config import ConfigError, Settings, markdown_table, write_readme_table
from gifting.embedded_cluster import EmbeddedCluster

log = logging.getLogger("gifting")
SECRET_FILE = "secret"
CHILD_STOP_TIMEOUT_S = 10.0


class UsageError(Exception):
    pass


def resolve_redis_url(settings: Settings) -> str:
    """REDIS_URL, else the embedded Valkey of a running `gifting dev` for the same data directory."""
    if settings.redis_url:
        return settings.redis_url
    url = embedded.find_running(Path(settings.data_dir))
    if url is None:
        raise UsageError(
            f"no Valkey to talk to: set REDIS_URL, or start `gifting dev` (data directory {settings.data_dir})"
        )
    return url


def resolve_database_url(settings: Settings) -> str:
    """GIFTING_DATABASE_URL, else the embedded PostgreSQL of a running `gifting dev` for the same data directory."""
    if settings.database_url:
        return settings.database_url
    url = embedded_pg.find_running(Path(settings.data_dir))
    if url is None:
        raise UsageError(
            f"no PostgreSQL to talk to: set GIFTING_DATABASE_URL, or start `gifting dev` "
            f"(data directory {settings.data_dir})"
        )
    return url


def resolve_secret(settings: Settings, create: bool = False) -> str:
    """GIFTING_SECRET, else the dev secret kept in the data directory (created by `gifting dev`)."""
    if settings.secret:
        return settings.secret
    path = settings.path(SECRET_FILE)
    if path.exists():
        return path.read_text().strip()
    if not create:
        raise UsageError(f"no secret: set GIFTING_SECRET, or start `gifting dev` once to create {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


# serve ---------------------------------------------------------------------------------------------------


def cmd_serve(settings: Settings) -> int:
    prepare_metrics_dir(settings, "serve")
    import uvicorn

    from gifting.app import create_app, server_config

    app = create_app(settings, resolve_redis_url(settings), resolve_secret(settings))
    config = server_config(app, settings, settings.host, settings.port)
    uvicorn.Server(config).run()
    return 0


# worker --------------------------------------------------------------------------------------------------


def cmd_worker(settings: Settings) -> int:
    prepare_metrics_dir(settings, "worker")
    from gifting import metrics
    from gifting.app import redis_client
    from workers.settlement import run_workers

    url = resolve_redis_url(settings)
    stop_metrics = None
    if settings.worker_metrics_port:
        stop_metrics = metrics.serve(settings.worker_metrics_host, settings.worker_metrics_port)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        redis = redis_client(url)
        await valkey.ready(redis)  # the batch loops start at once
        try:
            if await claim_partition_count_when_reachable(redis, settings, stop):
                await run_workers(redis, settings, stop)
        finally:
            await redis.aclose()

    try:
        asyncio.run(run())
    finally:
        if stop_metrics is not None:
            stop_metrics()
    return 0


async def claim_partition_count_when_reachable(redis: Any, settings: Settings, stop: asyncio.Event) -> bool:
    """store.claim_partition_count, retried while Valkey is unreachable (a worker or archiver may start before it,
    or while it restarts: they ride that out rather than exit). False if `stop` was set first; a ConfigError (the
    count disagrees) is raised at once."""
    from gifting.ledger.store import claim_partition_count

    backoff_s = 0.1
    while not stop.is_set():
        try:
            await claim_partition_count(redis, settings.ledger_partitions)
            return True
        except (redis_exceptions.ConnectionError, redis_exceptions.TimeoutError, OSError) as exc:
            log.warning("cannot reach Valkey to check the partition count: %s; retrying in %.1f s", exc, backoff_s)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff_s)
            backoff_s = min(backoff_s * 2, 5.0)
    return False


def prepare_metrics_dir(settings: Settings, role: str) -> Path:
    """This process's own Prometheus multiprocess directory (`ROLE-PID` under GIFTING_METRICS_DIR), emptied,
    and set in the environment before prometheus_client is imported (it reads it then). Directories of processes
    that are gone are removed: their counters would otherwise be summed into nobody's /metrics anyway."""
    base = Path(settings.metrics_dir) if settings.metrics_dir else settings.path("metrics")
    base.mkdir(parents=True, exist_ok=True)
    for old in base.iterdir():
        pid = old.name.rpartition("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    own = base / f"{role}-{os.getpid()}"
    shutil.rmtree(own, ignore_errors=True)
    own.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(own)
    return own


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# archive, migrate ----------------------------------------------------------------------------------------


def cmd_archive(settings: Settings) -> int:
    from gifting.app import redis_client
    from gifting.history.schema import migrate
    from workers.archiver import run_archiver

    url = resolve_redis_url(settings)
    database_url = resolve_database_url(settings)
    migrate(database_url)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        redis = redis_client(url)
        try:
            if await claim_partition_count_when_reachable(redis, settings, stop):
                await run_archiver(redis, database_url, settings, stop)
        finally:
            await redis.aclose()

    asyncio.run(run())
    return 0


def cmd_report(settings: Settings, day: str, as_json: bool = False) -> int:
    """The accountant's report of one UTC day of the archived journal (gifting/history/report.py)."""
    import orjson

    from gifting.history import report

    try:
        date = datetime.date.fromisoformat(day)
    except ValueError:
        raise UsageError(f"expected a day as YYYY-MM-DD, got {day!r}") from None
    with psycopg.connect(resolve_database_url(settings)) as conn:
        sections = report.read(conn, date)
    if as_json:
        print(orjson.dumps({"day": date.isoformat(), **sections}, option=orjson.OPT_INDENT_2).decode())
    else:
        print(report.render(date, sections))
    return 0


def cmd_migrate(settings: Settings) -> int:
    from gifting.history.schema import migrate

    applied = migrate(resolve_database_url(settings))
    print(f"applied migrations {applied}" if applied else "schema is up to date")
    return 0


# dev -----------------------------------------------------------------------------------------------------


def cmd_dev(settings: Settings, cluster: int = 0, replicas: int = 0) -> int:
    """Valkey and PostgreSQL (embedded unless REDIS_URL / GIFTING_DATABASE_URL), the web process, the worker and
    the archiver; Ctrl-C stops all of them. With `cluster`, the embedded Valkey is a cluster of that many
    primaries, each with `replicas` replicas (gifting/embedded_cluster.py)."""
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = resolve_secret(settings, create=True)
    valkey: embedded.EmbeddedValkey | EmbeddedCluster | None = None
    supervisor = None
    url = settings.redis_url
    if not url and cluster:
        valkey = EmbeddedCluster(data_dir, cluster, replicas)
        url = valkey.start()
        log.info("embedded Valkey Cluster: %d primaries, %d replicas each, first node %s", cluster, replicas, url)
    elif not url:
        valkey = embedded.EmbeddedValkey(data_dir)
        url = valkey.start()
        supervisor = ValkeySupervisor(valkey, settings.dev_valkey_restarts_max, settings.dev_valkey_restart_window_s)
        log.info("embedded Valkey at %s (data in %s, AOF on)", url, data_dir / "valkey")
    postgres = None
    database_url = settings.database_url
    if not database_url:
        postgres = embedded_pg.EmbeddedPostgres(data_dir)
        database_url = postgres.start()
        log.info("embedded PostgreSQL at %s (data in %s)", database_url, postgres.pgdata)
    from gifting.history.schema import migrate

    migrate(database_url)
    env = {**os.environ, "REDIS_URL": url, "GIFTING_SECRET": secret, "GIFTING_DEV": "1"}
    env["GIFTING_DATABASE_URL"] = database_url
    children: list[subprocess.Popen[bytes]] = []
    stopping = gave_up = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for command in ("serve", "worker", "archive"):
            children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "gifting.cli", command],
                    env=env,
                    preexec_fn=embedded.die_with_parent,
                )
            )
        _print_welcome(settings, secret)
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    log.error("child process %s exited with %s; stopping", child.args, child.returncode)
                    stopping = True
            if supervisor is not None and not stopping and not supervisor.keep_up():
                stopping = gave_up = True
            time.sleep(0.2)
    finally:
        embedded.stop_processes(children, CHILD_STOP_TIMEOUT_S)
        if valkey is not None:
            valkey.stop()
        if postgres is not None:
            postgres.stop()
        log.info("stopped")
    return 1 if gave_up else 0


class ValkeySupervisor:
    """`gifting dev` owns the embedded Valkey it started: when valkey-server dies, it is reaped and started again
    on the same port with the same data directory (the AOF brings the money back), at most `restarts_max` times
    per `window_s`. One crash more means something is wrong that a restart will not fix: give up."""

    def __init__(self, valkey: embedded.EmbeddedValkey, restarts_max: int, window_s: float) -> None:
        self.valkey, self.restarts_max, self.window_s = valkey, restarts_max, window_s
        self.restarts: deque[float] = deque()  # when each recent restart happened (monotonic s)

    def keep_up(self) -> bool:
        """Restart valkey-server if it exited (poll() reaps it). False: it may not be restarted, or did not start."""
        process = self.valkey.process
        status = None if process is None else process.poll()
        if status is None:
            return True
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] > self.window_s:
            self.restarts.popleft()
        if len(self.restarts) >= self.restarts_max:
            log.critical(
                "embedded Valkey exited with %s after %d restarts within %.0f s (GIFTING_DEV_VALKEY_RESTARTS_MAX): "
                "giving up, stopping everything; see %s",
                status, len(self.restarts), self.window_s, self.valkey.data_dir / "valkey" / "valkey.log",
            )  # fmt: skip
            return False
        self.restarts.append(now)
        log.error(
            "embedded Valkey exited with %s; restarting it on %s from %s (restart %d of %d within %.0f s)",
            status, self.valkey.url, self.valkey.data_dir / "valkey", len(self.restarts), self.restarts_max,
            self.window_s,
        )  # fmt: skip
        try:
            self.valkey.start()
        except embedded.EmbeddedError as exc:
            log.critical("embedded Valkey did not come back: %s; stopping everything", exc)
            return False
        log.info("embedded Valkey is back at %s", self.valkey.url)
        return True


DEMO_LINKS_FILE = "demo-links.txt"


def _print_welcome(settings: Settings, secret: str) -> None:
    """The dev banner. Demo tokens are credentials: they go to a file only its owner reads, and to the console
    only when it is a terminal, never to a redirected stdout (a log file, CI output)."""
    base = f"http://{settings.host}:{settings.port}"
    creator = auth.mint(secret, "demo_creator", "creator", "Demo Creator", settings.token_ttl_s)
    viewers = [auth.mint(secret, f"demo_viewer{i}", "viewer", f"Demo Viewer {i}", settings.token_ttl_s) for i in (1, 2)]
    links = f"""demo tokens (or: gifting token USER --role viewer|creator|admin|brand):
  creator  demo_creator   {creator}
  viewer   demo_viewer1   {viewers[0]}
  viewer   demo_viewer2   {viewers[1]}

pages (one browser tab per person; the creator goes live first, viewers find the stream in the lobby):
  creator    {base}/studio#token={creator}
  viewer 1   {base}/#token={viewers[0]}
  viewer 2   {base}/#token={viewers[1]}
  more demo users: {base}/dev
"""
    path = settings.path(DEMO_LINKS_FILE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(links)
    shown = links if sys.stdout.isatty() else f"demo tokens and page links: {path} (kept out of logs)\n"
    print(
        f"""
gifting dev is running
  HTTP API   {base}/v1/...          health: {base}/healthz   ready: {base}/readyz
  websocket  ws://{settings.host}:{settings.port}/v1/ws?token=TOKEN
  data       {settings.data_dir}   (secret: {settings.path(SECRET_FILE)})

{shown}
try:
  curl -s -X POST {base}/v1/wallet/purchases -H 'Authorization: Bearer TOKEN' \\
       -H 'Idempotency-Key: buy-1' -d '{{"bundle_id": "coins_328", "payment_token": "PAYMENT_TOKEN"}}'
  (sandbox payment tokens: docs/PROTOCOL.md)
Ctrl-C stops everything.
""",
        flush=True,
    )


# token, audit, config --------------------------------------------------------------------------------------


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    ttl_s = args.ttl_s if args.ttl_s is not None else settings.token_ttl_s
    try:
        print(auth.mint(resolve_secret(settings), args.user, args.role, args.name, ttl_s))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return 0


def cmd_audit(settings: Settings) -> int:
    from gifting.app import redis_client
    from gifting.ledger.audit import run_audit
    from gifting.ledger.store import claim_partition_count

    url = resolve_redis_url(settings)
    # Without a history database (none configured, no `gifting dev` running one) the journal is Valkey's alone.
    database_url = settings.database_url or embedded_pg.find_running(Path(settings.data_dir))

    async def run() -> bool:
        redis = redis_client(url)
        archive = await psycopg.AsyncConnection.connect(database_url) if database_url else None
        try:
            await claim_partition_count(redis, settings.ledger_partitions)
            progress = lambda n: print(f"  ... {n} journal entries", file=sys.stderr)  # noqa: E731
            report = await run_audit(redis, progress=progress, archive=archive)
        finally:
            await redis.aclose()
            if archive is not None:
                await archive.close()
        print(report.summary())
        return report.clean

    return 0 if asyncio.run(run()) else 1


def cmd_ops(settings: Settings, args: argparse.Namespace) -> int:
    """An on-call command (gifting/ops.py): its answer as JSON on stdout; 1 if what it names does not exist."""
    import orjson

    from gifting.app import redis_client

    url = resolve_redis_url(settings)

    async def run() -> dict[str, object]:
        redis = redis_client(url)
        try:
            return await ops.run(redis, settings, args)
        finally:
            await redis.aclose()

    try:
        answer = asyncio.run(run())
    except (LookupError, ValueError) as exc:
        print(f"gifting {args.command}: {exc}", file=sys.stderr)
        return 1
    print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gifting", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser(
        "dev", help="run everything: embedded Valkey and PostgreSQL (unless configured), web, worker, archiver"
    )
    dev.add_argument("--cluster", type=int, default=0, metavar="N", help="embedded Valkey Cluster of N primaries")
    dev.add_argument("--replicas", type=int, default=0, metavar="R", help="with --cluster: R replicas per primary")
    sub.add_parser("serve", help="run the web process (HTTP API + websocket hub)")
    sub.add_parser("worker", help="run the settlement worker")
    sub.add_parser("archive", help="run the archiver: the journal's history moves to PostgreSQL")
    sub.add_parser("migrate", help="apply the history database's schema migrations")
    report = sub.add_parser("report", help="print one UTC day's totals (the accountant's report) from the archive")
    report.add_argument("day", help="YYYY-MM-DD")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    token = sub.add_parser("token", help="print a signed token for a user")
    token.add_argument("user")
    token.add_argument("--role", choices=auth.ROLES, default="viewer")
    token.add_argument("--name", default=None, help="display name (default: the user id)")
    token.add_argument("--ttl-s", type=int, default=None, help="lifetime in seconds (default GIFTING_TOKEN_TTL_S)")
    sub.add_parser("audit", help="recompute balances from the journal and check the ledger invariants")
    config = sub.add_parser("config", help="print the settings in force")
    config.add_argument("--markdown", action="store_true", help="print the README's configuration table")
    config.add_argument("--write-readme", metavar="PATH", help="rewrite the configuration table in this README")
    ops.add_commands(sub)
    args = parser.parse_args(argv)

    logs.configure("text")
    logs.install()
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_format)
        if args.command == "dev":
            if args.replicas and not args.cluster:
                raise UsageError("--replicas needs --cluster N")
            return cmd_dev(settings, args.cluster, args.replicas)
        if args.command == "serve":
            return cmd_serve(settings)
        if args.command == "worker":
            return cmd_worker(settings)
        if args.command == "archive":
            return cmd_archive(settings)
        if args.command == "migrate":
            return cmd_migrate(settings)
        if args.command == "report":
            return cmd_report(settings, args.day, args.json)
        if args.command == "token":
            return cmd_token(settings, args)
        if args.command == "audit":
            return cmd_audit(settings)
        if args.command in ops.COMMANDS:
            return cmd_ops(settings, args)
        if args.write_readme:
            write_readme_table(Path(args.write_readme))
        elif args.markdown:
            print(markdown_table())
        else:
            for name, value in sorted(vars(settings).items()):
                print(f"{name} = {'***' if name == 'secret' and value else value!r}")
        return 0
    except (UsageError, ConfigError, embedded.EmbeddedError, psycopg.Error) as exc:
        print(f"gifting {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
