"""The wire protocol, pure: decoding frames, validating every client message, and every error code."""

from __future__ import annotations

import uuid
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gifting.wire import protocol
from gifting.wire.protocol import Codec, Join, Leave, Ping, ProtocolError, SendGift, Since

COUNT_MAX = 999
GID = "0b8e3c5e-7d1a-4a53-9f0e-2f8f1c7f2a11"
_MISSING = object()  # a field left out of the message


def parse(obj: dict[str, Any]) -> protocol.ClientMessage:
    return protocol.parse_message(obj, COUNT_MAX)


def gift(**fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "gift", "room": "r_1", "gift": "rose", "count": 1, "gift_id": GID}
    message.update(fields)
    return {k: v for k, v in message.items() if v is not _MISSING}


def error_code(obj: dict[str, Any]) -> str:
    with pytest.raises(ProtocolError) as info:
        parse(obj)
    return info.value.code


# Codec negotiation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ([], Codec.JSON),
        (["gifting.v1.json"], Codec.JSON),
        (["gifting.v1.msgpack"], Codec.MSGPACK),
        (["gifting.v1.msgpack", "gifting.v1.json"], Codec.MSGPACK),
        (["chat", "gifting.v1.json"], Codec.JSON),
        (["chat"], None),
        (["gifting.v2.json", "GIFTING.V1.JSON"], None),
    ],
)
def test_codec_negotiate(offered: list[str], expected: Codec | None) -> None:
    """The first offered subprotocol we speak wins; nothing offered means JSON; only unknown ones means None."""
    assert Codec.negotiate(offered) is expected


# Decoding frames ----------------------------------------------------------------------------------------


def test_decode_json_text_and_bytes() -> None:
    """A JSON object decodes from a text frame and from a binary frame alike."""
    assert protocol.decode_frame('{"type": "ping"}', Codec.JSON) == {"type": "ping"}
    assert protocol.decode_frame(b'{"type": "ping"}', Codec.JSON) == {"type": "ping"}


@pytest.mark.parametrize(
    "data",
    ["", "{", '{"type": "ping"', "{'type': 'ping'}", "ping", '{"a": NaN}', '{"a": 1e999}', b"\xff\xfe", "{} {}"],
)
def test_decode_malformed_json_is_bad_frame(data: str | bytes) -> None:
    """Anything that is not one JSON document is `bad_frame`."""
    with pytest.raises(ProtocolError) as info:
        protocol.decode_frame(data, Codec.JSON)
    assert info.value.code == "bad_frame"


@pytest.mark.parametrize("data", ["[]", '[{"type": "ping"}]', '"ping"', "1", "null", "true"])
def test_decode_json_non_object_is_bad_frame(data: str) -> None:
    """Valid JSON that is not an object is `bad_frame`, and the message names what it got."""
    with pytest.raises(ProtocolError) as info:
        protocol.decode_frame(data, Codec.JSON)
    assert info.value.code == "bad_frame" and "expected an object" in info.value.message


def test_decode_msgpack_map() -> None:
    """A msgpack map decodes to a dict with str keys."""
    data = msgpack.packb({"type": "gift", "count": 3, "room": "r_1"})
    assert protocol.decode_frame(data, Codec.MSGPACK) == {"type": "gift", "count": 3, "room": "r_1"}


@pytest.mark.parametrize(
    "data",
    [
        b"",  # nothing
        b"\xc1",  # the one byte msgpack never uses
        b"\x93\x01",  # array of 3 with 1 element
        b"\x82\xa4type",  # map cut short
        b"\x81\x01\x02",  # int map key
        b"\xa2\xff\xfe",  # str that is not UTF-8
        b"\x80\x80",  # two objects
        b"\xd4\xff\x00",  # a broken timestamp extension
        b"\x91" * 10_000,  # nested too deep
    ],
)
def test_decode_malformed_msgpack_is_bad_frame(data: bytes) -> None:
    """Bytes that are not one msgpack map with str keys are `bad_frame`."""
    with pytest.raises(ProtocolError) as info:
        protocol.decode_frame(data, Codec.MSGPACK)
    assert info.value.code == "bad_frame"


@pytest.mark.parametrize("value", [[1, 2], "ping", 7, None, b"{}"])
def test_decode_msgpack_non_map_is_bad_frame(value: object) -> None:
    """A msgpack value that is not a map is `bad_frame`."""
    with pytest.raises(ProtocolError) as info:
        protocol.decode_frame(msgpack.packb(value), Codec.MSGPACK)
    assert info.value.code == "bad_frame"


def test_decode_text_frame_under_msgpack_is_bad_frame() -> None:
    """On the msgpack codec a text frame is refused even if it holds valid JSON."""
    with pytest.raises(ProtocolError) as info:
        protocol.decode_frame('{"type": "ping"}', Codec.MSGPACK)
    assert info.value.code == "bad_frame" and "text frame" in info.value.message


