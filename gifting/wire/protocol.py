"""The websocket wire protocol: decode and validate client messages, encode server messages. Pure.

Two codecs, chosen by subprotocol: `gifting.v1.json` (text frames, the default) and
`gifting.v1.msgpack` (binary frames). docs/PROTOCOL.md documents every message.
"""

from __future__ import annotations

import re
import uuid
from enum import Enum
from typing import Any

import msgpack
import orjson

from gifting.errors import GiftingError
from gifting.wire.messages import ClientMessage as ClientMessage
from gifting.wire.messages import Join as Join
from gifting.wire.messages import Leave as Leave
from gifting.wire.messages import Ping as Ping
from gifting.wire.messages import Pledge as Pledge
from gifting.wire.messages import SendGift as SendGift
from gifting.wire.messages import Since as Since
from gifting.wire.messages import StartPool as StartPool

ROOM_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
EPOCH_PATTERN = re.compile(r"[A-Za-z0-9]{1,32}")
CAMPAIGN_ID_PATTERN = re.compile(r"c_[0-9a-f]{16}")  # gifting/ledger/campaigns.py make_campaign
RECIPIENT_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")  # a user id (gifting/auth.py USER_ID_PATTERN)
MATCH_ID_PATTERN = re.compile(r"[0-9a-f]{32}")  # gifting/rooms/matches.py: uuid4().hex
OFFSET_MAX = 2**53  # offsets stay exact in JavaScript numbers
REF_CHARS_MAX = 64


class Codec(Enum):
    JSON = "gifting.v1.json"
    MSGPACK = "gifting.v1.msgpack"

    @classmethod
    def negotiate(cls, offered: list[str]) -> Codec | None:
        """The first subprotocol offered that we speak; JSON when none was offered, None if none matches."""
        if not offered:
            return cls.JSON
        for name in offered:
            for codec in cls:
                if codec.value == name:
                    return codec
        return None


class ProtocolError(GiftingError):
    """A client message we cannot accept. `code` goes on the wire in an `error` message, with the message's `ref`."""

    def __init__(self, code: str, message: str, ref: str | None = None) -> None:
        super().__init__(code, message)
        self.ref = ref


POOL_ID_PATTERN = re.compile(r"p_[0-9a-f]{16}")
PLEDGE_COINS_MAX = 10_000_000


def decode_frame(data: str | bytes, codec: Codec) -> dict[str, Any]:
    """Bytes or text off the wire -> a dict. Raises ProtocolError('bad_frame')."""
    try:
        if codec is Codec.MSGPACK:
            if isinstance(data, str):
                raise ProtocolError("bad_frame", "expected a binary msgpack frame, got a text frame")
            obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
        else:
            obj = orjson.loads(data)
    except (orjson.JSONDecodeError, msgpack.UnpackException, ValueError, TypeError) as exc:
        raise ProtocolError("bad_frame", f"could not decode {codec.value} frame: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_frame", f"expected an object, got {type(obj).__name__}")
    return obj


def parse_message(obj: dict[str, Any], gift_count_max: int) -> ClientMessage:
    """A decoded dict -> a typed, validated client message. Raises ProtocolError with a specific code."""
    ref = obj.get("ref")
    if ref is not None and (not isinstance(ref, str) or len(ref) > REF_CHARS_MAX):
        raise ProtocolError("bad_message", f"ref: expected a string of at most {REF_CHARS_MAX} characters")
    kind = obj.get("type")
    if kind == "gift":
        if obj.get("campaign") is not None and obj.get("to") is not None:
            raise ProtocolError(
                "bad_campaign", "campaign: a sponsored gift goes to the room's host; leave out `to`", ref
            )
        return SendGift(
            room=_room(obj, ref),
            gift=_string(obj, "gift", ref, 40),
            count=parse_count(obj.get("count"), gift_count_max, ref),
            gift_id=parse_gift_id(obj.get("gift_id"), ref),
            price=_optional_price(obj.get("price"), ref),
            ref=ref,
            to=_optional_recipient(obj.get("to"), ref),
            campaign=_optional_campaign(obj.get("campaign"), ref),
            match=_optional_match(obj.get("match"), ref),
        )
    if kind == "join":
        return Join(room=_room(obj, ref), since=_since(obj.get("since"), ref), ref=ref)
    if kind == "leave":
        return Leave(room=_room(obj, ref), ref=ref)
    if kind == "pledge":
        return parse_pledge(obj, ref)
    if kind == "pool_start":
        deadline_s = obj.get("deadline_s")
        if not isinstance(deadline_s, int) or isinstance(deadline_s, bool):
            raise ProtocolError("bad_deadline", f"deadline_s: expected an integer of seconds, got {deadline_s!r}", ref)
        return StartPool(room=_room(obj, ref), gift=_string(obj, "gift", ref, 40), deadline_s=deadline_s, ref=ref)
    if kind == "ping":
        return Ping(ref=ref)
    raise ProtocolError("unknown_type", f"expected type join|leave|gift|pool_start|pledge|ping, got {kind!r}", ref)


