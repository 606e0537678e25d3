"""Wall-clock time in the units the ledger and the rooms store: integer milliseconds since the epoch."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch (UTC), as stored in journal rows, room events and records."""
    return time.time_ns() // 1_000_000
