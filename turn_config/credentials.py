"""Ephemeral TURN credentials in the TURN REST API scheme, which coturn's ``use-auth-secret`` checks.

The username is ``<expiry unix time>:<user id>`` and the password is
``base64(HMAC-SHA1(shared secret, username))``. coturn recomputes the password from the username
with the same secret and refuses the username once its expiry time has passed, so expertcall hands
out credentials without ever talking to coturn. (draft-uberti-behave-turn-rest-00, section 2.2.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

# Below a minute a credential may expire between being fetched and being used by ICE.
MIN_TTL = 60
MIN_SECRET_LENGTH = 16
MAX_USER_ID_LENGTH = 128


class CredentialError(ValueError):
    """A secret, user id or lifetime that cannot make a credential. ``code`` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_secret(secret: str) -> str:
    """The secret itself, or a ``CredentialError`` saying why coturn could not share it safely."""
    if len(secret) < MIN_SECRET_LENGTH:
        raise CredentialError(
            "turn_secret_too_short", f"the TURN secret must be at least {MIN_SECRET_LENGTH} characters long"
        )
    # It ends up on one line of turnserver.conf: whitespace or control characters would cut it short.
    if not secret.isprintable() or any(c.isspace() for c in secret):
        raise CredentialError("turn_secret_invalid", "the TURN secret must be printable and contain no whitespace")
    return secret


def clamp_ttl(ttl: int, max_ttl: int) -> int:
    """``ttl`` bounded to ``[MIN_TTL, max_ttl]``: a client may ask for less, never for more."""
    if max_ttl < MIN_TTL:
        raise CredentialError("turn_ttl_invalid", f"the maximum TURN credential lifetime must be at least {MIN_TTL} s")
    return max(MIN_TTL, min(int(ttl), max_ttl))


def password_for(secret: str, username: str) -> str:
    """What coturn computes for ``username`` under ``use-auth-secret``."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class TurnCredential:
    username: str
    password: str
    expires_at: int
    ttl: int

    @property
    def user_id(self) -> str:
        return self.username.split(":", 1)[1]


def make_credential(
    secret: str, user_id: str, ttl: int, max_ttl: int, now: float | None = None
) -> TurnCredential:
    """A credential for ``user_id`` valid for ``ttl`` seconds (clamped to ``max_ttl``)."""
    check_secret(secret)
    if not user_id or len(user_id) > MAX_USER_ID_LENGTH or not user_id.isprintable():
        raise CredentialError(
            "turn_user_invalid", f"the TURN user id must be 1-{MAX_USER_ID_LENGTH} printable characters"
        )
    ttl = clamp_ttl(ttl, max_ttl)
    expires_at = int(time.time() if now is None else now) + ttl
    username = f"{expires_at}:{user_id}"
    return TurnCredential(username=username, password=password_for(secret, username), expires_at=expires_at, ttl=ttl)
