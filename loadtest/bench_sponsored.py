"""Sponsored-gift ledger benchmark: durable sponsored sends per second next to paid gifts, in one run.

    python loadtest/bench_sponsored.py [--gifts N] [--batch N] [--rounds N]

Against a private embedded Valkey (a temporary directory). Both sides settle `--gifts` 10-coin gifts from 100
viewers to one creator in batches of `--batch`, each batch made durable once (WAITAOF), alternated `--rounds`
times so the machine's drift hits both:

- paid       settle.lua, one call per batch (Ledger.settle), the worker's hot path;
- sponsored  sponsor.lua, one call per gift pipelined per batch (Campaigns.send): each checks the campaign's
             window, limits and budget and debits it atomically.

No stream, announce or ack on either side. The last line is one parseable summary:

    RESULT sponsored gifts_per_s=... paid_gifts_per_s=... ratio=...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gifting import clock, keys  # noqa: E402
from gifting.app import redis_client  # noqa: E402
from gifting.catalog.model import Catalog  # noqa: E402
from gifting.config import Settings  # noqa: E402
from gifting.embedded import EmbeddedValkey  # noqa: E402
from gifting.ledger import rules  # noqa: E402
from gifting.ledger.audit import run_audit  # noqa: E402
from gifting.ledger.campaigns import Campaigns, SponsoredSend, make_campaign  # noqa: E402
from gifting.ledger.store import GiftToSettle, Ledger  # noqa: E402

VIEWERS = 100
PRICE = 10  # coffee


async def run(gifts: int, batch: int, rounds: int) -> dict[str, list[float]]:
    data = Path(tempfile.mkdtemp(prefix="bench-sponsored-"))
    server = EmbeddedValkey(data, announce=False)
    url = server.start()
    try:
        redis = redis_client(url)
        settings = Settings.from_env({}, data_dir=str(data))
        campaigns, ledger = Campaigns(redis, settings), Ledger(redis, settings)
        catalog = Catalog.from_dict(json.loads((REPO / "gifting/catalog/catalog.json").read_text()))
        body = {"name": "bench", "gift": "coffee", "end_ms": clock.now_ms() + 3_600_000}
        record = make_campaign(body, "brand", "Brand", catalog, settings, clock.now_ms())
        await campaigns.create(record)
        coins = gifts * rounds * PRICE
        for user, amount in [("brand", coins), *((f"v{i}", coins // VIEWERS + PRICE) for i in range(VIEWERS))]:
            purchase = keys.purchase_id(user, "bench")  # bought like any purchase, so the audit can check the run
            await ledger.purchase(user, purchase, "fp", "paid", {"status": "paid", "coins": amount}, amount)
        await campaigns.fund(record["id"], coins, "bench-fund", "brand")
        split = rules.split_gift(PRICE, settings.creator_share_bps)
        rates: dict[str, list[float]] = {"paid": [], "sponsored": []}
        for _ in range(rounds):
            for kind in rates:
                started = time.perf_counter()
                for _b in range(gifts // batch):
                    ids = [str(uuid.uuid4()) for _ in range(batch)]
                    if kind == "sponsored":
                        sends = [
                            SponsoredSend(g, record["id"], f"v{i % VIEWERS}", "c1", "r1", "coffee", 1, PRICE,
                                          split.diamonds, "fp", "", 0)
                            for i, g in enumerate(ids)
                        ]  # fmt: skip
                        outcomes = await campaigns.send(sends)
                    else:
                        paid = [
                            GiftToSettle(g, f"v{i % VIEWERS}", "c1", PRICE, split.diamonds, "fp", "", "r1", "coffee", 1)
                            for i, g in enumerate(ids)
                        ]
                        outcomes = await ledger.settle(paid, durable_timeout_ms=settings.waitaof_timeout_ms)
                    assert all(o.settled for o in outcomes), outcomes[:3]
                rates[kind].append(gifts // batch * batch / (time.perf_counter() - started))
        report = await run_audit(redis)
        assert report.clean, report.summary()
        await redis.aclose()
        return rates
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gifts", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rates = asyncio.run(run(args.gifts, args.batch, args.rounds))
    for kind, values in rates.items():
        print(f"{kind:>9}: " + ", ".join(f"{v:,.0f} gifts/s" for v in values))
    sponsored, paid = max(rates["sponsored"]), max(rates["paid"])
    print(f"RESULT sponsored gifts_per_s={sponsored:.0f} paid_gifts_per_s={paid:.0f} ratio={sponsored / paid:.2f}")


if __name__ == "__main__":
    main()