@given(st.binary(max_size=200))
@example(b"\xd6\xff\x00\x00")
@example(b"\xc7\x00\xff")
def test_decode_msgpack_never_raises_anything_but_protocol_error(data: bytes) -> None:
    """Arbitrary bytes on the msgpack codec decode to a dict or raise ProtocolError('bad_frame'), nothing else."""
    try:
        assert isinstance(protocol.decode_frame(data, Codec.MSGPACK), dict)
    except ProtocolError as exc:
        assert exc.code == "bad_frame"


@given(st.text(max_size=200) | st.binary(max_size=200))
def test_decode_json_never_raises_anything_but_protocol_error(data: str | bytes) -> None:
    """Arbitrary text or bytes on the JSON codec decode to a dict or raise ProtocolError('bad_frame')."""
    try:
        assert isinstance(protocol.decode_frame(data, Codec.JSON), dict)
    except ProtocolError as exc:
        assert exc.code == "bad_frame"


# Parsing each message type ------------------------------------------------------------------------------


def test_parse_gift() -> None:
    """A full gift message parses to SendGift with every field."""
    message = parse(gift(price=1, ref="a1"))
    assert message == SendGift(room="r_1", gift="rose", count=1, gift_id=GID, price=1, ref="a1")


def test_parse_gift_canonicalises_gift_id() -> None:
    """An upper-case UUID gift id is kept in its canonical lower-case form."""
    message = parse(gift(gift_id=GID.upper()))
    assert isinstance(message, SendGift) and message.gift_id == GID and message.price is None


def test_parse_gift_count_bounds() -> None:
    """count 1 and count == gift_count_max are both accepted."""
    assert parse(gift(count=1)).count == 1  # type: ignore[union-attr]
    assert parse(gift(count=COUNT_MAX)).count == COUNT_MAX  # type: ignore[union-attr]


def test_parse_join_with_and_without_since() -> None:
    """join parses with no since, and with since {epoch, offset}, including offset 0."""
    assert parse({"type": "join", "room": "r_1"}) == Join("r_1")
    assert parse({"type": "join", "room": "r_1", "since": {"epoch": "ab12", "offset": 0}, "ref": "x"}) == Join(
        "r_1", Since("ab12", 0), "x"
    )
    assert parse({"type": "join", "room": "r_1", "since": None}) == Join("r_1")


def test_parse_leave_and_ping() -> None:
    """leave and ping parse, carrying their ref."""
    assert parse({"type": "leave", "room": "Room-1_a", "ref": "r"}) == Leave("Room-1_a", "r")
    assert parse({"type": "ping"}) == Ping()
    assert parse({"type": "ping", "ref": "p1"}) == Ping("p1")


# Error codes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [None, "GIFT", "chat", "", 5, ["gift"]])
def test_unknown_type(kind: object) -> None:
    """A missing or unknown type is `unknown_type`."""
    obj: dict[str, Any] = {"room": "r_1"} if kind is None else {"type": kind, "room": "r_1"}
    assert error_code(obj) == "unknown_type"


def test_errors_echo_ref() -> None:
    """A well-formed ref is echoed on the error so the client can match it."""
    with pytest.raises(ProtocolError) as info:
        parse({"type": "nope", "ref": "abc"})
    assert info.value.ref == "abc"
    with pytest.raises(ProtocolError) as info:
        parse(gift(count=0, ref="c1"))
    assert info.value.ref == "c1" and info.value.code == "bad_count"


@pytest.mark.parametrize("ref", [5, "x" * 65, ["a"]])
def test_bad_ref(ref: object) -> None:
    """A ref that is not a string of at most 64 characters is `bad_message`."""
    assert error_code({"type": "ping", "ref": ref}) == "bad_message"


@pytest.mark.parametrize(
    "count", [0, -1, -(10**9), COUNT_MAX + 1, 10**9, True, False, 1.0, 1.5, "1", None, [1], float("nan")]
)
def test_bad_count(count: object) -> None:
    """count must be an int (not bool, not float) in 1..gift_count_max: anything else is `bad_count`."""
    assert error_code(gift(count=count)) == "bad_count"


def test_missing_count_is_bad_count() -> None:
    """A gift without count is `bad_count`."""
    assert error_code(gift(count=_MISSING)) == "bad_count"


@pytest.mark.parametrize("gid", [_MISSING, None, "", "not-a-uuid", "1234", 123, ["a"], GID + "0", "g" * 32])
def test_bad_gift_id(gid: object) -> None:
    """gift_id missing or not a UUID string is `bad_gift_id`."""
    assert error_code(gift(gift_id=gid)) == "bad_gift_id"


