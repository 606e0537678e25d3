"""The inbound message budget of one websocket: a token bucket every client message draws from."""

from __future__ import annotations

import time
from typing import Any

from gifting.config import Settings
from gifting.wire import protocol
from gifting.wire.messages import Error, GiftResult, PledgeResult
from gifting.wire.reasons import RejectReason


class MessageBudget:
    """GIFTING_WS_MESSAGE_RATE_PER_S sustained, bursts of GIFTING_WS_MESSAGE_BURST; a join or pool_start draws
    GIFTING_WS_JOIN_COST (it reads a snapshot, may replay up to GIFTING_REPLAY_EVENTS_MAX events, or writes)."""

    def __init__(self, settings: Settings) -> None:
        self.rate_per_s = settings.ws_message_rate_per_s
        self.burst = float(settings.ws_message_burst)
        self.join_cost = settings.ws_join_cost
        self.tokens = self.burst
        self.refilled_at = time.monotonic()

    def cost(self, message: protocol.ClientMessage) -> int:
        return self.join_cost if isinstance(message, protocol.Join | protocol.StartPool) else 1

    def take(self, message: protocol.ClientMessage) -> bool:
        """Draw the message's cost; False (nothing drawn) if the budget does not hold it now."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.refilled_at) * self.rate_per_s)
        self.refilled_at = now
        cost = self.cost(message)
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True


def over_budget(message: protocol.ClientMessage) -> dict[str, Any]:
    """The answer to a message over the budget: a gift or pledge is rejected `rate_limited` (nothing recorded, the
    same id may be retried), anything else gets error `rate_limited`."""
    if isinstance(message, protocol.SendGift):
        return GiftResult(message.gift_id, "rejected", RejectReason.RATE_LIMITED.value).to_dict()
    if isinstance(message, protocol.Pledge):
        return PledgeResult(message.pledge_id, "rejected", RejectReason.RATE_LIMITED.value).to_dict()
    return Error("rate_limited", "over the connection's message budget; slow down", message.ref).to_dict()