def parse_pledge(obj: dict[str, Any], ref: str | None = None) -> Pledge:
    pool, coins = obj.get("pool"), obj.get("coins")
    if not isinstance(pool, str) or not POOL_ID_PATTERN.fullmatch(pool):
        raise ProtocolError("bad_pool", f"pool: expected a pool id, got {pool!r}", ref)
    if not isinstance(coins, int) or isinstance(coins, bool) or not 1 <= coins <= PLEDGE_COINS_MAX:
        raise ProtocolError("bad_amount", f"coins: expected an integer in 1..{PLEDGE_COINS_MAX}, got {coins!r}", ref)
    pledge_id = obj.get("pledge_id")
    try:
        pledge_id = parse_gift_id(pledge_id, ref)
    except ProtocolError:
        raise ProtocolError("bad_pledge_id", f"pledge_id: expected a UUID, got {pledge_id!r}", ref) from None
    return Pledge(pool=pool, coins=coins, pledge_id=pledge_id, ref=ref)


def parse_count(value: object, count_max: int, ref: str | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= count_max:
        raise ProtocolError("bad_count", f"count: expected an integer in 1..{count_max}, got {value!r}", ref)
    return value


def parse_gift_id(value: object, ref: str | None = None) -> str:
    """A gift id is a client-generated UUID; we keep its canonical lowercase form."""
    if not isinstance(value, str):
        raise ProtocolError("bad_gift_id", f"gift_id: expected a UUID string, got {value!r}", ref)
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ProtocolError("bad_gift_id", f"gift_id: expected a UUID, got {value[:64]!r}", ref) from None


def parse_room(value: object, ref: str | None = None) -> str:
    if not isinstance(value, str) or not ROOM_ID_PATTERN.fullmatch(value):
        raise ProtocolError("bad_room", f"room: expected [A-Za-z0-9_-]{{1,64}}, got {value!r}", ref)
    return value


def _room(obj: dict[str, Any], ref: str | None) -> str:
    return parse_room(obj.get("room"), ref)


def _string(obj: dict[str, Any], name: str, ref: str | None, chars_max: int) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not 1 <= len(value) <= chars_max:
        raise ProtocolError("bad_message", f"{name}: expected a string of 1..{chars_max} characters", ref)
    return value


def _optional_campaign(value: object, ref: str | None) -> str | None:
    if value is None or (isinstance(value, str) and CAMPAIGN_ID_PATTERN.fullmatch(value)):
        return value
    raise ProtocolError("bad_campaign", f"campaign: expected a campaign id (c_ and 16 hex digits), got {value!r}", ref)


def _optional_recipient(value: object, ref: str | None) -> str | None:
    if value is None or (isinstance(value, str) and RECIPIENT_PATTERN.fullmatch(value)):
        return value
    raise ProtocolError("bad_message", f"to: expected the user id of someone on stage, got {value!r}", ref)


def _optional_match(value: object, ref: str | None) -> str | None:
    if value is None or (isinstance(value, str) and MATCH_ID_PATTERN.fullmatch(value)):
        return value
    raise ProtocolError("bad_message", f"match: expected a match id (32 hex digits), got {value!r}", ref)


def _optional_price(value: object, ref: str | None) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ProtocolError("bad_message", f"price: expected a positive integer of coins, got {value!r}", ref)
    return value


def _since(value: object, ref: str | None) -> Since | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError("bad_message", 'since: expected {"epoch": str, "offset": int}', ref)
    epoch, offset = value.get("epoch"), value.get("offset")
    if not isinstance(epoch, str) or not EPOCH_PATTERN.fullmatch(epoch):
        raise ProtocolError("bad_message", f"since.epoch: expected an epoch string, got {epoch!r}", ref)
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= OFFSET_MAX:
        raise ProtocolError("bad_message", f"since.offset: expected an integer >= 0, got {offset!r}", ref)
    return Since(epoch, offset)


def encode(message: dict[str, Any], codec: Codec) -> str | bytes:
    """A server message (`ServerMessage.to_dict()`) -> what goes on the wire: str (a text frame) for JSON, bytes
    for msgpack."""
    if codec is Codec.MSGPACK:
        return msgpack.packb(message, use_bin_type=True)
    return orjson.dumps(message).decode()


# Fields of a room event that only the room's creator receives.
CREATOR_ONLY_FIELDS = ("diamonds",)


def for_viewers(event: dict[str, Any]) -> dict[str, Any]:
    """The viewers' copy of a room event: the creator's earnings are not broadcast, at any depth (a
    `stream_summary` carries them in `summary`, a pool in `pool`)."""
    return _without_creator_only(event) if _has_creator_only(event) else event


def _has_creator_only(value: Any) -> bool:
    if isinstance(value, dict):
        return any(k in CREATOR_ONLY_FIELDS or _has_creator_only(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_creator_only(v) for v in value)
    return False


def _without_creator_only(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_creator_only(v) for k, v in value.items() if k not in CREATOR_ONLY_FIELDS}
    if isinstance(value, list):
        return [_without_creator_only(v) for v in value]
    return value
