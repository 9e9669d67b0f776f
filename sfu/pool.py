"""WorkerPool: the MediaPlane protocol served by SFU worker processes, one per core.

The control plane holds a pool as it would hold a LocalMediaPlane: the same requests, the same
events. Each worker (sfu/worker_process.py) is a process with its own event loop and rooms; the
pool talks to it over a Unix socket pair (sfu/channel.py: msgpack frames, request ids for replies,
events pushed).

- Placement: a room opens on the least loaded worker, by the load each one reports every second
  (its CPU first, in steps of ``CPU_STEP`` of a core; then its streams, counting a room placed
  since its last report as ``ROOM_STREAMS``; then packets per second), and every later request for
  the room goes to that worker.
- A worker that dies (or breaks the channel's rules, or sends nothing for ``stall_seconds``) is
  killed if need be and started again; its rooms open again at once on the least loaded worker
  that is up (the new one, if no other is), and each emits ``RoomRestarted``: the control plane
  sees what it sees when a node hosting rooms dies, and its participants start media again.
  Requests that were in flight get ``MediaError("media_restarted")``.
- ``close`` asks every worker to close its rooms (their events still reach the handlers) and
  waits for it to exit, killing one that does not within ``CLOSE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from sfu.api import (
    REQUESTS,
    CloseRoom,
    EventHandler,
    MediaError,
    Message,
    Ok,
    OpenRoom,
    RoomClosed,
    RoomRestarted,
)
from sfu.channel import Channel, ChannelClosed, ChannelError, message_of
from sfu.events import EventFanout
from sfu.options import MediaOptions

logger = logging.getLogger(__name__)

START_SECONDS = 60.0  # a worker imports aiortc and PyAV before it says ready: slow on a busy machine
STALL_SECONDS = 10.0  # no frame for this long from a worker that is up: it is hung
CLOSE_SECONDS = 10.0
CPU_STEP = 0.1
ROOM_STREAMS = 8  # a two-party call: two participants publishing audio and video, each watching the other
RESTART_BACKOFF = (0.0, 0.5, 1.0, 2.0, 5.0)  # by crashes in a row (a worker that lived a minute resets it)


@dataclass
class WorkerState:
    """One worker as the pool sees it (also what /metrics and /readyz show)."""

    index: int
    pid: int = 0
    up: bool = False
    restarts: int = 0
    rooms: set[str] = field(default_factory=set)
    streams: int = 0
    packets_per_second: float = 0.0
    cpu: float = 0.0
    dropped: int = 0  # datagrams its shared media sockets took from nobody they knew (sfu/udp_mux.py)
    placed: int = 0  # rooms placed here since its last load report
    draining: bool = False  # an SFU node taking no new rooms (its load frames say so)
    crashes: int = 0  # deaths in a row, soon after starting
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    channel: Channel | None = field(default=None, repr=False)
    pending: dict[int, asyncio.Future[Message]] = field(default_factory=dict, repr=False)
    reader: asyncio.Task[None] | None = field(default=None, repr=False)
    last_frame: float = 0.0
    started_at: float = 0.0

    def placement_key(self) -> tuple[int, int, float, int]:
        return (round(self.cpu / CPU_STEP), self.streams + ROOM_STREAMS * self.placed,
                self.packets_per_second, len(self.rooms))


class WorkerPool:
    # Why a member's rooms open again elsewhere (RoomRestarted's reason).
    LOST_REASON = "worker_lost"
    # How long a room waits for a member to be up before it is refused (None: as long as it takes).
    up_timeout: float | None = None

    def __init__(self, options: MediaOptions, workers: int, *, stall_seconds: float = STALL_SECONDS) -> None:
        if workers < 1:
            raise MediaError("bad_options", "a worker pool needs at least one worker")
        self.options = options
        self.stall_seconds = stall_seconds
        self.workers = [WorkerState(index) for index in range(workers)]
        self.placement: dict[str, WorkerState] = {}  # room id -> its worker
        self._app_data: dict[str, dict[str, Any]] = {}
        self._moving: dict[str, asyncio.Event] = {}  # rooms being opened again after their worker died
        self._events = EventFanout()
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._up = asyncio.Event()  # some worker is up (rooms can be placed)
        self._closed = False
        self._stopping = False  # the node is shutting down (see shutting_down)

    # --- MediaPlane ------------------------------------------------------------------------------

    def on_event(self, handler: EventHandler) -> None:
        self._events.add(handler)

    async def start(self) -> None:
        """Start every worker; raises ``MediaError`` (and stops those that came up) if one does not."""
        outcomes = await asyncio.gather(*(self._spawn(worker) for worker in self.workers), return_exceptions=True)
        failed = [(w, e) for w, e in zip(self.workers, outcomes) if isinstance(e, BaseException)]
        if failed:
            await self.close()
            worker, exc = failed[0]
            why = exc.message if isinstance(exc, MediaError) else repr(exc)
            raise MediaError("media_unavailable", f"sfu worker {worker.index} did not start: {why}") from exc
        self._task(self._watch(), "sfu-pool-watch")

    async def request(self, message: Message) -> Message:
        if self._closed:
            raise MediaError("closed", "the media plane is shut down")
        if type(message) not in REQUESTS:
            raise MediaError("bad_message", f"{type(message).__name__} is not a request")
        room_id = getattr(message, "room_id", None)
        if room_id is None:
            # For the plane as a whole (RecoverRecordings, once at start-up): one worker serves
            # it, as two would race over the same files.
            return await self._send(await self._least_loaded(), message)
        if not isinstance(room_id, str) or not room_id:
            raise MediaError("bad_room", "room_id must be a non-empty string")
        moving = self._moving.get(room_id)
        if moving is not None:
            await moving.wait()
        if isinstance(message, OpenRoom):
            return await self._open_room(message)
        if isinstance(message, CloseRoom):
            worker = self.placement.pop(room_id, None)
            self._app_data.pop(room_id, None)
            if worker is None:
                return Ok()
            worker.rooms.discard(room_id)
            return await self._send(worker, message)
        worker = self.placement.get(room_id)
        if worker is None:
            raise MediaError("unknown_room", f"no open room {room_id!r}")
        return await self._send(worker, message)

    def shutting_down(self) -> None:
        """The node is shutting down (its sockets close next, then the plane): nothing waits for a
        member to come up any more, and a member lost now takes its rooms with it, no re-placement
        and no ``RoomClosed`` (its rooms go with this node; another node adopting a session opens
        its room again). Rooms on members that are up are served to the end."""
        self._stopping = True
        self._up.set()  # whoever waits for a member hears "closed"

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._up.set()  # whoever waits for a worker to place a room on hears "closed"
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(self._stop(worker) for worker in self.workers))
        self.placement.clear()
        self._events.close()

    # --- what operators see ------------------------------------------------------------------------

    def health(self) -> list[WorkerState]:
        return list(self.workers)

    # --- rooms -----------------------------------------------------------------------------------

    async def _open_room(self, message: OpenRoom) -> Message:
        worker = self.placement.get(message.room_id)
        if worker is None:
            worker = await self._least_loaded()
            if message.room_id in self.placement:  # another request placed it meanwhile
                worker = self.placement[message.room_id]
            else:
                self._place(message.room_id, worker, message.app_data)
        try:
            return await self._send(worker, message)
        except MediaError:
            if self.placement.get(message.room_id) is worker and message.room_id not in self._moving:
                self._unplace(message.room_id)
            raise

    def _place(self, room_id: str, worker: WorkerState, app_data: Any) -> None:
        self.placement[room_id] = worker
        self._app_data[room_id] = dict(app_data) if isinstance(app_data, dict) else {}
        worker.rooms.add(room_id)
        worker.placed += 1

    def _unplace(self, room_id: str) -> None:
        worker = self.placement.pop(room_id, None)
        self._app_data.pop(room_id, None)
        if worker is not None:
            worker.rooms.discard(room_id)

    async def _least_loaded(self) -> WorkerState:
        loop = asyncio.get_running_loop()
        deadline = None if self.up_timeout is None else loop.time() + self.up_timeout
        while True:
            up = [w for w in self.workers if w.up and not w.draining]
            if up:
                return min(up, key=WorkerState.placement_key)
            if self._closed or self._stopping:
                raise MediaError("closed", "the media plane is shut down")
            self._up.clear()
            try:
                await asyncio.wait_for(self._up.wait(), None if deadline is None else max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise MediaError("media_unavailable", "no media server is up to host the room") from None

    async def _send(self, worker: WorkerState, message: Message) -> Message:
        if not worker.up or worker.channel is None:
            raise MediaError("media_restarted", "the media worker hosting this room stopped; start media again")
        request_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        worker.pending[request_id] = future
        try:
            worker.channel.send({"t": "request", "id": request_id, "message": message.to_dict()})
            await worker.channel.drain()
            return await future
        except ChannelClosed:
            raise MediaError("media_restarted", "the media worker hosting this room stopped; start media again") from None
        except ChannelError as exc:  # too large to carry
            raise MediaError("bad_message", str(exc)) from None
        finally:
            worker.pending.pop(request_id, None)

    # --- workers ---------------------------------------------------------------------------------

    async def _spawn(self, worker: WorkerState) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            worker.process = subprocess.Popen(
                [sys.executable, "-m", "sfu.worker_process", str(worker.index), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours)
            channel = Channel(reader, writer)
            channel.send({"t": "hello", "options": self.options.to_dict(),
                          "log_level": logging.getLogger().getEffectiveLevel()})
            ready = await asyncio.wait_for(channel.receive(), START_SECONDS)
            if ready["t"] == "refused":  # it cannot serve (its media port is taken): it exits
                raise MediaError("media_unavailable", ready["reason"])
            if ready["t"] != "ready":
                raise ChannelError(f"expected ready, got {ready['t']!r}")
        except BaseException:
            worker.process.kill()
            ours.close()
            raise
        self._attach(worker, channel, ready["pid"])
        logger.info("sfu worker %d up (pid %d)", worker.index, worker.pid)

    def _attach(self, worker: WorkerState, channel: Channel, pid: int) -> None:
        """A member that said it is ready: rooms may be placed on it; its frames are read."""
        worker.channel = channel
        worker.pid = pid
        worker.up = True
        worker.started_at = worker.last_frame = time.monotonic()
        worker.cpu = worker.packets_per_second = 0.0
        worker.streams = worker.placed = 0
        worker.draining = False
        self._up.set()
        worker.reader = asyncio.create_task(self._read(worker, channel), name=f"sfu-worker-{worker.index}")
        worker.reader.add_done_callback(self._task_done)

    async def _read(self, worker: WorkerState, channel: Channel) -> None:
        try:
            while True:
                frame = await channel.receive()
                worker.last_frame = time.monotonic()
                kind = frame["t"]
                if kind == "reply":
                    self._resolve(worker, frame["id"], message_of(frame))
                elif kind == "error":
                    self._resolve(worker, frame["id"], MediaError(frame["code"], frame["message"]))
                elif kind == "event":
                    self._event(worker, message_of(frame))
                elif kind == "load":
                    worker.streams, worker.packets_per_second = frame["streams"], float(frame["packets_per_second"])
                    worker.cpu, worker.placed, worker.dropped = float(frame["cpu"]), 0, frame["dropped"]
                    worker.draining = frame["draining"]
                elif kind == "closed":
                    return
                else:
                    raise ChannelError(f"a worker does not send {kind!r} frames")
        except ChannelClosed:
            reason = "exited"
        except ChannelError as exc:
            logger.error("sfu worker %d broke the channel: %s; killing it", worker.index, exc)
            reason = "bad_frame"
        if not self._closed:
            await self._lost(worker, reason)

    def _resolve(self, worker: WorkerState, request_id: int, outcome: Message | MediaError) -> None:
        future = worker.pending.get(request_id)
        if future is None or future.done():
            return
        if isinstance(outcome, MediaError):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def _event(self, worker: WorkerState, event: Message) -> None:
        if isinstance(event, RoomClosed) and self.placement.get(event.room_id) is worker:
            self._unplace(event.room_id)
        self._events.emit(event)

    async def _watch(self) -> None:
        """Kill a worker that stopped talking (hung); its death then takes the usual path."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for worker in list(self.workers):
                if worker.up and now - worker.last_frame > self.stall_seconds:
                    self._hung(worker)

    def _hung(self, worker: WorkerState) -> None:
        """Kill a worker that stopped talking; its death then takes the usual path."""
        if worker.process is not None:
            logger.error("sfu worker %d sent nothing for %.0f s; killing it", worker.index, self.stall_seconds)
            worker.process.kill()

    async def _reap(self, worker: WorkerState, reason: str) -> None:
        """A dead worker's process is gone for good (killed if need be), and logged."""
        process = worker.process
        if process is not None:
            if process.poll() is None:
                process.kill()
            code = await asyncio.get_running_loop().run_in_executor(None, process.wait)
            logger.error("sfu worker %d (pid %d) %s with status %s; restarting it and re-placing %d rooms",
                         worker.index, worker.pid, reason, code, len(worker.rooms))

    def _revive(self, worker: WorkerState) -> None:
        """Start a dead worker again (in the background)."""
        self._task(self._restart(worker), f"sfu-worker-{worker.index}-restart")

    async def _lost(self, worker: WorkerState, reason: str) -> None:
        worker.up = False
        channel = worker.channel
        worker.channel = None
        if channel is not None:
            channel.abort()  # nothing more is going there
        await self._reap(worker, reason)
        for future in worker.pending.values():
            if not future.done():
                future.set_exception(
                    MediaError("media_restarted", "the media worker hosting this room stopped; start media again"))
        worker.pending.clear()
        lived = time.monotonic() - worker.started_at
        worker.crashes = 0 if lived > 60 else worker.crashes + 1
        rooms = sorted(worker.rooms)
        worker.rooms = set()
        if self._stopping:
            for room_id in rooms:
                self._unplace(room_id)
            return
        for room_id in rooms:
            self.placement.pop(room_id, None)
            self._moving[room_id] = asyncio.Event()
        self._revive(worker)
        await asyncio.gather(*(self._replace(room_id) for room_id in rooms))

    async def _restart(self, worker: WorkerState) -> None:
        while not self._closed:
            await asyncio.sleep(RESTART_BACKOFF[min(worker.crashes, len(RESTART_BACKOFF) - 1)])
            try:
                await self._spawn(worker)
            except Exception as exc:
                worker.crashes += 1
                logger.error("sfu worker %d did not start again: %r", worker.index, exc)
                continue
            worker.restarts += 1
            return

    async def _replace(self, room_id: str) -> None:
        """Open a dead worker's room again on the least loaded worker; the control plane hears
        ``RoomRestarted`` (or ``RoomClosed`` when even that fails)."""
        moving = self._moving[room_id]
        app_data = self._app_data.get(room_id, {})
        try:
            worker = await self._least_loaded()
            self._place(room_id, worker, app_data)
            await self._send(worker, OpenRoom(room_id, app_data))
        except MediaError as exc:
            logger.error("room %s could not open again: %s %s", room_id, exc.code, exc.message)
            self._unplace(room_id)
            # Shutting down, the room goes with this node (shutting_down), its session lives on.
            event: Message | None = None if self._stopping else RoomClosed(room_id, self.LOST_REASON)
        else:
            event = RoomRestarted(room_id, self.LOST_REASON)
        finally:
            del self._moving[room_id]
            moving.set()
        if event is not None:
            self._events.emit(event)

    async def _stop(self, worker: WorkerState) -> None:
        process, channel = worker.process, worker.channel
        if process is None:
            return
        if channel is not None and worker.up:
            try:
                channel.send({"t": "shutdown"})
                await channel.drain()
            except ChannelClosed:
                pass
        worker.up = False
        loop = asyncio.get_running_loop()
        try:
            if worker.reader is not None:  # it hands on the last events (rooms closing) until "closed"
                await asyncio.wait_for(asyncio.shield(worker.reader), CLOSE_SECONDS)
            await asyncio.wait_for(loop.run_in_executor(None, process.wait), CLOSE_SECONDS)
        except asyncio.TimeoutError:
            logger.error("sfu worker %d did not stop within %.0f s; killing it", worker.index, CLOSE_SECONDS)
            process.send_signal(signal.SIGKILL)
            await loop.run_in_executor(None, process.wait)
        finally:
            if channel is not None:
                channel.close()
        for future in worker.pending.values():
            if not future.done():
                future.set_exception(MediaError("closed", "the media plane is shut down"))

    def _task(self, coroutine: Any, name: str) -> None:
        task = asyncio.ensure_future(coroutine)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)  # type: ignore[arg-type]
        if not task.cancelled() and task.exception() is not None:
            logger.error("sfu pool task failed", exc_info=task.exception())
