"""What "Valkey is unreachable" looks like to this code, and the one code every answer to it carries.

While Valkey is down, restarting or replaying its AOF, redis-py raises one of STORE_ERRORS (BusyLoadingError is
a ConnectionError). HTTP answers 503 `store_unavailable` with a Retry-After (gifting/app.py); the websocket
answers a gift or pledge with a rejection whose reason is `store_unavailable`, and any other message with an
error of that code, and keeps the socket open (docs/PROTOCOL.md).
"""

from __future__ import annotations

import builtins

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gifting.wire.reasons import RejectReason

STORE_UNAVAILABLE: str = RejectReason.STORE_UNAVAILABLE.value  # also the HTTP and websocket error code
STORE_UNAVAILABLE_MESSAGE = "the data store (Valkey) is unreachable; retry shortly with the same ids"
# builtins.ConnectionError: a socket error redis-py let through unwrapped (a reset mid-reply).
STORE_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, builtins.ConnectionError)
