"""Expert availability: what the expert chose (online, away, offline) plus ``busy`` during a session.

The choice lives in the backend so that every node agrees; ``busy`` is derived from the expert's
session, so it can never disagree with the state machine.
"""

from __future__ import annotations

import enum

from ..backends.base import Backend
from .sessions import IN_PROGRESS, SessionManager


class Availability(str, enum.Enum):
    ONLINE = "online"
    BUSY = "busy"
    AWAY = "away"
    OFFLINE = "offline"


# What an expert may choose with presence.set; busy is the server's to set.
CHOOSABLE = frozenset({Availability.ONLINE, Availability.AWAY, Availability.OFFLINE})


class Presence:
    def __init__(self, backend: Backend, sessions: SessionManager) -> None:
        self.backend = backend
        self.sessions = sessions

    async def choose(self, user_id: str, status: Availability | None) -> None:
        """Record an expert's choice; None forgets it (the expert has gone)."""
        if status is not None and status not in CHOOSABLE:
            raise ValueError(f"{status.value} cannot be chosen")
        await self.backend.set_status(user_id, None if status is None else status.value)

    async def chosen(self, user_id: str) -> Availability | None:
        raw = await self.backend.get_status(user_id)
        return None if raw is None else Availability(raw)

    async def availability(self, user_id: str) -> Availability:
        """The availability shown to clients and used for ringing."""
        chosen = await self.chosen(user_id)
        if chosen is None or chosen is Availability.OFFLINE:
            return Availability.OFFLINE
        if chosen is Availability.AWAY:
            return Availability.AWAY
        session_id = await self.backend.user_session(user_id)
        if session_id is not None:
            session = await self.sessions.get(session_id)
            if session is not None and session.expert_id == user_id and session.state in IN_PROGRESS:
                return Availability.BUSY
        return Availability.ONLINE
