"""Bearer tokens: HS256 JWTs with ``sub``, ``role``, ``iat``, ``exp``, ``jti`` and an optional ``name``.

PyJWT does the signature and expiry checks; this module adds the lifetime cap and the revocation
list, maps every failure to the protocol's error codes, and reads a token from the one place REST
clients may put it: the ``Authorization`` header. (Only the ``/ws`` upgrade also takes ``?token=``,
for browsers, whose WebSocket API cannot set headers; see websocket.py.)
"""

from __future__ import annotations

import enum
import time
import uuid
from dataclasses import dataclass

import jwt
from aiohttp import web

from ..core.errors import CodedError, error_body
from .revocation import Revocations

ALGORITHM = "HS256"
# The longest a token may live unless Settings.token_max_ttl says otherwise.
DEFAULT_MAX_TTL = 24 * 3600
# Clock skew tolerated between the minting machine and this one.
LEEWAY = 60
# A compact HS256 JWT of our claims is a few hundred bytes; anything far longer is not one of ours.
MAX_TOKEN_LENGTH = 4096


class Role(str, enum.Enum):
    EXPERT = "expert"
    CLIENT = "client"
    ADMIN = "admin"


class AuthError(CodedError):
    """A token is missing, malformed, forged, expired or revoked. ``code`` is the protocol error code."""


@dataclass(frozen=True)
class Identity:
    user_id: str
    role: Role
    name: str
    expires_at: int
    # The token's jti: what `expertcall token revoke` names.
    token_id: str = ""
    # The identity provider's ``minor`` claim: a minor is never recorded (docs/recording.md).
    minor: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


class TokenIssuer:
    def __init__(self, secret: str, max_ttl: int = DEFAULT_MAX_TTL, revocations: Revocations | None = None) -> None:
        if not secret:
            raise ValueError("a token secret is required")
        if max_ttl < 1:
            raise ValueError("the maximum token lifetime must be at least 1 second")
        self._secret = secret
        self.max_ttl = max_ttl
        self.revocations = revocations if revocations is not None else Revocations()

    def mint(self, user_id: str, role: Role | str, ttl: int = 3600, name: str | None = None,
             minor: bool = False) -> str:
        role = Role(role)
        if not user_id or len(user_id) > 128:
            raise ValueError("user id must be 1-128 characters")
        if not (0 < ttl <= self.max_ttl):
            raise ValueError(f"ttl must be between 1 and {self.max_ttl} seconds")
        now = int(time.time())
        claims: dict[str, object] = {
            "sub": user_id, "role": role.value, "iat": now, "exp": now + ttl, "jti": uuid.uuid4().hex,
        }
        if name:
            claims["name"] = name
        if minor:
            claims["minor"] = True
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def claims(self, token: str | None, verify_exp: bool = True) -> dict[str, object]:
        """The token's claims once its signature, shape and lifetime are checked (not revocation)."""
        if not token:
            raise AuthError("auth_required", "a bearer token is required")
        # A JWT is ASCII (base64url and dots): anything else, a lone surrogate included, is not one.
        if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            raise AuthError("token_invalid", "the token is not valid: not a compact JWT")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                leeway=LEEWAY,
                options={"require": ["sub", "role", "iat", "exp", "jti"], "verify_exp": verify_exp},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token_expired", "the token has expired") from None
        except jwt.PyJWTError as exc:
            raise AuthError("token_invalid", f"the token is not valid: {exc}") from None
        iat, exp, jti = claims["iat"], claims["exp"], claims["jti"]
        if not isinstance(iat, int) or not isinstance(exp, int) or exp - iat > self.max_ttl:
            raise AuthError("token_invalid", f"the token lives longer than this server allows ({self.max_ttl} s)")
        if not isinstance(jti, str) or not (0 < len(jti) <= 64):
            raise AuthError("token_invalid", "the token's jti must be a 1-64 character string")
        return claims

    def verify(self, token: str | None) -> Identity:
        claims = self.claims(token)
        try:
            role = Role(claims["role"])
        except ValueError:
            raise AuthError("token_invalid", f"unknown role {claims['role']!r}") from None
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise AuthError("token_invalid", "the token's subject must be a 1-128 character string")
        jti = str(claims["jti"])
        if self.revocations.is_revoked(jti):
            raise AuthError("token_revoked", "the token has been revoked")
        name = claims.get("name")
        return Identity(
            user_id=sub,
            role=role,
            name=name if isinstance(name, str) and name else sub,
            expires_at=int(claims["exp"]),  # type: ignore[call-overload]
            token_id=jti,
            minor=claims.get("minor") is True,
        )


def bearer_token(request: web.Request) -> str | None:
    """The token from ``Authorization: Bearer``: the only place a REST request may carry it."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def authenticate(request: web.Request, issuer: TokenIssuer, *roles: Role) -> Identity:
    """The caller's identity, or an HTTP 401/403 with a JSON error body."""
    try:
        identity = issuer.verify(bearer_token(request))
    except AuthError as exc:
        raise web.HTTPUnauthorized(
            text=error_body(exc.code, exc.message),
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="expertcall"'},
        ) from None
    if roles and identity.role not in roles and not identity.is_admin:
        raise web.HTTPForbidden(
            text=error_body("forbidden", f"this needs the role {' or '.join(r.value for r in roles)}"),
            content_type="application/json",
        )
    return identity


TOKENS = web.AppKey("tokens", TokenIssuer)
