"""Who may publish into or watch a session's media, asked by WHIP/WHEP (and later by ``/ws``).

``AdminOnlyGrants``, what ``create_app`` uses, lets only admins in (broadcasts and load tests).
A paid session's participants are refused: their media is metered from their ``/ws`` transports
(both sides flowing makes the session live), and a WHIP publisher or WHEP viewer in the same room
would be a second, unmetered path - a client could stop its ``/ws`` media, pausing the meter,
and go on through WHIP/WHEP. Admins are the operator, not a party to the call.
"""

from __future__ import annotations

from typing import Protocol

from ..auth.tokens import Identity


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
