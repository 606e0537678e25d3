"""The API contract: an OpenAPI 3.1 document of every HTTP route (`GET /openapi.json`) and an AsyncAPI 3.0
document of the websocket (`GET /asyncapi.json`), whose message schemas are generated from gifting/wire/messages.py.

OPERATIONS is the one table of the HTTP routes; tests/test_openapi.py fails when a route of the app is missing
from it or it describes a route that does not exist, and runs Schemathesis against a live server with it. Error
statuses come from gifting/web/http.py's STATUS table, written into the document as `x-error-codes`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gifting.web.http import STATUS, STATUS_DEFAULT, json_response
from gifting.wire import messages

JSON = dict[str, Any]


def obj(*required: str, **properties: JSON) -> JSON:
    """A JSON object schema: these keys are always there; others may be too (answers grow, clients ignore)."""
    return {"type": "object", "required": list(required), "properties": properties}


INT: JSON = {"type": "integer"}
STR: JSON = {"type": "string"}
BOOL: JSON = {"type": "boolean"}
NULLABLE_STR: JSON = {"type": ["string", "null"]}
ANY_OBJECT: JSON = {"type": "object"}
ERROR: JSON = obj("error", error=obj("code", "message", code=STR, message=STR))
HTML = "html"  # a response schema placeholder: a page, text/html
PROMETHEUS = "prometheus"  # a response schema placeholder: Prometheus' text exposition format


@dataclass(frozen=True)
class Op:
    """One HTTP operation: `who` may call it (None: anyone, no token), what it takes and what it answers."""

    summary: str
    ok: dict[int, JSON | str]
    who: str | None = "any role"
    body: JSON | None = None
    query: dict[str, JSON] = field(default_factory=dict)
    idempotency_key: bool = False
    errors: dict[int, JSON] = field(default_factory=dict)  # answers other than the error envelope


ROOM: JSON = obj("room", "creator", "status", room=STR, creator=STR, status=STR, title=STR)
GIFT_RESULT: JSON = obj("type", "gift_id", "status", type=STR, gift_id=STR, status=STR)
PLEDGE_RESULT: JSON = obj("type", "pledge_id", "status", type=STR, pledge_id=STR, status=STR)
LIMIT: JSON = {"type": "string", "pattern": "^[0-9]+$"}
GIFT_BODY: JSON = obj("gift", "count", "gift_id", gift=STR, count=INT, gift_id=STR, price=INT, campaign=STR)
CATALOG_GIFT: JSON = obj("name", "coins", "asset", "tier", name=STR, coins=INT, asset=STR, tier=STR)
BUNDLE: JSON = obj("coins", "price_minor", "currency", coins=INT, price_minor=INT, currency=STR)
REJECTED = {422: GIFT_RESULT, 429: GIFT_RESULT}
PERK: JSON = obj("kind", "name", "coins", kind=STR, name=STR, coins=INT, days=INT)
PERK_RESULT: JSON = obj("purchase_id", "status", "coins", purchase_id=STR, status=STR, coins=INT)

OPERATIONS: dict[tuple[str, str], Op] = {
    ("GET", "/healthz"): Op("The process is up.", {200: obj("status", status=STR)}, who=None),
    ("GET", "/readyz"): Op(
        "Valkey answers and a settlement worker beat recently; 503 otherwise.",
        {200: obj("status", "redis", "workers", status=STR, redis=STR, workers=INT)},
        who=None,
        errors={503: obj("status", status=STR)},
    ),
    ("GET", "/openapi.json"): Op("This document.", {200: ANY_OBJECT}, who=None),
    ("GET", "/metrics"): Op("This process's Prometheus metrics (docs/OPERATIONS.md).", {200: PROMETHEUS}, who=None),
    ("GET", "/asyncapi.json"): Op("The websocket's AsyncAPI document.", {200: ANY_OBJECT}, who=None),
    ("GET", "/v1/catalog/gifts"): Op("Gifts on sale.", {200: obj("gifts", gifts={"type": "array"})}, who=None),
    ("GET", "/v1/catalog/bundles"): Op(
        "Coin bundles on sale.", {200: obj("bundles", bundles={"type": "array"})}, who=None
    ),
    ("GET", "/dev/token"): Op(
        "Dev mode only, at a loopback host: a demo token.",
        {200: obj("token", "user", "role", token=STR, user=STR, role=STR)},
        who=None,
        query={"user": STR, "role": STR, "name": STR},
    ),
    ("GET", "/v1/wallet"): Op(
        "The caller's balances: bought coins, diamonds, reward coins (earned; never cashed out or refunded).",
        {200: obj("user", "coins", "diamonds", "reward_coins", coins=INT, diamonds=INT, reward_coins=INT)},
    ),
    ("GET", "/v1/rewards"): Op(
        "The caller's reward coins: balance, earned today against the daily cap, watch periods, streak.",
        {200: obj("reward_coins", "earned_today", "streak_days", reward_coins=INT, earned_today=INT)},
    ),
    ("POST", "/v1/rewards/streak"): Op(
        "Claim today's streak bonus (after a watch period today), once per UTC day.",
        {200: obj("transfer_id", "streak_days", "coins", "reward_coins", streak_days=INT, coins=INT, reward_coins=INT)},
    ),
    ("GET", "/v1/admin/rewards/budget"): Op(
        "The rewards budget (sys:rewards_budget) in reward coins.",
        {200: obj("budget_coins", budget_coins=INT)},
        who="admin",
    ),
    ("POST", "/v1/admin/rewards/budget"): Op(
        "Fund the rewards budget; idempotent by Idempotency-Key (a retry: 200, replay true).",
        {201: obj("budget_coins", "coins", "replay"), 200: obj("budget_coins", "coins", "replay")},
        who="admin",
        body=obj("coins", coins=INT),
        idempotency_key=True,
    ),
    ("POST", "/v1/wallet/purchases"): Op(
        "Buy a coin bundle; idempotent by Idempotency-Key (a retry: 200 and the same purchase).",
        {201: obj("purchase", "wallet", "replay"), 200: obj("purchase", "wallet", "replay")},
        body=obj("bundle_id", "payment_token", bundle_id=STR, payment_token=STR),
        idempotency_key=True,
        errors={402: obj("purchase", "wallet", "error")},
    ),
    ("GET", "/v1/wallet/purchases"): Op(
        "The caller's purchases, newest first.", {200: obj("purchases")}, query={"limit": LIMIT}
    ),
    ("POST", "/v1/wallet/withdrawals"): Op(
        "A creator cashes diamonds out; idempotent by Idempotency-Key.",
        {201: obj("withdrawal", "replay"), 200: obj("withdrawal", "replay")},
        who="creator",
        body=obj("diamonds", diamonds=INT, payout_account=STR),
        idempotency_key=True,
    ),
    ("GET", "/v1/wallet/withdrawals"): Op(
        "The caller's withdrawals.", {200: obj("withdrawals")}, query={"limit": LIMIT}
    ),
    ("GET", "/v1/wallet/transactions"): Op(
        "The caller's statement, newest first, a page at a time.",
        {200: obj("transactions", "next_cursor", next_cursor=NULLABLE_STR)},
        query={"limit": LIMIT, "cursor": STR},
    ),
    ("GET", "/v1/wallet/limits"): Op("The caller's daily spend cap.", {200: ANY_OBJECT}),
    ("PUT", "/v1/wallet/limits"): Op(
        "Set the caller's daily spend cap in coins (0 removes it; raising waits out the cooling-off).",
        {200: ANY_OBJECT},
        body=obj("daily_spend_coins_max", daily_spend_coins_max=INT),
    ),
    ("GET", "/v1/wallet/sessions"): Op(
        "Summaries of the caller's ended streams.", {200: obj("sessions")}, who="creator", query={"limit": LIMIT}
    ),
    ("GET", "/v1/rooms/{room}/earnings"): Op(
        "The live session's totals.", {200: ANY_OBJECT}, who="the room's creator, admin"
    ),
    ("GET", "/v1/rooms"): Op(
        "Live rooms, a page at a time.",
        {200: obj("rooms", "next_cursor", next_cursor=NULLABLE_STR)},
        who=None,
        query={"limit": LIMIT, "cursor": STR},
    ),
    ("POST", "/v1/rooms"): Op("A creator goes live.", {201: ROOM}, who="creator", body=obj("title", title=STR)),
    ("GET", "/v1/rooms/{room}"): Op("A room.", {200: ROOM}, who=None),
    ("GET", "/v1/creators/{creator}/live"): Op(
        "The creator's live room, or null.", {200: obj("room", room={"type": ["object", "null"]})}, who=None
    ),
    ("POST", "/v1/overlay-tokens"): Op(
        "A read-only token for the caller's stream overlay.",
        {201: obj("token", "creator", "expires_at_ms", token=STR, creator=STR, expires_at_ms=INT)},
        who="creator",
    ),
    ("POST", "/v1/rooms/{room}/end"): Op("The room's creator ends the stream.", {200: ROOM}, who="the room's creator"),
    ("POST", "/v1/rooms/{room}/gifts"): Op(
        "Send a gift without a websocket; waits (bounded) for settlement, else 202 pending: resend the gift_id.",
        {200: GIFT_RESULT, 202: GIFT_RESULT},
        body=GIFT_BODY,
        errors=REJECTED,
    ),
    ("GET", "/v1/rooms/{room}/leaderboard"): Op(
        "Top gifters.",
        {200: obj("room", "period", "top", room=STR, period=STR, top={"type": "array"})},
        who=None,
        query={"period": STR, "limit": LIMIT},
    ),
    ("POST", "/v1/rooms/{room}/goals"): Op(
        "Set the room's goal: a gift count or diamonds.",
        {201: obj("goal")},
        who="the room's creator",
        body={"type": "object", "properties": {"gift": STR, "target": INT, "diamonds": INT}},
    ),
    ("DELETE", "/v1/rooms/{room}/goals"): Op("Cancel the room's goal.", {200: obj("goal")}, who="the room's creator"),
    ("GET", "/v1/rooms/{room}/summary"): Op(
        "The stream summary (earnings only for the creator and admins).", {200: ANY_OBJECT}, who=None
    ),
    ("POST", "/v1/rooms/{room}/pools"): Op(
        "Open a pool toward a gift.", {201: obj("pool")}, body=obj("gift", "deadline_s", gift=STR, deadline_s=INT)
    ),
    ("GET", "/v1/rooms/{room}/stage"): Op(
        "The room's stage: its host and the guests who may receive gifts.",
        {200: obj("room", "host", "guests", room=STR, host=STR, guests={"type": "array"})},
        who=None,
    ),
    ("GET", "/v1/rooms/{room}/top"): Op(
        "Top gifters of one person on stage (default: the host), kept once a guest has taken the stage.",
        {200: obj("room", "recipient", "top", room=STR, recipient=STR, top={"type": "array"})},
        who=None,
        query={"recipient": STR, "limit": LIMIT},
    ),
    ("POST", "/v1/rooms/{room}/stage/invites"): Op(
        "The room's creator invites a guest on stage.",
        {201: ANY_OBJECT},
        who="the room's creator",
        body=obj("guest", guest=STR),
    ),
    ("POST", "/v1/rooms/{room}/stage/accept"): Op("An invited guest goes on stage.", {200: ANY_OBJECT}),
    ("POST", "/v1/rooms/{room}/stage/leave"): Op(
        "A guest leaves the stage (default: the caller), or the room's creator takes one off.",
        {200: ANY_OBJECT},
        body={"type": "object", "properties": {"guest": STR}},
    ),
    ("POST", "/v1/matches"): Op(
        "Invite another live creator to a match (PK battle); with `gift`, only that gift scores; with a partner "
        "for each side, a team match (2 v 2).",
        {201: ANY_OBJECT},
        who="creator, admin",
        body=obj("opponent", opponent=STR, duration_s=INT, gift=STR, partner=STR, opponent_partner=STR),
    ),
    ("GET", "/v1/matches/{match}"): Op(
        "A match: sides, score, state, and its result once ended.", {200: ANY_OBJECT}, who=None
    ),
    ("POST", "/v1/matches/{match}/{action}"): Op(
        "The invited creator answers: `accept` or `decline`.", {200: ANY_OBJECT}, who="the invited creator"
    ),
    ("GET", "/v1/pools/{pool}"): Op("A pool.", {200: obj("pool")}, who=None),
    ("POST", "/v1/pools/{pool}/pledges"): Op(
        "Pledge coins to a pool; waits (bounded) for settlement like a gift.",
        {200: PLEDGE_RESULT, 202: PLEDGE_RESULT},
        body=obj("coins", "pledge_id", coins=INT, pledge_id=STR),
        errors={422: PLEDGE_RESULT, 429: PLEDGE_RESULT},
    ),
    ("POST", "/v1/pools/{pool}/cancel"): Op(
        "Cancel an open pool (its opener, the room's creator, an admin): every pledge goes back.", {200: obj("pool")}
    ),
    ("PUT", "/v1/admin/gifts/{gift}"): Op("Add or reprice a gift.", {200: ANY_OBJECT}, who="admin", body=CATALOG_GIFT),
    ("POST", "/v1/admin/gifts/{gift}/retire"): Op("Retire a gift.", {200: ANY_OBJECT}, who="admin"),
    ("PUT", "/v1/admin/bundles/{bundle}"): Op(
        "Add or reprice a coin bundle.", {200: ANY_OBJECT}, who="admin", body=BUNDLE
    ),
    ("POST", "/v1/admin/bundles/{bundle}/retire"): Op("Retire a coin bundle.", {200: ANY_OBJECT}, who="admin"),
    ("POST", "/v1/admin/purchases/{purchase}/{mode}"): Op(
        "`mode` refund (unspent only) or chargeback (may leave a debt).",
        {200: obj("purchase", "coins")},
        who="admin",
    ),
    ("POST", "/v1/admin/withdrawals/{withdrawal}/{action}"): Op(
        "`action` post (paid) or void (failed, diamonds returned) a pending withdrawal.",
        {200: obj("withdrawal")},
        who="admin",
    ),
    ("POST", "/v1/admin/users/{user}/revoke-tokens"): Op(
        "Refuse every token of the user issued up to now.",
        {200: obj("user", "not_before", user=STR, not_before=INT)},
        who="admin",
    ),
    ("POST", "/v1/campaigns"): Op(
        "A brand creates a sponsored-gift campaign (fund it next).",
        {201: obj("campaign")},
        who="brand",
        body=obj(
            "name",
            "gift",
            "end_ms",
            name=STR,
            gift=STR,
            end_ms=INT,
            start_ms=INT,
            art=STR,
            rooms={"type": "array", "items": STR},
            creators={"type": "array", "items": STR},
            viewer_day_max=INT,
            room_max=INT,
        ),
    ),
    ("GET", "/v1/campaigns"): Op(
        "The brand's campaigns with their reports.", {200: obj("campaigns", campaigns={"type": "array"})}, who="brand"
    ),
    ("GET", "/v1/campaigns/{campaign}"): Op(
        "A campaign and its report.", {200: obj("campaign")}, who="the campaign's brand, admin"
    ),
    ("POST", "/v1/campaigns/{campaign}/fund"): Op(
        "The brand moves coins from its wallet into the campaign's budget.",
        {200: obj("campaign")},
        who="the campaign's brand",
        body=obj("coins", coins=INT),
        idempotency_key=True,
    ),
    ("POST", "/v1/campaigns/{campaign}/end"): Op(
        "End the campaign now: its unspent budget returns to the brand, once.",
        {200: obj("campaign", "returned", returned=INT)},
        who="the campaign's brand, admin",
    ),
    ("POST", "/v1/admin/campaigns/{campaign}/grant"): Op(
        "Grant a campaign budget against an invoice (new coins, like a purchase).",
        {200: obj("campaign")},
        who="admin",
        body=obj("coins", "invoice", coins=INT, invoice=STR),
        idempotency_key=True,
    ),
    ("GET", "/v1/rooms/{room}/campaigns"): Op(
        "The sponsored gifts a viewer of this room can send now, free.",
        {200: obj("campaigns", campaigns={"type": "array"})},
        who=None,
    ),
    ("GET", "/v1/catalog/perks"): Op("Perks on sale.", {200: obj("perks", perks={"type": "array"})}, who=None),
    ("PUT", "/v1/admin/perks/{perk}"): Op("Add or reprice a perk.", {200: ANY_OBJECT}, who="admin", body=PERK),
    ("POST", "/v1/admin/perks/{perk}/retire"): Op("Retire a perk.", {200: ANY_OBJECT}, who="admin"),
    ("POST", "/v1/rooms/{room}/perks"): Op(
        "Buy a perk (highlighted message, entrance effect) in a live room.",
        {200: PERK_RESULT},
        body=obj("perk", perk=STR, message=STR),
        idempotency_key=True,
        errors={422: PERK_RESULT},
    ),
    ("POST", "/v1/rooms/{room}/ticket"): Op(
        "Buy the ticket to a premium stream at the price shown.",
        {200: PERK_RESULT},
        body=obj("coins", coins=INT),
        idempotency_key=True,
        errors={422: PERK_RESULT},
    ),
    ("POST", "/v1/rooms/{room}/premium"): Op(
        "Mark the live stream premium with a ticket price.",
        {200: obj("room", "premium_coins", room=STR, premium_coins=INT)},
        who="the room's creator",
        body=obj("coins", coins=INT),
    ),
    ("PUT", "/v1/fanclub"): Op(
        "The creator sets up their fan club: membership gift, member-only gift, free premium entry.",
        {200: ANY_OBJECT},
        who="creator, admin",
        body=obj("membership_gift", "free_premium", membership_gift=STR, member_gift=NULLABLE_STR, free_premium=BOOL),
    ),
    ("GET", "/v1/fanclub/members"): Op(
        "The caller's fan club: its choices and members with levels.",
        {200: obj("creator", "config", "members", members={"type": "array"})},
        who="creator, admin",
        query={"limit": LIMIT},
    ),
    ("GET", "/v1/creators/{creator}/fanclub"): Op(
        "A creator's fan club; with a token, also the caller's membership.",
        {200: obj("creator", "config", "membership")},
        who=None,
    ),
    ("GET", "/"): Op("Page: the lobby.", {200: HTML}, who=None),
    ("GET", "/watch/{room}"): Op("Page: watch a room.", {200: HTML}, who=None),
    ("GET", "/studio"): Op("Page: the creator studio.", {200: HTML}, who=None),
    ("GET", "/brand"): Op("Page: a brand's sponsored-gift campaigns and reports.", {200: HTML}, who=None),
    ("GET", "/overlay/{room}"): Op("Page: the stream overlay.", {200: HTML}, who=None),
    ("GET", "/dev"): Op("Page: demo tokens (dev mode, loopback host only).", {200: HTML}, who=None),
    ("GET", "/static/{path}"): Op("The pages' scripts, styles and images.", {200: "asset"}, who=None),
}

PATH_PARAM = re.compile(r"\{(\w+)\}")


def _content(schema: JSON | str) -> JSON:
    if schema == HTML:
        return {"text/html": {"schema": STR}}
    if schema == "asset":
        return {"*/*": {}}
    if schema == PROMETHEUS:
        return {"text/plain": {"schema": STR}}
    assert isinstance(schema, dict)
    return {"application/json": {"schema": schema}}


def _operation(method: str, path: str, op: Op) -> JSON:
    parameters = [{"name": name, "in": "path", "required": True, "schema": STR} for name in PATH_PARAM.findall(path)]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": schema} for name, schema in op.query.items()
    ]
    if op.idempotency_key:
        key = {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"}
        parameters.append({"name": "Idempotency-Key", "in": "header", "required": True, "schema": key})
    responses: JSON = {str(status): {"description": "OK", "content": _content(s)} for status, s in op.ok.items()}
    page = any(s == HTML or s == "asset" for s in op.ok.values())
    error_content = {"text/html": {"schema": STR}, "application/json": {"schema": ERROR}} if page else _content(ERROR)
    responses["4XX"] = {
        "description": "Refused: the error envelope; the status follows from the code.",
        "content": error_content,
    }
    responses["503"] = {
        "description": "store_unavailable (Retry-After), not_durable or busy.",
        "content": _content(ERROR),
    }
    for status, schema in op.errors.items():
        responses[str(status)] = {"description": "See the summary.", "content": _content(schema)}
    operation: JSON = {
        "operationId": f"{method.lower()}{re.sub(r'[^A-Za-z0-9]+', '_', path)}",
        "summary": op.summary,
        "parameters": parameters,
        "responses": responses,
        "x-who": op.who or "anyone",
    }
    if op.who is None:
        operation["security"] = []
    if op.body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": op.body}}}
    return operation


def openapi_document() -> JSON:
    paths: JSON = {}
    for (method, path), op in OPERATIONS.items():
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gifting",
            "version": "1",
            "description": "The HTTP API (docs/PROTOCOL.md, HTTP API). Errors: the envelope "
            '{"error": {"code", "message"}}; the status follows from the code alone (x-error-codes; a code not '
            f"there answers {STATUS_DEFAULT}). The websocket: /asyncapi.json.",
        },
        "paths": paths,
        "security": [{"bearer": []}, {"token_query": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "token_query": {"type": "apiKey", "in": "query", "name": "token"},
            },
            "schemas": {"Error": ERROR},
        },
        "x-error-codes": dict(sorted(STATUS.items())),
    }


def _server_messages() -> list[type[messages.ServerMessage]]:
    found, todo = [], list(messages.ServerMessage.__subclasses__())
    while todo:
        cls = todo.pop(0)
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda cls: cls.TYPE)


def _with_type(schema: JSON, value: str, key: str = "type") -> JSON:
    """msgspec's schema of a message plus its discriminator (`type` or `kind`), which to_dict() adds."""
    properties = {key: {"const": value}, **schema.get("properties", {})}
    return {**schema, "properties": properties, "required": [key, *schema.get("required", [])]}


