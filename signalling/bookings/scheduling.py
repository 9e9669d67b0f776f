"""Scheduled sessions: bookings of a slot in an expert's working hours, reminders, and the opening.

``BookingStore`` enforces the rules (inside the expert's hours, no overlap for the expert or the
client, notice and horizon) over ``tables.BookingTables`` - the node's SQLite, or the
PostgreSQL every node shares - which makes the overlap check and the insert one atomic step, so
two requests for the same slot - even on two processes or two nodes - cannot both succeed.

``Scheduler`` is one asyncio task that tells a ``BookingListener`` when reminders and openings are
due. It keeps no state of its own: every wake-up reads the pending bookings from the store, so a
restart picks up where the last process stopped (and several nodes' schedulers share the work:
each reminder and opening is recorded by one of them only). Each reminder and each opening is recorded
before the listener hears of it, so none is delivered twice, even across a restart; the price is
that one interrupted mid-delivery is lost rather than repeated. After downtime, only the most
recent overdue reminder of a booking is sent, and a booking whose start passed while the server
was down opens late if its slot has not ended yet (otherwise it becomes ``missed``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from ..core.errors import ApiError, InvalidInput
from ..core.metrics import Metrics
from ..core.settings import Settings, SettingsError
from ..core.tasks import cancel_and_wait
from ..experts.profiles import ExpertProfiles
from .tables import BOOKED, CANCELLED, MISSED, OPEN, Booking, BookingTables

log = logging.getLogger(__name__)

# booked: waiting for its start; open: its start came and the listener was told to open the
# session; cancelled; missed: its whole slot passed while the server was down.
STATES = (BOOKED, OPEN, CANCELLED, MISSED)

MAX_TOPIC = 500
MAX_REASON = 500
# Free time that starts "now" is offered from the next multiple of this.
SLOT_ALIGN_SECONDS = 300
# Wake up at least this often, so that a jump of the wall clock is noticed.
MAX_SLEEP = 30.0


@dataclass(frozen=True)
class BookingRules:
    max_days_ahead: int = 90
    min_notice_seconds: int = 300
    min_seconds: int = 300
    max_seconds: int = 4 * 3600
    reminder_leads: tuple[int, ...] = (600, 60)
    # Bookings still waiting for their start that one client, and one expert, may hold.
    max_open_per_client: int = 10
    max_open_per_expert: int = 500

    def __post_init__(self) -> None:
        if self.max_days_ahead < 1:
            raise SettingsError("booking_max_days_ahead must be at least 1")
        if self.min_notice_seconds < 0:
            raise SettingsError("booking_min_notice_seconds must not be negative")
        if not (1 <= self.min_seconds <= self.max_seconds):
            raise SettingsError("booking durations must satisfy 1 <= booking_min_seconds <= booking_max_seconds")
        if any(lead <= 0 for lead in self.reminder_leads):
            raise SettingsError("reminder_lead_seconds must be positive")
        object.__setattr__(self, "reminder_leads", tuple(sorted(set(self.reminder_leads), reverse=True)))

    @classmethod
    def from_settings(cls, settings: Settings) -> "BookingRules":
        return cls(
            max_days_ahead=settings.booking_max_days_ahead,
            min_notice_seconds=settings.booking_min_notice_seconds,
            min_seconds=settings.booking_min_seconds,
            max_seconds=settings.booking_max_seconds,
            reminder_leads=tuple(settings.reminder_lead_seconds),
            max_open_per_client=settings.booking_max_open_per_client,
            max_open_per_expert=settings.booking_max_open_per_expert,
        )


class BookingListener:
    """What the rest of the server hears about bookings; override what you need.

    Calls are awaited one at a time from the scheduler task (or the request that booked or
    cancelled), so they should be quick - send a message, create a session - and must not block.
    An exception is logged and does not stop the scheduler.
    """

    async def on_booked(self, booking: Booking) -> None:
        """A client booked ``booking``; the expert may want to know."""

    async def on_reminder(self, booking: Booking, seconds_before: int) -> None:
        """``booking`` starts in about ``seconds_before`` seconds (one of the configured leads)."""

    async def on_due(self, booking: Booking) -> None:
        """``booking``'s start has come (possibly late, after downtime): open the session now."""

    async def on_cancelled(self, booking: Booking, by: str) -> None:
        """``by`` (a party or an admin) cancelled ``booking`` before its start."""



