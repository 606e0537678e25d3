"""Bad input against the real running system: each gets a clear error, nothing is debited, the connection lives on.

Every test talks to the web app over real websockets and HTTP, with a settlement worker on the embedded Valkey.
"""

from __future__ import annotations

from typing import Any

import httpx
import msgpack
import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from gifting import auth, keys
from gifting.ledger.audit import run_audit
from tests.conftest import SECRET, System, SystemFactory, WsClient, gift_id, token

# Helpers ------------------------------------------------------------------------------------------------


async def alive(client: WsClient) -> None:
    """The connection still answers: a ping with a fresh ref gets its pong."""
    ref = gift_id()[:8]
    await client.send({"type": "ping", "ref": ref})
    assert await client.wait_type("pong") == {"type": "pong", "ref": ref}


async def error(client: WsClient, code: str) -> dict[str, Any]:
    """The next `error` message, which must carry `code`."""
    message = await client.wait_type("error")
    assert message["code"] == code, message
    assert isinstance(message["message"], str) and message["message"]
    return message


async def close_code(client: WsClient) -> int | None:
    """Read until the server closes the socket; the close code it sent."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await client.recv()
    return info.value.rcvd.code if info.value.rcvd is not None else None


async def settles(client: WsClient, room: str, gift: str = "rose", count: int = 1) -> dict[str, Any]:
    """A valid gift on this connection settles (the connection is fully usable)."""
    gid = await client.gift(room, gift, count)
    result = await client.result(gid)
    assert result["type"] == "gift_result" and result["status"] == "settled", result
    return result


async def answers(client: WsClient, gids: list[str]) -> dict[str, dict[str, Any]]:
    """The first answer to each of `gids`, in whatever order they arrive."""
    found: dict[str, dict[str, Any]] = {}
    while len(found) < len(gids):
        message = await client.wait_for(lambda m: m.get("gift_id") in gids and m.get("type") != "events")
        found.setdefault(message["gift_id"], message)
    return found


async def audit_clean(system: System) -> None:
    report = await run_audit(system.redis)
    assert report.clean, report.summary()


async def funded_viewer(system: System, coins: int = 100, user: str = "viewer1") -> tuple[str, WsClient]:
    """A live room of creator1 and a connected viewer holding `coins`."""
    await system.grant(user, coins)
    room = await system.open_room("creator1")
    return room, await system.connect(user)


def gift_message(room: str, **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "gift", "room": room, "gift": "rose", "count": 1, "gift_id": gift_id()}
    message.update(fields)
    return message


BAD_TOKENS = {
    "bad_signature": (lambda: auth.mint("not-the-server-secret-" + SECRET, "viewer1", "viewer"), "unauthorized"),
    "expired": (lambda: token("viewer1", ttl_s=-60), "token_expired"),
    "garbage": (lambda: "not.a.jwt", "unauthorized"),
    "missing": (lambda: "", "unauthorized"),
}


# Malformed frames -------------------------------------------------------------------------------------


async def test_malformed_json_is_bad_frame_and_connection_keeps_working(system: System) -> None:
    """Malformed JSON and non-object JSON each get bad_frame; nothing is debited; a gift then settles."""
    room, viewer = await funded_viewer(system, 10)
    truncated = orjson.dumps(gift_message(room)).decode()[:-1]
    for raw in ["{not json", truncated, "[1, 2]", '"gift"', "null"]:
        await viewer.conn.send(raw)
        await error(viewer, "bad_frame")
    await viewer.conn.send(b"\xff\xfe{")
    await error(viewer, "bad_frame")
    await alive(viewer)
    assert await system.wallet("viewer1") == {"coins": 10, "diamonds": 0}
    assert (await settles(viewer, room))["coins"] == 9
    await audit_clean(system)


async def test_malformed_msgpack_is_bad_frame_and_connection_keeps_working(system: System) -> None:
    """On the msgpack codec: garbage, truncated, non-map bytes and text frames get bad_frame; a gift then settles."""
    await system.grant("viewer1", 10)
    room = await system.open_room("creator1")
    viewer = await system.connect("viewer1", codec="msgpack")
    truncated = msgpack.packb(gift_message(room))[:-3]
    for raw in [b"\xc1", truncated, msgpack.packb([1, 2]), msgpack.packb({1: "int key"})]:
        await viewer.conn.send(raw)
        await error(viewer, "bad_frame")
    await viewer.conn.send(orjson.dumps(gift_message(room)).decode())  # a valid JSON gift, but as a text frame
    await error(viewer, "bad_frame")
    await alive(viewer)
    assert await system.wallet("viewer1") == {"coins": 10, "diamonds": 0}
    assert (await settles(viewer, room))["coins"] == 9
    await audit_clean(system)


async def test_message_over_size_limit_is_frame_too_large_and_connection_stays_open(system: System) -> None:
    """A gift message over GIFTING_WS_MESSAGE_BYTES_MAX gets frame_too_large, is not settled, and the socket lives."""
    room, viewer = await funded_viewer(system, 10)
    limit = system.settings.ws_message_bytes_max
    big = gift_message(room, ref="big", padding="x" * limit)
    assert limit < len(orjson.dumps(big)) < system.settings.ws_frame_bytes_hard_max
    await viewer.send(big)
    message = await error(viewer, "frame_too_large")
    assert str(limit) in message["message"]
    await alive(viewer)
    assert (await settles(viewer, room))["coins"] == 9
    assert await system.wallet("viewer1") == {"coins": 9, "diamonds": 0}


async def test_message_over_size_limit_in_msgpack(system: System) -> None:
    """The size limit applies to binary msgpack frames too."""
    viewer = await system.connect("viewer1", codec="msgpack")
    await viewer.conn.send(msgpack.packb({"type": "ping", "padding": b"x" * (system.settings.ws_message_bytes_max)}))
    await error(viewer, "frame_too_large")
    await alive(viewer)


async def test_frame_over_hard_max_closes_with_1009(system: System) -> None:
    """A frame over GIFTING_WS_FRAME_BYTES_HARD_MAX closes the socket with 1009; other clients are unaffected."""
    room, viewer = await funded_viewer(system, 10)
    bystander = await system.connect("viewer2")
    oversized = gift_message(room, padding="x" * (system.settings.ws_frame_bytes_hard_max + 1))
    await viewer.send(oversized)
    assert await close_code(viewer) == 1009
    await alive(bystander)
    assert await system.wallet("viewer1") == {"coins": 10, "diamonds": 0}


# Invalid messages ---------------------------------------------------------------------------------------


async def test_unknown_type(system: System) -> None:
    """An unknown message type gets unknown_type with the ref echoed; the connection keeps working."""
    viewer = await system.connect("viewer1")
    await viewer.send({"type": "tip", "ref": "t1", "amount": 5})
    message = await error(viewer, "unknown_type")
    assert message["ref"] == "t1"
    await viewer.send({"room": "r_1"})
    await error(viewer, "unknown_type")
    await alive(viewer)


async def test_unknown_gift_is_rejected_without_debit(system: System) -> None:
    """A gift id not in the catalog gets gift_result rejected unknown_gift, and nothing is debited."""
    room, viewer = await funded_viewer(system, 10)
    gid = await viewer.gift(room, "unicorn", 1)
    result = await viewer.result(gid)
    assert (result["type"], result["status"], result["reason"]) == ("gift_result", "rejected", "unknown_gift")
    assert await system.wallet("viewer1") == {"coins": 10, "diamonds": 0}
    assert (await settles(viewer, room))["coins"] == 9
    await audit_clean(system)


@pytest.mark.parametrize("count", [0, -1, 10**9, 1.5, True, "1"])
async def test_bad_count_is_refused_without_debit(system: System, count: object) -> None:
    """count 0, negative, huge, fractional, bool or a string gets bad_count and debits nothing."""
    room, viewer = await funded_viewer(system, 10)
    await viewer.send(gift_message(room, count=count, ref="c"))
    assert (await error(viewer, "bad_count"))["ref"] == "c"
    await alive(viewer)
    assert await system.wallet("viewer1") == {"coins": 10, "diamonds": 0}
    assert (await settles(viewer, room))["coins"] == 9


async def test_count_over_max_is_bad_count(system: System) -> None:
    """count of GIFTING_GIFT_COUNT_MAX + 1 is bad_count (and the error names the limit)."""
    room, viewer = await funded_viewer(system, 10)
    count_max = system.settings.gift_count_max
    await viewer.send(gift_message(room, count=count_max + 1))
    assert str(count_max) in (await error(viewer, "bad_count"))["message"]
    assert await system.wallet("viewer1") == {"coins": 10, "diamonds": 0}


@pytest.mark.parametrize("gid", [None, "", "not-a-uuid", 42])
async def test_missing_or_bad_gift_id_is_refused(system: System, gid: object) -> None:
    """A gift without a UUID gift_id gets bad_gift_id and debits nothing."""
    room, viewer = await funded_viewer(system, 10)
    message = gift_message(room)
    if gid is None:
        del message["gift_id"]
    else:
        message["gift_id"] = gid
    await viewer.send(message)
    await error(viewer, "bad_gift_id")
    await alive(viewer)
    assert await system.wallet("viewer1") == {"coins": 10, "diamonds": 0}


@pytest.mark.parametrize("room", [None, "", "a b", "x" * 65, "../etc"])
async def test_bad_room_is_refused(system: System, room: object) -> None:
    """A gift or join with a missing or malformed room gets bad_room and debits nothing."""
    await system.grant("viewer1", 10)
    viewer = await system.connect("viewer1")
    message = gift_message("placeholder")
    if room is None:
        del message["room"]
    else:
        message["room"] = room
    await viewer.send(message)
    await error(viewer, "bad_room")
    await viewer.send({"type": "join", "room": room} if room is not None else {"type": "join"})
    await error(viewer, "bad_room")
    await alive(viewer)
    assert await system.wallet("viewer1") == {"coins": 10, "diamonds": 0}


async def test_join_unknown_room_is_room_not_found(system: System) -> None:
    """Joining a room that does not exist gets room_not_found; the connection keeps working."""
    viewer = await system.connect("viewer1")
    assert (await viewer.join("r_doesnotexist"))["code"] == "room_not_found"
    await alive(viewer)


async def test_bad_price_is_refused(system: System) -> None:
    """A gift with a non-positive price gets bad_message naming price, and debits nothing."""
    room, viewer = await funded_viewer(system, 10)
    await viewer.send(gift_message(room, price=0))
    assert "price" in (await error(viewer, "bad_message"))["message"]
    assert await system.wallet("viewer1") == {"coins": 10, "diamonds": 0}


async def test_price_changed_is_rejected_without_debit(system: System) -> None:
    """A gift whose price differs from the catalog is rejected price_changed and debits nothing."""
    room, viewer = await funded_viewer(system, 10)
    gid = gift_id()
    await viewer.send(gift_message(room, gift="coffee", price=9, gift_id=gid))
    result = await viewer.result(gid)
    assert (result["status"], result["reason"], result["coins"]) == ("rejected", "price_changed", 10)
    assert await system.wallet("viewer1") == {"coins": 10, "diamonds": 0}
    await audit_clean(system)


# Idempotency of gift ids --------------------------------------------------------------------------------


async def test_gift_id_reused_with_different_fields_is_a_conflict(system: System) -> None:
    """The same gift_id with another count gets error gift_id_conflict; only the first gift is debited."""
    room, viewer = await funded_viewer(system, 10)
    gid = await viewer.gift(room, "rose", 1)
    assert (await viewer.result(gid))["status"] == "settled"
    await viewer.gift(room, "rose", 3, gid=gid)
    conflict = await viewer.result(gid)
    assert (conflict["type"], conflict["code"], conflict["gift_id"]) == ("error", "gift_id_conflict", gid)
    await viewer.gift(room, "coffee", 1, gid=gid)
    assert (await viewer.result(gid))["code"] == "gift_id_conflict"
    await alive(viewer)
    assert await system.wallet("viewer1") == {"coins": 9, "diamonds": 0}
    await audit_clean(system)


async def test_gift_id_reused_by_another_user_is_a_conflict(system: System) -> None:
    """Another viewer (paying from the same ledger partition: ids are checked there) sending someone's gift_id
    gets gift_id_conflict and is not debited."""
    room, viewer = await funded_viewer(system, 10)
    part = keys.part_of_user("viewer1")
    viewer2 = next(u for u in (f"viewer2_{i}" for i in range(10_000)) if keys.part_of_user(u) == part)
    await system.grant(viewer2, 10)
    other = await system.connect(viewer2)
    gid = await viewer.gift(room)
    assert (await viewer.result(gid))["status"] == "settled"
    await other.gift(room, gid=gid)
    assert (await other.result(gid))["code"] == "gift_id_conflict"
    assert await system.wallet(viewer2) == {"coins": 10, "diamonds": 0}
    assert await system.wallet("viewer1") == {"coins": 9, "diamonds": 0}
    await audit_clean(system)


async def test_gift_id_reused_with_different_fields_before_the_first_settles(system: System) -> None:
    """Two different gifts sent back to back with one gift_id: one settles, the other gets gift_id_conflict."""
    room, viewer = await funded_viewer(system, 10)
    gid = gift_id()
    await viewer.send(gift_message(room, count=1, gift_id=gid))
    await viewer.send(gift_message(room, count=2, gift_id=gid))
    first = await viewer.result(gid)
    second = await viewer.result(gid)
    replies = sorted([first, second], key=lambda m: str(m["type"]))
    assert [m["type"] for m in replies] == ["error", "gift_result"], replies
    assert replies[0]["code"] == "gift_id_conflict", replies
    assert (replies[1]["status"], replies[1]["coins"]) == ("settled", 9), replies
    assert await system.wallet("viewer1") == {"coins": 9, "diamonds": 0}
    await audit_clean(system)


async def test_identical_resend_is_answered_once_and_debited_once(system: System) -> None:
    """Resending the same gift_id with the same fields returns the original outcome and does not debit again."""
    room, viewer = await funded_viewer(system, 10)
    gid = await viewer.gift(room, "finger_heart", 1)
    first = await viewer.result(gid)
    await viewer.gift(room, "finger_heart", 1, gid=gid)
    assert (
        await viewer.result(gid)
        == first
        == {
            "type": "gift_result",
            "gift_id": gid,
            "status": "settled",
            "reason": None,
            "coins": 5,
        }
    )
    assert await system.wallet("viewer1") == {"coins": 5, "diamonds": 0}
    await audit_clean(system)


# Tokens -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_bad_token_on_websocket_errors_then_closes_4001(system: System, kind: str) -> None:
    """A badly signed, expired, malformed or missing token gets an error with its code, then close 4001; no welcome."""
    make_token, code = BAD_TOKENS[kind]
    client = await system.connect("viewer1", raw_token=make_token())
    first = await client.recv()
    assert (first["type"], first["code"]) == ("error", code), first
    assert await close_code(client) == 4001


async def test_bad_token_on_websocket_msgpack_error_is_msgpack(system: System) -> None:
    """On the msgpack codec the auth error arrives as a msgpack frame before close 4001."""
    client = await system.connect("viewer1", codec="msgpack", raw_token=BAD_TOKENS["expired"][0]())
    first = await client.recv()
    assert (first["type"], first["code"]) == ("error", "token_expired")
    assert await close_code(client) == 4001


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_bad_token_on_http_is_401(system: System, kind: str) -> None:
    """HTTP with a bad, expired or missing token is 401 {"error": {"code": ...}}, and a purchase credits nothing."""
    make_token, code = BAD_TOKENS[kind]
    raw = make_token()
    headers = {"Authorization": f"Bearer {raw}"} if raw else {}
    response = await system.http.get("/v1/wallet", headers=headers)
    assert response.status_code == 401 and response.json()["error"]["code"] == code
    response = await system.http.post(
        "/v1/wallet/purchases",
        headers={**headers, "Idempotency-Key": gift_id()},
        json={"bundle_id": "coins_65", "payment_token": "tok_sandbox_ok"},
    )
    assert response.status_code == 401 and response.json()["error"]["code"] == code
    assert await system.wallet("viewer1") == {"coins": 0, "diamonds": 0}


# Settlement rejections ----------------------------------------------------------------------------------


async def test_gift_to_room_that_is_not_live_is_rejected(system: System) -> None:
    """After the creator ends the room, a gift to it is rejected room_not_live and debits nothing."""
    room, viewer = await funded_viewer(system, 10)
    response = await system.http.post(f"/v1/rooms/{room}/end", headers=system.auth("creator1", "creator"))
    assert response.status_code == 200 and response.json()["status"] == "ended"
    gid = await viewer.gift(room)
    result = await viewer.result(gid)
    assert (result["status"], result["reason"], result["coins"]) == ("rejected", "room_not_live", 10)
    missing = await viewer.gift("r_nosuchroom")
    assert (await viewer.result(missing))["reason"] == "room_not_live"
    await alive(viewer)
    assert await system.wallet("viewer1") == {"coins": 10, "diamonds": 0}
    await audit_clean(system)


async def test_ending_a_room_twice_is_room_not_live(system: System) -> None:
    """Ending an already ended room is 409 room_not_live."""
    room = await system.open_room("creator1")
    headers = system.auth("creator1", "creator")
    assert (await system.http.post(f"/v1/rooms/{room}/end", headers=headers)).status_code == 200
    response = await system.http.post(f"/v1/rooms/{room}/end", headers=headers)
    assert response.status_code == 409 and response.json()["error"]["code"] == "room_not_live"


async def test_creator_gifting_themself_is_rejected(system: System) -> None:
    """A creator's gift in their own room is rejected self_gift and debits nothing."""
    await system.grant("creator1", 10)
    room = await system.open_room("creator1")
    creator = await system.connect("creator1", "creator")
    gid = await creator.gift(room)
    result = await creator.result(gid)
    assert (result["status"], result["reason"], result["coins"]) == ("rejected", "self_gift", 10)
    await alive(creator)
    assert await system.wallet("creator1") == {"coins": 10, "diamonds": 0}
    await audit_clean(system)