@pytest.mark.parametrize("room", [_MISSING, None, "", "a" * 65, "a b", "room/1", "röom", "r.1", 5, "abc\n"])
@pytest.mark.parametrize("kind", ["gift", "join", "leave"])
def test_bad_room(kind: str, room: object) -> None:
    """room missing or not [A-Za-z0-9_-]{1,64} is `bad_room` on gift, join and leave."""
    obj = gift(room=room) if kind == "gift" else {"type": kind, "room": room}
    obj = {k: v for k, v in obj.items() if v is not _MISSING}
    assert error_code(obj) == "bad_room"


def test_parse_room_accepts_64_characters() -> None:
    """A 64-character room id of allowed characters is accepted."""
    assert protocol.parse_room("a" * 64) == "a" * 64


@pytest.mark.parametrize(
    "since",
    [
        "ab12:3",
        [1, 2],
        {"offset": 1},
        {"epoch": "ab12"},
        {"epoch": "", "offset": 1},
        {"epoch": "ab-12", "offset": 1},
        {"epoch": "a" * 33, "offset": 1},
        {"epoch": "ab12\n", "offset": 1},
        {"epoch": 12, "offset": 1},
        {"epoch": "ab12", "offset": -1},
        {"epoch": "ab12", "offset": True},
        {"epoch": "ab12", "offset": 1.0},
        {"epoch": "ab12", "offset": "1"},
        {"epoch": "ab12", "offset": protocol.OFFSET_MAX + 1},
    ],
)
def test_bad_since(since: object) -> None:
    """since must be {"epoch": alnum string, "offset": int in 0..2**53}: anything else is `bad_message`."""
    assert error_code({"type": "join", "room": "r_1", "since": since}) == "bad_message"


@pytest.mark.parametrize("price", [0, -5, 1.5, 1.0, True, "5", [5]])
def test_bad_price(price: object) -> None:
    """price, when given, must be a positive int: anything else is `bad_message`."""
    assert error_code(gift(price=price)) == "bad_message"


@pytest.mark.parametrize("name", [_MISSING, None, "", "x" * 41, 5])
def test_bad_gift_name(name: object) -> None:
    """The gift catalog id must be a string of 1..40 characters: else `bad_message` naming the field."""
    with pytest.raises(ProtocolError) as info:
        parse(gift(gift=name))
    assert info.value.code == "bad_message" and info.value.message.startswith("gift:")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
message_fields = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["gift", "join", "leave", "ping", "other"]) | json_values,
        "room": st.sampled_from(["r_1", "bad room"]) | json_values,
        "gift": st.sampled_from(["rose", ""]) | json_values,
        "count": st.integers(-2, COUNT_MAX + 2) | json_values,
        "gift_id": st.sampled_from([GID, str(uuid.UUID(int=0))]) | json_values,
        "price": json_values,
        "since": st.fixed_dictionaries({"epoch": json_values, "offset": json_values}) | json_values,
        "ref": st.text(max_size=70) | json_values,
    },
)


@given(message_fields)
def test_parse_never_raises_anything_but_protocol_error(obj: dict[str, Any]) -> None:
    """Any decoded object parses to a client message or raises ProtocolError; a parsed gift is always valid."""
    try:
        message = parse(obj)
    except ProtocolError as exc:
        assert exc.code in ("unknown_type", "bad_message", "bad_count", "bad_gift_id", "bad_room")
        return
    if isinstance(message, SendGift):
        assert type(message.count) is int and 1 <= message.count <= COUNT_MAX
        assert str(uuid.UUID(message.gift_id)) == message.gift_id
        assert message.price is None or (type(message.price) is int and message.price > 0)


# Encoding -----------------------------------------------------------------------------------------------


def test_encode_json_is_text_and_msgpack_is_bytes() -> None:
    """Server messages encode to a text frame for JSON and a binary frame for msgpack, and round-trip."""
    message = {"type": "pong", "ref": "é1"}
    text = protocol.encode(message, Codec.JSON)
    assert isinstance(text, str) and orjson.loads(text) == message
    data = protocol.encode(message, Codec.MSGPACK)
    assert isinstance(data, bytes) and protocol.decode_frame(data, Codec.MSGPACK) == message


def test_for_viewers_drops_creator_only_fields_without_mutating() -> None:
    """Viewers' copy of an event has no diamonds; the creator's original is untouched."""
    event = {"kind": "gift", "coins": 10, "diamonds": 5, "offset": 1}
    assert protocol.for_viewers(event) == {"kind": "gift", "coins": 10, "offset": 1}
    assert event["diamonds"] == 5
    plain = {"kind": "room_ended", "offset": 2}
    assert protocol.for_viewers(plain) is plain
