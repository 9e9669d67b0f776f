"""Bookings on the socket: what the scheduling module hears (``BookingListener``) becomes messages
and, when a booking is due, a session.

The scheduler (signalling/bookings/scheduling.py) calls ``BookingNotifier`` one event at a time.
"""

from __future__ import annotations

import logging

from ..backends.base import Backend
from ..bookings.scheduling import BookingListener
from ..bookings.tables import Booking
from ..core.protocol import ProtocolError, error, message
from .queueing import ExpertQueues

log = logging.getLogger(__name__)


class BookingNotifier(BookingListener):
    def __init__(self, backend: Backend, queues: ExpertQueues) -> None:
        self.backend = backend
        self.queues = queues

    async def on_booked(self, booking: Booking) -> None:
        await self.backend.deliver(booking.expert_id, message("booking.update", event="booked", booking=booking.to_json(), by=""))

    async def on_reminder(self, booking: Booking, seconds_before: int) -> None:
        reminder = message("booking.reminder", booking=booking.to_json(), seconds_before=max(0, int(seconds_before)))
        for user in (booking.expert_id, booking.client_id):
            await self.backend.deliver(user, reminder)

    async def on_due(self, booking: Booking) -> None:
        """Open the session; if a party is still in another session, both hear why it did not open."""
        expert = await self.queues.directory.get(booking.expert_id)
        try:
            await self.queues.open_scheduled(
                booking.expert_id, booking.client_id, booking.id,
                expert_name=expert.display_name if expert else booking.expert_name,
                client_name=booking.client_name, quote=booking.quote,
            )
        except ProtocolError as exc:
            log.info("booking %s could not open: %s", booking.id, exc.message)
            for user in (booking.expert_id, booking.client_id):
                await self.backend.deliver(user, error(exc.code, f"booking {booking.id} could not open: {exc.message}"))

    async def on_cancelled(self, booking: Booking, by: str) -> None:
        update = message("booking.update", event="cancelled", booking=booking.to_json(), by=by)
        for user in (booking.expert_id, booking.client_id):
            await self.backend.deliver(user, update)
