"""gifting.errors: one base with a code and a message; a script's run-time failure recognised by type."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gifting.auth import AuthError
from gifting.catalog.model import CatalogError
from gifting.errors import GiftingError, ScriptFailed
from gifting.ledger.store import LedgerError
from gifting.payments import PaymentError
from gifting.rooms.store import RoomError
from gifting.web.http import ApiError
from gifting.wire.protocol import ProtocolError
from workers.settlement import script_failed


@pytest.mark.parametrize("cls", [AuthError, LedgerError, RoomError, PaymentError, ProtocolError, ApiError])
def test_every_domain_error_is_a_gifting_error_with_code_and_message_and_no_status(cls: type[GiftingError]) -> None:
    """Each domain error takes (code, message), is a GiftingError, and carries no HTTP status."""
    exc = cls("some_code", "what went wrong")
    assert isinstance(exc, GiftingError)
    assert (exc.code, exc.message, str(exc)) == ("some_code", "what went wrong", "what went wrong")
    assert not hasattr(exc, "status")


def test_catalog_error_is_a_gifting_error_and_still_a_value_error() -> None:
    """CatalogError keeps its one-argument form (a message) and its ValueError base."""
    exc = CatalogError("gift id: bad")
    assert isinstance(exc, GiftingError) and isinstance(exc, ValueError)
    assert (exc.code, exc.message) == ("bad_catalog", "gift id: bad")


@pytest.mark.parametrize(
    "body",
    ["error('boom')", "local x = nil; return x + 1", "return redis.call('INCR', KEYS[1])"],
)
async def test_a_script_failing_at_run_time_is_script_failed(redis: aioredis.Redis, body: str) -> None:
    """A Lua error or a refused command inside a script, as a real Valkey reports it, parses as ScriptFailed."""
    await redis.set("k", "not a number")
    script = redis.register_script(body)
    with pytest.raises(ResponseError) as info:
        await script(keys=["k"])
    failure = ScriptFailed.parse(str(info.value))
    assert failure is not None and failure.sha == script.sha and failure.line == 1
    assert failure.code == "script_failed" and failure.detail
    assert script_failed(info.value)


async def test_a_reply_the_script_chose_or_a_missing_script_is_not_script_failed(redis: aioredis.Redis) -> None:
    """redis.error_reply (a script's own answer) and NOSCRIPT are not poison: they do not parse."""
    with pytest.raises(ResponseError) as chosen:
        await redis.register_script("return redis.error_reply('the script said script')")(keys=[])
    with pytest.raises(ResponseError) as missing:
        await redis.evalsha("0" * 40, 0)
    for exc in (chosen.value, missing.value):
        assert ScriptFailed.parse(str(exc)) is None
        assert not script_failed(exc)
