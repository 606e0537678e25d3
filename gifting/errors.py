"""The one base of every domain error: a code a client can act on and a message a person can read.

Domain errors carry no HTTP status: the web layer maps codes to statuses in one table (gifting/web/http.py),
the websocket sends the code in an `error` or a rejection.
"""

from __future__ import annotations

import re


class GiftingError(Exception):
    """A request could not be carried out. `code` is the wire error code (docs/PROTOCOL.md)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


# Valkey's reply when a script raised at run time (a Lua error, a command refused inside it): the error, then
# the script's SHA1 and line. A reply the script chose (redis.error_reply) or NOSCRIPT has no such suffix.
_SCRIPT_FAILURE = re.compile(r"(?P<detail>.*) script: (?P<sha>[0-9a-f]{40}), on @user_script:(?P<line>\d+)\.", re.S)


class ScriptFailed(GiftingError):
    """A Lua script ran and failed on its input: retrying the same input fails the same way (a poison stream
    entry goes to the dead-letter stream). Parsed from Valkey's reply by `parse`, never by a substring test."""

    def __init__(self, sha: str, line: int, detail: str) -> None:
        super().__init__("script_failed", f"script {sha[:12]} failed at line {line}: {detail}")
        self.sha, self.line, self.detail = sha, line, detail

    @classmethod
    def parse(cls, reply: str) -> ScriptFailed | None:
        """The failure a Valkey error reply reports, or None when the reply is not a script's run-time failure."""
        match = _SCRIPT_FAILURE.fullmatch(reply)
        if match is None:
            return None
        return cls(match["sha"], int(match["line"]), match["detail"])
