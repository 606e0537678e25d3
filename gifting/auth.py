"""Signed identity tokens (HS256 JWT). The embedding platform issues the same tokens; there is no sign-up here."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, cast

import jwt

from gifting.errors import GiftingError

Role = Literal["viewer", "creator", "admin", "brand"]
ROLES: tuple[Role, ...] = ("viewer", "creator", "admin", "brand")  # brand: funds sponsored-gift campaigns
USER_ID_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
NAME_CHARS_MAX = 64
ALGORITHM = "HS256"


class AuthError(GiftingError):
    """The token is missing, malformed, badly signed, expired or revoked. `code` is the wire error code."""


OVERLAY_SCOPE = "overlay"
OVERLAY_USER_PREFIX = "overlay:"  # ':' is in no user id, so an overlay is never mistaken for a person


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    role: Role
    name: str
    # The token's `iat` and `exp` (unix seconds): a socket closes when `exp` passes or the user's tokens issued
    # up to some second are revoked (gifting/revocations.py). Not part of who the caller is: compare=False.
    issued_at: int = field(default=0, compare=False)
    expires_at: int = field(default=0, compare=False)
    # Set for an overlay token: the creator whose room feed it reads. It may join that creator's rooms over the
    # websocket and do nothing else; HTTP refuses it (web.http.identify).
    overlay_of: str | None = None

    @property
    def can_create(self) -> bool:
        return self.role in ("creator", "admin")


def mint(secret: str, user: str, role: Role, name: str | None = None, ttl_s: int = 86400) -> str:
    if not USER_ID_PATTERN.fullmatch(user):
        raise ValueError(f"user id: expected [A-Za-z0-9_.@-]{{1,64}}, got {user!r}")
    if role not in ROLES:
        raise ValueError(f"role: expected one of {', '.join(ROLES)}, got {role!r}")
    now = int(time.time())
    claims = {
        "sub": user,
        "role": role,
        "name": (name or user)[:NAME_CHARS_MAX],
        "iat": now,
        "exp": now + ttl_s,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def mint_overlay(secret: str, creator: str, ttl_s: int) -> str:
    """A read-only token for the creator's stream overlay: whoever sees the overlay URL can watch the creator's
    room feed (as a viewer sees it), and nothing more: no gifts, no wallet, no withdrawals."""
    if not USER_ID_PATTERN.fullmatch(creator):
        raise ValueError(f"user id: expected [A-Za-z0-9_.@-]{{1,64}}, got {creator!r}")
    now = int(time.time())
    claims = {"sub": creator, "role": "viewer", "scope": OVERLAY_SCOPE, "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(secret: str, token: str | None, not_before: Mapping[str, int] | None = None) -> Identity:
    """The token's identity. `not_before`: user -> unix second; that user's tokens issued at or before it are
    revoked (`token_revoked`), as are that user's tokens without `iat`."""
    if not token:
        raise AuthError("unauthorized", "missing token: pass ?token=... or 'Authorization: Bearer ...'")
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp", "role"]})
    except jwt.ExpiredSignatureError:
        raise AuthError("token_expired", "token expired: get a new one from the platform") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError("unauthorized", f"invalid token: {exc}") from None
    user, role, name = claims.get("sub"), claims.get("role"), claims.get("name") or claims.get("sub")
    if not isinstance(user, str) or not USER_ID_PATTERN.fullmatch(user):
        raise AuthError("unauthorized", "invalid token: bad 'sub' claim")
    if role not in ROLES:
        raise AuthError("unauthorized", f"invalid token: role must be one of {', '.join(ROLES)}")
    scope = claims.get("scope")
    if scope is not None and scope != OVERLAY_SCOPE:
        raise AuthError("unauthorized", f"invalid token: unknown scope {str(scope)[:40]!r}")
    issued_at = claims.get("iat")
    issued_at = issued_at if isinstance(issued_at, int) and not isinstance(issued_at, bool) else 0
    if not_before is not None and revoked(issued_at, not_before.get(user)):  # an overlay's too: its creator's
        raise AuthError("token_revoked", "token revoked: get a new one from the platform")
    expires_at = int(claims["exp"])
    if scope == OVERLAY_SCOPE:
        return Identity(OVERLAY_USER_PREFIX + user, "viewer", "Overlay", issued_at, expires_at, overlay_of=user)
    if not isinstance(name, str):
        name = user
    return Identity(user, cast(Role, role), name[:NAME_CHARS_MAX], issued_at, expires_at)


def revoked(issued_at: int, not_before: int | None) -> bool:
    """Whether a token issued at `issued_at` (0: unknown) falls under a revocation of tokens up to `not_before`."""
    return not_before is not None and issued_at <= not_before


def bearer(authorization: str | None) -> str | None:
    """The token from an 'Authorization: Bearer ...' header value, if any."""
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None
