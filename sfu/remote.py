"""RemoteNodes: the MediaPlane protocol served by SFU nodes (``expertcall serve --role sfu``) on
other processes or machines, for a signalling node (``--role signalling``).

It is a WorkerPool whose members are SFU nodes instead of child processes: the same placement
(least loaded by the load each node reports every second), the same request and event frames,
the same re-placement when a member is lost. What differs is how members come and go:

- Members are found in the registry (sfu/node_registry.py, every ``DISCOVER_SECONDS``) and
  reached over an authenticated TCP link (sfu/node_link.py); a node listed but not linked is
  tried again every ``RETRY_SECONDS``, and one neither listed nor linked is forgotten.
- A node whose load reports say ``draining`` (it got SIGTERM, sfu/node_server.py) gets no new
  room; the rooms it hosts stay there until they close or it hangs up.
- A node is lost when its link ends (a SIGKILLed process: at once, its kernel closes the socket)
  or says nothing for ``stall_seconds`` (a machine gone silent). Its rooms open again at once on
  the least loaded node that is up and each emits ``RoomRestarted("node_lost")``: the control
  plane's path for a worker's death. A room waits at most ``up_timeout`` for some node to be up,
  then is refused (``media_unavailable``) or, when re-placed, closed (``RoomClosed``).
- Closing the plane only hangs up: the SFU node closes the rooms of a link that ended (another
  signalling node adopting a session opens its room again). From ``shutting_down`` on (the node
  got SIGTERM) no node is linked again, none waited for, a node silent for
  ``STOPPING_STALL_SECONDS`` is dropped and its rooms are not re-placed: a frozen SFU node can hold
  the shutdown a few seconds at most.
- ``RecoverRecordings`` is answered here: each SFU node finalizes its own files at its start-up.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass

from sfu import node_link
from sfu.api import MediaError, Message, Ok, RecoverRecordings
from sfu.node_link import LinkRefused
from sfu.node_registry import NodeRegistry
from sfu.options import MediaOptions
from sfu.pool import WorkerPool, WorkerState

logger = logging.getLogger(__name__)

DISCOVER_SECONDS = 1.0
RETRY_SECONDS = 1.0
NODE_STALL_SECONDS = 4.0  # a node reports its load every second: four missed in a row
UP_TIMEOUT = 10.0
STOP_SECONDS = 5.0
# Shutting down, a node two load reports late is dropped: a frozen one must not hold the requests
# (and so the sockets and handlers) the shutdown waits for until NODE_STALL_SECONDS.
STOPPING_STALL_SECONDS = 2.0


@dataclass
class NodeState(WorkerState):
    """One SFU node as a signalling node sees it (``index`` only orders them)."""

    node_id: str = ""
    host: str = ""
    port: int = 0
    connecting: bool = False
    retry_at: float = 0.0


class RemoteNodes(WorkerPool):
    LOST_REASON = "node_lost"
    up_timeout: float | None = UP_TIMEOUT

    def __init__(self, registry: NodeRegistry, key: bytes, node_id: str, *,
                 stall_seconds: float = NODE_STALL_SECONDS) -> None:
        super().__init__(MediaOptions(), 1, stall_seconds=stall_seconds)
        self.workers = []
        self.registry = registry
        self.key = key
        self.node_id = node_id
        self._indexes = itertools.count()

    async def start(self) -> None:
        """Link to the nodes registered now (none is fine: rooms wait for one up to ``up_timeout``)."""
        try:
            await self._discover()
        except Exception as exc:  # Redis down at start-up: the discovery loop keeps trying
            logger.warning("could not read the SFU node registry: %r", exc)
        connecting = [t for t in self._tasks if t.get_name().startswith("sfu-node-connect")]
        if connecting:
            await asyncio.wait(connecting, timeout=node_link.HANDSHAKE_SECONDS)
        self._task(self._watch(), "sfu-nodes-watch")
        self._task(self._discovery(), "sfu-nodes-discovery")

    async def request(self, message: Message) -> Message:
        if isinstance(message, RecoverRecordings):
            return Ok()
        return await super().request(message)

    def shutting_down(self) -> None:
        super().shutting_down()
        self.stall_seconds = min(self.stall_seconds, STOPPING_STALL_SECONDS)

    async def close(self) -> None:
        await super().close()
        await self.registry.close()

    def nodes(self) -> list[NodeState]:
        """The SFU nodes known (registered or hosting rooms), for /readyz."""
        return [node for node in self.workers if isinstance(node, NodeState)]

    # --- members ---------------------------------------------------------------------------------

    async def _discovery(self) -> None:
        while True:
            await asyncio.sleep(DISCOVER_SECONDS)
            try:
                await self._discover()
            except Exception as exc:
                logger.warning("could not read the SFU node registry: %r", exc)

    async def _discover(self) -> None:
        entries = await self.registry.nodes()
        known = {node.node_id: node for node in self.workers if isinstance(node, NodeState)}
        now = time.monotonic()
        for entry in entries:
            node = known.get(entry.node_id)
            if node is None:
                node = NodeState(next(self._indexes), node_id=entry.node_id, host=entry.host, port=entry.port)
                self.workers.append(node)
                known[entry.node_id] = node
            elif not node.up:
                node.host, node.port = entry.host, entry.port
            if not node.up and not node.connecting and now >= node.retry_at and not (self._closed or self._stopping):
                node.connecting = True
                self._task(self._connect(node), f"sfu-node-connect-{node.node_id}")
        listed = {entry.node_id for entry in entries}
        self.workers = [n for n in self.workers
                        if n.up or n.rooms or (isinstance(n, NodeState) and (n.connecting or n.node_id in listed))]

    async def _connect(self, node: NodeState) -> None:
        try:
            channel, _ = await node_link.connect(node.host, node.port, self.key, self.node_id, expected=node.node_id)
        except (OSError, LinkRefused) as exc:
            node.retry_at = time.monotonic() + RETRY_SECONDS
            logger.warning("cannot link to SFU node %s at %s:%d: %s", node.node_id, node.host, node.port, exc)
            return
        finally:
            node.connecting = False
        if self._closed or self._stopping:
            channel.abort()
            return
        self._attach(node, channel, 0)
        logger.info("linked to SFU node %s at %s:%d", node.node_id, node.host, node.port)

    def _hung(self, worker: WorkerState) -> None:
        if worker.channel is not None:
            logger.error("SFU node %s sent nothing for %.0f s; dropping it", _name(worker), self.stall_seconds)
            worker.channel.abort()  # its reader ends, and the node is lost

    async def _reap(self, worker: WorkerState, reason: str) -> None:
        logger.error("SFU node %s lost (%s); %s its %d rooms", _name(worker), reason,
                     "shutting down, dropping" if self._stopping else "re-placing", len(worker.rooms))

    def _revive(self, worker: WorkerState) -> None:
        if isinstance(worker, NodeState):
            worker.retry_at = time.monotonic() + RETRY_SECONDS  # linked again if it is still registered

    async def _stop(self, worker: WorkerState) -> None:
        """Hang up (the node's rooms are its own to close)."""
        worker.up = False
        channel, worker.channel = worker.channel, None
        if channel is not None:
            channel.abort()
        if worker.reader is not None:
            try:
                await asyncio.wait_for(asyncio.shield(worker.reader), STOP_SECONDS)
            except asyncio.TimeoutError:
                worker.reader.cancel()
        for future in worker.pending.values():
            if not future.done():
                future.set_exception(MediaError("closed", "the media plane is shut down"))


def _name(worker: WorkerState) -> str:
    return worker.node_id if isinstance(worker, NodeState) else str(worker.index)
