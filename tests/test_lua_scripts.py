"""Every Lua script builds no key name, leg, statement row or account name of its own (the caller passes them,
from keys.py and ledger/rules.py), and every reject reason a script returns is a RejectReason."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from gifting.wire.reasons import RejectReason

PACKAGE = Path(__file__).resolve().parent.parent / "gifting"
SCRIPTS = sorted(PACKAGE.rglob("*.lua"))
STRING = "\x00"  # stands for a string literal in the code text


@dataclass(frozen=True, slots=True)
class Lua:
    """A script's code with comments removed and each string literal replaced by STRING, and its literals."""

    code: str
    literals: list[str]


def parse(text: str) -> Lua:
    """Split Lua source into code and string literals ('...' and "..."; comments dropped). The scripts use no
    long strings ([[...]]), which the test would see as code and so flag rather than miss."""
    code: list[str] = []
    literals: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("--", i):
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
        elif text[i] in "'\"":
            quote, j, literal = text[i], i + 1, []
            while text[j] != quote:
                literal.append(text[j : j + 2] if text[j] == "\\" else text[j])
                j += 2 if text[j] == "\\" else 1
            literals.append("".join(literal))
            code.append(STRING)
            i = j + 1
        else:
            code.append(text[i])
            i += 1
    return Lua("".join(code), literals)


def call_args(code: str, start: int) -> list[str]:
    """The top-level arguments of the call whose '(' is at `start`."""
    depth, args, current = 0, [], []
    for ch in code[start:]:
        if ch in "({[":
            depth += 1
            if depth == 1:
                continue
        elif ch in ")}]":
            depth -= 1
            if depth == 0:
                args.append("".join(current).strip())
                return args
        elif ch == "," and depth == 1:
            args.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    raise AssertionError("unbalanced call")


KEY_ARG = re.compile(r"^[A-Za-z_]\w*(\[[^\]\x00]+\]|\.\w+)*$")  # a name, a table field, KEYS[i]: no string
LEG = re.compile(r"^(coins|diamonds) ")


def violations(text: str) -> list[str]:
    """What a script builds that its caller should pass: keys, legs, statement rows, account names."""
    lua = parse(text)
    found = []
    for match in re.finditer(r"redis\.call\(", lua.code):
        args = call_args(lua.code, match.end() - 1)
        if len(args) > 1 and not KEY_ARG.match(args[1]):
            found.append(f"key argument built in the script: {args[1]!r}")
    for literal in lua.literals:
        if re.search(r":|\{\w", literal) and not re.search(r"[\s\"]", literal):
            found.append(f"a literal key or key part: {literal!r}")
        if literal.startswith(("sys:", "u:")):
            found.append(f"an account name: {literal!r}")
        if LEG.match(literal):
            found.append(f"a leg: {literal!r}")
    if re.search(r"table\.concat\([^\n]*,\s*\x00\)", lua.code) and "\\t" in lua.literals:
        found.append("a tab-separated row built in the script")
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_builds_no_key_leg_row_or_account(script: Path) -> None:
    """The script uses only keys from KEYS and legs, rows and accounts from ARGV."""
    assert violations(script.read_text()) == []


@pytest.mark.parametrize(
    "snippet",
    [
        "redis.call('HINCRBY', '{ledger}:earned:' .. creator, hour, d)",
        "local key = '{ledger}:top:' .. creator\nredis.call('ZADD', key, 1, v)",
        "redis.call('GET', prefix .. 'combo:' .. e.combo)",
        "redis.call('HINCRBY', KEYS[1], 'sys:coin_issuance', -coins)",
        "local account = 'u:' .. c.user",
        "local leg = 'coins ' .. account .. ' sys:pool_escrow ' .. fmt(coins)",
        "redis.call('RPUSH', KEYS[4], table.concat({now, kind, 'coins'}, '\\t'))",
    ],
)
def test_the_check_catches_what_the_scripts_used_to_build(snippet: str) -> None:
    """Each way the scripts built keys, legs, rows and accounts before #11 is flagged."""
    assert violations(snippet) != []


def test_the_check_passes_what_scripts_may_do() -> None:
    """Keys from KEYS or locals, error messages, JSON text and patterns are not flagged."""
    ok = (
        "local coins_key = KEYS[1]\nredis.call('HINCRBY', coins_key, ARGV[4], 1)\n"
        "redis.call('SET', combo_keys[key], c.id .. '|' .. c.total, 'PX', window_ms)\n"
        "return redis.error_reply('settle: malformed gift argument ' .. i)\n"
        "local a = '{\"from\":' .. offset\nlocal id = string.match(x, '^([^\\t]*)\\t(%d+)$') -- 'u:' in a comment"
    )
    assert violations(ok) == []


def returned_reasons(text: str) -> set[str]:
    """Reject reasons a script returns: `'rejected', 'reason'` pairs and the values of its CLOSED table."""
    lua = parse(text)
    reasons = set(re.findall(r"'rejected',\s*'([a-z_]+)'", text))
    closed = re.search(r"CLOSED = \{([^}]*)\}", lua.code)
    if closed:
        count = closed.group(1).count(STRING)
        before = lua.code[: closed.start()].count(STRING)
        reasons |= set(lua.literals[before : before + count])
    return reasons


def test_every_reason_a_script_returns_is_a_reject_reason() -> None:
    """settle.lua and pool.lua return only RejectReason values (the pledge reasons among them)."""
    found = {reason for script in SCRIPTS for reason in returned_reasons(script.read_text())}
    assert found >= {"insufficient_coins", "daily_limit", "pool_completed", "pledge_exceeds_remaining"}, found
    assert found - {r.value for r in RejectReason} == set()
