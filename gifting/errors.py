"""The one base of every domain error: a code a client can act on and a message a person can read.

Domain errors carry no HTTP status: the web layer maps codes to statuses in one table (gifting/web/http.py),
the websocket sends the code in an `error` or a rejection.
"""

from __future__ import annotations


class GiftingError(Exception):
    """A request could not be carried out. `code` is the wire error code (docs/PROTOCOL.md)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"
