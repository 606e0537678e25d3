"""The live package's layering, read from its source: the room is sans-I/O, the endpoint reaches into no store."""

from __future__ import annotations

import ast
from pathlib import Path

LIVE = Path(__file__).resolve().parent.parent / "gifting" / "live"
IO_MODULES = ("redis", "starlette", "uvicorn", "websockets", "socket", "gifting.live.hub", "gifting.live.direct")


def imported(tree: ast.AST) -> set[str]:
    """Modules imported at run time (an `if TYPE_CHECKING:` block imports nothing)."""
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
        for node in ast.walk(block)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_room_state_machine_does_no_io() -> None:
    """room.py has no coroutine and imports no I/O module (no Valkey, no sockets, no asyncio, not the hub)."""
    tree = ast.parse((LIVE / "room.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.AsyncFunctionDef | ast.Await)]
    modules = imported(tree)
    assert not [m for m in modules if m == "asyncio" or m.split(".")[0] in IO_MODULES or m in IO_MODULES]


def test_the_endpoint_reaches_into_no_store_of_the_hub() -> None:
    """endpoint.py uses the hub's methods, never its Valkey client, room store, settings or catalogs."""
    tree = ast.parse((LIVE / "endpoint.py").read_text())
    reached = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "hub"
    }
    assert not reached & {"redis", "room_store", "settings", "catalogs"}, reached
