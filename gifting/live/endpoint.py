"""The websocket endpoint `/v1/ws`: authenticate, pick the codec, then relay client messages to the hub.

On the server `gifting serve` runs (gifting/live/direct.py) the hub writes to the socket directly; on any other
ASGI server, through ASGI sends (the hub's Fallback). One `receive()` loop per connection either way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect

from gifting import auth, metrics
from gifting.config import Settings
from gifting.live import direct
from gifting.live.budget import MessageBudget, over_budget
from gifting.live.hub import Hub
from gifting.live.output import CLOSE_TOO_MANY_CONNECTIONS, CLOSE_TOO_MANY_INVALID, CLOSE_UNAUTHORIZED, Connection
from gifting.outage import STORE_ERRORS, STORE_UNAVAILABLE, STORE_UNAVAILABLE_MESSAGE
from gifting.rooms.store import RoomError
from gifting.wire import protocol
from gifting.wire.messages import CloseCode, Error, Left, Limits, Pong, PoolStarted, Welcome
from gifting.wire.protocol import Codec, ProtocolError

log = logging.getLogger(__name__)


async def websocket_endpoint(ws: WebSocket) -> None:
    hub: Hub = ws.app.state.hub
    settings: Settings = ws.app.state.settings
    offered = list(ws.scope.get("subprotocols") or [])
    codec = Codec.negotiate(offered)
    if codec is None:
        await ws.close(
            code=CloseCode.UNSUPPORTED_SUBPROTOCOL,
            reason=f"unsupported subprotocol; use {Codec.JSON.value} or {Codec.MSGPACK.value}",
        )
        return
    subprotocol = codec.value if offered else None
    token = ws.query_params.get("token") or auth.bearer(ws.headers.get("authorization"))
    try:
        identity = auth.verify(hub_secret(ws), token, hub.revocations.not_before)
    except auth.AuthError as exc:
        # Accept, say why, then close: a browser cannot read the reason of a refused handshake.
        await ws.accept(subprotocol=subprotocol)
        await ws.send(_frame(Error(exc.code, exc.message).to_dict(), codec))
        await ws.close(code=CLOSE_UNAUTHORIZED, reason=exc.code)
        return
    await ws.accept(subprotocol=subprotocol)
    if hub.connections_full(identity.user):  # checked and registered (_connect) with no await between
        cap = settings.ws_connections_per_user_max
        await ws.send(_frame(Error("too_many_connections", f"at most {cap} sockets per user").to_dict(), codec))
        await ws.close(code=CLOSE_TOO_MANY_CONNECTIONS, reason="too many connections")
        return
    conn = _connect(ws, hub, identity, codec)
    # The socket lives no longer than its token: at `exp` it is closed with 4001 (revocation: Hub.close_revoked).
    expiry = asyncio.get_running_loop().call_later(
        max(0.0, identity.expires_at - time.time()),
        hub.close_unauthorized, conn, "token_expired", "token expired: reconnect with a new one",
    )  # fmt: skip
    limits = Limits(
        message_bytes_max=settings.ws_message_bytes_max,
        gift_count_max=settings.gift_count_max,
        gift_rate_per_s=settings.gift_rate_per_s,
        gift_burst=settings.gift_burst,
        rooms_per_connection_max=settings.ws_rooms_per_connection_max,
        message_rate_per_s=settings.ws_message_rate_per_s,
        message_burst=settings.ws_message_burst,
        join_cost=settings.ws_join_cost,
    )
    conn.send_message(Welcome(identity.user, identity.role, identity.name, limits).to_dict())
    try:
        await _relay(ws, hub, conn, settings)
    except WebSocketDisconnect:
        pass
    finally:
        expiry.cancel()
        await hub.disconnect(conn)


def _connect(ws: WebSocket, hub: Hub, identity: auth.Identity, codec: Codec) -> Connection:
    socket = direct.direct_socket(ws.scope)
    if socket is not None:
        return hub.connect(identity, codec, socket.transport, socket.close_now)

    async def send(data: str | bytes) -> None:
        await ws.send(
            {"type": "websocket.send", "text": data}
            if isinstance(data, str)
            else {"type": "websocket.send", "bytes": data}
        )

    async def close(code: int, reason: str) -> None:
        await ws.close(code=code, reason=reason)

    return hub.connect_fallback(identity, codec, send, close)


async def _relay(ws: WebSocket, hub: Hub, conn: Connection, settings: Settings) -> None:
    """Read client messages until the client leaves or the hub shuts the connection (slow, invalid)."""
    invalid = 0
    budget = MessageBudget(settings)
    while not conn.closed:
        message = await _receive(ws, conn)
        if message is None or message["type"] == "websocket.disconnect":
            return
        invalid = await _handle_frame(hub, conn, message, invalid, budget, settings)


async def _receive(ws: WebSocket, conn: Connection) -> Message | None:
    """The client's next message; None if the hub shut the connection while we waited.

    On a direct socket the hub's close itself makes receive() return a disconnect. The fallback's close is an
    ASGI send that a peer which stopped reading can hold up, and such a peer may never send again: there,
    receive() is raced with the hub's shut.
    """
    if conn.fallback is None:
        return await ws.receive()
    receiving = asyncio.ensure_future(ws.receive())
    shut = asyncio.ensure_future(conn.fallback.shut_down.wait())
    try:
        await asyncio.wait((receiving, shut), return_when=asyncio.FIRST_COMPLETED)
    finally:
        shut.cancel()
    if receiving.done():
        return receiving.result()
    receiving.cancel()
    return None


async def _handle_frame(
    hub: Hub, conn: Connection, message: Any, invalid: int, budget: MessageBudget, settings: Settings
) -> int:
    """One client frame. Returns the connection's running count of invalid (or over-budget) messages."""
    data = message.get("text")
    if data is None:
        data = message.get("bytes") or b""
    try:
        size = len(data.encode()) if isinstance(data, str) else len(data)
        if size > settings.ws_message_bytes_max:
            raise ProtocolError(
                "frame_too_large",
                f"message of {size} bytes; the limit is {settings.ws_message_bytes_max} bytes",
            )
        parsed = protocol.parse_message(protocol.decode_frame(data, conn.codec), settings.gift_count_max)
        conn.active_s = time.monotonic()  # any valid message, a ping too, keeps the socket earning watch rewards
        if budget.take(parsed):
            metrics.ws_inbound.labels(kind=type(parsed).__name__).inc()
            try:
                await _handle(hub, conn, parsed)
            except STORE_ERRORS as exc:
                # Valkey is unreachable: say so (a gift or pledge got its rejection from the hub) and keep the socket.
                log.warning("websocket %s: store unavailable: %r", type(parsed).__name__, exc)
                metrics.store_errors.labels(component="websocket").inc()
                conn.send_message(
                    Error(STORE_UNAVAILABLE, STORE_UNAVAILABLE_MESSAGE, getattr(parsed, "ref", None)).to_dict()
                )
            return invalid
        answer = over_budget(parsed)  # a client that keeps going over its budget is closed like an invalid one
    except ProtocolError as exc:
        answer = Error(exc.code, exc.message, exc.ref).to_dict()
    metrics.ws_rejected.labels(code=str(answer.get("code") or answer.get("reason"))).inc()
    invalid += 1
    conn.send_message(answer)
    if invalid > settings.ws_invalid_messages_max:
        conn.shut(CLOSE_TOO_MANY_INVALID, "too many invalid messages")
    return invalid


