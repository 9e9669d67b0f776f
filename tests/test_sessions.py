"""The session state machine: allowed transitions, persistence, listeners and recovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from signalling.backends.memory import MemoryBackend
from signalling.database import Database
from signalling.sessions import (
    TRANSITIONS,
    InvalidTransition,
    Session,
    SessionManager,
    SessionStore,
    State,
    Transition,
)


def manager(tmp_path: Path, clock: list[float]) -> SessionManager:
    return SessionManager(MemoryBackend("n1"), SessionStore(Database.in_dir(tmp_path)), lambda: clock[0])


def test_the_transition_table_is_the_documented_machine() -> None:
    assert TRANSITIONS[State.REQUESTED] == {State.RINGING, State.ACCEPTED, State.ENDED}
    assert TRANSITIONS[State.RINGING] == {State.REQUESTED, State.ACCEPTED, State.ENDED}
    assert TRANSITIONS[State.ACCEPTED] == {State.CONNECTING, State.ENDED}
    assert TRANSITIONS[State.CONNECTING] == {State.LIVE, State.ENDED}
    assert TRANSITIONS[State.LIVE] == {State.PAUSED, State.ENDED}
    assert TRANSITIONS[State.PAUSED] == {State.LIVE, State.ENDED}
    assert TRANSITIONS[State.ENDED] == set()


def test_a_session_checks_itself() -> None:
    with pytest.raises(ValueError):
        Session(id="s", expert_id="e", client_id="e", state=State.REQUESTED, created_at=0, updated_at=0)
    with pytest.raises(ValueError):
        Session(id="s", expert_id="e", client_id="c", state="nonsense", created_at=0, updated_at=0)  # type: ignore[arg-type]


async def test_transitions_are_validated_persisted_and_heard(tmp_path: Path) -> None:
    clock = [100.0]
    sessions = manager(tmp_path, clock)
    heard: list[Transition] = []
    sessions.add_listener(heard.append)

    def broken(t: Transition) -> None:
        raise RuntimeError("a listener bug")

    sessions.add_listener(broken)  # must not undo or block anything
    s = await sessions.create("erin", "alice", client_name="Alice")
    with pytest.raises(InvalidTransition):
        await sessions.transition(s, State.LIVE, "too soon")
    for state, reason in [
        (State.RINGING, "rung"),
        (State.ACCEPTED, "accepted"),
        (State.CONNECTING, "media_started"),
        (State.LIVE, "media_flowing"),
        (State.PAUSED, "media_stopped:alice"),
        (State.LIVE, "media_flowing"),
        (State.ENDED, "hangup"),
    ]:
        clock[0] += 1
        s = await sessions.transition(s, state, reason)
    with pytest.raises(InvalidTransition):
        await sessions.transition(s, State.LIVE, "after the end")

    assert [(t.previous, t.state) for t in heard][:2] == [(None, State.REQUESTED), (State.REQUESTED, State.RINGING)]
    billing_view = [(t.session_id, t.state.value, t.at, t.expert_id, t.client_id) for t in heard if t.state in (State.LIVE, State.PAUSED, State.ENDED)]
    assert billing_view == [
        (s.id, "live", 104.0, "erin", "alice"),
        (s.id, "paused", 105.0, "erin", "alice"),
        (s.id, "live", 106.0, "erin", "alice"),
        (s.id, "ended", 107.0, "erin", "alice"),
    ]
    history = sessions.store.history(s.id)
    assert [h[1] for h in history] == ["requested", "ringing", "accepted", "connecting", "live", "paused", "live", "ended"]
    assert sessions.store.get(s.id) == s and s.version == 7


async def test_recover_restores_what_the_backend_lost(tmp_path: Path) -> None:
    clock = [0.0]
    first = manager(tmp_path, clock)
    waiting = await first.create("erin", "alice")
    clock[0] = 1.0
    running = await first.create("ezra", "bob")
    running = await first.transition(running, State.RINGING, "rung")
    running = await first.transition(running, State.ACCEPTED, "accepted")
    done = await first.create("erin", "carol")
    await first.transition(done, State.ENDED, "cancelled")

    second = manager(tmp_path, clock)  # a restart: a fresh memory backend, the same SQLite file
    recovered = await second.recover()
    assert [s.id for s in recovered] == [waiting.id, running.id]
    assert await second.backend.queue("erin") == [waiting.id]
    assert await second.backend.user_session("alice") == waiting.id
    assert await second.backend.user_session("ezra") == running.id
    assert (await second.get(done.id)).state is State.ENDED  # type: ignore[union-attr]
