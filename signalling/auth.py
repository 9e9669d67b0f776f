"""Bearer tokens: HS256 JWTs with ``sub``, ``role``, ``exp`` and an optional ``name``.

PyJWT does the signature and expiry checks; this module maps its failures to the protocol's
error codes and reads a token from where clients can put it.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

import jwt
from aiohttp import web

ALGORITHM = "HS256"
MAX_TTL = 30 * 24 * 3600


class Role(str, enum.Enum):
    EXPERT = "expert"
    CLIENT = "client"
    ADMIN = "admin"


class AuthError(Exception):
    """A token is missing, malformed, forged or expired. ``code`` is the protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Identity:
    user_id: str
    role: Role
    name: str
    expires_at: int

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


class TokenIssuer:
    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("a token secret is required")
        self._secret = secret

    def mint(self, user_id: str, role: Role | str, ttl: int = 3600, name: str | None = None) -> str:
        role = Role(role)
        if not user_id or len(user_id) > 128:
            raise ValueError("user id must be 1-128 characters")
        if not (0 < ttl <= MAX_TTL):
            raise ValueError(f"ttl must be between 1 and {MAX_TTL} seconds")
        now = int(time.time())
        claims: dict[str, object] = {"sub": user_id, "role": role.value, "iat": now, "exp": now + ttl}
        if name:
            claims["name"] = name
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str | None) -> Identity:
        if not token:
            raise AuthError("auth_required", "a bearer token is required")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["sub", "role", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token_expired", "the token has expired") from None
        except jwt.PyJWTError as exc:
            raise AuthError("token_invalid", f"the token is not valid: {exc}") from None
        try:
            role = Role(claims["role"])
        except ValueError:
            raise AuthError("token_invalid", f"unknown role {claims['role']!r}") from None
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise AuthError("token_invalid", "the token's subject must be a 1-128 character string")
        name = claims.get("name")
        return Identity(
            user_id=sub,
            role=role,
            name=name if isinstance(name, str) and name else sub,
            expires_at=int(claims["exp"]),
        )


def bearer_token(request: web.Request) -> str | None:
    """The token from ``Authorization: Bearer``; browsers' WebSockets may use ``?token=``."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.query.get("token") or None


def authenticate(request: web.Request, issuer: TokenIssuer, *roles: Role) -> Identity:
    """The caller's identity, or an HTTP 401/403 with a JSON error body."""
    try:
        identity = issuer.verify(bearer_token(request))
    except AuthError as exc:
        raise web.HTTPUnauthorized(
            text=_error_json(exc.code, exc.message),
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="expertcall"'},
        ) from None
    if roles and identity.role not in roles and not identity.is_admin:
        raise web.HTTPForbidden(
            text=_error_json("forbidden", f"this needs the role {' or '.join(r.value for r in roles)}"),
            content_type="application/json",
        )
    return identity


def _error_json(code: str, message: str) -> str:
    import json

    return json.dumps({"error": {"code": code, "message": message}})
