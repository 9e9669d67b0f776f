"""``expertcall bench media --record``: what recording costs the media server, per stream.

A media server process (a ``LocalMediaPlane``, driven through ``sfu.api`` messages over a pipe:
the protocol is serialisable for exactly this) takes ``--publishers`` light publishers from this
process, each in a room of its own: pre-encoded 640x480 30 fps VP8 plus 20 ms Opus
(bench/encoded.py, bench/clients.py), so no client encodes. The bench then alternates windows of
``--duration`` seconds, forwarding only, then recording every room, ``--rounds`` times: the
server's CPU time difference between a recording window and the forwarding window just before
it, over the publishers, is the CPU per recorded stream (audio + video of one participant), and
the finished files' bytes over their duration the disk rate. Windows alternate in one run because
this machine's speed drifts by tens of percent within minutes; the JSON gives every round and
the median and range.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from sfu.api import (
    CloseRoom,
    MediaError,
    Message,
    Offer,
    OpenRoom,
    RecordingFile,
    RecordingStopped,
    StartRecording,
    StopRecording,
)

from . import report
from .procfs import process_cpu_seconds

TARGET_PCT_OF_A_CORE = 2.0  # per 640x480 30 fps VP8 + Opus stream (issue 14)
PICTURE_IDS = 1 << 15


def serve(conn: Any, recordings_dir: str) -> None:
    """The media server process: requests in over ``conn``, replies and events out."""
    from signalling.core.event_loop import install_event_loop

    install_event_loop()
    asyncio.run(_serve(conn, recordings_dir))


async def _serve(conn: Any, recordings_dir: str) -> None:
    from sfu.options import MediaOptions
    from sfu.worker import LocalMediaPlane

    plane = LocalMediaPlane(MediaOptions(loopback=True, recordings_dir=recordings_dir))
    loop = asyncio.get_running_loop()
    sending = threading.Lock()

    def send(item: tuple[Any, ...]) -> None:
        with sending:
            conn.send(item)

    plane.on_event(lambda event: send(("event", event.to_dict())))
    while True:
        item = await loop.run_in_executor(None, conn.recv)
        if item is None:
            break
        request_id, data = item
        try:
            reply = await plane.request(Message.from_dict(data))
            send(("reply", request_id, reply.to_dict()))
        except MediaError as exc:
            send(("error", request_id, exc.code, exc.message))
    await plane.close()


class RemotePlane:
    """The ``MediaPlane`` protocol for a media server in another process, over a pipe."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.loop = asyncio.get_running_loop()
        self.events: list[Message] = []
        self._waiting: dict[int, asyncio.Future[Message]] = {}
        self._next = 0
        self._handlers: list[Callable[[Message], None]] = []
        # The reader thread hands items to the loop only while the plane is open: ``close``
        # shuts this door (under the lock) before the loop may close.
        self._open = True
        self._door = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                item = self.conn.recv()
            except (EOFError, OSError):
                self._hand_over(self._lost)
                return
            if not self._hand_over(self._deliver, item):
                return

    def _hand_over(self, callback: Callable[..., None], *args: Any) -> bool:
        with self._door:
            if self._open:
                self.loop.call_soon_threadsafe(callback, *args)
            return self._open

    def _lost(self) -> None:
        """The server process is gone: what waits for it fails instead of waiting forever."""
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(MediaError("closed", "the media server process exited"))
        self._waiting.clear()

    def _deliver(self, item: tuple[Any, ...]) -> None:
        if item[0] == "event":
            event = Message.from_dict(item[1])
            self.events.append(event)
            for handler in self._handlers:
                handler(event)
            return
        future = self._waiting.pop(item[1])
        if item[0] == "reply":
            future.set_result(Message.from_dict(item[2]))
        else:
            future.set_exception(MediaError(item[2], item[3]))

    async def request(self, message: Message) -> Message:
        self._next += 1
        future: asyncio.Future[Message] = self.loop.create_future()
        self._waiting[self._next] = future
        self.conn.send((self._next, message.to_dict()))
        return await future

    def on_event(self, handler: Callable[[Message], None]) -> None:
        self._handlers.append(handler)

    async def close(self, timeout: float = 10.0) -> None:
        """Ask the server to stop and wait (up to ``timeout``) for it to close the pipe, its
        last events delivered; after this the reader thread never touches the event loop."""
        try:
            self.conn.send(None)
        except OSError:  # the server process has exited already
            pass
        await asyncio.to_thread(self._reader.join, timeout)
        with self._door:
            self._open = False


def _spread(values: list[float], digits: int) -> dict[str, Any]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "rounds": [round(v, digits) for v in values]}


