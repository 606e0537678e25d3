"""Wall-clock time in the units the ledger and the rooms store: integer milliseconds since the epoch."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    """Milliseconds since the Unix epoch (UTC), as stored in journal rows, room events and records."""
    return time.time_ns() // 1_000_000


def utc_day(ms: int) -> str:
    """The UTC day (YYYYMMDD) of a time in ms: the period of daily caps, spend totals and day boards."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y%m%d")


def iso_week(ms: int) -> str:
    """The ISO week (YYYYWww) of a time in ms: the period of weekly top-gifter boards."""
    year, week, _ = datetime.fromtimestamp(ms / 1000, UTC).isocalendar()
    return f"{year}W{week:02d}"


def hour_number(ms: int) -> int:
    """Hours since the epoch: the bucket of earned diamonds for the withdrawal hold."""
    return ms // 3600_000
