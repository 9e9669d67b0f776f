"""Who may publish into or watch a session's media, asked by WHIP/WHEP (and later by ``/ws``).

The session store knows the participants of each session and implements ``SessionGrants``; until
it is wired in, ``AdminOnlyGrants`` lets only admins in (broadcasts and load tests).
"""

from __future__ import annotations

from typing import Protocol

from .auth import Identity


class SessionGrants(Protocol):
    """Who may publish into or watch a session; the session store implements this."""

    def may_publish(self, identity: Identity, session_id: str) -> bool: ...

    def may_view(self, identity: Identity, session_id: str) -> bool: ...


class AdminOnlyGrants:
    """The default until a session store is wired in: only admins (broadcasts, load tests)."""

    def may_publish(self, identity: Identity, session_id: str) -> bool:
        return identity.is_admin

    def may_view(self, identity: Identity, session_id: str) -> bool:
        return identity.is_admin
