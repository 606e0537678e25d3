"""No token, secret or payment token reaches a log line, whoever logs it; and the lines' format (text or JSON).

Why a record factory and not a filter: filters sit on one logger or one handler, and uvicorn configures its own
loggers (which do not propagate) and handlers each time a server is configured; a record factory sees every
record of the process when it is made, before any handler formats it. uvicorn's access and websocket lines
carry the request's query string (`WebSocket /v1/ws?token=eyJ...`): query strings are dropped from every
path in a message, and what looks like a credential anywhere else is replaced.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import orjson

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


# JSON lines ------------------------------------------------------------------------------------------------

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The ids a line is about, as the project's messages name them ("gift 3f2a...: settled", "withdrawal w_1: post").
ID_IN_MESSAGE = re.compile(r"\b(?P<kind>gift|transfer|withdrawal|pledge|purchase|request|entry) (?P<id>[\w:.-]{3,})")
ID_FIELDS = ("gift_id", "transfer_id", "withdrawal_id", "pledge_id", "purchase_id", "request_id", "entry_id")
# uvicorn configures its loggers with handlers of its own; in JSON mode they hand their records to the root's.
UVICORN_JSON_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {
        name: {"handlers": [], "level": "INFO", "propagate": True}
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
    },
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the ids the line is about
    (passed as `extra={"gift_id": ...}`, or named in the message), and the exception if there is one. The
    message is already scrubbed (the record factory above); the exception text is scrubbed here too."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for match in ID_IN_MESSAGE.finditer(message):
            line.setdefault(f"{match['kind']}_id", match["id"].rstrip(":.,"))
        for name in ID_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = str(value)
        if record.exc_info:
            line["exception"] = scrub(record.exc_text or self.formatException(record.exc_info))
        return orjson.dumps(line).decode()


def configure(log_format: str) -> None:
    """The root logger's one handler (stderr), in `log_format`: "text" or "json"."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
