"""What a recording leaves behind: its index rows, its events, its files and their lifetime.

``RecordingStore`` is the ``calls.recording.RecordingArchive`` of a node: it indexes each finished file
(billing/recordings.py, the database every node reads), writes ``expertcall.recording.started``,
``.stopped``, ``.ready`` (size, duration, sha256) and ``.deleted`` into the metering outbox, so
the Redis stream and the webhooks carry them like metering, and deletes files: an admin's
request, or the retention period (``recording_retention_days``) running out. Each node deletes
only the files it holds; both kinds of deletion are logged and are events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from sfu.api import RecordingFile, RecordingStopped

from aiohttp import web

from ..calls.recording import RECORDING_ARCHIVE
from ..calls.sessions import Session
from ..core import keys
from ..core.tasks import cancel_and_wait
from .outbox import RECORDING_PREFIX, cloud_event
from .recordings import RecordingIndex, RecordingRow, open_index
from .service import METER

log = logging.getLogger(__name__)

SOURCE = "/expertcall/recordings"
MAX_SWEEP_INTERVAL = 3600.0


def file_id(file: str) -> str:
    """A file's id in the API, from its place under the recordings directory
    (``<recording id>/<n>.webm`` -> ``<recording id>-<n>``)."""
    path = Path(file)
    return f"{path.parent.name}-{path.stem}"


class RecordingStore:
    def __init__(self, node_id: str, index: RecordingIndex, directory: Path, retention_days: float,
                 notify: Callable[[], None], clock: Callable[[], float] = time.time) -> None:
        self.node_id = node_id
        self.index = index
        self.directory = directory
        self.retention = retention_days * 86400
        self._notify = notify  # wakes the outbox's relay and webhook sender
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.retention:
            self._task = asyncio.create_task(self._sweep_forever(), name="recording-retention")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    def _event(self, event_id: str, kind: str, subject: str, data: dict[str, Any]) -> dict[str, Any]:
        return cloud_event(event_id, kind, subject, self.clock(), data, SOURCE, RECORDING_PREFIX)

    # --- recording.RecordingArchive -----------------------------------------------------------

    async def started(self, session: Session, recording_id: str, started_at: float) -> None:
        await self.index.events([self._event(f"{recording_id}:started", "started", session.id, {
            "session_id": session.id, "recording_id": recording_id, "expert_id": session.expert_id,
            "client_id": session.client_id, "started_at": started_at, "node": self.node_id,
        })])
        self._notify()

    async def file_ready(self, session: Session | None, event: RecordingFile) -> None:
        row = RecordingRow(
            id=file_id(event.file), session_id=event.room_id, recording_id=event.recording_id,
            participant_id=event.participant_id,
            expert_id=session.expert_id if session else "", client_id=session.client_id if session else "",
            node=self.node_id, file=event.file, size=event.size, duration=event.duration,
            sha256=event.sha256, started_at=event.started_at, ready_at=self.clock(),
            recovered=event.recovered,
        )
        data = row.public()
        for name in ("deleted_at", "deleted_by"):
            del data[name]
        if await self.index.add(row, [self._event(f"{row.id}:ready", "ready", row.session_id, data)]):
            log.info("recording file %s ready: %s, %d bytes, %.1f s%s", row.id, row.participant_id,
                     row.size, row.duration, " (recovered)" if row.recovered else "")
            self._notify()

    async def stopped(self, session: Session | None, event: RecordingStopped) -> None:
        await self.index.events([self._event(f"{event.recording_id}:stopped", "stopped", event.room_id, {
            "session_id": event.room_id, "recording_id": event.recording_id, "reason": event.reason,
            "node": self.node_id,
        })])
        self._notify()

    # --- files --------------------------------------------------------------------------------

    def path_of(self, row: RecordingRow) -> Path | None:
        """The row's file if this node holds it, never anything outside the recordings directory.
        A node holds what it wrote, and what its disk has (a node whose id changed with a
        restart still serves its files)."""
        root = self.directory.resolve()
        path = (root / row.file).resolve()
        if not path.is_relative_to(root) or (row.node != self.node_id and not path.is_file()):
            return None
        return path

    async def delete(self, row: RecordingRow, by: str, reason: str) -> bool:
        """Delete a file this node holds; False when it was deleted already."""
        deleted = await self.index.mark_deleted(row.id, self.clock(), by, [
            self._event(f"{row.id}:deleted", "deleted", row.session_id, {
                "session_id": row.session_id, "recording_id": row.recording_id, "file_id": row.id,
                "reason": reason, "by": by, "node": self.node_id,
            })
        ])
        path = self.path_of(row)
        if path is not None:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # the recording's directory, once it is empty
        if deleted:
            log.info("recording file %s of session %s deleted (%s, by %s)", row.id, row.session_id,
                     reason, by or "the server")
            self._notify()
        return deleted

    async def sweep(self) -> int:
        """Delete the files this node holds that are older than the retention period; how many
        were (another node's are its own to delete)."""
        if not self.retention:
            return 0
        count = 0
        for row in await self.index.older_than(self.clock() - self.retention):
            if self.path_of(row) is not None:
                count += await self.delete(row, "", "retention")
        return count

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("recording retention sweep failed")
            await asyncio.sleep(min(MAX_SWEEP_INTERVAL, self.retention / 10))


def setup(app: web.Application) -> None:
    """Register after billing's service (its outbox wakes the relay and the webhooks)."""
    app.cleanup_ctx.append(archive_ctx)


async def archive_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    index = await open_index(app[keys.DATABASE], app.get(keys.POSTGRES))
    store = RecordingStore(settings.node_id, index, settings.recordings_dir(),
                           settings.recording_retention_days, app[METER].outbox.notify)
    app[RECORDING_STORE] = store
    app[RECORDING_ARCHIVE] = store
    store.start()
    try:
        yield
    finally:
        await store.close()


RECORDING_STORE: web.AppKey[RecordingStore] = web.AppKey("recording_store")
