"""One SFU worker process: ``python -m sfu.worker_process INDEX FD``, started by sfu.pool.WorkerPool
(the index names it in ``ps`` and in its log lines).

It runs its own uvloop event loop and LocalMediaPlane (with aiortc's hooks and the GC policy, as
the in-process plane installs them) and serves the pool over the socket ``FD`` (sfu/channel.py):
requests run concurrently, as they do in process, events go back as they happen, and a load
report (rooms, streams, packets per second, CPU) every ``LOAD_INTERVAL`` lets the pool place new
rooms.

It ignores SIGINT and SIGTERM: a terminal's Ctrl-C or a service manager signals the whole process
group, and the pool, shutting down gracefully, closes its workers last, after in-flight billing.
It exits when the pool says ``shutdown`` or when the channel ends (the pool is gone).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from sfu.api import MediaError, MediaPlane
from sfu.channel import Channel, ChannelClosed, ChannelError, message_of
from sfu.options import MediaOptions
from sfu.worker import LocalMediaPlane

LOAD_INTERVAL = 1.0
logger = logging.getLogger(__name__)


class Load:
    """What the pool places rooms by, read from the plane's rooms' statistics once per report."""

    def __init__(self, plane: LocalMediaPlane) -> None:
        self.plane = plane
        self._packets: dict[str, int] = {}
        self._at = time.monotonic()
        self._cpu = time.process_time()

    def report(self) -> dict[str, Any]:
        now, cpu = time.monotonic(), time.process_time()
        elapsed = max(now - self._at, 1e-6)
        streams = 0
        packets: dict[str, int] = {}
        for room_id, router in self.plane.rooms.items():
            tracks = router.stats()  # the documented Stats shape, not the routers' internals
            streams += len(tracks)
            packets[room_id] = sum(int(t.get("packets") or 0) for t in tracks)
        # a room's counters over the interval; rooms that opened or closed meanwhile count what they have
        moved = sum(max(0, n - self._packets.get(room_id, 0)) for room_id, n in packets.items())
        report = {
            "t": "load", "rooms": len(self.plane.rooms), "streams": streams,
            "packets_per_second": moved / elapsed, "cpu": (cpu - self._cpu) / elapsed,
            "dropped": self.plane.mux.dropped if self.plane.mux is not None else 0,
        }
        self._packets, self._at, self._cpu = packets, now, cpu
        return report


async def answer(plane: MediaPlane, frame: dict[str, Any]) -> dict[str, Any]:
    """The ``reply`` or ``error`` frame for one ``request`` frame (a worker's, or an SFU node's)."""
    request_id = frame["id"]
    try:
        reply = await plane.request(message_of(frame))
    except MediaError as exc:
        return {"t": "error", "id": request_id, "code": exc.code, "message": exc.message}
    except ChannelError as exc:
        return {"t": "error", "id": request_id, "code": "bad_message", "message": str(exc)}
    except Exception as exc:  # the plane's own bug: the caller gets a coded error, we the trace
        logger.exception("request %s failed", frame["message"].get("kind"))
        return {"t": "error", "id": request_id, "code": "media_failed", "message": repr(exc)}
    return {"t": "reply", "id": request_id, "message": reply.to_dict()}


class WorkerServer:
    def __init__(self, channel: Channel, plane: LocalMediaPlane) -> None:
        self.channel = channel
        self.plane = plane
        self.load = Load(plane)
        self._tasks: set[asyncio.Task[None]] = set()
        plane.on_event(lambda event: self._send({"t": "event", "message": event.to_dict()}))

    def _send(self, frame: dict[str, Any]) -> None:
        try:
            self.channel.send(frame)
        except ChannelClosed:
            pass  # the pool is gone: serve() notices on its next read
        except ChannelError as exc:  # too large to carry: the pool must still hear of a request
            logger.error("cannot send a %s frame: %s", frame["t"], exc)
            if "id" in frame:
                self.channel.send({"t": "error", "id": frame["id"], "code": "media_failed", "message": str(exc)})

    async def serve(self) -> None:
        reporter = asyncio.create_task(self._report())
        try:
            while True:
                frame = await self.channel.receive()
                if frame["t"] == "request":
                    task = asyncio.create_task(self._request(frame))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                elif frame["t"] == "shutdown":
                    await self.plane.close()
                    self._send({"t": "closed"})
                    await self.channel.drain()
                    return
                else:
                    raise ChannelError(f"a worker does not take {frame['t']!r} frames")
        finally:
            reporter.cancel()
            for task in list(self._tasks):
                task.cancel()
            await self.plane.close()

    async def _request(self, frame: dict[str, Any]) -> None:
        self._send(await answer(self.plane, frame))

    async def _report(self) -> None:
        """The load, and so the heartbeat the pool's watchdog waits for: never skipped."""
        while True:
            await asyncio.sleep(LOAD_INTERVAL)
            try:
                frame = self.load.report()
            except Exception:
                logger.exception("could not read this worker's load")
                frame = {"t": "load", "rooms": len(self.plane.rooms), "streams": 0,
                         "packets_per_second": 0.0, "cpu": 0.0, "dropped": 0}
            self._send(frame)


async def run(index: int, fd: int) -> int:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    channel = Channel(reader, writer)
    try:
        hello = await channel.receive()
        if hello["t"] != "hello":
            raise ChannelError(f"expected hello, got {hello['t']!r}")
        logging.basicConfig(
            level=hello["log_level"],
            format=f"%(asctime)s %(levelname)s sfu-worker-{index} %(name)s: %(message)s",
        )
        plane = LocalMediaPlane(MediaOptions.from_dict(hello["options"]).for_worker(index))
        try:
            plane.start()  # its media port, aiortc's hooks and the GC policy, in this process
        except MediaError as exc:  # the pool's start fails, saying why
            channel.send({"t": "refused", "reason": exc.message})
            await channel.drain()
            return 1
        server = WorkerServer(channel, plane)
        channel.send({"t": "ready", "pid": os.getpid()})
        await server.serve()
    except ChannelClosed:
        return 0
    except ChannelError as exc:
        logging.getLogger(__name__).error("refusing the pool's channel: %s", exc)
        return 2
    finally:
        channel.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not all(arg.isdigit() for arg in args):
        sys.exit("usage: python -m sfu.worker_process INDEX FD  (started by sfu.pool.WorkerPool)")
    index, fd = int(args[0]), int(args[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        import uvloop
    except ImportError:
        sys.exit(asyncio.run(run(index, fd)))
    sys.exit(uvloop.run(run(index, fd)))


if __name__ == "__main__":
    main()
