"""The cluster benchmark runs end to end: a tiny load on its own standalone Valkey and its own cluster.

It is a subprocess (it starts and stops its servers and worker processes itself); its figures are not checked
here, only that it completes and ends with a RESULT line carrying every field.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

BENCH_TIMEOUT_S = 150.0
RESULT = re.compile(
    r"^RESULT cluster gifts_per_s=(\d+) vs_standalone=([\d.]+) cpu_per_gift_ratio=([\d.]+) "
    r"credit_lag_p99_ms=(-?\d+)$"
)
TINY = ("--gifts", "300", "--workers", "1", "--viewers", "60", "--rooms", "6", "--backlog", "20", "--batch", "50")


@pytest.mark.timeout(BENCH_TIMEOUT_S + 30)
def test_bench_cluster_completes_with_a_result_line() -> None:
    """A tiny run on both backends completes and its last line is the RESULT with all four figures."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIFTING_", "REDIS_URL"))}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, str(REPO / "loadtest" / "bench_cluster.py"), *TINY],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S,
    )  # fmt: skip
    output = done.stdout + done.stderr
    # 1: a check failed (printed above the RESULT line); a crash would leave no RESULT line.
    assert done.returncode in (0, 1), output
    assert "Traceback" not in output, output
    last = done.stdout.strip().splitlines()[-1]
    assert RESULT.match(last), output
    assert "standalone: 300 gifts" in output and "cluster of 3: 300 gifts" in output, output
