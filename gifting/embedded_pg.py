"""The embedded PostgreSQL: the `postgres` binary of the `pgserver` wheel (PostgreSQL 16), private to one directory.

Started by `gifting dev` (and the tests) when GIFTING_DATABASE_URL is unset, next to the embedded Valkey. It is a
child process like the Valkey one (PR_SET_PDEATHSIG), so it stops when its parent dies, even by kill -9; pgserver's
own `get_server` daemonizes through pg_ctl and would outlive a killed test run. Its address is written to
`<data dir>/postgres.json` so `gifting audit`, `gifting archive` and `gifting migrate` find it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg

from gifting.embedded import EmbeddedError, die_with_parent, forget_state, free_port, running_url, stop_child

STATE_FILE = "postgres.json"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
UNPRIVILEGED_UID = 65534  # `nobody`, inside a user namespace: postgres refuses to run as root


def bin_dir() -> Path:
    """The wheel's binaries, found without importing pgserver (its import starts a lock and warns)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - it is a dependency
        raise EmbeddedError("the pgserver package is not installed: pip install pgserver")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _unprivileged() -> list[str]:
    """The command prefix that runs postgres as an unprivileged user when we are root (postgres refuses root):
    a user namespace mapping root to `nobody`, so the files stay ours and no directory needs opening up."""
    if os.geteuid() != 0:
        return []
    unshare = shutil.which("unshare")
    if unshare is None:
        raise EmbeddedError(
            "running as root: PostgreSQL refuses root, and `unshare` (util-linux) is missing to run it unprivileged; "
            "run as another user or set GIFTING_DATABASE_URL"
        )
    return [unshare, "--user", f"--map-user={UNPRIVILEGED_UID}", f"--map-group={UNPRIVILEGED_UID}"]


class EmbeddedPostgres:
    """One postgres process bound to 127.0.0.1 (no unix socket), data in `<data_dir>/postgres`."""

    def __init__(self, data_dir: Path, port: int = 0, announce: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.announce = announce
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        running = find_running(self.data_dir)
        if running and self.announce:
            raise EmbeddedError(f"an embedded PostgreSQL already runs for {self.data_dir} at {running}")
        self._init_db()
        args = [*_unprivileged(), str(bin_dir() / "postgres"), "-D", str(self.pgdata.resolve()), "-p", str(self.port)]
        args += ["-h", "127.0.0.1", "-c", "unix_socket_directories=", "-c", "logging_collector=off"]
        log = open(self.data_dir / "postgres.log", "ab")  # noqa: SIM115 - the child keeps it
        with log:
            self.process = subprocess.Popen(
                args, preexec_fn=die_with_parent, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self._wait_ready()
        if self.announce:
            state = {"url": self.url, "pid": self.process.pid, "parent": os.getpid()}
            (self.data_dir / STATE_FILE).write_text(json.dumps(state))
        return self.url

    def _init_db(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.pgdata.mkdir(parents=True, exist_ok=True)
        args = [*_unprivileged(), str(bin_dir() / "initdb"), "-D", str(self.pgdata.resolve()), "-U", "postgres"]
        args += ["--auth=trust", "--encoding=UTF8", "--no-instructions"]
        result = subprocess.run(
            args, preexec_fn=die_with_parent, capture_output=True, timeout=START_TIMEOUT_S, check=False
        )
        if result.returncode != 0:
            raise EmbeddedError(f"initdb failed ({result.returncode}): {result.stderr.decode(errors='replace')}")

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedError(f"postgres exited with {self.process.returncode}; see {self.data_dir}/postgres.log")
            try:
                psycopg.connect(self.url, connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.05)
        self.stop()
        raise EmbeddedError(f"postgres did not answer on port {self.port} within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        """SIGINT: PostgreSQL's fast shutdown (open transactions roll back, committed ones are on disk)."""
        if self.announce:
            forget_state(self.data_dir / STATE_FILE, self.process)
        stop_child(self.process, signal.SIGINT, STOP_TIMEOUT_S)


def find_running(data_dir: Path) -> str | None:
    """The URL of the embedded PostgreSQL of a running `gifting dev` for this data directory, if any."""
    return running_url(Path(data_dir) / STATE_FILE)
