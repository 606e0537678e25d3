"""How long `gifting audit` takes over a partitioned ledger: gifts settled by the real Ledger between viewers and
creators spread over the partitions (most gifts cross partitions: a source row and a credit row each), then one
run_audit. Runnable with no arguments (an embedded Valkey it starts and stops):

    PYTHONPATH=$PWD python -m loadtest.bench_audit [--gifts 20000] [--batch 500]

Prints the settle time, the audit time, gifts audited per second and whether the audit was clean.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from gifting import keys
from gifting.app import redis_client
from gifting.config import Settings
from gifting.embedded import EmbeddedValkey
from gifting.ledger import partitions, rules
from gifting.ledger.audit import run_audit
from gifting.ledger.store import GiftToSettle, Ledger

VIEWERS = 200
CREATORS = 50
COINS_EACH = 1_000_000


async def bench(url: str, tmp: Path, gifts: int, batch: int) -> None:
    redis = redis_client(url)
    try:
        settings = Settings.from_env({}, data_dir=str(tmp), secret="bench-audit-" + "x" * 32)
        ledger = Ledger(redis, settings)
        viewers, creators = [f"viewer{i}" for i in range(VIEWERS)], [f"creator{i}" for i in range(CREATORS)]
        for viewer in viewers:
            record = {"status": "paid", "coins": str(COINS_EACH)}
            await ledger.purchase(viewer, keys.purchase_id(viewer, "bench"), "fp", "paid", record, COINS_EACH)
        split = rules.split_gift(10, settings.creator_share_bps)
        started = time.perf_counter()
        for first in range(0, gifts, batch):
            settled = await ledger.settle([
                GiftToSettle(str(uuid.uuid4()), viewers[n % VIEWERS], creators[n % CREATORS], split.coins,
                             split.diamonds, "fp", "", "r1", "rose", 1)
                for n in range(first, min(first + batch, gifts))
            ])  # fmt: skip
            assert all(outcome.settled for outcome in settled)
        settle_s = time.perf_counter() - started
        started = time.perf_counter()
        report = await run_audit(redis)
        audit_s = time.perf_counter() - started
        print(
            f"partitions={partitions.count()} gifts={gifts} credits={report.kinds['credit']} settle_s={settle_s:.1f} "
            f"audit_s={audit_s:.2f} gifts_audited_per_s={gifts / audit_s:.0f} clean={report.clean}"
        )
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gifting audit over cross-partition gifts: its time.")
    parser.add_argument("--gifts", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        valkey = EmbeddedValkey(Path(tmp) / "valkey", announce=False)
        try:
            asyncio.run(bench(valkey.start(), Path(tmp), args.gifts, args.batch))
        finally:
            valkey.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
