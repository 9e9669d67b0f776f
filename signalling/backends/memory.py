"""The embedded backend: shared state in this process's memory.

One ``MemoryHub`` is the "shared" state; each ``MemoryBackend`` is one node on it. A server has one
hub and one node. Tests put two nodes on one hub to exercise cross-node routing with the same
contract suite as the Redis backend. Envelopes go through a per-node inbox read by one task, as
Redis pub/sub does, so that a node never re-enters itself while holding a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict
from typing import Any, AsyncIterator

from ..core.tasks import cancel_and_wait
from .base import Backend, EnvelopeHandler, LocalSender, Location

MAX_STASHED = 256
MAX_ENDED_SESSIONS = 10_000
# Expired stashes are swept when this many users have one (users who never return leave them).
PURGE_ABOVE = 10_000


class MemoryHub:
    def __init__(self) -> None:
        self.inboxes: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self.locations: dict[str, Location] = {}
        self.stashes: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self.dropped: dict[str, tuple[float, str]] = {}
        self.statuses: dict[str, str] = {}
        self.sessions: dict[str, str] = {}
        self.active: set[str] = set()
        self.ended: OrderedDict[str, None] = OrderedDict()
        self.user_sessions: dict[str, str] = {}
        self.queues: dict[str, list[str]] = {}
        self.locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self.meter_leases: dict[str, tuple[str, int]] = {}  # session -> (node, token)
        self.meter_tokens: dict[str, int] = {}  # session -> the last token handed out
        self.revoked: dict[str, int] = {}


class MemoryBackend(Backend):
    def __init__(self, node_id: str, hub: MemoryHub | None = None, stash_ttl: float = 30.0) -> None:
        self.node_id = node_id
        self.hub = hub or MemoryHub()
        self.stash_ttl = stash_ttl
        self._local: dict[str, tuple[str, LocalSender]] = {}
        self._handler: EnvelopeHandler | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self, on_envelope: EnvelopeHandler) -> None:
        self._handler = on_envelope
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.hub.inboxes[self.node_id] = inbox
        self._reader = asyncio.create_task(self._read(inbox), name=f"backend-inbox-{self.node_id}")

    async def close(self) -> None:
        self.hub.inboxes.pop(self.node_id, None)
        if self._reader is not None:
            await cancel_and_wait(self._reader)
            self._reader = None

    async def _read(self, inbox: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            await self.receive_envelope(await inbox.get())

    async def receive_envelope(self, envelope: dict[str, Any]) -> None:
        """An envelope for this node: deliveries go to local sockets, the rest to the handler."""
        if envelope.get("op") == "deliver":
            await self.deliver_local(envelope["user_id"], envelope["message"])
        elif self._handler is not None:
            await self._handler(envelope)

    async def deliver_local(self, user_id: str, message: dict[str, Any]) -> None:
        entry = self._local.get(user_id)
        if entry is None or not await entry[1](message):
            await self.stash(user_id, message)

    # --- routing ------------------------------------------------------------------------------

    def _claim_local(self, user_id: str, conn_id: str, send: LocalSender) -> None:
        self._local[user_id] = (conn_id, send)

    def _release_local(self, user_id: str, conn_id: str) -> None:
        entry = self._local.get(user_id)
        if entry is not None and entry[0] == conn_id:
            del self._local[user_id]

    async def claim(self, user_id: str, conn_id: str, send: LocalSender) -> Location | None:
        self._claim_local(user_id, conn_id, send)
        previous = self.hub.locations.get(user_id)
        self.hub.locations[user_id] = Location(self.node_id, conn_id)
        return previous

    async def release(self, user_id: str, conn_id: str) -> bool:
        self._release_local(user_id, conn_id)
        if self.hub.locations.get(user_id) == Location(self.node_id, conn_id):
            del self.hub.locations[user_id]
            return True
        return False

    async def touch(self, user_id: str, conn_id: str) -> None:
        return None

    async def locate(self, user_id: str) -> Location | None:
        return self.hub.locations.get(user_id)

    async def node_alive(self, node_id: str) -> bool:
        return node_id in self.hub.inboxes

    async def note_dropped(self, user_id: str, conn_id: str) -> None:
        self.hub.dropped[user_id] = (time.monotonic() + self.stash_ttl, conn_id)

    async def take_dropped(self, user_id: str) -> str | None:
        expires, conn_id = self.hub.dropped.pop(user_id, (0.0, ""))
        return conn_id if expires > time.monotonic() else None

    async def deliver(self, user_id: str, message: dict[str, Any]) -> None:
        location = await self.locate(user_id)
        if location is None:
            await self.stash(user_id, message)
        elif location.node_id == self.node_id:
            await self.deliver_local(user_id, message)
        else:
            await self.send_to_node(location.node_id, {"op": "deliver", "user_id": user_id, "message": message})

    async def send_to_node(self, node_id: str, envelope: dict[str, Any]) -> None:
        inbox = self.hub.inboxes.get(node_id)
        if inbox is not None:
            inbox.put_nowait(json.loads(json.dumps(envelope)))
        elif envelope.get("op") == "deliver":
            await self.stash(envelope["user_id"], envelope["message"])

    async def stash(self, user_id: str, message: dict[str, Any]) -> None:
        now = time.monotonic()
        if len(self.hub.stashes) + len(self.hub.dropped) > PURGE_ABOVE:
            self._purge(now)
        expires, messages = self.hub.stashes.get(user_id, (0.0, []))
        if expires <= now:
            messages = []
        messages = (messages + [message])[-MAX_STASHED:]
        self.hub.stashes[user_id] = (now + self.stash_ttl, messages)

    def _purge(self, now: float) -> None:
        """Forget expired stashes and drops of users who never came back."""
        self.hub.stashes = {u: v for u, v in self.hub.stashes.items() if v[0] > now}
        self.hub.dropped = {u: v for u, v in self.hub.dropped.items() if v[0] > now}

    async def drain(self, user_id: str) -> list[dict[str, Any]]:
        expires, messages = self.hub.stashes.pop(user_id, (0.0, []))
        return messages if expires > time.monotonic() else []

    # --- presence -----------------------------------------------------------------------------

    async def set_status(self, user_id: str, status: str | None) -> None:
        if status is None:
            self.hub.statuses.pop(user_id, None)
        else:
            self.hub.statuses[user_id] = status

    async def get_status(self, user_id: str) -> str | None:
        return self.hub.statuses.get(user_id)

    # --- sessions -----------------------------------------------------------------------------

    async def save_session(self, record: dict[str, Any], active: bool) -> None:
        session_id = record["id"]
        self.hub.sessions[session_id] = json.dumps(record)
        if active:
            self.hub.active.add(session_id)
            return
        self.hub.active.discard(session_id)
        self.hub.ended[session_id] = None
        while len(self.hub.ended) > MAX_ENDED_SESSIONS:
            old, _ = self.hub.ended.popitem(last=False)
            self.hub.sessions.pop(old, None)

    async def load_session(self, session_id: str) -> dict[str, Any] | None:
        raw = self.hub.sessions.get(session_id)
        return None if raw is None else json.loads(raw)

    async def active_session_ids(self) -> list[str]:
        return sorted(self.hub.active)

    async def set_user_session(self, user_id: str, session_id: str | None) -> None:
        if session_id is None:
            self.hub.user_sessions.pop(user_id, None)
        else:
            self.hub.user_sessions[user_id] = session_id

    async def user_session(self, user_id: str) -> str | None:
        return self.hub.user_sessions.get(user_id)

    # --- queues -------------------------------------------------------------------------------

    async def queue_push(self, expert_id: str, session_id: str) -> None:
        queue = self.hub.queues.setdefault(expert_id, [])
        if session_id not in queue:
            queue.append(session_id)

    async def queue_remove(self, expert_id: str, session_id: str) -> bool:
        queue = self.hub.queues.get(expert_id, [])
        if session_id not in queue:
            return False
        queue.remove(session_id)
        if not queue:
            del self.hub.queues[expert_id]
        return True

    async def queue(self, expert_id: str) -> list[str]:
        return list(self.hub.queues.get(expert_id, []))

    # --- metering leases ------------------------------------------------------------------------

    async def meter_lease(self, session_id: str, floor: int = 0) -> int | None:
        held = self.hub.meter_leases.get(session_id)
        if held is not None:
            if held[0] == self.node_id:
                return held[1]
            if await self.node_alive(held[0]):
                return None
        token = max(self.hub.meter_tokens.get(session_id, 0), floor) + 1
        self.hub.meter_tokens[session_id] = token
        self.hub.meter_leases[session_id] = (self.node_id, token)
        return token

    async def meter_lease_holder(self, session_id: str) -> str | None:
        held = self.hub.meter_leases.get(session_id)
        return None if held is None else held[0]

    async def release_meter_lease(self, session_id: str) -> None:
        held = self.hub.meter_leases.get(session_id)
        if held is not None and held[0] == self.node_id:
            del self.hub.meter_leases[session_id]

    # --- revoked tokens -----------------------------------------------------------------------

    async def revoke_token(self, jti: str, expires_at: int) -> None:
        now = time.time()
        self.hub.revoked = {j: until for j, until in self.hub.revoked.items() if until > now}
        self.hub.revoked[jti] = max(expires_at, self.hub.revoked.get(jti, 0))
        for inbox in self.hub.inboxes.values():
            inbox.put_nowait({"op": "revoked", "jti": jti, "expires_at": expires_at})

    async def revoked_tokens(self) -> dict[str, int]:
        now = time.time()
        return {jti: until for jti, until in self.hub.revoked.items() if until > now}

    # --- coordination -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        lock, users = self.hub.locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self.hub.locks[key]
