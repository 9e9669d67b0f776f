"""The session state machine: allowed transitions, persistence, listeners and recovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from signalling.backends.memory import MemoryBackend
from signalling.calls.session_store_postgres import PostgresSessionStore
from signalling.calls.sessions import (
    TRANSITIONS,
    InvalidTransition,
    Session,
    SessionManager,
    SqliteSessionStore,
    State,
    Transition,
)
from signalling.core.database import Database
from signalling.core.postgres import connect


def manager(tmp_path: Path, clock: list[float]) -> SessionManager:
    return SessionManager(MemoryBackend("n1"), SqliteSessionStore(Database.in_dir(tmp_path)), lambda: clock[0])


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
    history = await sessions.store.history(s.id)
    assert [h[1] for h in history] == ["requested", "ringing", "accepted", "connecting", "live", "paused", "live", "ended"]
    assert await sessions.store.get(s.id) == s and s.version == 7


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


async def test_a_critical_listener_is_retried_then_fails_the_transition_loudly(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Billing listens critically: a failure is never swallowed (a lost ``ended`` would leave a
    meter charging). It is retried; if it fails every time, the transition raises, after every
    other listener has heard it."""
    import signalling.calls.sessions as sessions_module

    monkeypatch.setattr(sessions_module, "CRITICAL_RETRY_DELAY", 0.0)
    mgr = manager(tmp_path, [100.0])
    failures = {"flaky": 2, "broken": 10**6}
    heard: dict[str, list[State]] = {"flaky": [], "broken": [], "plain": []}

    def listener(name: str):  # type: ignore[no-untyped-def]
        def hear(t: Transition) -> None:
            if failures.get(name, 0) > 0:
                failures[name] -= 1
                raise RuntimeError(f"{name} failed")
            heard[name].append(t.state)
        return hear

    mgr.add_listener(listener("flaky"), critical=True)
    mgr.add_listener(listener("plain"))
    session = await mgr.create("e", "c")
    assert heard["flaky"] == [State.REQUESTED] and failures["flaky"] == 0  # third attempt

    mgr.add_listener(listener("broken"), critical=True)
    with pytest.raises(sessions_module.ListenerFailed):
        await mgr.transition(session, State.ENDED, "cancelled")
    # The transition itself is committed and the other listeners heard it.
    assert (await mgr.get(session.id)).state is State.ENDED  # type: ignore[union-attr]
    assert heard["plain"] == [State.REQUESTED, State.ENDED] and heard["flaky"][-1] is State.ENDED
    assert failures["broken"] == 10**6 - sessions_module.CRITICAL_ATTEMPTS


async def test_nodes_recover_from_the_shared_durable_copy(postgres_url) -> None:  # type: ignore[no-untyped-def]
    """With PostgreSQL every node writes the same durable copy: a node that never saw a session
    restores it when the backend lost it (here: a fresh memory backend)."""
    pool = await connect(postgres_url)
    try:
        clock = [0.0]
        one = SessionManager(MemoryBackend("n1"), await PostgresSessionStore.open(pool), lambda: clock[0])
        waiting = await one.create("erin", "alice")
        clock[0] = 1.0  # recovered sessions come oldest first
        running = await one.create("ezra", "bob")
        running = await one.transition(running, State.RINGING, "rung")
        running = await one.transition(running, State.ACCEPTED, "accepted", media_node="n1")
        done = await one.create("erin", "carol")
        await one.transition(done, State.ENDED, "cancelled")
        other = SessionManager(MemoryBackend("n2"), await PostgresSessionStore.open(pool), lambda: clock[0])
        assert [s.id for s in await other.recover()] == [waiting.id, running.id]
        assert await other.backend.queue("erin") == [waiting.id]
        assert (await other.get(done.id)).state is State.ENDED  # type: ignore[union-attr]
        assert [h[1] for h in await other.store.history(running.id)] == ["requested", "ringing", "accepted"]
    finally:
        await pool.close()