async def _handle(hub: Hub, conn: Connection, message: protocol.ClientMessage) -> None:
    if conn.identity.overlay_of is not None:
        await _check_overlay_scope(hub, conn.identity.overlay_of, message)
    if isinstance(message, protocol.SendGift):
        rejected = await hub.send_gift(conn.identity, message, conn)
        if rejected is not None:
            conn.send_message(rejected)
    elif isinstance(message, protocol.Pledge):
        rejected = await hub.send_pledge(conn.identity, message, conn)
        if rejected is not None:
            conn.send_message(rejected)
    elif isinstance(message, protocol.StartPool):
        try:
            pool = await hub.open_pool(conn.identity.user, message)
        except RoomError as exc:
            raise ProtocolError(exc.code, exc.message, message.ref) from None
        conn.send_message(PoolStarted(pool, message.ref).to_dict())
    elif isinstance(message, protocol.Join):
        await hub.join(conn, message)
    elif isinstance(message, protocol.Leave):
        await hub.leave(conn, message.room)
        conn.send_message(Left(message.room, message.ref).to_dict())
    elif isinstance(message, protocol.Ping):
        conn.send_message(Pong(message.ref).to_dict())


async def _check_overlay_scope(hub: Hub, creator: str, message: protocol.ClientMessage) -> None:
    """An overlay token reads one creator's room feed: it may join that creator's rooms, leave and ping."""
    if isinstance(message, protocol.Leave | protocol.Ping):
        return
    ref = getattr(message, "ref", None)
    if isinstance(message, protocol.Join):
        try:
            room_creator = await hub.room_creator(message.room)
        except RoomError as exc:
            raise ProtocolError(exc.code, exc.message, ref) from None
        if room_creator == creator:
            return
        raise ProtocolError("token_scope", f"this overlay token reads only {creator}'s rooms", ref)
    raise ProtocolError("token_scope", "an overlay token only reads its creator's room feed", ref)


def _frame(message: dict[str, Any], codec: Codec) -> Any:
    data = protocol.encode(message, codec)
    return (
        {"type": "websocket.send", "text": data} if isinstance(data, str) else {"type": "websocket.send", "bytes": data}
    )


def hub_secret(ws: WebSocket) -> str:
    secret: str = ws.app.state.secret
    return secret