async def test_not_enough_coins_is_rejected_and_stays_rejected(system: System) -> None:
    """A gift costing more than the balance is rejected insufficient_coins; a resend of that id stays rejected."""
    room, viewer = await funded_viewer(system, 5)
    gid = await viewer.gift(room, "coffee", 1)
    result = await viewer.result(gid)
    assert (result["status"], result["reason"], result["coins"]) == ("rejected", "insufficient_coins", 5)
    assert await system.wallet("viewer1") == {"coins": 5, "diamonds": 0}
    await system.grant("viewer1", 100)
    await viewer.gift(room, "coffee", 1, gid=gid)
    assert (await viewer.result(gid))["reason"] == "insufficient_coins"
    assert await system.wallet("viewer1") == {"coins": 105, "diamonds": 0}
    assert (await settles(viewer, room, "coffee"))["coins"] == 95
    await audit_clean(system)


async def test_count_times_price_over_balance_is_rejected(system: System) -> None:
    """A count that makes the total exceed the balance is rejected insufficient_coins, not partly debited."""
    room, viewer = await funded_viewer(system, 10)
    gid = await viewer.gift(room, "rose", 11)
    assert (await viewer.result(gid))["reason"] == "insufficient_coins"
    assert await system.wallet("viewer1") == {"coins": 10, "diamonds": 0}
    assert (await settles(viewer, room, "rose", 10))["coins"] == 0
    await audit_clean(system)