def asyncapi_document() -> JSON:
    """The websocket at /v1/ws: every client message (wire.messages.CLIENT_TYPES) and server message, generated
    from their types; room events travel in `events` messages, each with its `kind` (wire.messages.EventKind)."""
    client = list(messages.CLIENT_TYPES.items())
    server = _server_messages()
    schemas, components = msgspec.json.schema_components([cls for _, cls in client] + server)
    components = {name: schema for name, schema in components.items()}
    refs = [s["$ref"].rsplit("/", 1)[1] for s in schemas]
    messages_doc: JSON = {}
    for (type_name, _), ref in zip(client, refs[: len(client)], strict=True):
        components[ref] = _with_type(components[ref], type_name)
        messages_doc[f"client_{type_name}"] = {"name": type_name, "payload": {"$ref": f"#/components/schemas/{ref}"}}
    for cls, ref in zip(server, refs[len(client) :], strict=True):
        components[ref] = _with_type(components[ref], cls.TYPE)
        messages_doc[f"server_{cls.TYPE}"] = {"name": cls.TYPE, "payload": {"$ref": f"#/components/schemas/{ref}"}}
    schema_text = msgspec.json.encode(components).decode().replace("#/$defs/", "#/components/schemas/")
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "gifting websocket",
            "version": "1",
            "description": "docs/PROTOCOL.md. Subprotocols gifting.v1.json (text frames) and gifting.v1.msgpack; "
            f"close codes: {', '.join(f'{c.value} {c.name.lower()}' for c in messages.CloseCode)}; room event kinds: "
            f"{', '.join(kind.value for kind in messages.EventKind)}.",
        },
        "channels": {"ws": {"address": "/v1/ws", "messages": messages_doc}},
        "operations": {
            "send": {"action": "receive", "channel": {"$ref": "#/channels/ws"}, "summary": "client -> server"},
            "receive": {"action": "send", "channel": {"$ref": "#/channels/ws"}, "summary": "server -> client"},
        },
        "components": {"schemas": msgspec.json.decode(schema_text)},
    }


async def openapi_json(request: Request) -> Response:
    return json_response(openapi_document())


async def asyncapi_json(request: Request) -> Response:
    return json_response(asyncapi_document())


routes = [Route("/openapi.json", openapi_json), Route("/asyncapi.json", asyncapi_json)]
