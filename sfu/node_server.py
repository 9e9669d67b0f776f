"""NodeServer: an SFU node (``expertcall serve --role sfu``) serving its media plane to signalling
nodes over authenticated TCP links (sfu/node_link.py), and announcing itself in the registry.

The plane is what ``--role all`` would run (a LocalMediaPlane, or a WorkerPool of worker
processes); requests are answered with the code a worker process answers them with
(``worker_process.answer``), concurrently, on the link they came on.

- A room belongs to the link it was last opened on (``OpenRoom``); its events go to that link
  only. When a link ends, its rooms close: the signalling node at the other end has already
  opened them again on another SFU node (it does on losing a link), or is gone, and another
  signalling node adopting its sessions opens their rooms again.
- Recording events no link owns (the files ``RecoverRecordings`` finalized at start-up, or the
  last files of a room whose link ended) are held, at most ``MAX_HELD``, and handed to the next
  signalling node that links, so that every file gets indexed.
- Every ``LOAD_INTERVAL`` the node's load goes to every link (their placement and heartbeat) and
  into the registry (with the endpoint).
- ``drain`` (a SIGTERM): the node withdraws from the registry and its load says ``draining``, so
  signalling nodes place no new room on it, while its rooms go on until they close or the drain's
  time is up; ``close`` then hangs up, and the rooms left are re-placed elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Callable

from sfu import node_link
from sfu.api import CloseRoom, MediaError, MediaPlane, Message, OpenRoom, RecordingFile, RecordingStopped, RoomClosed
from sfu.channel import Channel, ChannelClosed, ChannelError
from sfu.node_link import LinkRefused
from sfu.node_registry import NodeRegistry
from sfu.pool import WorkerPool
from sfu.tasks import CANCEL_WAIT_SECONDS, cancel_and_wait
from sfu.worker import LocalMediaPlane
from sfu.worker_process import LOAD_INTERVAL, Load, answer

logger = logging.getLogger(__name__)

MAX_HELD = 1000
DRAIN_POLL_SECONDS = 0.2

LoadReport = Callable[[], dict[str, Any]]


def load_of(plane: LocalMediaPlane | WorkerPool) -> LoadReport:
    """The ``load`` frame of a node: its plane's, or its workers' summed (CPU as the mean per worker)."""
    if isinstance(plane, WorkerPool):
        pool = plane

        def report() -> dict[str, Any]:
            up = [w for w in pool.health() if w.up]
            return {"t": "load", "rooms": sum(len(w.rooms) for w in up), "streams": sum(w.streams for w in up),
                    "packets_per_second": sum(w.packets_per_second for w in up),
                    "cpu": sum(w.cpu for w in up) / max(1, len(up)), "dropped": sum(w.dropped for w in up)}

        return report
    return Load(plane).report


class NodeServer:
    # How long ``close`` waits for the load ticker (its registry call) to end once cancelled.
    stop_seconds = CANCEL_WAIT_SECONDS

    def __init__(self, plane: MediaPlane, load: LoadReport, key: bytes, node_id: str,
                 registry: NodeRegistry | None = None) -> None:
        self.plane = plane
        self.load = load
        self.key = key
        self.node_id = node_id
        self.registry = registry
        self.links: dict[str, Channel] = {}  # signalling node id -> its link
        self.owners: dict[str, Channel] = {}  # room id -> the link it was opened on
        self.held: list[dict[str, Any]] = []
        self.endpoint: tuple[str, int] = ("", 0)  # what the registry says
        self.announced = False
        self.draining = False
        self._server: asyncio.AbstractServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._requests: set[asyncio.Task[None]] = set()
        plane.on_event(self._on_event)

    async def start(self, host: str, port: int, advertise: str = "") -> tuple[str, int]:
        """Listen on ``host:port`` (0: any free port) and announce ``advertise`` (default ``host``)
        with the port bound; returns that endpoint."""
        self._server = await asyncio.start_server(self._serve, host, port)
        bound = self._server.sockets[0].getsockname()
        self.endpoint = (advertise or host, int(bound[1]))
        await self._tick()
        self._ticker = asyncio.create_task(self._run(), name=f"sfu-node-{self.node_id}")
        logger.info("SFU node %s serves signalling nodes on %s:%d", self.node_id, host, self.endpoint[1])
        return self.endpoint

    async def drain(self, seconds: float) -> None:
        """Take no new rooms, and wait at most ``seconds`` for the rooms hosted to close."""
        self.draining = True
        if self.registry is not None:
            with contextlib.suppress(Exception):
                await self.registry.withdraw(self.node_id)
        await self._tick()  # the links hear it now, not at the next report
        deadline = time.monotonic() + seconds
        if self.owners:
            logger.info("SFU node %s draining: %d rooms, for at most %.0f s", self.node_id, len(self.owners), seconds)
        while self.owners and time.monotonic() < deadline:
            await asyncio.sleep(min(DRAIN_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        if self.owners:
            logger.warning("SFU node %s drained for %.0f s; %d rooms move to other nodes", self.node_id, seconds,
                           len(self.owners))

    async def close(self) -> None:
        """Withdraw, then hang up every link (their signalling nodes re-place the rooms)."""
        if self._ticker is not None:
            # bounded: a cancellation landing inside a Redis command can be swallowed (redis-py)
            await cancel_and_wait(self._ticker, timeout=self.stop_seconds)
            self._ticker = None
        if self.registry is not None:
            with contextlib.suppress(Exception):
                await self.registry.withdraw(self.node_id)
            await self.registry.close()
            self.registry = None
        if self._server is not None:
            self._server.close()
            self._server = None
        for channel in list(self.links.values()):
            channel.close()
        self.links.clear()

    # --- links -------------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel = Channel(reader, writer)
        peer = writer.get_extra_info("peername")
        try:
            signalling = await node_link.accept(channel, self.key, self.node_id)
        except (LinkRefused, ChannelClosed) as exc:
            logger.warning("refused a link from %s: %s", peer, exc)
            channel.close()
            return
        previous = self.links.get(signalling)
        if previous is not None:
            previous.close()
        self.links[signalling] = channel
        logger.info("signalling node %s linked from %s", signalling, peer)
        held, self.held = self.held, []
        for frame in held:
            self._send(channel, frame)
        try:
            while True:
                frame = await channel.receive()
                if frame["t"] != "request":
                    raise ChannelError(f"an SFU node does not take {frame['t']!r} frames")
                task = asyncio.create_task(self._request(channel, frame))
                self._requests.add(task)
                task.add_done_callback(self._requests.discard)
        except ChannelClosed:
            pass
        except ChannelError as exc:
            logger.error("signalling node %s broke the link: %s; hanging up", signalling, exc)
        finally:
            if self.links.get(signalling) is channel:
                del self.links[signalling]
            channel.close()
            await self._close_rooms_of(channel, signalling)

    async def _close_rooms_of(self, channel: Channel, signalling: str) -> None:
        rooms = [room_id for room_id, owner in self.owners.items() if owner is channel]
        for room_id in rooms:
            del self.owners[room_id]
        if rooms:
            logger.warning("the link of signalling node %s ended: closing its %d rooms", signalling, len(rooms))
        for room_id in rooms:
            try:
                await self.plane.request(CloseRoom(room_id, "signalling_lost"))
            except MediaError as exc:
                logger.warning("could not close room %s: %s", room_id, exc.message)

    async def _request(self, channel: Channel, frame: dict[str, Any]) -> None:
        kind, room_id = frame["message"].get("kind"), frame["message"].get("room_id")
        if kind == OpenRoom.kind and isinstance(room_id, str):
            self.owners[room_id] = channel  # before it opens: its first events are its
        reply = await answer(self.plane, frame)
        if kind == CloseRoom.kind and self.owners.get(room_id) is channel:
            del self.owners[room_id]
        self._send(channel, reply)

    def _send(self, channel: Channel, frame: dict[str, Any]) -> None:
        try:
            channel.send(frame)
        except ChannelClosed:
            pass  # that link is gone: its reader notices
        except ChannelError as exc:  # too large to carry
            logger.error("cannot send a %s frame: %s", frame["t"], exc)
            if "id" in frame:
                channel.send({"t": "error", "id": frame["id"], "code": "media_failed", "message": str(exc)})

    def _on_event(self, event: Message) -> None:
        room_id = getattr(event, "room_id", None)
        channel = self.owners.get(room_id) if isinstance(room_id, str) else None
        if isinstance(event, RoomClosed):
            self.owners.pop(event.room_id, None)
        frame = {"t": "event", "message": event.to_dict()}
        if channel is not None:
            self._send(channel, frame)
        elif isinstance(event, (RecordingFile, RecordingStopped)) and len(self.held) < MAX_HELD:
            self.held.append(frame)

    # --- load, registry ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(LOAD_INTERVAL)
            await self._tick()

    async def _tick(self) -> None:
        try:
            frame = self.load()
        except Exception:
            logger.exception("could not read this node's load")
            frame = {"t": "load", "rooms": 0, "streams": 0, "packets_per_second": 0.0, "cpu": 0.0, "dropped": 0}
        if self.draining:
            frame = {**frame, "draining": True}
        for channel in list(self.links.values()):
            self._send(channel, frame)
        if self.registry is not None and not self.draining:
            load = {k: v for k, v in frame.items() if k != "t"}
            try:
                await self.registry.announce(self.node_id, self.endpoint[0], self.endpoint[1], load)
                self.announced = True
            except Exception as exc:
                self.announced = False
                logger.warning("could not announce SFU node %s: %r", self.node_id, exc)