async def test_gifting_faster_than_the_rate_limit_is_rate_limited(start_system: SystemFactory) -> None:
    """With a burst of 2, the third quick gift gets rate_limited; only the first two are debited."""
    system = await start_system(gift_rate_per_s=1, gift_burst=2)
    room, viewer = await funded_viewer(system, 10)
    gids = [gift_id() for _ in range(3)]
    for gid in gids:
        await viewer.send(gift_message(room, gift_id=gid))
    results = await answers(viewer, gids)
    assert [results[g]["status"] for g in gids[:2]] == ["settled", "settled"]
    assert (results[gids[2]]["status"], results[gids[2]]["reason"]) == ("rejected", "rate_limited")
    await alive(viewer)
    assert await system.wallet("viewer1") == {"coins": 8, "diamonds": 0}
    await audit_clean(system)


async def test_too_many_invalid_messages_close_with_4002(start_system: SystemFactory) -> None:
    """Up to GIFTING_WS_INVALID_MESSAGES_MAX invalid messages are answered; one more closes the socket with 4002."""
    system = await start_system(ws_invalid_messages_max=3)
    viewer = await system.connect("viewer1")
    for _ in range(3):
        await viewer.conn.send("{bad")
        await error(viewer, "bad_frame")
    await alive(viewer)
    await viewer.send({"type": "nope"})
    assert await close_code(viewer) == 4002
    other = await system.connect("viewer1")
    await alive(other)


