"""The recording index's contract, on both backends: rows and their events in one transaction,
replays harmless, deletion once."""

from __future__ import annotations

from typing import Any, AsyncIterator

import pytest

from signalling.billing.outbox import RECORDING_PREFIX, cloud_event
from signalling.billing.recordings import (
    PostgresRecordingIndex,
    RecordingIndex,
    RecordingRow,
    SqliteRecordingIndex,
)
from signalling.billing.store import BillingStore
from signalling.billing.store_postgres import PostgresBillingStore
from signalling.billing.store_sqlite import SqliteBillingStore



@pytest.fixture
async def index(billing_store: BillingStore) -> AsyncIterator[RecordingIndex]:
    if isinstance(billing_store, SqliteBillingStore):
        yield SqliteRecordingIndex(billing_store.db)
    else:
        assert isinstance(billing_store, PostgresBillingStore)
        yield await PostgresRecordingIndex.open(billing_store.pool)


def row(file_id: str, session_id: str = "s1", ready_at: float = 100.0, **kw: Any) -> RecordingRow:
    fields: dict[str, Any] = dict(
        id=file_id, session_id=session_id, recording_id=file_id.split("-")[0], participant_id="alice",
        expert_id="erin", client_id="alice", node="n1", file=f"{file_id.split('-')[0]}/001.webm",
        size=1234, duration=4.5, sha256="ab" * 32, started_at=ready_at - 5, ready_at=ready_at,
    )
    return RecordingRow(**(fields | kw))


def event(event_id: str, kind: str, subject: str = "s1") -> dict[str, Any]:
    return cloud_event(event_id, kind, subject, 100.0, {"x": 1}, "/t", RECORDING_PREFIX)


async def test_rows_and_their_events(index: RecordingIndex, billing_store: BillingStore) -> None:
    assert await index.add(row("r1-001"), [event("r1-001:ready", "ready")])
    assert not await index.add(row("r1-001", size=99), [event("r1-001:ready", "ready")])  # a replay
    assert await index.add(row("r1-002", recovered=True), [event("r1-002:ready", "ready")])
    assert await index.add(row("r2-001", session_id="s2"), [event("r2-001:ready", "ready", "s2")])
    await index.events([event("r1:stopped", "stopped"), event("r1:stopped", "stopped")])
    assert [r.id for r in await index.of_session("s1")] == ["r1-001", "r1-002"]
    stored = await index.get("r1-002")
    assert stored == row("r1-002", recovered=True)
    assert stored is not None and stored.public()["sha256"] == "ab" * 32 and "file" not in stored.public()
    assert await index.get("nope") is None
    rows = await billing_store.events_after(0, 100)
    assert [(r.id, r.type) for r in rows] == [
        ("r1-001:ready", "expertcall.recording.ready"), ("r1-002:ready", "expertcall.recording.ready"),
        ("r2-001:ready", "expertcall.recording.ready"), ("r1:stopped", "expertcall.recording.stopped")]


async def test_age_and_deletion(index: RecordingIndex, billing_store: BillingStore) -> None:
    await index.add(row("r1-001", ready_at=100.0), [])
    await index.add(row("r2-001", ready_at=200.0), [])
    assert [r.id for r in await index.older_than(150.0)] == ["r1-001"]
    assert await index.mark_deleted("r1-001", 300.0, "root", [event("r1-001:deleted", "deleted")])
    assert not await index.mark_deleted("r1-001", 301.0, "root", [event("r1-001:deleted2", "deleted")])
    assert not await index.mark_deleted("unknown", 301.0, "root", [])
    gone = await index.get("r1-001")
    assert gone is not None and (gone.deleted_at, gone.deleted_by) == (300.0, "root")
    assert await index.older_than(150.0) == []
    assert [r.id for r in await index.of_session("s1")] == ["r2-001"]
    assert [r.id for r in await billing_store.events_after(0, 100)] == ["r1-001:deleted"]
