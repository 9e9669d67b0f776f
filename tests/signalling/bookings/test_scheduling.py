from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from signalling.app.factory import create_app
from signalling.auth.tokens import TOKENS
from signalling.bookings.rest import BOOKING_LISTENER
from signalling.bookings.scheduling import BookingListener, BookingRules, BookingStore, Scheduler
from signalling.bookings.tables import Booking, SqliteBookingTables
from signalling.bookings.tables_postgres import PostgresBookingTables
from signalling.core.database import Database
from signalling.core.errors import ApiError
from signalling.core.postgres import connect
from signalling.core.settings import Settings, SettingsError
from signalling.experts.model import Profile, WorkingHours
from signalling.experts.profiles import ExpertProfiles
from signalling.experts.store import SqliteExpertStore
from signalling.experts.store_postgres import PostgresExpertStore

pytestmark = pytest.mark.integration

ALL_DAY = {"time_zone": "UTC", "weekly": {d: [["00:00", "24:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}}
OFFICE = {"time_zone": "Europe/Berlin", "weekly": {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}}


class Recorder(BookingListener):
    """Collects what the scheduler announces, with the wall-clock time it happened."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any, float]] = []
        self.changed = asyncio.Event()

    def _add(self, kind: str, booking: Booking, extra: Any = None) -> None:
        self.events.append((kind, booking.id, extra, time.time()))
        self.changed.set()

    async def on_booked(self, booking: Booking) -> None:
        self._add("booked", booking)

    async def on_reminder(self, booking: Booking, seconds_before: int) -> None:
        self._add("reminder", booking, seconds_before)

    async def on_due(self, booking: Booking) -> None:
        self._add("due", booking, booking.state)

    async def on_cancelled(self, booking: Booking, by: str) -> None:
        self._add("cancelled", booking, by)

    def of(self, booking_id: str) -> list[tuple[str, Any]]:
        return [(kind, extra) for kind, bid, extra, _ in self.events if bid == booking_id]

    async def wait_for(self, kind: str, booking_id: str, timeout: float = 20.0) -> float:
        """The time ``kind`` happened for the booking, waiting for it if needed."""
        deadline = time.monotonic() + timeout
        while True:
            for k, bid, _, at in self.events:
                if k == kind and bid == booking_id:
                    return at
            self.changed.clear()
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {kind} for {booking_id}: {self.events}"
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass


@pytest.fixture
def settings(tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    # Short reminders and no minimum notice, so that a booking a few seconds ahead runs its course.
    return Settings(
        data_dir=tmp_path / "var",
        secret="test-secret-0123456789abcdef-0123456789",
        reminder_lead_seconds=(2, 1),
        booking_min_notice_seconds=0,
        booking_min_seconds=60,
        booking_max_seconds=8 * 3600,
        booking_max_days_ahead=400,
    )


async def serve(aiohttp_client: Any, settings: Settings, listener: BookingListener | None = None) -> Any:
    app = create_app(settings)
    if listener is not None:
        app[BOOKING_LISTENER] = listener
    return await aiohttp_client(app)


def auth(client: Any, user: str, role: str = "client") -> dict[str, str]:
    return {"Authorization": f"Bearer {client.app[TOKENS].mint(user, role)}"}


async def make_expert(client: Any, expert_id: str, hours: dict[str, Any]) -> None:
    body = {"display_name": expert_id.title(), "working_hours": hours}
    resp = await client.put(f"/api/experts/{expert_id}", json=body, headers=auth(client, expert_id, "expert"))
    assert resp.status in (200, 201), await resp.text()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


async def book(client: Any, user: str, expert_id: str, start: float, end: float, **extra: Any) -> Any:
    body = {"expert_id": expert_id, "start": iso(start), "end": iso(end), **extra}
    return await client.post("/api/bookings", json=body, headers=auth(client, user))


async def error_of(resp: Any) -> tuple[int, str]:
    return resp.status, (await resp.json())["error"]["code"]


def local(day: date, hh: int, zone: str = "Europe/Berlin") -> int:
    return int(datetime(day.year, day.month, day.day, hh, tzinfo=ZoneInfo(zone)).timestamp())


def next_weekday(weekday: int, after_days: int = 2) -> date:
    day = date.today() + timedelta(days=after_days)
    return day + timedelta(days=(weekday - day.weekday()) % 7)


# -- the rules -----------------------------------------------------------------------------------


async def test_booking_inside_hours_accepted_outside_refused(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    client = await serve(aiohttp_client, settings)
    await make_expert(client, "ada", OFFICE)
    wednesday, saturday = next_weekday(2), next_weekday(5)

    resp = await book(client, "carl", "ada", local(wednesday, 10), local(wednesday, 11), topic="pandas")
    assert resp.status == 201
    booking = await resp.json()
    assert booking["state"] == "booked" and booking["topic"] == "pandas" and booking["start"].endswith("Z")

    for start, end in [
        (local(wednesday, 8), local(wednesday, 9)),  # before the day starts
        (local(wednesday, 16), local(wednesday, 18)),  # runs past its end
        (local(saturday, 10), local(saturday, 11)),  # not a working day
    ]:
        assert await error_of(await book(client, "carl", "ada", start, end)) == (400, "outside_working_hours")

    now = math.ceil(time.time())
    assert await error_of(await book(client, "carl", "ada", local(wednesday, 12), local(wednesday, 12) + 30)) == (
        400,
        "invalid_duration",
    )
    assert await error_of(await book(client, "carl", "ada", now - 3600, now - 1800)) == (400, "too_soon")
    far = next_weekday(2, after_days=401)
    assert await error_of(await book(client, "carl", "ada", local(far, 10), local(far, 11))) == (400, "too_far_ahead")
    assert await error_of(await book(client, "carl", "nobody", now + 60, now + 3600)) == (404, "expert_not_found")
    await make_expert(client, "bob", None)  # type: ignore[arg-type]
    assert await error_of(await book(client, "carl", "bob", now + 60, now + 3600)) == (409, "no_working_hours")

    body = {"expert_id": "ada", "start": "2027-01-01T10:00:00", "end": "2027-01-01T11:00:00"}
    resp = await client.post("/api/bookings", json=body, headers=auth(client, "carl"))
    assert await error_of(resp) == (400, "invalid_time")
    resp = await client.post("/api/bookings", json={"expert_id": "ada"}, headers=auth(client, "carl"))
    assert await error_of(resp) == (400, "schema_violation")
    resp = await client.post("/api/bookings", json=body, headers=auth(client, "ada", "expert"))
    assert await error_of(resp) == (403, "forbidden")


async def test_hours_across_daylight_saving(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    """On the day Berlin changes its clocks, 09:00-17:00 is still 09:00-17:00 on the wall."""
    zone = ZoneInfo("Europe/Berlin")
    day = date.today() + timedelta(days=8)
    while datetime(day.year, day.month, day.day, 12, tzinfo=zone).utcoffset() == datetime(
        (d := day - timedelta(days=1)).year, d.month, d.day, 12, tzinfo=zone
    ).utcoffset():
        day += timedelta(days=1)
    week_before = day - timedelta(days=7)
    weekday = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[day.weekday()]
    client = await serve(aiohttp_client, settings)
    await make_expert(client, "ada", {"time_zone": "Europe/Berlin", "weekly": {weekday: [["09:00", "17:00"]]}})

    # The same UTC times as last week's working day are an hour off the wall clock now.
    shifted = local(week_before, 9) + 7 * 86400, local(week_before, 17) + 7 * 86400
    assert shifted[0] != local(day, 9)
    assert await error_of(await book(client, "carl", "ada", *shifted)) == (400, "outside_working_hours")
    on_the_day = await book(client, "carl", "ada", local(day, 9), local(day, 17))
    assert on_the_day.status == 201
    assert (await book(client, "carl", "ada", local(week_before, 9), local(week_before, 17))).status == 201

    window = {"from": iso_z(local(week_before, 0)), "to": iso_z(local(day, 23)), "duration": "3600"}
    resp = await client.get("/api/experts/ada/slots", params=window, headers=auth(client, "dana"))
    body = await resp.json()
    assert body["time_zone"] == "Europe/Berlin" and body["free"] == [] and body["slots"] == []

    resp = await client.delete(f"/api/bookings/{(await on_the_day.json())['id']}", headers=auth(client, "carl"))
    assert resp.status == 200
    resp = await client.get("/api/experts/ada/slots", params=window, headers=auth(client, "dana"))
    body = await resp.json()
    assert body["free"] == [{"start": iso_z(local(day, 9)), "end": iso_z(local(day, 17))}]
    assert [s["start"] for s in body["slots"]] == [iso_z(local(day, 9) + h * 3600) for h in range(8)]


def iso_z(ts: int) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_double_booking_refused(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    client = await serve(aiohttp_client, settings)
    await make_expert(client, "ada", ALL_DAY)
    await make_expert(client, "bob", ALL_DAY)
    t = math.ceil(time.time()) + 3600

    first = await book(client, "carl", "ada", t, t + 3600)
    assert first.status == 201
    first_id = (await first.json())["id"]
    assert await error_of(await book(client, "dana", "ada", t, t + 3600)) == (409, "slot_taken")
    assert await error_of(await book(client, "dana", "ada", t + 1800, t + 5400)) == (409, "slot_taken")
    assert await error_of(await book(client, "dana", "ada", t - 1800, t + 60)) == (409, "slot_taken")
    # The client cannot be in two places either.
    assert await error_of(await book(client, "carl", "bob", t + 600, t + 1200)) == (409, "client_busy")
    # Slots are half-open: one may start when the other ends.
    assert (await book(client, "dana", "ada", t + 3600, t + 7200)).status == 201
    # Repeating the same request is a harmless retry.
    again = await book(client, "carl", "ada", t, t + 3600)
    assert again.status == 200 and (await again.json())["id"] == first_id

    window = {"from": iso_z(t - 3600), "to": iso_z(t + 3 * 3600), "duration": "1800"}
    resp = await client.get("/api/experts/ada/slots", params=window, headers=auth(client, "eve"))
    body = await resp.json()
    assert body["free"] == [
        {"start": iso_z(t - 3600), "end": iso_z(t)},
        {"start": iso_z(t + 7200), "end": iso_z(t + 3 * 3600)},
    ]
    assert [s["start"] for s in body["slots"]] == [iso_z(t - 3600), iso_z(t - 1800), iso_z(t + 7200), iso_z(t + 9000)]


async def test_concurrent_requests_for_one_slot(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    client = await serve(aiohttp_client, settings)
    await make_expert(client, "ada", ALL_DAY)
    t = math.ceil(time.time()) + 3600
    responses = await asyncio.gather(*(book(client, f"client{i}", "ada", t, t + 3600) for i in range(8)))
    statuses = sorted(r.status for r in responses)
    assert statuses == [201] + [409] * 7
    for r in responses:
        if r.status == 409:
            assert (await r.json())["error"]["code"] == "slot_taken"
    resp = await client.get("/api/bookings", headers=auth(client, "root", "admin"))
    assert len((await resp.json())["bookings"]) == 1


def test_two_processes_cannot_take_one_slot(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two connections to one file, racing in threads: the IMMEDIATE transaction lets one win."""
    rules = BookingRules(min_notice_seconds=0, min_seconds=60)
    setup_dir = ExpertProfiles(SqliteExpertStore(Database.in_dir(tmp_path)))
    asyncio.run(setup_dir.upsert_profile("ada", Profile("Ada", working_hours=WorkingHours.from_json(ALL_DAY))))
    stores = [
        BookingStore(SqliteBookingTables(Database.in_dir(tmp_path)), ExpertProfiles(SqliteExpertStore(Database.in_dir(tmp_path))), rules)
        for _ in range(4)
    ]
    t = math.ceil(time.time()) + 3600
    barrier = threading.Barrier(len(stores))
    outcomes: list[str] = []

    def race(i: int) -> None:
        barrier.wait()
        try:
            asyncio.run(stores[i].create(f"client{i}", "ada", t, t + 3600))
            outcomes.append("booked")
        except ApiError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(stores))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(outcomes) == ["booked"] + ["slot_taken"] * (len(stores) - 1)


async def test_nodes_on_one_postgresql_cannot_take_one_slot(postgres_url) -> None:  # type: ignore[no-untyped-def]
    """Four nodes (a pool each) on the shared database: one booking per slot, and one per client."""
    rules = BookingRules(min_notice_seconds=0, min_seconds=60)
    pools = [await connect(postgres_url) for _ in range(4)]
    try:
        directory = ExpertProfiles(await PostgresExpertStore.open(pools[0]))
        await directory.upsert_profile("ada", Profile("Ada", working_hours=WorkingHours.from_json(ALL_DAY)))
        await directory.upsert_profile("bob", Profile("Bob", working_hours=WorkingHours.from_json(ALL_DAY)))
        stores = [BookingStore(await PostgresBookingTables.open(p), ExpertProfiles(PostgresExpertStore(p)), rules)
                  for p in pools]
        t = math.ceil(time.time()) + 3600

        async def attempt(store: BookingStore, client: str, expert: str, start: int = t) -> str:
            try:
                await store.create(client, expert, start, start + 3600, client_name=f"{client.title()} C.")
                return "booked"
            except ApiError as exc:
                return exc.code

        outcomes = await asyncio.gather(*(attempt(s, f"client{i}", "ada") for i, s in enumerate(stores)))
        assert sorted(outcomes) == ["booked"] + ["slot_taken"] * 3
        # One client, two experts, the same hour, two nodes: only one.
        later = t + 7200
        pair = await asyncio.gather(attempt(stores[1], "carl", "ada", later), attempt(stores[2], "carl", "bob", later))
        assert sorted(pair) == ["booked", "client_busy"]
        # What one node booked, every node sees; a reminder or an opening is recorded once.
        booked = await stores[3].list_for("ada", state="booked", limit=1)
        assert len(await stores[3].list_for(None)) == 2 and (await stores[0].get(booked[0].id)) == booked[0]
        assert booked[0].expert_name == "Ada" and booked[0].client_name.endswith(" C.")
        recorded = await asyncio.gather(*(s.record_reminder(booked[0].id, 600, []) for s in stores))
        assert sorted(recorded) == [False, False, False, True]
    finally:
        for pool in pools:
            await pool.close()


def test_rules_are_validated() -> None:
    with pytest.raises(SettingsError):
        BookingRules(min_seconds=600, max_seconds=60)
    with pytest.raises(SettingsError):
        BookingRules(reminder_leads=(60, 0))
    assert BookingRules(reminder_leads=(60, 600, 60)).reminder_leads == (600, 60)


# -- reminders, opening, cancelling ----------------------------------------------------------------


async def test_reminders_then_the_session_opens_on_time(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    recorder = Recorder()
    client = await serve(aiohttp_client, settings, recorder)
    await make_expert(client, "ada", ALL_DAY)
    start_at = math.ceil(time.time()) + 6  # seconds of slack for a loaded machine before the first reminder
    resp = await book(client, "carl", "ada", start_at, start_at + 60)
    booking_id = (await resp.json())["id"]

    opened_at = await recorder.wait_for("due", booking_id)
    assert recorder.of(booking_id) == [("booked", None), ("reminder", 2), ("reminder", 1), ("due", "open")]
    # Never early: each announcement comes at or after its time.
    times = {(k, x): at for k, bid, x, at in recorder.events if bid == booking_id}
    assert times[("reminder", 2)] >= start_at - 2 and times[("reminder", 1)] >= start_at - 1
    assert opened_at >= start_at

    resp = await client.get(f"/api/bookings/{booking_id}", headers=auth(client, "ada", "expert"))
    body = await resp.json()
    assert body["state"] == "open" and body["opened_at"] is not None
    # Once started, it can no longer be cancelled.
    resp = await client.delete(f"/api/bookings/{booking_id}", headers=auth(client, "carl"))
    assert await error_of(resp) == (409, "booking_started")
    metrics = await (await client.get("/metrics", headers=auth(client, "ops", "admin"))).text()
    assert 'expertcall_bookings_total{event="reminder"} 2.0' in metrics
    assert 'expertcall_bookings_total{event="due"} 1.0' in metrics


async def test_cancel_before_start_by_either_party(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    recorder = Recorder()
    client = await serve(aiohttp_client, settings, recorder)
    await make_expert(client, "ada", ALL_DAY)
    soon = math.ceil(time.time()) + 6
    later = soon + 3600

    by_expert = (await (await book(client, "carl", "ada", soon, soon + 60)).json())["id"]
    by_client = (await (await book(client, "carl", "ada", later, later + 60)).json())["id"]
    # Lists and messages name the parties: the expert's display name, the name on the client's token.
    named = {"Authorization": f"Bearer {client.app[TOKENS].mint('cleo', 'client', name='Cleo C.')}"}
    body = {"expert_id": "ada", "start": iso(later + 7200), "end": iso(later + 7260)}
    booked = await (await client.post("/api/bookings", json=body, headers=named)).json()
    assert (booked["expert_name"], booked["client_name"]) == ("Ada", "Cleo C.")
    assert (await (await client.get(f"/api/bookings/{by_client}", headers=auth(client, "carl"))).json())["client_name"] == "carl"

    assert (await client.delete(f"/api/bookings/{by_client}", headers=auth(client, "eve"))).status == 404
    assert (await client.get(f"/api/bookings/{by_client}", headers=auth(client, "eve"))).status == 404

    resp = await client.delete(f"/api/bookings/{by_expert}?reason=ill", headers=auth(client, "ada", "expert"))
    body = await resp.json()
    assert resp.status == 200 and body["state"] == "cancelled"
    assert (body["cancelled_by"], body["cancel_reason"]) == ("ada", "ill")
    resp = await client.delete(f"/api/bookings/{by_client}", headers=auth(client, "carl"))
    assert (await resp.json())["cancelled_by"] == "carl"
    # Cancelling again changes nothing and tells nobody again.
    resp = await client.delete(f"/api/bookings/{by_client}", headers=auth(client, "carl"))
    assert resp.status == 200 and (await resp.json())["cancelled_by"] == "carl"
    assert recorder.of(by_client) == [("booked", None), ("cancelled", "carl")]

    # The freed slot can be booked again, and the cancelled one never reminds or opens.
    replacement = (await (await book(client, "dana", "ada", soon, soon + 60)).json())["id"]
    await recorder.wait_for("due", replacement)
    assert recorder.of(by_expert) == [("booked", None), ("cancelled", "ada")]

    resp = await client.get("/api/bookings?state=cancelled", headers=auth(client, "carl"))
    assert sorted(b["id"] for b in (await resp.json())["bookings"]) == sorted([by_expert, by_client])
    resp = await client.get("/api/bookings", headers=auth(client, "dana"))
    assert [b["id"] for b in (await resp.json())["bookings"]] == [replacement]


async def test_restart_keeps_bookings_and_sends_nothing_twice(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    settings = replace(settings, reminder_lead_seconds=(4,))
    first = Recorder()
    client = await serve(aiohttp_client, settings, first)
    await make_expert(client, "ada", ALL_DAY)
    start_at = math.ceil(time.time()) + 8
    soon = (await (await book(client, "carl", "ada", start_at, start_at + 60)).json())["id"]
    later = (await (await book(client, "carl", "ada", start_at + 3600, start_at + 3660)).json())["id"]

    await first.wait_for("reminder", soon)
    await client.close()  # the server goes down before the start...
    await asyncio.sleep(max(0.0, start_at + 0.5 - time.time()))  # ...and stays down past it

    second = Recorder()
    client = await serve(aiohttp_client, settings, second)
    await second.wait_for("due", soon)
    assert second.of(soon) == [("due", "open")]  # opened late, no second reminder
    assert second.of(later) == []
    resp = await client.get("/api/bookings", headers=auth(client, "carl"))
    assert [(b["id"], b["state"]) for b in (await resp.json())["bookings"]] == [(soon, "open"), (later, "booked")]


# -- catching up after downtime, with a clock the test controls ------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def run_once(store: BookingStore) -> Recorder:
    """Start a scheduler (as a restarted server would), let its first pass run, stop it."""
    recorder = Recorder()
    scheduler = Scheduler(store, recorder)
    scheduler.start()
    for _ in range(20):
        await asyncio.sleep(0.01)
    await scheduler.close()
    return recorder


async def test_catching_up_after_downtime(tmp_path) -> None:  # type: ignore[no-untyped-def]
    clock = Clock(1_900_000_000)
    db = Database.in_dir(tmp_path)
    directory = ExpertProfiles(SqliteExpertStore(db), clock=clock)
    await directory.upsert_profile("ada", Profile("Ada", working_hours=WorkingHours.from_json(ALL_DAY)))
    store = BookingStore(SqliteBookingTables(db), directory, BookingRules(min_notice_seconds=0, min_seconds=60, reminder_leads=(600, 60)), clock)
    t0 = int(clock.now)
    a, _ = await store.create("carl", "ada", t0 + 1000, t0 + 2000)  # both reminders ahead
    b, _ = await store.create("dana", "ada", t0 + 3000, t0 + 4000)
    c, _ = await store.create("eve", "ada", t0 + 300, t0 + 950)  # booked inside its 600 s lead

    clock.now = t0 + 1000 - 100  # down through a's 600 s reminder, c's 60 s one and c's start
    r = await run_once(store)
    assert r.of(a.id) == [("reminder", 600)] and r.of(b.id) == [] and r.of(c.id) == [("due", "open")]
    assert (await run_once(store)).events == []  # a restart repeats nothing

    clock.now = t0 + 3000 - 30  # down through b's 600 s and 60 s reminders and a's whole slot
    r = await run_once(store)
    assert r.of(a.id) == [] and r.of(b.id) == [("reminder", 60)]
    assert (await store.get(a.id)).state == "missed"  # type: ignore[union-attr]

    clock.now = t0 + 3000
    r = await run_once(store)
    assert r.of(b.id) == [("due", "open")]
    assert (await run_once(store)).events == []


async def test_slots_start_at_round_times_and_respect_notice(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    client = await serve(aiohttp_client, replace(settings, booking_min_notice_seconds=3600))
    await make_expert(client, "ada", ALL_DAY)
    resp = await client.get("/api/experts/ada/slots", params={"duration": "900"}, headers=auth(client, "eve"))
    body = await resp.json()
    first = datetime.fromisoformat(body["free"][0]["start"]).timestamp()
    assert first % 300 == 0 and time.time() + 3600 <= first < time.time() + 3600 + 300 + 5
    to = datetime.fromisoformat(body["to"]).timestamp()
    assert body["free"][-1]["end"] == body["to"] and len(body["slots"]) == (to - first) // 900
    resp = await client.get("/api/experts/nobody/slots", headers=auth(client, "eve"))
    assert await error_of(resp) == (404, "expert_not_found")
    resp = await client.get("/api/experts/ada/slots", params={"from": "2030-01-02T00:00:00Z", "to": "2030-01-01T00:00:00Z"}, headers=auth(client, "eve"))
    assert await error_of(resp) == (400, "invalid_window")
