"""Reward coin HTTP handlers: a viewer's rewards, the daily streak claim, the admin's budget funding."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gifting.ledger.rewards import FUNDING_COINS_MAX
from gifting.web.http import identify, json_body, json_response, require_admin
from gifting.web.wallet import idempotency_key, positive_int


async def my_rewards(request: Request) -> Response:
    """Reward balance, earned today against the viewer's daily cap, the streak."""
    identity = identify(request)
    return json_response(await request.app.state.rewards.summary(identity.user))


async def claim_streak(request: Request) -> Response:
    """The daily streak bonus, once per UTC day (a second claim: 409 reward_already_claimed, nothing moves)."""
    identity = identify(request)
    claimed = await request.app.state.rewards.claim_streak(identity.user)
    return json_response({**claimed, **await request.app.state.rewards.summary(identity.user)})


async def budget(request: Request) -> Response:
    require_admin(request)
    return json_response({"budget_coins": await request.app.state.rewards.budget()})


async def fund_budget(request: Request) -> Response:
    """Fund sys:rewards_budget with `coins` reward coins, once per Idempotency-Key."""
    identity = require_admin(request)
    key = idempotency_key(request)
    coins = positive_int((await json_body(request)).get("coins"), "coins", FUNDING_COINS_MAX)
    after, replay = await request.app.state.rewards.fund(identity.user, key, coins)
    return json_response({"budget_coins": after, "coins": coins, "replay": replay}, 200 if replay else 201)


routes = [
    Route("/v1/rewards", my_rewards, methods=["GET"]),
    Route("/v1/rewards/streak", claim_streak, methods=["POST"]),
    Route("/v1/admin/rewards/budget", budget, methods=["GET"]),
    Route("/v1/admin/rewards/budget", fund_budget, methods=["POST"]),
]
