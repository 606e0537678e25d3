"""The API contract: /openapi.json describes exactly the app's routes, /asyncapi.json every websocket message
type, and Schemathesis, against a live `gifting serve`, finds no 5xx, no answer off the document, and no money
moved by a refused call."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi import checks
from starlette.routing import Mount, Route

from gifting import keys
from gifting.app import create_app
from gifting.config import Settings
from gifting.embedded import free_port
from gifting.ledger import partitions
from gifting.web.openapi import OPERATIONS, asyncapi_document, openapi_document
from gifting.wire import messages
from tests.conftest import SECRET, spawn, stop, token

START_TIMEOUT_S = 30.0
# Schemathesis' examples per operation: bounded so the whole run stays well under a minute on a loaded machine.
EXAMPLES_PER_OPERATION = 12
USER = "st_creator"


def app_routes() -> set[tuple[str, str]]:
    """(method, path) of every HTTP route the app serves (HEAD rides on GET; the websocket is in AsyncAPI)."""
    found = set()
    for route in create_app(Settings(), "redis://127.0.0.1:1", SECRET).routes:
        if isinstance(route, Route):
            found |= {(method, route.path) for method in route.methods or () if method != "HEAD"}
        elif isinstance(route, Mount):
            found.add(("GET", f"{route.path}/{{path}}"))
    return found


def test_every_route_is_described_and_every_description_is_a_route() -> None:
    """A route without an entry in the OpenAPI table fails, and so does an entry for a route that is gone."""
    described = set(OPERATIONS)
    routes = app_routes()
    assert routes - described == set(), "routes missing from gifting/web/openapi.py OPERATIONS"
    assert described - routes == set(), "OPERATIONS describes routes the app does not have"


def test_every_error_code_status_is_in_the_document() -> None:
    """The document carries the code -> status table of gifting/web/http.py and the error envelope."""
    document = openapi_document()
    from gifting.web.http import STATUS

    assert document["x-error-codes"] == STATUS
    assert document["components"]["schemas"]["Error"]["required"] == ["error"]


def test_asyncapi_names_every_websocket_message_type() -> None:
    """Every client message type, every server message type, every close code and event kind are in
    /asyncapi.json, with schemas generated from gifting/wire/messages.py."""
    document = asyncapi_document()
    names = {m["name"] for m in document["channels"]["ws"]["messages"].values()}
    server_types = {cls.TYPE for cls in messages.ServerMessage.__subclasses__()}
    assert set(messages.CLIENT_TYPES) | server_types <= names
    assert "#/$defs/" not in str(document)
    description = document["info"]["description"]
    assert all(str(code.value) in description for code in messages.CloseCode)
    assert all(kind.value in description for kind in messages.EventKind)


@pytest.fixture(scope="module")
def live(valkey_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `gifting serve` (no worker: a gift answers 202 pending after a short wait) on a free port."""
    tmp = tmp_path_factory.mktemp("openapi")
    port = free_port()
    env = {
        "REDIS_URL": valkey_url,
        "GIFTING_DATA_DIR": str(tmp),
        "GIFTING_PORT": str(port),
        "GIFTING_GIFT_RESULT_TIMEOUT_MS": "50",
        "GIFTING_CONNECTIONS_PER_ADDRESS_MAX": "0",
    }
    log = tmp / "serve.log"
    process = spawn("serve", env, log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url, process, log)
        with httpx.Client(base_url=base_url, timeout=10) as http:
            bought = http.post(
                "/v1/wallet/purchases",
                headers={"Authorization": f"Bearer {token(USER, 'creator')}", "Idempotency-Key": uuid.uuid4().hex},
                json={"bundle_id": "coins_65", "payment_token": "tok_sandbox_ok"},
            )
            assert bought.status_code == 201, bought.text
        yield base_url
    finally:
        stop(process)


def wait_healthy(base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gifting serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"gifting serve never answered /healthz:\n{log.read_text()[-3000:]}")


def money(client: redis.Redis) -> tuple[Any, ...]:
    """Every partition's balances and journal length: what any money movement changes."""
    return tuple(
        (client.xlen(keys.journal(part)), client.hgetall(keys.coins(part)), client.hgetall(keys.diamonds(part)))
        for part in partitions.all_tags()
    )


schema = schemathesis.openapi.from_dict(openapi_document())
# Every answer against the document, plus a 405's Allow and the rejection of schema-invalid input. Server errors
# are checked below: the only 5xx allowed is /readyz's documented 503 (this server runs without a worker).
CHECKS = [
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.unsupported_method,
    checks.negative_data_rejection,
]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_api_matches_its_document(case: Any, live: str, valkey_url: str) -> None:
    """Schemathesis' generated calls (a creator's token; valid and invalid bodies, parameters and ids): no 5xx
    but 503, every answer matches the document, and a refused call (4xx/5xx) moves no money."""
    client = redis.Redis.from_url(valkey_url, decode_responses=True)
    try:
        before = money(client)
        headers = {"Authorization": f"Bearer {token(USER, 'creator')}", "Host": "127.0.0.1"}
        response = case.call(base_url=live, headers=headers, timeout=10)
        case.validate_response(response, checks=CHECKS)
        server_error_allowed = case.operation.path == "/readyz" and response.status_code == 503
        assert response.status_code < 500 or server_error_allowed, (
            f"{case.method} {case.formatted_path}: {response.text}"
        )
        if response.status_code >= 400:
            assert money(client) == before, f"{case.method} {case.formatted_path} {response.status_code} moved money"
    finally:
        client.close()
