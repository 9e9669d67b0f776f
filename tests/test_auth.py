from __future__ import annotations

import time

import jwt
import pytest

from signalling.auth import AuthError, Role, TokenIssuer


def test_roundtrip() -> None:
    issuer = TokenIssuer("s" * 32)
    ident = issuer.verify(issuer.mint("alice", "expert", name="Alice"))
    assert ident.user_id == "alice" and ident.role is Role.EXPERT and ident.name == "Alice"


@pytest.mark.parametrize(
    "token, code",
    [
        (None, "auth_required"),
        ("not-a-jwt", "token_invalid"),
        (TokenIssuer("other" * 8).mint("bob", "admin"), "token_invalid"),
        (jwt.encode({"sub": "x", "role": "god", "exp": time.time() + 60}, "s" * 32, "HS256"), "token_invalid"),
        (jwt.encode({"sub": "x", "role": "client", "exp": time.time() - 5}, "s" * 32, "HS256"), "token_expired"),
        (jwt.encode({"sub": "x", "role": "client"}, "s" * 32, "HS256"), "token_invalid"),
        (jwt.encode({"sub": "x", "role": "client", "exp": time.time() + 60}, None, "none"), "token_invalid"),
    ],
)
def test_rejections(token, code) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AuthError) as info:
        TokenIssuer("s" * 32).verify(token)
    assert info.value.code == code
