"""Glue between modules built apart: expert profiles, presence, bookings, grants and media stats.

``setup(app)`` (called by ``create_app`` after every module has registered) sets the app keys the
other modules read lazily, so that a test can still replace any of them after ``create_app``:

- ``EXPERT_DIRECTORY``: signalling finds experts in the profile store (``ProfileDirectory``);
- ``SESSION_PARTIES``: ratings check the session store (only a session's client, once ended);
- ``SESSION_NAMES``: receipts name the parties from the session store;
- ``WS_ICE_SERVERS``: ``welcome`` lists the TURN module's servers, with a fresh credential;

WHIP/WHEP keep their default grants (``grants.AdminOnlyGrants``): a paid session's participants
send and receive media over ``/ws`` only, where it is metered (docs/billing.md).

Its ``cleanup_ctx`` (after the node has started) gives the profile store the node's presence and
queue lengths, fixes quotes through billing's ``quote_for`` (sessions and bookings), hands the
scheduler the node's booking notifier (signalling/calls/booking_events.py), and polls the media plane's
stats into ``/metrics`` (aggregated, ``media_metrics.py``) while rooms exist.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from sfu.api import GetStats, MediaError, Message, RoomClosed, Stats
from signalling.app.media_metrics import MediaMetrics

from ..billing.quote import quote_for
from ..billing.receipts import SESSION_NAMES
from ..billing.service import PLATFORM_FEES
from ..bookings.rest import BOOKING_LISTENER, SCHEDULER
from ..calls import ice
from ..calls.directory import ExpertRef
from ..calls.node import EXPERT_DIRECTORY, MEDIA_PLANE, SIGNALLING
from ..calls.sessions import IN_PROGRESS, State, Transition
from ..calls.websocket import WS_ICE_SERVERS
from ..core import keys
from ..core.errors import ApiError
from ..core.tasks import cancel_and_wait
from ..experts.model import normalise_skill
from ..experts.rest import EXPERTS, SESSION_PARTIES

log = logging.getLogger(__name__)

# How often the media plane's stats are read into /metrics while a room is open.
MEDIA_STATS_INTERVAL = 5.0


def setup(app: web.Application) -> None:
    app[EXPERT_DIRECTORY] = ProfileDirectory(app)
    app[SESSION_PARTIES] = lambda session_id: app[SIGNALLING].session_parties(session_id)
    app[SESSION_NAMES] = lambda session_id: app[SIGNALLING].session_names(session_id)
    app[WS_ICE_SERVERS] = lambda user_id: ice.ice_servers_for(app, user_id).to_json()["iceServers"]
    app.cleanup_ctx.append(wiring_ctx)


async def wiring_ctx(app: web.Application) -> AsyncIterator[None]:
    node = app[SIGNALLING]
    experts = app[EXPERTS]
    if BOOKING_LISTENER not in app:  # tests may listen in place of the sockets
        app[SCHEDULER].listener = node.bookings

    experts.availability = node.availability
    experts.waiting = node.waiting
    # The quote is fixed when the client asks (on the session) or books (on the booking).
    settings, fees = app[keys.SETTINGS], app[PLATFORM_FEES]

    async def quoter(expert_id: str) -> dict[str, Any]:
        return (await quote_for(settings, experts, fees, expert_id, time.time())).to_dict()

    node.queues.quoter = quoter
    app[SCHEDULER].store.quoter = quoter
    poller = None
    plane = app.get(MEDIA_PLANE)
    if plane is not None:
        poller = MediaStatsPoller(plane, MediaMetrics(app[keys.METRICS].registry), node.node_id, MEDIA_STATS_INTERVAL)
        plane.on_event(poller.on_event)
        node.sessions.add_listener(poller.on_transition)
        for session_id in await node.backend.active_session_ids():
            session = await node.sessions.get(session_id)
            if session is not None and session.state in IN_PROGRESS and session.media_node == node.node_id:
                poller.watch(session.id)
        poller.start()
    try:
        yield
    finally:
        if poller is not None:
            await poller.close()


class ProfileDirectory:
    """``calls.directory.ExpertDirectory`` (what the calls ask) backed by the profile store."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def get(self, expert_id: str) -> ExpertRef | None:
        expert = await self.app[EXPERTS].get(expert_id)
        if expert is None:
            return None
        return ExpertRef(expert.id, expert.profile.display_name, expert.profile.skills)

    async def find_available(self, skill: str) -> list[str]:
        try:
            tag = normalise_skill(skill)
        except ApiError:
            return []  # no expert has a skill that cannot be written
        found = await self.app[EXPERTS].find_available(tag, states=("online", "busy"), limit=100)
        return [expert.id for expert in found]


class MediaStatsPoller:
    """Reads ``GetStats`` of every open room into ``MediaMetrics`` every few seconds; idle (no
    task wake-ups) while no room is open. Rooms are learned from the sessions this node hosts and
    from media events (WHIP broadcasts), and forgotten when they close."""

    def __init__(self, plane: Any, metrics: MediaMetrics, node_id: str, interval: float = MEDIA_STATS_INTERVAL) -> None:
        self.plane = plane
        self.metrics = metrics
        self.node_id = node_id
        self.interval = interval
        self.rooms: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="media-stats")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    def watch(self, room_id: str) -> None:
        self.rooms.add(room_id)
        self._wake.set()

    def forget(self, room_id: str) -> None:
        self.rooms.discard(room_id)
        self.metrics.forget(room_id)

    def on_transition(self, transition: Transition) -> None:
        session = transition.session
        if transition.state is State.ACCEPTED and session.media_node == self.node_id:
            self.watch(session.id)
        elif transition.state is State.ENDED:
            self.forget(session.id)

    def on_event(self, event: Message) -> None:
        room_id = getattr(event, "room_id", None)
        if isinstance(event, RoomClosed):
            self.forget(event.room_id)
        elif isinstance(room_id, str) and room_id not in self.rooms:
            self.watch(room_id)

    async def poll(self) -> None:
        for room_id in sorted(self.rooms):
            try:
                reply = await self.plane.request(GetStats(room_id))
            except MediaError:
                self.forget(room_id)  # closed meanwhile
                continue
            if isinstance(reply, Stats) and room_id in self.rooms:
                self.metrics.update(reply)

    async def _run(self) -> None:
        while True:
            if not self.rooms:
                self._wake.clear()
                await self._wake.wait()
            # A room just opened has no media yet: the first read is one interval in.
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
            except Exception:
                log.exception("reading media stats failed")
