"""Who may publish into or watch a session's media, asked by WHIP/WHEP (and later by ``/ws``).

``create_app`` grants a session's participants their own session (``wiring.ParticipantGrants``);
``AdminOnlyGrants``, WHIP's default without it, lets only admins in (broadcasts and load tests).
"""

from __future__ import annotations

from typing import Protocol

from .auth import Identity


class SessionGrants(Protocol):
    """Who may publish into or watch a session; the session store implements this."""

    def may_publish(self, identity: Identity, session_id: str) -> bool: ...

    def may_view(self, identity: Identity, session_id: str) -> bool: ...


class AdminOnlyGrants:
    """Only admins (broadcasts, load tests): WHIP's default when no session store is wired in."""

    def may_publish(self, identity: Identity, session_id: str) -> bool:
        return identity.is_admin

    def may_view(self, identity: Identity, session_id: str) -> bool:
        return identity.is_admin
