"""Scheduled sessions: bookings of a slot in an expert's working hours, reminders, and the opening.

``BookingStore`` keeps bookings in SQLite and enforces the rules (inside the expert's hours, no
overlap for the expert or the client, notice and horizon) in one ``BEGIN IMMEDIATE`` transaction,
so two requests for the same slot - even from two processes - cannot both succeed.

``Scheduler`` is one asyncio task that tells a ``BookingListener`` when reminders and openings are
due. It keeps no state of its own: every wake-up reads the pending bookings from SQLite, so a
restart picks up where the last process stopped. Each reminder and each opening is recorded
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
from typing import Any, Callable

from .database import Database
from .experts import ExpertDirectory, iso_utc
from .metrics import Metrics
from .rest_errors import ApiError, InvalidInput
from .settings import Settings, SettingsError

log = logging.getLogger(__name__)

BOOKED = "booked"  # waiting for its start
OPEN = "open"  # its start came and the listener was told to open the session
CANCELLED = "cancelled"
MISSED = "missed"  # its whole slot passed while the server was down
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


@dataclass(frozen=True)
class Booking:
    id: str
    expert_id: str
    client_id: str
    start: int  # Unix seconds, UTC
    end: int
    state: str
    topic: str | None
    created_at: int
    opened_at: int | None = None
    cancelled_at: int | None = None
    cancelled_by: str | None = None
    cancel_reason: str | None = None

    def has_party(self, user_id: str) -> bool:
        return user_id in (self.expert_id, self.client_id)

    def other_party(self, user_id: str) -> str:
        return self.client_id if user_id == self.expert_id else self.expert_id

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "expert_id": self.expert_id,
            "client_id": self.client_id,
            "start": iso_utc(self.start),
            "end": iso_utc(self.end),
            "state": self.state,
            "topic": self.topic,
            "created_at": iso_utc(self.created_at),
            "opened_at": iso_utc(self.opened_at) if self.opened_at is not None else None,
            "cancelled_at": iso_utc(self.cancelled_at) if self.cancelled_at is not None else None,
            "cancelled_by": self.cancelled_by,
            "cancel_reason": self.cancel_reason,
        }


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


SCHEMA = """
CREATE TABLE IF NOT EXISTS bookings (
    id TEXT PRIMARY KEY,
    expert_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL CHECK ("end" > start),
    state TEXT NOT NULL,
    topic TEXT,
    created_at INTEGER NOT NULL,
    opened_at INTEGER,
    cancelled_at INTEGER,
    cancelled_by TEXT,
    cancel_reason TEXT
);
CREATE INDEX IF NOT EXISTS bookings_by_expert ON bookings (expert_id, start);
CREATE INDEX IF NOT EXISTS bookings_by_client ON bookings (client_id, start);
CREATE INDEX IF NOT EXISTS bookings_by_state ON bookings (state, start);
CREATE TABLE IF NOT EXISTS booking_reminders (
    booking_id TEXT NOT NULL REFERENCES bookings(id),
    lead_seconds INTEGER NOT NULL,
    outcome TEXT NOT NULL,  -- 'sent', or 'skipped' when its time had passed
    at INTEGER NOT NULL,
    PRIMARY KEY (booking_id, lead_seconds)
);
"""

_ACTIVE = f"state IN ('{BOOKED}', '{OPEN}')"


class BookingStore:
    def __init__(
        self,
        db: Database,
        directory: ExpertDirectory,
        rules: BookingRules,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.directory = directory
        self.rules = rules
        self.clock = clock
        db.migrate(SCHEMA)

    def create(
        self, client_id: str, expert_id: str, start: int, end: int, topic: str | None = None
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
        expert = self.directory.get(expert_id)
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
        with self.db.transaction() as conn:
            same = conn.execute(
                f"SELECT * FROM bookings WHERE client_id = ? AND expert_id = ? AND start = ? AND \"end\" = ? AND {_ACTIVE}",
                (client_id, expert_id, start, end),
            ).fetchone()
            if same:
                return _booking(same), False
            held = f"SELECT COUNT(*) FROM bookings WHERE {{}} = ? AND state = '{BOOKED}'"
            if conn.execute(held.format("client_id"), (client_id,)).fetchone()[0] >= rules.max_open_per_client:
                raise ApiError("too_many_bookings",
                               f"you already hold {rules.max_open_per_client} bookings that have not started: cancel one first",
                               None, status=429)
            if conn.execute(held.format("expert_id"), (expert_id,)).fetchone()[0] >= rules.max_open_per_expert:
                raise ApiError("too_many_bookings",
                               f"this expert already has {rules.max_open_per_expert} bookings that have not started",
                               "expert_id", status=429)
            overlap = f'start < ? AND "end" > ? AND {_ACTIVE}'
            if conn.execute(f"SELECT 1 FROM bookings WHERE expert_id = ? AND {overlap}", (expert_id, end, start)).fetchone():
                raise ApiError("slot_taken", "the expert already has a booking at that time", "start", status=409)
            if conn.execute(f"SELECT 1 FROM bookings WHERE client_id = ? AND {overlap}", (client_id, end, start)).fetchone():
                raise ApiError("client_busy", "you already have a booking at that time", "start", status=409)
            booking = Booking(uuid.uuid4().hex, expert_id, client_id, start, end, BOOKED, topic, now)
            conn.execute(
                "INSERT INTO bookings (id, expert_id, client_id, start, \"end\", state, topic, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (booking.id, expert_id, client_id, start, end, BOOKED, topic, now),
            )
            # A reminder whose time has already passed would only repeat what the client just did.
            conn.executemany(
                "INSERT INTO booking_reminders VALUES (?, ?, 'skipped', ?)",
                [(booking.id, lead, now) for lead in rules.reminder_leads if start - lead <= now],
            )
        return booking, True

    def cancel(self, booking_id: str, by: str, reason: str | None = None) -> tuple[Booking, bool]:
        """Cancel before the start: the booking and whether this call cancelled it (a repeated
        cancel is harmless). The caller has checked that ``by`` may cancel it."""
        if reason is not None and len(reason) > MAX_REASON:
            raise InvalidInput("invalid_reason", f"the reason is at most {MAX_REASON} characters", "reason")
        now = int(self.clock())
        with self.db.transaction() as conn:
            changed = conn.execute(
                f"UPDATE bookings SET state = '{CANCELLED}', cancelled_at = ?, cancelled_by = ?, cancel_reason = ? "
                f"WHERE id = ? AND state = '{BOOKED}' AND start > ?",
                (now, by, reason.strip() or None if reason else None, booking_id, now),
            ).rowcount
            booking = self.get(booking_id)
        if booking is None:
            raise ApiError("booking_not_found", f"no booking {booking_id!r}", "id", status=404)
        if not changed and booking.state != CANCELLED:
            raise ApiError("booking_started", "a booking can only be cancelled before it starts", "id", status=409)
        return booking, bool(changed)

    def get(self, booking_id: str) -> Booking | None:
        row = self.db.fetchone("SELECT * FROM bookings WHERE id = ?", (booking_id,))
        return _booking(row) if row else None

    def list_for(self, user_id: str | None, state: str | None = None, limit: int = 50, offset: int = 0) -> list[Booking]:
        """A user's bookings as client or expert (everyone's for None), by start time."""
        where, params = [], []
        if user_id is not None:
            where.append("(client_id = ? OR expert_id = ?)")
            params += [user_id, user_id]
        if state is not None:
            where.append("state = ?")
            params.append(state)
        sql_where = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.fetchall(
            f"SELECT * FROM bookings {sql_where} ORDER BY start, id LIMIT ? OFFSET ?", [*params, limit, offset]
        )
        return [_booking(r) for r in rows]

    def free_intervals(self, expert_id: str, start: int, end: int) -> list[tuple[int, int]]:
        """The expert's bookable time in [start, end): working hours within the notice and the
        horizon, minus active bookings."""
        expert = self.directory.get(expert_id)
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
        busy = self.db.fetchall(
            f'SELECT start, "end" FROM bookings WHERE expert_id = ? AND start < ? AND "end" > ? AND {_ACTIVE} ORDER BY start',
            (expert_id, end, start),
        )
        free: list[tuple[int, int]] = []
        for s, e in hours.intervals(start, end):
            for row in busy:
                if row["end"] <= s or row["start"] >= e:
                    continue
                if row["start"] > s:
                    free.append((s, row["start"]))
                s = max(s, row["end"])
            if s < e:
                free.append((s, e))
        return free

    # What the scheduler reads and records.

    def pending(self, until: float) -> list[tuple[Booking, set[int]]]:
        """Bookings still waiting for their start that start by ``until``, with the reminder leads
        already handled."""
        rows = self.db.fetchall(
            f"SELECT * FROM bookings WHERE state = '{BOOKED}' AND start <= ? ORDER BY start", (until,)
        )
        out = []
        for row in rows:
            handled = {r[0] for r in self.db.fetchall(
                "SELECT lead_seconds FROM booking_reminders WHERE booking_id = ?", (row["id"],)
            )}
            out.append((_booking(row), handled))
        return out

    def next_start(self) -> int | None:
        row = self.db.fetchone(f"SELECT MIN(start) FROM bookings WHERE state = '{BOOKED}'")
        return row[0] if row else None

    def record_reminder(self, booking_id: str, lead: int, skipped: list[int]) -> bool:
        """Record ``lead`` as sent and ``skipped`` as passed; False if the booking is no longer
        waiting or the reminder was already recorded."""
        now = int(self.clock())
        with self.db.transaction() as conn:
            if not conn.execute(f"SELECT 1 FROM bookings WHERE id = ? AND state = '{BOOKED}'", (booking_id,)).fetchone():
                return False
            sent = conn.execute(
                "INSERT INTO booking_reminders VALUES (?, ?, 'sent', ?) ON CONFLICT DO NOTHING",
                (booking_id, lead, now),
            ).rowcount
            conn.executemany(
                "INSERT INTO booking_reminders VALUES (?, ?, 'skipped', ?) ON CONFLICT DO NOTHING",
                [(booking_id, s, now) for s in skipped],
            )
        return bool(sent)

    def record_start(self, booking_id: str) -> Booking | None:
        """Move a waiting booking whose start has come to ``open`` (or ``missed`` if its slot is
        over); the updated booking, or None if it was no longer waiting."""
        now = int(self.clock())
        with self.db.transaction() as conn:
            changed = conn.execute(
                f"UPDATE bookings SET state = CASE WHEN \"end\" > :now THEN '{OPEN}' ELSE '{MISSED}' END, "
                f"opened_at = CASE WHEN \"end\" > :now THEN :now END "
                f"WHERE id = :id AND state = '{BOOKED}' AND start <= :now",
                {"now": now, "id": booking_id},
            ).rowcount
        return self.get(booking_id) if changed else None


def _booking(row: Any) -> Booking:
    return Booking(
        id=row["id"],
        expert_id=row["expert_id"],
        client_id=row["client_id"],
        start=row["start"],
        end=row["end"],
        state=row["state"],
        topic=row["topic"],
        created_at=row["created_at"],
        opened_at=row["opened_at"],
        cancelled_at=row["cancelled_at"],
        cancelled_by=row["cancelled_by"],
        cancel_reason=row["cancel_reason"],
    )


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
        if task is None:
            return
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task

    async def book(self, client_id: str, expert_id: str, start: int, end: int, topic: str | None = None) -> tuple[Booking, bool]:
        booking, created = self.store.create(client_id, expert_id, start, end, topic)
        if created:
            self._wake.set()
            await self._tell("on_booked", booking)
        return booking, created

    async def cancel(self, booking_id: str, by: str, reason: str | None = None) -> tuple[Booking, bool]:
        booking, changed = self.store.cancel(booking_id, by, reason)
        if changed:
            self._wake.set()
            await self._tell("on_cancelled", booking, by)
        return booking, changed

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._fire_due()
                delay = self._delay()
            except Exception:
                # The database can be briefly locked by another process; try again shortly.
                log.exception("booking scheduler pass failed")
                delay = 1.0
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _fire_due(self) -> None:
        leads = self.store.rules.reminder_leads
        now = self.store.clock()
        for booking, handled in self.store.pending(now + max(leads, default=0)):
            if booking.start <= now:
                opened = self.store.record_start(booking.id)
                if opened is not None and opened.state == OPEN:
                    await self._tell("on_due", opened)
                elif opened is not None:
                    log.warning("booking %s missed: its slot ended while the server was down", booking.id)
                    self._count("missed")
                continue
            overdue = [lead for lead in leads if booking.start - lead <= now and lead not in handled]
            if overdue:
                lead = min(overdue)
                if self.store.record_reminder(booking.id, lead, [x for x in overdue if x != lead]):
                    await self._tell("on_reminder", booking, lead)

    def _delay(self) -> float:
        """Seconds until the next reminder or start."""
        first = self.store.next_start()
        if first is None:
            return MAX_SLEEP
        now = self.store.clock()
        leads = self.store.rules.reminder_leads
        times = []
        for booking, handled in self.store.pending(first + max(leads, default=0)):
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


def parse_instant(raw: object, field_name: str) -> int:
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
