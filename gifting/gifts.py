"""A gift request as it travels through the inbound stream, from hub (or HTTP) to the settlement worker."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import orjson

from gifting import clock, keys
from gifting.ledger import partitions, rules
from gifting.ledger.store import GiftToSettle
from gifting.wire.messages import Error, GiftEvent, GiftResult

STREAM_FIELD = "g"  # the one field of a stream entry: the request as JSON


@dataclass(frozen=True, slots=True)
class GiftRequest:
    gift_id: str
    room: str
    gift: str
    count: int
    sender: str
    sender_name: str
    hub: str  # the hub process waiting for the result (its reply channel)
    price: int | None = None  # coins per gift the viewer saw, if the client said
    ts_ms: int = 0
    req: int = 0  # the hub's number for this request: its result finds the right waiter
    to: str = ""  # the recipient on stage; "": the room's host
    campaign: str = ""  # a sponsored gift: its campaign (settled by workers/sponsored.py); "": a paid gift
    match: str = ""  # the match whose side the gift targets (refused once it ended); "": none named

    def to_entry(self) -> dict[str, bytes]:
        return {STREAM_FIELD: orjson.dumps(asdict(self))}

    @classmethod
    def from_entry(cls, fields: dict[str, str]) -> GiftRequest:
        """Raises ValueError (with what was wrong) for an entry that is not a gift request."""
        try:
            data: dict[str, Any] = orjson.loads(fields[STREAM_FIELD])
            request = cls(**data)
        except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"not a gift request entry: {exc}") from None
        strings = (
            request.gift_id, request.room, request.gift, request.sender, request.sender_name, request.hub, request.to,
            request.campaign,
            request.match,
        )  # fmt: skip
        if not all(isinstance(s, str) for s in strings):
            raise ValueError(f"not a gift request entry: a text field is not a string in {data!r}")
        if not _positive_int(request.count) or not (request.price is None or _positive_int(request.price)):
            raise ValueError(f"not a gift request entry: count and price must be positive integers in {data!r}")
        if not isinstance(request.ts_ms, int) or not isinstance(request.req, int):
            raise ValueError(f"not a gift request entry: ts_ms and req must be integers in {data!r}")
        return request


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def new_request(**fields: Any) -> GiftRequest:
    return GiftRequest(ts_ms=clock.now_ms(), **fields)


def stream_of(request: GiftRequest) -> str:
    """The gift stream a gift goes to: its payer's ledger partition's (the campaign's for a sponsored gift), so
    the worker settling that partition settles it in one script."""
    payer = keys.campaign_account(request.campaign) if request.campaign else keys.account(request.sender)
    return keys.gifts_stream(keys.part_of(payer))


async def enqueue(redis: Any, request: GiftRequest) -> None:
    """XADD to the payer's gift stream. No MAXLEN: an unsettled gift is never trimmed; the hub bounds the
    backlog."""
    await redis.xadd(stream_of(request), request.to_entry())


def room_event(
    request: GiftRequest, settled: GiftToSettle, outcome: rules.GiftOutcome, fan: dict[str, int] | None = None
) -> dict[str, Any]:
    """A settled gift as the room sees it (announce.lua adds the offset). `diamonds` goes to the creator only:
    the host's diamonds, so 0 for a gift to a guest (whose diamonds are theirs; the room's stats count the host's)."""
    to_guest = settled.creator != settled.host
    return GiftEvent(
        gift_id=request.gift_id,
        gift=request.gift,
        count=request.count,
        coins=settled.coins,
        diamonds=0 if to_guest else settled.diamonds,
        sender=request.sender,
        sender_name=request.sender_name,
        level=rules.level_for(outcome.lifetime_spent),
        ts=request.ts_ms,
        to=settled.creator if to_guest else None,
        fan=fan,
    ).to_dict()


def gift_result(outcome: rules.GiftOutcome) -> dict[str, Any]:
    """What the sender is told of its gift: the outcome, or an error for a gift id reused with other fields."""
    if outcome.status == "conflict":
        message = "gift_id was already used for a different gift; use a new gift_id"
        return Error("gift_id_conflict", message, gift_id=outcome.gift_id).to_dict()
    return GiftResult(outcome.gift_id, outcome.status, outcome.reason or None, outcome.coins).to_dict()


async def gift_backlog(redis: Any) -> int:
    """Entries in every partition's gift stream (unsettled gifts and pool operations), one pipeline."""
    async with redis.pipeline(transaction=False) as pipe:
        for part in partitions.all_tags():
            pipe.xlen(keys.gifts_stream(part))
        return sum(int(n) for n in await pipe.execute())
