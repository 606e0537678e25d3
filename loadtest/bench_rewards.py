"""Reward accrual benchmark: one watch period paid to many viewers, on a partitioned ledger next to one partition.

    python loadtest/bench_rewards.py [--viewers N] [--partitions N] [--rounds N]

Against a private embedded Valkey (a temporary directory), the hub's own call (Rewards.accrue_watch): one
rewards.lua call per viewer in the budget's partition, pipelined, one durability wait, then the credits owed to
viewers of other partitions (Ledger.apply_credits: one credit.lua call per destination partition, its wait, the
outbox entries deleted). Then the same period again (a second hub: every accrual a replay). Alternated
`--rounds` times, each round a new period:

- partitioned  GIFTING_LEDGER_PARTITIONS=--partitions: most viewers live in another partition than the budget;
- one          one partition: every accrual is local (the baseline: no outbox, no credit step).

Prints wall time, the hub's CPU and Valkey's CPU per viewer for each (median over rounds); the last line is one
parseable summary:

    RESULT rewards us_per_viewer=... vs_one_partition=... hub_cpu_us_per_viewer=... valkey_us_per_viewer=...
        cross_share=...
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gifting import keys  # noqa: E402
from gifting.app import redis_client  # noqa: E402
from gifting.config import Settings  # noqa: E402
from gifting.embedded import EmbeddedValkey  # noqa: E402
from gifting.ledger import partitions  # noqa: E402
from gifting.ledger.rewards import Rewards  # noqa: E402
from gifting.ledger.store import Ledger  # noqa: E402


async def valkey_cpu_s(redis: Any) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def one_side(count: int, viewers: int, rounds: int) -> dict[str, list[float]]:
    """`rounds` periods paid to `viewers` on a fresh Valkey with `count` partitions: per viewer, wall us and
    Valkey us of the paying call and of its replay."""
    partitions.configure(count)
    data = Path(tempfile.mkdtemp(prefix="bench-rewards-"))
    server = EmbeddedValkey(data, announce=False)
    url = server.start()
    found: dict[str, list[float]] = {k: [] for k in ("wall", "valkey", "cpu", "replay_wall", "replay_valkey")}
    try:
        redis = redis_client(url)
        settings = Settings.from_env(
            {}, data_dir=str(data), ledger_partitions=count, reward_viewer_day_coins_max=10**6,
            reward_day_coins_max=10**9,
        )  # fmt: skip
        rewards = Rewards(redis, settings, Ledger(redis, settings))
        await rewards.fund("boss", "bench", viewers * rounds * settings.reward_watch_coins)
        users = [f"v{i}" for i in range(viewers)]
        base = int(time.time()) // settings.reward_watch_period_s
        for r in range(rounds):
            for label in ("", "replay_"):
                cpu, start, own = await valkey_cpu_s(redis), time.perf_counter(), time.process_time()
                outcomes = await rewards.accrue_watch(users, base - 1000 + r)
                wall, own = time.perf_counter() - start, time.process_time() - own
                valkey = await valkey_cpu_s(redis) - cpu
                assert {o.status for o in outcomes} == {"replay" if label else "ok"}, outcomes[0]
                found[label + "wall"].append(wall * 1e6 / viewers)
                found[label + "valkey"].append(valkey * 1e6 / viewers)
                if not label:
                    found["cpu"].append(own * 1e6 / viewers)
        assert await redis.xlen(keys.outbox(keys.rewards_part())) == 0
        await redis.aclose()
    finally:
        server.stop()
        partitions.configure(partitions.PARTITIONS_DEFAULT)
    return found


def cross_share(count: int, viewers: int) -> float:
    partitions.configure(count)
    budget = partitions.of_account(keys.SYS_REWARDS_BUDGET)
    share = sum(partitions.of_account(keys.account(f"v{i}")) != budget for i in range(viewers)) / viewers
    partitions.configure(partitions.PARTITIONS_DEFAULT)
    return share


async def run(viewers: int, count: int, rounds: int) -> None:
    sides = {"partitioned": await one_side(count, viewers, rounds), "one": await one_side(1, viewers, rounds)}
    med = {name: {k: statistics.median(v) for k, v in found.items()} for name, found in sides.items()}
    for name, m in med.items():
        print(
            f"{name:12} us/viewer: pay {m['wall']:.1f} wall, {m['cpu']:.1f} hub CPU, {m['valkey']:.1f} Valkey CPU;"
            f" replay {m['replay_wall']:.1f} wall, {m['replay_valkey']:.1f} Valkey CPU"
        )
    share = cross_share(count, viewers)
    print(f"viewers {viewers}, partitions {count}, rounds {rounds}, cross-partition share {share:.2f}")
    p = med["partitioned"]
    print(
        f"RESULT rewards us_per_viewer={p['wall']:.1f} vs_one_partition={p['wall'] / med['one']['wall']:.2f}"
        f" hub_cpu_us_per_viewer={p['cpu']:.1f} valkey_us_per_viewer={p['valkey']:.1f} cross_share={share:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--viewers", type=int, default=5000)
    parser.add_argument("--partitions", type=int, default=partitions.PARTITIONS_DEFAULT)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.viewers, args.partitions, args.rounds))


if __name__ == "__main__":
    main()