class BookingStore:
    """The booking rules over ``tables.BookingTables`` (SQLite, or PostgreSQL for many nodes)."""

    def __init__(
        self,
        tables: BookingTables,
        directory: ExpertProfiles,
        rules: BookingRules,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tables = tables
        self.directory = directory
        self.rules = rules
        self.clock = clock
        # expert_id -> the terms of a session booked now (billing's quote as a dict), stored with
        # the booking; set by the application's wiring (None: bookings carry no quote).
        self.quoter: Callable[[str], Awaitable[dict[str, Any] | None]] | None = None

    async def create(
        self, client_id: str, expert_id: str, start: int, end: int, topic: str | None = None,
        quote: dict[str, Any] | None = None, client_name: str = "",
    ) -> tuple[Booking, bool]:
        """Book [start, end) with the expert: the booking and whether it is new (a retry of the
        same request returns the existing booking)."""
        now = int(self.clock())
        rules = self.rules
        if topic is not None and (not isinstance(topic, str) or len(topic) > MAX_TOPIC):
            raise InvalidInput("invalid_topic", f"the topic is at most {MAX_TOPIC} characters", "topic")
        topic = topic.strip() or None if topic else None
        if client_id == expert_id:
            raise InvalidInput("self_booking", "an expert cannot book themselves", "expert_id")
        expert = await self.directory.get(expert_id)
        if expert is None:
            raise ApiError("expert_not_found", f"no expert {expert_id!r}", "expert_id", status=404)
        hours = expert.profile.working_hours
        if hours is None:
            raise ApiError("no_working_hours", "this expert takes no bookings (no working hours set)", "expert_id", status=409)
        if not (rules.min_seconds <= end - start <= rules.max_seconds):
            raise InvalidInput(
                "invalid_duration",
                f"a booking lasts {rules.min_seconds}-{rules.max_seconds} seconds",
                "end",
            )
        if start < now + rules.min_notice_seconds:
            raise InvalidInput(
                "too_soon", f"bookings start at least {rules.min_notice_seconds} seconds from now", "start"
            )
        if start > now + rules.max_days_ahead * 86400:
            raise InvalidInput("too_far_ahead", f"bookings start at most {rules.max_days_ahead} days ahead", "start")
        if not hours.contains(start, end):
            raise InvalidInput(
                "outside_working_hours",
                f"the slot is not inside the expert's working hours ({hours.time_zone})",
                "start",
            )
        booking = Booking(
            uuid.uuid4().hex, expert_id, client_id, start, end, BOOKED, topic, now, quote=quote,
            expert_name=expert.profile.display_name, client_name=client_name,
        )
        # A reminder whose time has already passed would only repeat what the client just did.
        skipped = [lead for lead in rules.reminder_leads if start - lead <= now]
        return await self.tables.insert_if_free(booking, skipped, rules.max_open_per_client, rules.max_open_per_expert)

    async def cancel(self, booking_id: str, by: str, reason: str | None = None) -> tuple[Booking, bool]:
        """Cancel before the start: the booking and whether this call cancelled it (a repeated
        cancel is harmless). The caller has checked that ``by`` may cancel it."""
        if reason is not None and len(reason) > MAX_REASON:
            raise InvalidInput("invalid_reason", f"the reason is at most {MAX_REASON} characters", "reason")
        changed = await self.tables.cancel(booking_id, by, reason.strip() or None if reason else None, int(self.clock()))
        booking = await self.get(booking_id)
        if booking is None:
            raise ApiError("booking_not_found", f"no booking {booking_id!r}", "id", status=404)
        if not changed and booking.state != CANCELLED:
            raise ApiError("booking_started", "a booking can only be cancelled before it starts", "id", status=409)
        return booking, changed

    async def get(self, booking_id: str) -> Booking | None:
        return await self.tables.get(booking_id)

    async def list_for(self, user_id: str | None, state: str | None = None, limit: int = 50, offset: int = 0) -> list[Booking]:
        """A user's bookings as client or expert (everyone's for None), by start time."""
        return await self.tables.list_for(user_id, state, limit, offset)

    async def free_intervals(self, expert_id: str, start: int, end: int) -> list[tuple[int, int]]:
        """The expert's bookable time in [start, end): working hours within the notice and the
        horizon, minus active bookings."""
        expert = await self.directory.get(expert_id)
        if expert is None:
            raise ApiError("expert_not_found", f"no expert {expert_id!r}", "id", status=404)
        hours = expert.profile.working_hours
        if hours is None:
            return []
        now = int(self.clock())
        earliest = now + self.rules.min_notice_seconds
        if start < earliest:
            # Offer round times, not "10:03:27".
            start = -(-earliest // SLOT_ALIGN_SECONDS) * SLOT_ALIGN_SECONDS
        end = min(end, now + self.rules.max_days_ahead * 86400 + self.rules.max_seconds)
        busy = await self.tables.busy(expert_id, start, end)
        free: list[tuple[int, int]] = []
        for s, e in hours.intervals(start, end):
            for b_start, b_end in busy:
                if b_end <= s or b_start >= e:
                    continue
                if b_start > s:
                    free.append((s, b_start))
                s = max(s, b_end)
            if s < e:
                free.append((s, e))
        return free

    # What the scheduler reads and records.

    async def pending(self, until: float) -> list[tuple[Booking, set[int]]]:
        """Bookings still waiting for their start that start by ``until``, with the reminder leads
        already handled."""
        return await self.tables.pending(until)

    async def next_start(self) -> int | None:
        return await self.tables.next_start()

    async def record_reminder(self, booking_id: str, lead: int, skipped: list[int]) -> bool:
        """Record ``lead`` as sent and ``skipped`` as passed; False if the booking is no longer
        waiting or the reminder was already recorded (by this node or another)."""
        return await self.tables.record_reminder(booking_id, lead, skipped, int(self.clock()))

    async def record_start(self, booking_id: str) -> Booking | None:
        """Move a waiting booking whose start has come to ``open`` (or ``missed`` if its slot is
        over); the updated booking, or None if it was no longer waiting."""
        if not await self.tables.record_start(booking_id, int(self.clock())):
            return None
        return await self.get(booking_id)


class Scheduler:
    """Books and cancels through the store and drives the listener from one asyncio task."""

    def __init__(self, store: BookingStore, listener: BookingListener | None = None, metrics: Metrics | None = None) -> None:
        self.store = store
        self.listener = listener or BookingListener()
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="booking-scheduler")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def book(
        self, client_id: str, expert_id: str, start: int, end: int, topic: str | None = None, client_name: str = "",
    ) -> tuple[Booking, bool]:
        quote = await self.store.quoter(expert_id) if self.store.quoter is not None else None
        booking, created = await self.store.create(client_id, expert_id, start, end, topic, quote, client_name)
        if created:
            self._wake.set()
            await self._tell("on_booked", booking)
        return booking, created

    async def cancel(self, booking_id: str, by: str, reason: str | None = None) -> tuple[Booking, bool]:
        booking, changed = await self.store.cancel(booking_id, by, reason)
        if changed:
            self._wake.set()
            await self._tell("on_cancelled", booking, by)
        return booking, changed

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._fire_due()
                delay = await self._delay()
            except Exception:
                # The database can be briefly locked by another process; try again shortly.
                log.exception("booking scheduler pass failed")
                delay = 1.0
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _fire_due(self) -> None:
        leads = self.store.rules.reminder_leads
        now = self.store.clock()
        for booking, handled in await self.store.pending(now + max(leads, default=0)):
            if booking.start <= now:
                opened = await self.store.record_start(booking.id)
                if opened is not None and opened.state == OPEN:
                    await self._tell("on_due", opened)
                elif opened is not None:
                    log.warning("booking %s missed: its slot ended while the server was down", booking.id)
                    self._count("missed")
                continue
            overdue = [lead for lead in leads if booking.start - lead <= now and lead not in handled]
            if overdue:
                lead = min(overdue)
                if await self.store.record_reminder(booking.id, lead, [x for x in overdue if x != lead]):
                    await self._tell("on_reminder", booking, lead)

    async def _delay(self) -> float:
        """Seconds until the next reminder or start."""
        first = await self.store.next_start()
        if first is None:
            return MAX_SLEEP
        now = self.store.clock()
        leads = self.store.rules.reminder_leads
        times = []
        for booking, handled in await self.store.pending(first + max(leads, default=0)):
            times.append(booking.start)
            times += [booking.start - lead for lead in leads if lead not in handled]
        return min(MAX_SLEEP, max(0.0, min(times) - now))

    async def _tell(self, method: str, *args: Any) -> None:
        self._count(method.removeprefix("on_"))
        try:
            await getattr(self.listener, method)(*args)
        except Exception:
            log.exception("booking listener %s failed", method)


    def _count(self, event: str) -> None:
        if self.metrics is not None:
            self.metrics.bookings.labels(event).inc()


# Instants are taken between these (Unix seconds): 1970-01-01 and 9000-01-01, so that a window
# of days around any of them stays within the years datetime can represent.
EARLIEST_INSTANT = 0
LATEST_INSTANT = 221845392000


def parse_rfc3339(raw: object, field_name: str) -> int:
    """An RFC 3339 time with an offset (``2027-03-28T09:00:00+02:00`` or ``...Z``) as Unix seconds."""
    try:
        if not isinstance(raw, str) or len(raw) > 64:
            raise ValueError
        moment = datetime.fromisoformat(raw)
        if moment.tzinfo is None:
            raise InvalidInput("invalid_time", "a time needs a UTC offset or Z", field_name)
        if moment.microsecond:
            raise InvalidInput("invalid_time", "times are in whole seconds", field_name)
        # 9999-12-31T23:59:59-23:59 is a valid RFC 3339 time past what datetime can hold in UTC.
        seconds = int(moment.astimezone(timezone.utc).timestamp())
    except (ValueError, OverflowError):
        raise InvalidInput("invalid_time", "times are RFC 3339, e.g. 2027-03-28T09:00:00Z", field_name) from None
    if not (EARLIEST_INSTANT <= seconds <= LATEST_INSTANT):
        raise InvalidInput("invalid_time", "times are between 1970-01-01 and 9000-01-01", field_name)
    return seconds
