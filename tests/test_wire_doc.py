"""docs/PROTOCOL.md and gifting/wire agree: every message type, event kind, close code and reject reason defined
in code is documented, and the doc documents no other."""

from __future__ import annotations

import re

from gifting.web.http import STATUS
from gifting.wire.messages import CLIENT_TYPES, SERVER_MESSAGES, CloseCode, EventKind
from gifting.wire.reasons import RejectReason
from tests.conftest import REPO

PROTOCOL = (REPO / "docs" / "PROTOCOL.md").read_text()


def first_column(heading: str, after: str | None = None) -> set[str]:
    """The first cell of every row of the first table after `heading` (and after the line `after`, if given)."""
    start = PROTOCOL.index(f"\n{heading}\n")
    if after is not None:
        start = PROTOCOL.index(after, start)
    rows = re.search(r"\n(\|.*\|\n)+", PROTOCOL[start:])
    assert rows is not None, f"no table under {heading!r}"
    cells = [line.split("|")[1].strip() for line in rows.group(0).strip().splitlines()[2:]]
    return {cell.strip("`") for cell in cells}


def test_client_messages_match_the_doc() -> None:
    """The `Client -> server` table lists exactly the message types the server parses."""
    assert first_column("### Client -> server") == set(CLIENT_TYPES)


def test_server_messages_match_the_doc() -> None:
    """The `Server -> client` table lists exactly the typed server messages."""
    assert first_column("### Server -> client") == {cls.TYPE for cls in SERVER_MESSAGES}


def test_room_event_kinds_match_the_doc() -> None:
    """The `Room events` table lists exactly the EventKind members."""
    assert first_column("### Room events") == {str(kind) for kind in EventKind}


def test_close_codes_match_the_doc() -> None:
    """The `Close codes` table lists exactly the CloseCode numbers."""
    assert first_column("### Close codes") == {str(int(code)) for code in CloseCode}


def test_reject_reasons_match_the_doc() -> None:
    """The rejection reasons table lists exactly the RejectReason members."""
    documented = first_column("### Sending a gift, and resending it", after="Rejection reasons")
    assert documented == {str(reason) for reason in RejectReason}


def test_lua_event_kinds_are_event_kinds() -> None:
    """Every room-event kind a Lua script writes is spelled as in EventKind."""
    kinds = {k for p in (REPO / "gifting").rglob("*.lua") for k in re.findall(r"kind = '([a-z_]+)'", p.read_text())}
    assert kinds and kinds <= {str(kind) for kind in EventKind}, kinds - set(EventKind)


def test_every_http_error_code_with_a_status_is_documented() -> None:
    """Each code of the HTTP status table (gifting/web/http.py) is named in docs/PROTOCOL.md."""
    assert [code for code in STATUS if f"`{code}`" not in PROTOCOL] == []
