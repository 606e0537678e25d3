"""Prometheus metrics: every counter, gauge and histogram of the project, and their exposition.

Labels are bounded sets (message kinds, reject reasons, close codes, stream names, outcomes): never a user,
room, gift or withdrawal id. Multiprocess-safe: `gifting serve` and `gifting worker` set
PROMETHEUS_MULTIPROC_DIR (gifting/cli.py, `prepare_dir`) before this module is imported, so each process writes
its own files and its /metrics reads only its own directory. Imported without it (tests in one process), the
metrics live in the library's default registry. docs/OPERATIONS.md lists each metric and the alerts on them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
# End-to-end gift latency: from a few ms (one tick, one batch) to the seconds of a backlog.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000)

# Web process: sockets and rooms. Gauges sum over the live processes sharing a directory.
ws_connections = Gauge("gifting_ws_connections", "Open websocket connections.", multiprocess_mode="livesum")
live_rooms = Gauge("gifting_live_rooms", "Rooms with a socket on this process.", multiprocess_mode="livesum")
ws_frames_written = Counter("gifting_ws_frames_written", "Websocket frames written (room ticks and replies).")
ws_bytes_written = Counter("gifting_ws_bytes_written", "Bytes of websocket frames written by room ticks.")
ws_hub_ticks = Counter("gifting_hub_ticks", "Hub ticks that wrote at least one room's frame.")
ws_server_closes = Counter(
    "gifting_ws_server_closes", "Connections closed by the server, by close code (4008: slow client).", ["code"]
)
ws_inbound = Counter("gifting_ws_inbound_messages", "Client websocket messages accepted, by kind.", ["kind"])
ws_rejected = Counter("gifting_ws_rejected_messages", "Client websocket messages refused, by error code.", ["code"])

# Gifts: accepted by a hub (queued), settled or rejected by the worker or the hub.
gifts_accepted = Counter("gifting_gifts_accepted", "Gifts queued for settlement by a hub.")
gifts_settled = Counter("gifting_gifts_settled", "Gifts settled (first time; resends not counted).")
gifts_rejected = Counter("gifting_gifts_rejected", "Gifts rejected, by reason.", ["reason"])
gift_settled_latency = Histogram(
    "gifting_gift_settled_latency_seconds", "Gift accepted by a hub -> settled and durable.", buckets=LATENCY_BUCKETS_S
)
gift_announced_latency = Histogram(
    "gifting_gift_announced_latency_seconds",
    "Gift accepted by a hub -> announced to its room.",
    buckets=LATENCY_BUCKETS_S,
)

# Settlement worker.
settle_batch_size = Histogram(
    "gifting_settlement_batch_size", "Gifts per settlement batch.", buckets=BATCH_SIZE_BUCKETS
)
settle_batch_seconds = Histogram(
    "gifting_settlement_batch_duration_seconds", "One batch: settle, fsync, announce.", buckets=LATENCY_BUCKETS_S
)
dead_lettered = Counter("gifting_dead_lettered", "Stream entries moved to the dead-letter stream.")
stream_length = Gauge(
    "gifting_stream_length", "Entries in a stream (backlog: not yet settled).", ["stream"], multiprocess_mode="max"
)
stream_pending = Gauge(
    "gifting_stream_pending", "Entries read by a consumer but not acked.", ["stream"], multiprocess_mode="max"
)
outbox_oldest_age = Gauge(
    "gifting_outbox_oldest_age_seconds", "Age of the oldest outbox entry (credits not yet applied) of any partition.",
    multiprocess_mode="max",
)  # fmt: skip
withdrawals_pending = Gauge("gifting_withdrawals_pending", "Withdrawals waiting for payout.", multiprocess_mode="max")
pools_open = Gauge("gifting_pools_open", "Pools open (waiting for pledges or expiry).", multiprocess_mode="max")
payouts = Counter("gifting_payouts", "Withdrawals resolved by the payout run, by outcome (post, void).", ["outcome"])
worker_heartbeat_age = Gauge(
    "gifting_worker_heartbeat_age_seconds", "Age of the newest settlement worker heartbeat.", multiprocess_mode="min"
)

# Valkey.
store_errors = Counter("gifting_store_errors", "Valkey unreachable or timed out, by component.", ["component"])
store_reconnects = Counter("gifting_store_reconnects", "Pub/sub feeds reconnected after Valkey dropped them.")


def exposition() -> bytes:
    """The text format of every metric this process can see."""
    return generate_latest(registry())


def registry() -> CollectorRegistry:
    """What /metrics exposes: this process's multiprocess directory, else the library's default registry."""
    if os.environ.get(MULTIPROC_ENV):
        own = CollectorRegistry()
        multiprocess.MultiProcessCollector(own)  # type: ignore[no-untyped-call]
        return own
    return REGISTRY


def serve(host: str, port: int) -> Callable[[], None]:
    """The worker's /metrics listener (a daemon thread of the library's own server); returns its stop. A port
    already taken is logged and the worker settles on without metrics: settling gifts matters more."""
    try:
        server, thread = start_http_server(port, host, registry())
    except OSError as exc:
        log.error("metrics: cannot listen on %s:%d (GIFTING_WORKER_METRICS_PORT): %s; no /metrics", host, port, exc)
        return lambda: None
    log.info("metrics at http://%s:%d/metrics", host, port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
