"""The archive benchmark runs end to end on the partitioned ledger: a tiny load on its own Valkey and PostgreSQL.

It is a subprocess (it starts and stops its servers, worker and archiver processes itself); its figures are not
checked here, only that the audit over the archive and Valkey passed and it ends with a RESULT line carrying
every field.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

BENCH_TIMEOUT_S = 150.0
RESULT = re.compile(r"^RESULT archive keeps_up=([\d.]+) valkey_bytes_per_gift_steady=(-?\d+) pg_bytes_per_gift=(\d+)$")
TINY = ("--gifts", "600", "--viewers", "60", "--rooms", "6", "--batch", "50", "--idempotency-s", "1")


@pytest.mark.timeout(BENCH_TIMEOUT_S + 30)
def test_bench_archive_completes_with_a_clean_audit() -> None:
    """A tiny run of the three phases archives every partition's journal, its audit is clean, and the last line
    is the RESULT with all three figures."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIFTING_", "REDIS_URL"))}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, str(REPO / "loadtest" / "bench_archive.py"), *TINY],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output and "FAILED" not in output, output
    assert RESULT.match(done.stdout.strip().splitlines()[-1]), output
    assert "findings: none" in output, output
