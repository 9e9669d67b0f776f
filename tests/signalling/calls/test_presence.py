from __future__ import annotations

from pathlib import Path

import pytest

from signalling.backends.memory import MemoryBackend
from signalling.calls.presence import Availability, Presence
from signalling.calls.sessions import SessionManager, SqliteSessionStore, State
from signalling.core.database import Database


async def test_busy_follows_the_session_and_choices_are_checked(tmp_path: Path) -> None:
    backend = MemoryBackend("n1")
    sessions = SessionManager(backend, SqliteSessionStore(Database.in_dir(tmp_path)))
    presence = Presence(backend, sessions)
    assert await presence.availability("erin") is Availability.OFFLINE
    await presence.choose("erin", Availability.ONLINE)
    assert await presence.availability("erin") is Availability.ONLINE
    with pytest.raises(ValueError):
        await presence.choose("erin", Availability.BUSY)

    session = await sessions.create("erin", "alice")
    session = await sessions.transition(session, State.RINGING, "rung")
    await backend.set_user_session("erin", session.id)
    assert await presence.availability("erin") is Availability.ONLINE  # ringing is not busy yet
    session = await sessions.transition(session, State.ACCEPTED, "accepted")
    assert await presence.availability("erin") is Availability.BUSY
    await presence.choose("erin", Availability.AWAY)
    assert await presence.availability("erin") is Availability.AWAY
    await presence.choose("erin", None)
    assert await presence.availability("erin") is Availability.OFFLINE
