"""Why a gift or a pledge was rejected: one enum for the hub, the worker, the HTTP API and the Lua scripts.

docs/PROTOCOL.md documents each reason; tests check that every reason a `.lua` file returns is a member, and
that the doc and this enum agree.
"""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    # Decided by settlement (final: the id stays rejected for GIFTING_REJECTED_GIFT_TTL_S).
    INSUFFICIENT_COINS = "insufficient_coins"
    ROOM_NOT_LIVE = "room_not_live"
    SELF_GIFT = "self_gift"
    PRICE_CHANGED = "price_changed"
    UNKNOWN_GIFT = "unknown_gift"
    GIFT_RETIRED = "gift_retired"
    DAILY_LIMIT = "daily_limit"
    ARCHIVE_BACKLOG = "archive_backlog"
    RECIPIENT_NOT_ON_STAGE = "recipient_not_on_stage"
    # Sponsored gifts only (a `gift` with a `campaign`; decided by settlement, final like the above).
    UNKNOWN_CAMPAIGN = "unknown_campaign"
    CAMPAIGN_NOT_STARTED = "campaign_not_started"
    CAMPAIGN_ENDED = "campaign_ended"
    CAMPAIGN_NOT_TARGETED = "campaign_not_targeted"
    NOT_SPONSORED_GIFT = "not_sponsored_gift"
    SPONSOR_SELF = "sponsor_self"
    SPONSOR_VIEWER_LIMIT = "sponsor_viewer_limit"
    SPONSOR_ROOM_LIMIT = "sponsor_room_limit"
    BUDGET_EXHAUSTED = "budget_exhausted"
    MATCH_ENDED = "match_ended"
    NOT_IN_MATCH = "not_in_match"
    MEMBERS_ONLY = "members_only"
    # Perk purchases (gifting/perks.py; also insufficient_coins, daily_limit).
    TICKET_HELD = "ticket_held"
    # Decided by the hub at once (nothing recorded: the same id may be retried).
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    STORE_UNAVAILABLE = "store_unavailable"
    # Pledges only.
    UNKNOWN_POOL = "unknown_pool"
    POOL_COMPLETED = "pool_completed"
    POOL_EXPIRED = "pool_expired"
    POOL_CANCELLED = "pool_cancelled"
    POOL_VOIDED = "pool_voided"
    PLEDGE_EXCEEDS_REMAINING = "pledge_exceeds_remaining"


# Immediate reasons: the hub answered without settlement, so nothing was recorded for the id.
RETRIABLE = frozenset({RejectReason.RATE_LIMITED, RejectReason.OVERLOADED, RejectReason.STORE_UNAVAILABLE})
