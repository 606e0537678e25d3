"""The load-test scenarios: which user classes run, in what proportion, against how many rooms, how fast.

Pure data, read by loadtest/locustfile.py (`--scenario NAME`) and described in docs/LOADTEST.md. Class weights
apply to locust's `-u` users; `fixed` users are spawned first, whatever `-u` is.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    measures: str
    rooms: int  # rooms the scenario opens before the users start (each with its own creator identity)
    weights: dict[str, int]  # user class name -> locust weight
    fixed: dict[str, int] = field(default_factory=dict)  # user class name -> fixed_count
    gift_rate: float = 2.0  # gifts per second per gifter
    reconnect_every_s: float = 5.0  # a reconnector's time between drops
    synchronized: bool = False  # every reconnector drops at the same moment (a storm) instead of at random
    purchase_wait_s: tuple[float, float] = (0.5, 2.0)  # a purchaser's pause between purchase flows
    match_s: int = 0  # > 0: the first two rooms play a match this long, seconds (POST /v1/matches)
    storm_last_s: float = 10.0  # in a match's last seconds each gifter sends storm_factor times as fast
    storm_factor: int = 5
    campaign_coins: int = 0  # > 0: a brand funds a sponsored-gift campaign with this budget for the first room
    example: str = ""  # a sensible size for this machine kind (2 cores), for the docs

    @property
    def classes(self) -> list[str]:
        return sorted({*self.weights, *self.fixed})


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="steady",
            measures="every path at a moderate, constant load: the default mix",
            rooms=2,
            weights={"Viewer": 4, "Gifter": 2, "Reconnector": 1, "Purchaser": 1, "Creator": 1},
            example="-u 20 -r 10 -t 60s",
        ),
        Scenario(
            name="gift-storm",
            measures="settlement and one room's fan-out when every gifter sends fast into the same room",
            rooms=1,
            weights={"Gifter": 3, "Viewer": 2},
            fixed={"Creator": 1},
            gift_rate=10.0,
            example="-u 40 -r 20 -t 60s",
        ),
        Scenario(
            name="big-room",
            measures="fan-out to many sockets in one room (coalesced frames, sampled fan-out latency)",
            rooms=1,
            weights={"Viewer": 30, "Gifter": 1},
            fixed={"Creator": 1},
            gift_rate=5.0,
            example="-u 300 -r 50 -t 60s",
        ),
        Scenario(
            name="reconnect-storm",
            measures="resume by offset when every reconnector drops at the same moment, while gifts flow",
            rooms=1,
            weights={"Reconnector": 8, "Gifter": 2},
            fixed={"Creator": 1},
            gift_rate=5.0,
            reconnect_every_s=5.0,
            synchronized=True,
            example="-u 100 -r 50 -t 60s",
        ),
        Scenario(
            name="purchase-rush",
            measures="the HTTP purchase flow (idempotency keys, replays, declines) as fast as it goes",
            rooms=0,
            weights={"Purchaser": 1},
            purchase_wait_s=(0.0, 0.05),
            example="-u 50 -r 25 -t 60s",
        ),
        Scenario(
            name="battle",
            measures="a match between two rooms: both audiences gift, a storm in the last 10 s, and every viewer's "
            "last score against the final result",
            rooms=2,
            weights={"BattleViewer": 6, "Gifter": 2},
            gift_rate=2.0,
            match_s=60,
            example="-u 80 -r 40 -t 75s",
        ),
        Scenario(
            name="campaign",
            measures="a storm of sponsored gifts that exhausts a brand's budget: it ends at exactly zero, no send "
            "beyond it settles, and the brand's report counts every settled send once",
            rooms=1,
            weights={"SponsoredGifter": 4, "Viewer": 1},
            fixed={"Brand": 1},
            gift_rate=10.0,
            campaign_coins=500,
            example="-u 40 -r 20 -t 30s --campaign-coins 20000",
        ),
    )
}
DEFAULT = "steady"
