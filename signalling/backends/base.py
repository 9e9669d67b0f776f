"""The one interface between a signalling node and the state it shares with other nodes.

A ``Backend`` holds what every node must see alike: experts' chosen presence, which node holds
each user's socket, the live session records and each expert's queue, short-lived stashes of
messages for users who dropped and may resume, revoked tokens, and locks. It also routes messages: ``deliver``
reaches the user's socket on whichever node holds it, and ``send_to_node`` carries an envelope to
one node. ``MemoryBackend`` serves one process; ``RedisBackend`` embeds it for the local sockets
and overrides the shared parts, as LiveKit's RedisRouter does with its LocalRouter.

Messages and envelopes are JSON-able dicts. Session records are the dicts of
``sessions.Session.to_dict``: the backend stores them without interpreting them.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, AsyncContextManager, Awaitable, Callable

# Sends one message to a socket on this node; False when the socket is gone.
LocalSender = Callable[[dict[str, Any]], Awaitable[bool]]
# Handles an envelope sent to this node with ``send_to_node``.
EnvelopeHandler = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Location:
    """Where a user's socket is: a node and that node's id for the connection."""

    node_id: str
    conn_id: str


class Backend(abc.ABC):
    node_id: str

    @abc.abstractmethod
    async def start(self, on_envelope: EnvelopeHandler) -> None:
        """Begin receiving envelopes for this node."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop receiving; safe to call twice."""

    # --- routing ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def claim(self, user_id: str, conn_id: str, send: LocalSender) -> Location | None:
        """Make this node's connection ``conn_id`` the user's socket; returns the one it replaces."""

    @abc.abstractmethod
    async def release(self, user_id: str, conn_id: str) -> bool:
        """Forget the user's socket if it is still ``conn_id``; True when it was."""

    @abc.abstractmethod
    async def touch(self, user_id: str, conn_id: str) -> None:
        """The connection is alive (a ping arrived): keep its location from expiring."""

    @abc.abstractmethod
    async def locate(self, user_id: str) -> Location | None: ...

    @abc.abstractmethod
    async def node_alive(self, node_id: str) -> bool:
        """Whether a node is listening for envelopes (it hosts media rooms only while it is)."""

    @abc.abstractmethod
    async def note_dropped(self, user_id: str, conn_id: str) -> None:
        """A user's socket ``conn_id`` dropped; remembered for ``stash_ttl`` so a resume can match it."""

    @abc.abstractmethod
    async def take_dropped(self, user_id: str) -> str | None:
        """The connection id noted by ``note_dropped``, if still remembered; forgets it."""

    @abc.abstractmethod
    async def deliver(self, user_id: str, message: dict[str, Any]) -> None:
        """Send to the user's socket wherever it is; stash it when the user has none."""

    @abc.abstractmethod
    async def send_to_node(self, node_id: str, envelope: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def stash(self, user_id: str, message: dict[str, Any]) -> None:
        """Keep a message for a user who may resume (kept for ``stash_ttl`` seconds)."""

    @abc.abstractmethod
    async def drain(self, user_id: str) -> list[dict[str, Any]]:
        """Take the user's stashed messages, oldest first."""

    # --- presence -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def set_status(self, user_id: str, status: str | None) -> None:
        """The status a user chose (None forgets it)."""

    @abc.abstractmethod
    async def get_status(self, user_id: str) -> str | None: ...

    # --- sessions -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def save_session(self, record: dict[str, Any], active: bool) -> None:
        """Store a session record by ``record["id"]``; ``active`` False once it has ended."""

    @abc.abstractmethod
    async def load_session(self, session_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def active_session_ids(self) -> list[str]: ...

    @abc.abstractmethod
    async def set_user_session(self, user_id: str, session_id: str | None) -> None:
        """The one session (waiting or in progress) a user takes part in; None clears it."""

    @abc.abstractmethod
    async def user_session(self, user_id: str) -> str | None: ...

    # --- queues -------------------------------------------------------------------------------

    @abc.abstractmethod
    async def queue_push(self, expert_id: str, session_id: str) -> None: ...

    @abc.abstractmethod
    async def queue_remove(self, expert_id: str, session_id: str) -> bool: ...

    @abc.abstractmethod
    async def queue(self, expert_id: str) -> list[str]:
        """The expert's waiting session ids, first come first."""

    # --- revoked tokens -----------------------------------------------------------------------

    @abc.abstractmethod
    async def revoke_token(self, jti: str, expires_at: int) -> None:
        """Share a token revocation until ``expires_at`` and tell every node: each one's envelope
        handler gets ``{"op": "revoked", "jti": ..., "expires_at": ...}``."""

    @abc.abstractmethod
    async def revoked_tokens(self) -> dict[str, int]:
        """jti -> expiry of every shared revocation whose token has not expired yet."""

    # --- coordination -------------------------------------------------------------------------

    @abc.abstractmethod
    def lock(self, key: str) -> AsyncContextManager[None]:
        """Mutual exclusion on ``key`` across every node sharing this backend (not reentrant)."""

    # --- metering leases ------------------------------------------------------------------------

    @abc.abstractmethod
    async def meter_lease(self, session_id: str, floor: int = 0) -> int | None:
        """Hold the metering lease of a session for this node; its fencing token, or None while
        another node that is alive holds it. A lease held by a node that is no longer alive is
        taken over. Every acquisition gets a new token above every earlier one and above
        ``floor`` (the highest token the billing store has seen, should the backend have lost
        its count); holding it already returns the same token."""

    @abc.abstractmethod
    async def meter_lease_holder(self, session_id: str) -> str | None:
        """The node holding a session's metering lease, if any."""

    @abc.abstractmethod
    async def release_meter_lease(self, session_id: str) -> None:
        """Give up this node's lease (the session ended); a lease held by another node stays."""
