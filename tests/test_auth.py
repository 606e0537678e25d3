"""Signed identity tokens: mint and verify round trip, and every way a token is refused with its code."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from gifting import auth
from gifting.auth import AuthError, Identity

SECRET = "unit-test-secret-0123456789-abcdefghijkl"
OTHER_SECRET = "another-secret-0123456789-abcdefghijklmnop"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": "alice", "role": "viewer", "name": "Alice", "iat": now, "exp": now + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def refused(token: str | None, secret: str = SECRET) -> str:
    with pytest.raises(AuthError) as info:
        auth.verify(secret, token)
    return info.value.code


@pytest.mark.parametrize("role", auth.ROLES)
def test_mint_verify_round_trip(role: auth.Role) -> None:
    """A minted token verifies to the same user, role and name."""
    token = auth.mint(SECRET, "user.1@example-x_y", role, "Name Here", 60)
    assert auth.verify(SECRET, token) == Identity("user.1@example-x_y", role, "Name Here")


def test_name_defaults_to_user_and_is_truncated() -> None:
    """Without a name the user id is the name; a long name is cut to 64 characters."""
    assert auth.verify(SECRET, auth.mint(SECRET, "bob", "viewer")).name == "bob"
    assert auth.verify(SECRET, auth.mint(SECRET, "bob", "viewer", "n" * 100)).name == "n" * 64


def test_only_creators_and_admins_can_create() -> None:
    """can_create is true for creator and admin, false for viewer and brand."""
    assert [Identity("u", r, "u").can_create for r in auth.ROLES] == [False, True, True, False]


def test_expired_token_is_token_expired() -> None:
    """A token past its exp is refused with code token_expired."""
    assert refused(auth.mint(SECRET, "alice", "viewer", ttl_s=-10)) == "token_expired"


def test_expired_token_with_bad_signature_is_not_token_expired() -> None:
    """An expired token signed with another secret is unauthorized: the signature is checked first."""
    assert refused(auth.mint(OTHER_SECRET, "alice", "viewer", ttl_s=-10)) == "unauthorized"


def test_bad_signature_is_unauthorized() -> None:
    """A token signed with another secret, or with its signature altered, is unauthorized."""
    assert refused(auth.mint(OTHER_SECRET, "alice", "viewer")) == "unauthorized"
    token = auth.mint(SECRET, "alice", "viewer")
    head, payload, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert refused(f"{head}.{payload}.{flipped}") == "unauthorized"


def test_tampered_claims_are_unauthorized() -> None:
    """Changing the payload (say, the role) without re-signing is unauthorized."""
    token = auth.mint(SECRET, "alice", "viewer")
    forged = jwt.encode(claims(role="admin"), OTHER_SECRET, algorithm="HS256")
    head, _, signature = token.split(".")
    assert refused(f"{head}.{forged.split('.')[1]}.{signature}") == "unauthorized"


@pytest.mark.parametrize("token", [None, "", "garbage", "a.b.c", "Bearer x"])
def test_missing_or_malformed_token_is_unauthorized(token: str | None) -> None:
    """No token, or one that is not a JWT, is unauthorized."""
    assert refused(token) == "unauthorized"


def test_other_algorithms_are_refused() -> None:
    """Only HS256 is accepted: an unsigned (alg none) or HS512 token is unauthorized."""
    assert refused(jwt.encode(claims(), None, algorithm="none")) == "unauthorized"
    assert refused(jwt.encode(claims(), SECRET * 2, algorithm="HS512"), SECRET * 2) == "unauthorized"


@pytest.mark.parametrize("missing", ["sub", "role", "exp"])
def test_required_claims(missing: str) -> None:
    """A token without sub, role or exp is unauthorized."""
    token = jwt.encode(claims(**{missing: None}), SECRET, algorithm="HS256")
    assert refused(token) == "unauthorized"


@pytest.mark.parametrize("role", ["superuser", "", "Viewer", 1, ["admin"]])
def test_bad_role_in_token_is_unauthorized(role: object) -> None:
    """A correctly signed token whose role is not viewer|creator|admin is unauthorized."""
    assert refused(jwt.encode(claims(role=role), SECRET, algorithm="HS256")) == "unauthorized"


@pytest.mark.parametrize("sub", ["", "a b", "x" * 65, "alice/bob", "alice\n", "ä"])
def test_bad_user_id_in_token_is_unauthorized(sub: str) -> None:
    """A correctly signed token whose sub is not [A-Za-z0-9_.@-]{1,64} is unauthorized."""
    assert refused(jwt.encode(claims(sub=sub), SECRET, algorithm="HS256")) == "unauthorized"


def test_non_string_name_falls_back_to_user() -> None:
    """A name claim that is not a string is replaced by the user id."""
    token = jwt.encode(claims(name=42), SECRET, algorithm="HS256")
    assert auth.verify(SECRET, token).name == "alice"


@pytest.mark.parametrize("user", ["", "a b", "x" * 65, "alice\n", "ä"])
def test_mint_rejects_bad_user_id(user: str) -> None:
    """mint refuses a user id outside [A-Za-z0-9_.@-]{1,64}."""
    with pytest.raises(ValueError, match="user id"):
        auth.mint(SECRET, user, "viewer")


@pytest.mark.parametrize("role", ["superuser", "", "Admin"])
def test_mint_rejects_bad_role(role: str) -> None:
    """mint refuses a role other than viewer|creator|admin."""
    with pytest.raises(ValueError, match="role"):
        auth.mint(SECRET, "alice", role)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc ", "abc"),
        ("BEARER  abc", "abc"),
        ("Basic abc", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer(header: str | None, expected: str | None) -> None:
    """bearer() takes the token from an Authorization header, case-insensitively, and nothing else."""
    assert auth.bearer(header) == expected
