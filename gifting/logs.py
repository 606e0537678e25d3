"""No token, secret or payment token reaches a log line, whoever logs it.

Why a record factory and not a filter: filters sit on one logger or one handler, and uvicorn configures its own
loggers (which do not propagate) and handlers each time a server is configured; a record factory sees every
record of the process when it is made, before any handler formats it. uvicorn's access and websocket lines
carry the request's query string (`WebSocket /v1/ws?token=eyJ...`): query strings are dropped from every
path in a message, and what looks like a credential anywhere else is replaced.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "[redacted]"
# A path with a query string, as uvicorn logs it: everything after the "?" goes.
QUERY = re.compile(r"(?P<path>/[^\s?\"']*)\?[^\s\"']*")
# A JWT (three base64url parts, the header starts with '{"' = eyJ): our tokens and the platform's.
JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Payment provider tokens (`tok_...`) and credential-looking key/value pairs in any other text.
PAYMENT_TOKEN = re.compile(r"\btok_[A-Za-z0-9_]+")
CREDENTIAL = re.compile(
    r"(?i)(?P<key>[\"']?(?:payment_token|token|secret|password|authorization)[\"']?\s*[:=]\s*[\"']?)"
    r"(?:bearer\s+)?[^\s&\"',;}]+"
)
SECRET_CHARS_MIN = 8  # shorter values are not secrets worth scanning every line for (and would match at random)

_secrets: set[str] = set()
_previous_factory: Any = None


def scrub(text: str) -> str:
    """`text` without query strings, tokens, payment tokens or the registered secrets."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = QUERY.sub(lambda m: f"{m['path']}?{REDACTED}", text)
    text = JWT.sub(REDACTED, text)
    text = PAYMENT_TOKEN.sub(REDACTED, text)
    return CREDENTIAL.sub(lambda m: f"{m['key']}{REDACTED}", text)


def install(*secrets: str) -> None:
    """Scrub every log record of this process from now on; `secrets` are also removed verbatim. Idempotent."""
    global _previous_factory
    _secrets.update(s for s in secrets if len(s) >= SECRET_CHARS_MIN)
    if _previous_factory is None:
        _previous_factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_scrubbed_record)


def _scrubbed_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record: logging.LogRecord = _previous_factory(*args, **kwargs)
    try:
        message = record.getMessage()
    except Exception:  # a malformed call: logging reports it when the record is emitted
        return record
    clean = scrub(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None:
        # The formatter prints exc_text when it is set; the exception's message may quote what it refused.
        record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
    return record