# HTTP bad input -----------------------------------------------------------------------------------------


async def purchase(
    system: System, key: str | None, body: Any, user: str = "viewer1", raw: bytes | None = None
) -> httpx.Response:
    headers = system.auth(user)
    if key is not None:
        headers["Idempotency-Key"] = key
    if raw is not None:
        return await system.http.post("/v1/wallet/purchases", headers=headers, content=raw)
    return await system.http.post("/v1/wallet/purchases", headers=headers, json=body)


OK_BODY = {"bundle_id": "coins_65", "payment_token": "tok_sandbox_ok"}


def error_of(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


@pytest.mark.parametrize("key", [None, "", "has space", "x" * 65, "ключ"])
async def test_purchase_without_valid_idempotency_key_is_400(system: System, key: str | None) -> None:
    """A purchase without a usable Idempotency-Key is 400 idempotency_key_required and credits nothing."""
    headers = system.auth("viewer1")
    if key is not None:
        headers["Idempotency-Key"] = key
    response = await system.http.post(
        "/v1/wallet/purchases", headers={k: v.encode() for k, v in headers.items()}, json=OK_BODY
    )
    assert response.status_code == 400 and error_of(response) == "idempotency_key_required"
    assert await system.wallet("viewer1") == {"coins": 0, "diamonds": 0}


async def test_unknown_bundle_is_404(system: System) -> None:
    """Buying a bundle that is not in the catalog is 404 unknown_bundle and credits nothing."""
    response = await purchase(system, gift_id(), {"bundle_id": "coins_1000000", "payment_token": "tok_sandbox_ok"})
    assert response.status_code == 404 and error_of(response) == "unknown_bundle"
    assert await system.wallet("viewer1") == {"coins": 0, "diamonds": 0}


async def test_declined_payment_is_402_and_stays_declined(system: System) -> None:
    """A declined payment is 402 payment_declined with no coins; a retry with the same key gets the same 402."""
    key = gift_id()
    body = {"bundle_id": "coins_65", "payment_token": "tok_sandbox_declined"}
    first = await purchase(system, key, body)
    assert first.status_code == 402, first.text
    assert error_of(first) == "payment_declined"
    assert first.json()["purchase"]["status"] == "declined" and first.json()["wallet"]["coins"] == 0
    retry = await purchase(system, key, body)
    assert retry.status_code == 402 and error_of(retry) == "payment_declined"
    assert retry.json()["purchase"] == first.json()["purchase"] and retry.json()["replay"] is True
    assert await system.wallet("viewer1") == {"coins": 0, "diamonds": 0}
    await audit_clean(system)


async def test_invalid_payment_token_is_400(system: System) -> None:
    """A payment token the provider does not know is 400 invalid_payment_token, and the key stays usable."""
    key = gift_id()
    response = await purchase(system, key, {"bundle_id": "coins_65", "payment_token": "tok_made_up"})
    assert response.status_code == 400 and error_of(response) == "invalid_payment_token"
    assert await system.wallet("viewer1") == {"coins": 0, "diamonds": 0}
    assert (await purchase(system, key, OK_BODY)).status_code == 201


async def test_same_idempotency_key_different_body_is_409(system: System) -> None:
    """Reusing an Idempotency-Key for another bundle is 409 idempotency_key_conflict; only the first credits."""
    key = gift_id()
    first = await purchase(system, key, OK_BODY)
    assert first.status_code == 201
    other = await purchase(system, key, {"bundle_id": "coins_328", "payment_token": "tok_sandbox_ok"})
    assert other.status_code == 409 and error_of(other) == "idempotency_key_conflict"
    declined = await purchase(system, key, {"bundle_id": "coins_65", "payment_token": "tok_sandbox_declined"})
    assert declined.status_code == 409 and error_of(declined) == "idempotency_key_conflict"
    replay = await purchase(system, key, OK_BODY)
    assert replay.status_code == 200 and replay.json()["replay"] is True
    assert await system.wallet("viewer1") == {"coins": 65, "diamonds": 0}
    await audit_clean(system)


@pytest.mark.parametrize("raw", [b"{not json", b'{"bundle_id": "coins_65",', b"\xff", b"[1, 2]", b'"coins_65"'])
async def test_invalid_json_body_is_400_bad_json(system: System, raw: bytes) -> None:
    """A purchase or room body that is not a JSON object is 400 bad_json and changes nothing."""
    response = await purchase(system, gift_id(), None, raw=raw)
    assert response.status_code == 400 and error_of(response) == "bad_json"
    response = await system.http.post("/v1/rooms", headers=system.auth("creator1", "creator"), content=raw)
    assert response.status_code == 400 and error_of(response) == "bad_json"
    assert await system.wallet("viewer1") == {"coins": 0, "diamonds": 0}
    assert (await system.http.get("/v1/rooms")).json()["rooms"] == []


@pytest.mark.parametrize("body", [{}, {"bundle_id": "coins_65"}, {"bundle_id": 65, "payment_token": "tok_sandbox_ok"}])
async def test_purchase_body_missing_fields_is_400(system: System, body: dict[str, Any]) -> None:
    """A purchase body without string bundle_id and payment_token is 400 bad_request."""
    response = await purchase(system, gift_id(), body)
    assert response.status_code == 400 and error_of(response) == "bad_request"
    assert await system.wallet("viewer1") == {"coins": 0, "diamonds": 0}


async def test_viewer_cannot_open_a_room(system: System) -> None:
    """A viewer opening a room is 403 forbidden and no room appears."""
    response = await system.http.post("/v1/rooms", headers=system.auth("viewer1"), json={"title": "Mine"})
    assert response.status_code == 403 and error_of(response) == "forbidden"
    assert (await system.http.get("/v1/rooms")).json()["rooms"] == []


async def test_others_cannot_end_a_room(system: System) -> None:
    """A viewer, or another creator, ending someone's room is 403 forbidden and the room stays live."""
    room = await system.open_room("creator1")
    for headers in (system.auth("viewer1"), system.auth("creator2", "creator")):
        response = await system.http.post(f"/v1/rooms/{room}/end", headers=headers)
        assert response.status_code == 403 and error_of(response) == "forbidden"
    assert (await system.http.get(f"/v1/rooms/{room}")).json()["status"] == "live"


async def test_bad_room_title_is_400(system: System) -> None:
    """A missing, blank or over-long title is 400 bad_title."""
    headers = system.auth("creator1", "creator")
    for body in ({}, {"title": "   "}, {"title": "t" * (system.settings.room_title_chars_max + 1)}, {"title": 5}):
        response = await system.http.post("/v1/rooms", headers=headers, json=body)
        assert response.status_code == 400 and error_of(response) == "bad_title", body


async def test_http_gift_bad_input(system: System) -> None:
    """The HTTP gift endpoint answers bad count 400 bad_count, unknown gift 422, and debits nothing."""
    await system.grant("viewer1", 10)
    room = await system.open_room("creator1")
    url, headers = f"/v1/rooms/{room}/gifts", system.auth("viewer1")
    response = await system.http.post(url, headers=headers, json={"gift": "rose", "count": 0, "gift_id": gift_id()})
    assert response.status_code == 400 and error_of(response) == "bad_count"
    response = await system.http.post(url, headers=headers, json={"gift": "rose", "count": 1})
    assert response.status_code == 400 and error_of(response) == "bad_gift_id"
    response = await system.http.post(url, headers=headers, json={"gift": "unicorn", "count": 1, "gift_id": gift_id()})
    assert response.status_code == 422 and response.json()["reason"] == "unknown_gift"
    response = await system.http.post("/v1/rooms/bad%20room/gifts", headers=headers, json={})
    assert response.status_code == 400 and error_of(response) == "bad_room"
    assert await system.wallet("viewer1") == {"coins": 10, "diamonds": 0}
    await audit_clean(system)
