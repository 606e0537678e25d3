"""The settlement benchmark runs end to end on the partitioned ledger: a tiny load on its own embedded Valkey.

It is a subprocess (it starts and stops its Valkey and worker process itself); its figures are not checked
here, only that every check of the run passed and it ends with a RESULT line carrying every field.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

BENCH_TIMEOUT_S = 120.0
RESULT = re.compile(r"^RESULT settlement gifts_per_s=(\d+) ceiling_ratio=([\d.]+) naive_ratio=([\d.]+)$")
TINY = (
    *("--gifts", "300", "--viewers", "60", "--rooms", "6"),
    *("--batch", "50", "--ceiling-gifts", "200", "--naive-gifts", "20"),
)


@pytest.mark.timeout(BENCH_TIMEOUT_S + 30)
def test_bench_settlement_completes_with_every_check_passed() -> None:
    """A tiny run of all three phases passes every check (partition journals, credits, audit) and ends with
    the RESULT line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIFTING_", "REDIS_URL"))}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, str(REPO / "loadtest" / "bench_settlement.py"), *TINY],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output and "FAIL" not in output, output
    assert RESULT.match(done.stdout.strip().splitlines()[-1]), output
    assert "journal gifts 300 == 300" in output and "audit clean" in output, output
