from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import jwt
import pytest

from signalling.auth.revocation import Revocations
from signalling.auth.tokens import AuthError, Role, TokenIssuer

SECRET = "s" * 32


def claims(**override: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {"sub": "x", "role": "client", "iat": now, "exp": now + 3600, "jti": uuid.uuid4().hex}
    base.update(override)
    return {k: v for k, v in base.items() if v is not None}


def test_roundtrip() -> None:
    issuer = TokenIssuer(SECRET)
    token = issuer.mint("alice", "expert", name="Alice")
    ident = issuer.verify(token)
    assert ident.user_id == "alice" and ident.role is Role.EXPERT and ident.name == "Alice"
    # Every token has an id to revoke it by.
    assert ident.token_id == jwt.decode(token, SECRET, algorithms=["HS256"])["jti"]


@pytest.mark.parametrize(
    "token, code",
    [
        (lambda: None, "auth_required"),
        (lambda: "not-a-jwt", "token_invalid"),
        (lambda: TokenIssuer("other" * 8).mint("bob", "admin"), "token_invalid"),
        (lambda: jwt.encode(claims(role="god"), SECRET, "HS256"), "token_invalid"),
        (lambda: jwt.encode(claims(exp=int(time.time()) - 120), SECRET, "HS256"), "token_expired"),
        (lambda: jwt.encode(claims(exp=None), SECRET, "HS256"), "token_invalid"),
        (lambda: jwt.encode(claims(), "", "none"), "token_invalid"),
        # No jti (nothing to revoke it by), no iat (no way to bound its lifetime).
        (lambda: jwt.encode(claims(jti=None), SECRET, "HS256"), "token_invalid"),
        (lambda: jwt.encode(claims(iat=None), SECRET, "HS256"), "token_invalid"),
        # The 30-day tokens main used to accept: longer than the 24 h maximum lifetime.
        (lambda: jwt.encode(claims(exp=int(time.time()) + 30 * 86400), SECRET, "HS256"), "token_invalid"),
        # Not ASCII: a lone surrogate (legal JSON in hello) and a non-UTF-8 header byte.
        (lambda: "\ud800x", "token_invalid"),
        (lambda: "eyJ\udcff.e30.x", "token_invalid"),
        (lambda: "a" * 5000, "token_invalid"),
    ],
)
def test_rejections(token: Callable[[], str | None], code: str) -> None:
    # Made when the test runs, not when it is collected: a suite can take longer than a token lives.
    with pytest.raises(AuthError) as info:
        TokenIssuer(SECRET).verify(token())
    assert info.value.code == code


def test_the_maximum_lifetime_is_a_setting() -> None:
    short = TokenIssuer(SECRET, max_ttl=600)
    with pytest.raises(ValueError, match="between 1 and 600"):
        short.mint("alice", "client", ttl=601)
    day_token = TokenIssuer(SECRET).mint("alice", "client", ttl=86400)
    with pytest.raises(AuthError, match="longer than this server allows"):
        short.verify(day_token)


def test_a_revoked_token_is_refused_and_others_are_not() -> None:
    revocations = Revocations()
    issuer = TokenIssuer(SECRET, revocations=revocations)
    first, second = issuer.mint("alice", "client"), issuer.mint("alice", "client")
    revocations.add(issuer.verify(first).token_id, int(time.time()) + 60)
    with pytest.raises(AuthError) as info:
        issuer.verify(first)
    assert info.value.code == "token_revoked"
    assert issuer.verify(second).user_id == "alice"