async def measure(plane: RemotePlane, pid: int, publishers: int, duration: float, settle: float,
                  rounds: int) -> dict[str, Any]:
    from . import clients, encoded

    video, audio = encoded.video(fps=30), encoded.audio()
    rooms = [f"bench-record-{i}" for i in range(publishers)]
    senders = []
    for room in rooms:
        await plane.request(OpenRoom(room))
        publisher = clients.Publisher("", "", video, audio, [0.0] * PICTURE_IDS)

        async def exchange(offer: str, room: str = room) -> str:
            answer = await plane.request(Offer(room, "publisher", "publish", offer))
            return str(getattr(answer, "sdp"))

        await publisher.negotiate(exchange)
        senders.append(publisher)
    await asyncio.sleep(settle)
    windows: list[dict[str, Any]] = []
    per_stream: list[float] = []
    disk: list[float] = []
    try:
        for round_ in range(1, rounds + 1):
            cpu0, t0 = process_cpu_seconds(pid), time.monotonic()
            await asyncio.sleep(duration)
            forwarding = (process_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
            stopped_before = sum(isinstance(e, RecordingStopped) for e in plane.events)
            files_before = len([e for e in plane.events if isinstance(e, RecordingFile)])
            for room in rooms:
                await plane.request(StartRecording(room))
            await asyncio.sleep(settle)  # the files' headers are written, the keyframes came
            cpu0, t0 = process_cpu_seconds(pid), time.monotonic()
            await asyncio.sleep(duration)
            recording = (process_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
            for room in rooms:
                await plane.request(StopRecording(room, "bench"))
            while sum(isinstance(e, RecordingStopped) for e in plane.events) < stopped_before + publishers:
                await asyncio.sleep(0.1)
            files = [e for e in plane.events if isinstance(e, RecordingFile)][files_before:]
            rate = sum(f.size / f.duration for f in files if f.duration) / max(1, len(files))
            extra = (recording - forwarding) / publishers
            per_stream.append(extra * 100)
            disk.append(rate)
            windows.append({
                "round": round_, "server_cores_forwarding": round(forwarding, 4),
                "server_cores_recording": round(recording, 4),
                "pct_of_a_core_per_recorded_stream": round(extra * 100, 2),
                "files": len(files), "mean_file_seconds": round(
                    statistics.mean(f.duration for f in files), 2) if files else 0,
                "disk_bytes_per_second_per_stream": round(rate),
            })
            click.echo(f"round {round_}: forwarding {forwarding:.3f} cores, recording {recording:.3f} cores: "
                       f"{extra * 100:.2f}% of a core per recorded stream, {rate / 1000:.1f} kB/s to disk",
                       err=True)
    finally:
        for publisher in senders:
            await publisher.stop()
        for room in rooms:
            await plane.request(CloseRoom(room))
    median = statistics.median(per_stream)
    return {
        "windows": windows,
        "pct_of_a_core_per_recorded_stream": _spread(per_stream, 2),
        "disk_bytes_per_second_per_stream": _spread(disk, 0),
        "target_pct_of_a_core": TARGET_PCT_OF_A_CORE,
        "meets_target": median < TARGET_PCT_OF_A_CORE,
    }


def run(publishers: int, duration: float, settle: float, rounds: int, json_path: Path) -> None:
    from . import encoded

    click.echo("preparing pre-encoded media (cached after the first run)...", err=True)
    encoded.video(fps=30)
    encoded.audio()
    directory = Path(tempfile.mkdtemp(prefix="expertcall-bench-record-"))
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    server = ctx.Process(target=serve, args=(theirs, str(directory)), daemon=True)
    server.start()
    theirs.close()  # the child holds its end: its exit is an EOF here
    assert server.pid is not None

    async def main() -> dict[str, Any]:
        plane = RemotePlane(ours)
        try:
            return await measure(plane, server.pid or 0, publishers, duration, settle, rounds)
        finally:
            await plane.close()

    try:
        result = asyncio.run(main())
    finally:
        server.join(10)
        if server.is_alive():
            server.terminate()
            server.join(5)
        shutil.rmtree(directory, ignore_errors=True)
    load = os.getloadavg()
    report.write_json(json_path, {
        "config": {"publishers": publishers, "duration": duration, "settle": settle, "rounds": rounds,
                   "media": "VP8 640x480 30 fps ~500 kbps + Opus 20 ms, pre-encoded"},
        "machine": {"cpus": os.cpu_count(), "loadavg_after": [round(x, 2) for x in load]},
        **result,
    })
    spread = result["pct_of_a_core_per_recorded_stream"]
    click.echo(f"recording costs {spread['median']}% of a core per stream (rounds {spread['min']}.."
               f"{spread['max']}; target < {TARGET_PCT_OF_A_CORE}%), "
               f"{result['disk_bytes_per_second_per_stream']['median'] / 1000:.1f} kB/s to disk per stream; "
               f"wrote {json_path}", err=True)
