"""Resume tokens: proof that a new socket continues a given user's earlier connection.

A token names the user and the connection it was issued on, signed (HMAC-SHA256) with a key
derived from the server secret, so any node can check it without shared state. Whether the resume
came in time is the backend's business (``note_dropped``/``take_dropped``), not the token's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

MAX_AGE = 24 * 3600


@dataclass(frozen=True)
class ResumeClaim:
    user_id: str
    conn_id: str
    issued_at: float


class ResumeTokens:
    def __init__(self, secret: str) -> None:
        self._key = hmac.new(secret.encode(), b"expertcall resume token", hashlib.sha256).digest()

    def issue(self, user_id: str, conn_id: str, now: float | None = None) -> str:
        payload = json.dumps({"u": user_id, "c": conn_id, "t": int(now or time.time())}, separators=(",", ":"))
        body = _b64(payload.encode())
        return f"{body}.{_b64(self._sign(body))}"

    def verify(self, token: str, now: float | None = None) -> ResumeClaim | None:
        """The claim, or None when the token is malformed, forged or older than ``MAX_AGE``."""
        body, _, signature = token.partition(".")
        try:
            if not hmac.compare_digest(_unb64(signature), self._sign(body)):
                return None
            data = json.loads(_unb64(body))
            claim = ResumeClaim(str(data["u"]), str(data["c"]), float(data["t"]))
        except (ValueError, KeyError, TypeError):
            return None
        if (now or time.time()) - claim.issued_at > MAX_AGE:
            return None
        return claim

    def _sign(self, body: str) -> bytes:
        return hmac.new(self._key, body.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
