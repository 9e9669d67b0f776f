from __future__ import annotations

from datetime import date, datetime, timezone
from fractions import Fraction
from typing import Any, AsyncIterator

import pytest

from signalling.app.factory import create_app
from signalling.auth.tokens import TOKENS
from signalling.core.database import Database
from signalling.core.errors import ApiError, InvalidInput
from signalling.core.postgres import connect
from signalling.experts.model import (
    Profile,
    ProfilePrice,
    SearchQuery,
    WorkingHours,
    normalise_language,
    normalise_skill,
    search_words,
)
from signalling.experts.profiles import ExpertProfiles
from signalling.experts.rest import EXPERTS, SESSION_PARTIES
from signalling.experts.store import SqliteExpertStore
from signalling.experts.store_postgres import PostgresExpertStore

from ...externals import require
from ...postgres_helpers import create_database, drop_database

pytestmark = pytest.mark.integration

PROFILE = {
    "display_name": "Ada",
    "bio": "Numbers.",
    "skills": ["Python", "Machine  Learning", "python"],
    "languages": ["EN", "pt-br"],
    "price": {"mode": "per_minute", "amount": 150, "currency": "USD"},
    "working_hours": {"time_zone": "Europe/Berlin", "weekly": {"mon": [["09:00", "17:00"]]}},
}


class Sessions:
    """A stand-in for the sessions layer: session_id -> (expert_id, client_id, state)."""

    def __init__(self) -> None:
        self.parties: dict[str, tuple[str, str, str]] = {}

    def __call__(self, session_id: str) -> tuple[str, str, str] | None:
        return self.parties.get(session_id)


@pytest.fixture
def sessions() -> Sessions:
    return Sessions()


@pytest.fixture
async def api(aiohttp_client, settings, sessions):  # type: ignore[no-untyped-def]
    app = create_app(settings)
    app[SESSION_PARTIES] = sessions
    return await aiohttp_client(app)


def auth(client: Any, user: str, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.app[TOKENS].mint(user, role)}"}


async def put_profile(client: Any, expert_id: str, body: dict[str, Any], as_user: str | None = None, role: str = "expert") -> Any:
    return await client.put(f"/api/experts/{expert_id}", json=body, headers=auth(client, as_user or expert_id, role))


async def error_of(resp: Any) -> tuple[int, str, str | None]:
    body = await resp.json()
    return resp.status, body["error"]["code"], body["error"].get("field")


# -- profiles over HTTP --------------------------------------------------------------------------


async def test_expert_edits_own_profile_only(api) -> None:  # type: ignore[no-untyped-def]
    resp = await put_profile(api, "ada", PROFILE)
    assert resp.status == 201
    body = await resp.json()
    assert body["skills"] == ["python", "machine-learning"]
    assert body["languages"] == ["en", "pt-BR"]
    assert body["price"] == {"mode": "per_minute", "amount": 150, "currency": "USD"}
    assert body["working_hours"] == {"time_zone": "Europe/Berlin", "weekly": {"mon": [["09:00", "17:00"]]}}
    assert body["rating"] == {"average": None, "count": 0}
    assert body["availability"] == "offline"

    resp = await put_profile(api, "ada", {**PROFILE, "display_name": "Ada L."})
    assert resp.status == 200 and (await resp.json())["display_name"] == "Ada L."

    assert await error_of(await put_profile(api, "ada", PROFILE, as_user="bob")) == (403, "forbidden", "id")
    resp = await put_profile(api, "ada", PROFILE, as_user="ada", role="client")
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "forbidden"
    resp = await put_profile(api, "ada", {**PROFILE, "bio": "by admin"}, as_user="root", role="admin")
    assert resp.status == 200

    resp = await api.get("/api/experts/ada", headers=auth(api, "carol", "client"))
    assert resp.status == 200
    assert (await resp.json())["bio"] == "by admin"  # PUT replaces the whole profile
    assert await error_of(await api.get("/api/experts/nobody", headers=auth(api, "carol", "client"))) == (
        404,
        "expert_not_found",
        "id",
    )
    assert (await api.get("/api/experts")).status == 401
    assert (await api.get("/api/experts/ada")).status == 401


@pytest.mark.parametrize(
    "change, code, field",
    [
        ({"price": {"mode": "per_minute", "amount": 1.5, "currency": "USD"}}, "schema_violation", "price.amount"),
        ({"price": {"mode": "per_minute", "amount": 0, "currency": "USD"}}, "invalid_amount", "price.amount"),
        ({"price": {"mode": "free", "amount": 100}}, "invalid_amount", "price.amount"),
        ({"price": {"mode": "per_session", "amount": 100, "currency": "usd"}}, "invalid_currency", "price.currency"),
        ({"price": {"mode": "per_session", "amount": 100, "currency": "XYZ"}}, "invalid_currency", "price.currency"),
        ({"price": {"mode": "hourly", "amount": 100, "currency": "USD"}}, "schema_violation", "price.mode"),
        ({"working_hours": {"time_zone": "Mars/Olympus"}}, "invalid_time_zone", "working_hours.time_zone"),
        (
            {"working_hours": {"time_zone": "UTC", "weekly": {"tue": [["09:00", "12:00"], ["11:00", "13:00"]]}}},
            "overlapping_hours",
            "working_hours.weekly.tue",
        ),
        (
            {"working_hours": {"time_zone": "UTC", "weekly": {"tue": [["09:00", "25:00"]]}}},
            "invalid_hours",
            "working_hours.weekly.tue[0]",
        ),
        (
            {"working_hours": {"time_zone": "UTC", "weekly": {"tue": [["17:00", "09:00"]]}}},
            "invalid_hours",
            "working_hours.weekly.tue",
        ),
        ({"working_hours": {"time_zone": "UTC", "weekly": {"someday": []}}}, "schema_violation", "working_hours.weekly"),
        ({"skills": ["ok", "!!"]}, "invalid_skill", "skills[1]"),
        ({"languages": ["english language"]}, "invalid_language", "languages[0]"),
        ({"display_name": "   "}, "invalid_display_name", "display_name"),
        ({"display_name": 7}, "schema_violation", "display_name"),
        ({"surprise": True}, "schema_violation", None),
    ],
)
async def test_bad_profiles_get_coded_errors(api, change, code, field) -> None:  # type: ignore[no-untyped-def]
    assert await error_of(await put_profile(api, "ada", {**PROFILE, **change})) == (400, code, field)
    # Nothing was stored by the refused request.
    assert (await api.get("/api/experts/ada", headers=auth(api, "ada", "expert"))).status == 404


async def test_invalid_json_body(api) -> None:  # type: ignore[no-untyped-def]
    resp = await api.put("/api/experts/ada", data=b"{nope", headers=auth(api, "ada", "expert"))
    assert await error_of(resp) == (400, "invalid_json", None)


# -- search --------------------------------------------------------------------------------------


async def seed(api: Any, sessions: Sessions) -> None:
    experts = {
        "ada": (["python"], ["en"], {"mode": "per_minute", "amount": 150, "currency": "USD"}, [5, 4]),
        "bob": (["python", "sql"], ["pt-BR"], {"mode": "per_session", "amount": 5000, "currency": "USD"}, [3]),
        "cyd": (["python"], ["pt-PT", "fr"], {"mode": "free"}, []),
        "dee": (["sql"], ["en"], {"mode": "per_minute", "amount": 100, "currency": "EUR"}, [5]),
    }
    for expert_id, (skills, languages, price, stars) in experts.items():
        body = {"display_name": expert_id.title(), "skills": skills, "languages": languages, "price": price}
        assert (await put_profile(api, expert_id, body)).status == 201
        for i, n in enumerate(stars):
            session_id = f"{expert_id}-s{i}"
            sessions.parties[session_id] = (expert_id, f"client{i}", "ended")
            resp = await api.post(
                f"/api/sessions/{session_id}/rating", json={"stars": n}, headers=auth(api, f"client{i}", "client")
            )
            assert resp.status == 201


async def search(api: Any, query: str) -> list[str]:
    resp = await api.get(f"/api/experts?{query}", headers=auth(api, "zed", "client"))
    assert resp.status == 200, await resp.text()
    return [e["id"] for e in (await resp.json())["experts"]]


async def test_search_by_skill_price_rating_language(api, sessions) -> None:  # type: ignore[no-untyped-def]
    await seed(api, sessions)
    # Rated experts first, best average first; unrated ones last.
    assert await search(api, "") == ["dee", "ada", "bob", "cyd"]
    assert await search(api, "skill=Python") == ["ada", "bob", "cyd"]
    assert await search(api, "skill=python&max_price=200&currency=USD") == ["ada", "cyd"]
    assert await search(api, "max_price=200&currency=EUR") == ["dee", "cyd"]
    assert await search(api, "skill=python&mode=per_session") == ["bob"]
    assert await search(api, "min_rating=4.5") == ["dee", "ada"]
    assert await search(api, "min_rating=4.6") == ["dee"]
    assert await search(api, "language=pt") == ["bob", "cyd"]
    assert await search(api, "language=pt-br") == ["bob"]
    assert await search(api, "skill=cobol") == []

    resp = await api.get("/api/experts?skill=python&limit=2&offset=1", headers=auth(api, "zed", "client"))
    body = await resp.json()
    assert [e["id"] for e in body["experts"]] == ["bob", "cyd"] and body["total"] == 3
    assert body["experts"][0]["rating"] == {"average": 3.0, "count": 1}


@pytest.mark.parametrize(
    "query, code, field",
    [
        ("max_price=100", "currency_required", "currency"),
        ("max_price=-1&currency=USD", "invalid_max_price", "max_price"),
        ("max_price=100&currency=dollars", "invalid_currency", "currency"),
        ("min_rating=6", "invalid_min_rating", "min_rating"),
        ("min_rating=abc", "invalid_min_rating", "min_rating"),
        ("available=sleeping", "invalid_availability", "available"),
        ("limit=0", "invalid_limit", "limit"),
        ("limit=1000", "invalid_limit", "limit"),
        ("skill=%21%21", "invalid_skill", "skill"),
        ("skills=python", "unknown_parameter", "skills"),
        ("q=a+b+c+d+e+f+g+h+i", "invalid_q", "q"),
        ("q=" + "a" * 201, "invalid_q", "q"),
    ],
)
async def test_bad_search_parameters(api, query, code, field) -> None:  # type: ignore[no-untyped-def]
    resp = await api.get(f"/api/experts?{query}", headers=auth(api, "zed", "client"))
    assert await error_of(resp) == (400, code, field)


async def test_search_by_availability_from_the_presence_layer(api, sessions) -> None:  # type: ignore[no-untyped-def]
    await seed(api, sessions)
    states = {"ada": "online", "bob": "busy", "cyd": "online"}
    api.app[EXPERTS].availability = lambda expert_id: states.get(expert_id, "offline")
    assert await search(api, "available=online") == ["ada", "cyd"]
    assert await search(api, "skill=python&available=online,busy") == ["ada", "bob", "cyd"]
    assert await search(api, "available=offline") == ["dee"]

    async def from_redis(expert_id: str) -> str:  # an async presence backend works the same way
        return "away" if expert_id == "dee" else "offline"

    api.app[EXPERTS].availability = from_redis
    resp = await api.get("/api/experts?available=away", headers=auth(api, "zed", "client"))
    body = await resp.json()
    assert body["total"] == 1 and body["experts"][0]["id"] == "dee" and body["experts"][0]["availability"] == "away"


# -- ratings -------------------------------------------------------------------------------------


async def test_one_rating_per_ended_session_by_its_client(api, sessions) -> None:  # type: ignore[no-untyped-def]
    assert (await put_profile(api, "ada", PROFILE)).status == 201
    sessions.parties.update({"s1": ("ada", "carl", "ended"), "s2": ("ada", "dana", "ended"), "s3": ("ada", "carl", "live")})

    def rate(session_id: str, user: str, body: dict[str, Any], role: str = "client") -> Any:
        return api.post(f"/api/sessions/{session_id}/rating", json=body, headers=auth(api, user, role))

    resp = await rate("s1", "carl", {"stars": 5, "review": "  Clear and patient.  "})
    assert resp.status == 201
    body = await resp.json()
    assert body["rating"]["review"] == "Clear and patient." and body["expert_rating"] == {"average": 5.0, "count": 1}

    assert await error_of(await rate("s1", "carl", {"stars": 1})) == (409, "already_rated", "session_id")
    assert await error_of(await rate("s2", "carl", {"stars": 1})) == (403, "not_session_client", "session_id")
    assert await error_of(await rate("s2", "ada", {"stars": 5}, role="expert")) == (403, "not_session_client", "session_id")
    assert await error_of(await rate("s3", "carl", {"stars": 4})) == (409, "session_not_ended", "session_id")
    assert await error_of(await rate("nope", "carl", {"stars": 4})) == (404, "session_not_found", "session_id")
    assert await error_of(await rate("s2", "dana", {"stars": 0})) == (400, "invalid_stars", "stars")
    assert await error_of(await rate("s2", "dana", {"stars": 4.5})) == (400, "schema_violation", "stars")
    assert await error_of(await rate("s2", "dana", {"stars": 4, "review": "x" * 2001})) == (400, "invalid_review", "review")

    resp = await rate("s2", "dana", {"stars": 2})
    assert (await resp.json())["expert_rating"] == {"average": 3.5, "count": 2}

    resp = await api.get("/api/experts/ada/ratings", headers=auth(api, "zed", "client"))
    body = await resp.json()
    assert body["rating"] == {"average": 3.5, "count": 2}
    assert sorted(r["stars"] for r in body["ratings"]) == [2, 5]
    assert all("client_id" not in r for r in body["ratings"])
    assert (await (await api.get("/api/experts/ada", headers=auth(api, "zed", "client"))).json())["rating"] == {
        "average": 3.5,
        "count": 2,
    }


async def test_ratings_without_a_sessions_layer_find_no_session(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(create_app(settings))
    resp = await client.post("/api/sessions/s1/rating", json={"stars": 5}, headers=auth(client, "carl", "client"))
    assert await error_of(resp) == (404, "session_not_found", "session_id")


# -- the directory without HTTP -------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
async def directory(request, tmp_path) -> AsyncIterator[ExpertProfiles]:  # type: ignore[no-untyped-def]
    """The directory on each store: the same contract for one node's SQLite and the shared PostgreSQL."""
    if request.param == "sqlite":
        yield ExpertProfiles(SqliteExpertStore(Database.in_dir(tmp_path)))
        return
    url = await create_database()
    require(url is not None, "PostgreSQL on 127.0.0.1:5432")
    assert url is not None
    pool = await connect(url)
    try:
        yield ExpertProfiles(await PostgresExpertStore.open(pool))
    finally:
        await pool.close()
        await drop_database(url)


async def test_find_available_orders_by_rating_then_fewest_waiting(directory) -> None:  # type: ignore[no-untyped-def]
    for expert_id in ("a", "b", "c", "d", "e"):
        await directory.upsert_profile(expert_id, Profile(display_name=expert_id, skills=("Go",)))
    for expert_id, stars in (("a", 4), ("b", 5), ("c", 5), ("d", 5)):
        await directory.add_rating(f"{expert_id}-1", expert_id, "x", stars)
    states = {"a": "online", "b": "online", "c": "online", "d": "busy", "e": "online"}
    queues = {"b": 3, "c": 1}
    directory.availability = states.__getitem__
    directory.waiting = lambda expert_id: queues.get(expert_id, 0)
    assert [e.id for e in await directory.find_available("go")] == ["c", "b", "a", "e"]
    assert [e.id for e in await directory.find_available("GO", states=("online", "busy"))] == ["c", "b", "a", "e", "d"]
    assert await directory.find_available("rust") == []


async def test_ratings_kept_when_profile_created_later_and_replaced(directory) -> None:  # type: ignore[no-untyped-def]
    await directory.add_rating("s1", "late", "x", 4, "")
    expert = await directory.upsert_profile("late", Profile(display_name="Late"))
    assert (expert.rating_count, expert.rating_average) == (1, 4.0)
    expert = await directory.upsert_profile("late", Profile(display_name="Late", skills=("a",)))
    assert (expert.rating_count, expert.rating_average) == (1, 4.0)
    assert (await directory.ratings("late"))[0].review is None
    with pytest.raises(ApiError) as exc:
        await directory.add_rating("s1", "late", "x", 5)
    assert exc.value.code == "already_rated"


async def test_search_filters_and_pages_alike_on_both_stores(directory) -> None:  # type: ignore[no-untyped-def]
    for expert_id, mode, amount, langs, skills in (
        ("ada", "per_minute", 150, ("en", "pt-BR"), ("Python", "go")),
        ("bea", "per_session", 5000, ("pt-PT",), ("python",)),
        ("cid", "free", 0, ("en",), ("python",)),
        ("dan", "per_minute", 90, ("de",), ("rust",)),
    ):
        await directory.upsert_profile(expert_id, Profile(
            display_name=expert_id.title(), skills=skills, languages=langs, price=ProfilePrice(mode, amount, "USD")))
    for sid, expert_id, stars in (("1", "bea", 5), ("2", "ada", 4), ("3", "ada", 5), ("4", "cid", 3)):
        await directory.add_rating(sid, expert_id, "x", stars)

    async def ids(**query: Any) -> tuple[list[str], int]:
        result = await directory.search(SearchQuery(**query))
        return [e.id for e, _ in result.experts], result.total

    assert await ids(skill="python") == (["bea", "ada", "cid"], 3)  # rated best first
    assert await ids(skill="python", limit=1, offset=1) == (["ada"], 3)
    assert await ids(language="pt") == (["bea", "ada"], 2)
    assert await ids(language="pt-BR") == (["ada"], 1)
    assert await ids(max_price=100, currency="USD") == (["cid", "dan"], 2)
    assert await ids(mode="per_minute") == (["ada", "dan"], 2)
    assert await ids(min_rating=Fraction(9, 2)) == (["bea", "ada"], 2)
    directory.availability = {"ada": "online", "cid": "busy"}.get  # type: ignore[assignment]
    assert await ids(skill="python", available=("online", "busy")) == (["ada", "cid"], 2)
    assert (await directory.get("ada")).rating_average == 4.5  # type: ignore[union-attr]
    assert await directory.get("nobody") is None


async def test_free_text_matches_prefixes_of_names_skills_and_bios_on_both_stores(directory) -> None:  # type: ignore[no-untyped-def]
    for expert_id, name, skills, bio in (
        ("ada", "Ada Lovelace", ("python", "debugging"), "I untangle build failures."),
        ("bea", "Béatrice Ohm", ("electrics",), "Fuse boxes, lights and Python scripts for home automation"),
        ("cid", "Cid Coder", ("go", "c++"), ""),
    ):
        await directory.upsert_profile(expert_id, Profile(display_name=name, skills=skills, bio=bio))

    async def ids(text: str, **query: Any) -> list[str]:
        return sorted(e.id for e, _ in (await directory.search(SearchQuery(words=search_words(text), **query))).experts)

    assert await ids("pyth") == ["ada", "bea"]  # a skill, and a word of a bio
    assert await ids("PYTH deb") == ["ada"]  # every word must match
    assert await ids("beatrice") == ["bea"] and await ids("béa") == ["bea"]  # accents aside (SQLite and PostgreSQL alike)
    assert await ids("lov") == ["ada"] and await ids("untangl") == ["ada"]
    assert await ids("c") == ["cid"]  # "c++" is the word c
    assert await ids("pyth", skill="python") == ["ada"]
    assert await ids("nothing") == []
    assert await ids("' OR 1=1 --") == []  # punctuation is no operator: the words "or", "1", "1"
    # A changed profile is searched as it is now.
    await directory.upsert_profile("ada", Profile(display_name="Ada Lovelace", skills=("rust",)))
    assert await ids("pyth") == ["bea"]


def test_normalisation() -> None:
    assert normalise_skill("  Machine_Learning ") == "machine-learning"
    assert normalise_skill("C++") == "c++" and normalise_skill("C#") == "c#" and normalise_skill("Node.js") == "node.js"
    assert normalise_skill("Français") == "français"
    for bad in ("", "-x", "a/b", "x" * 41):
        with pytest.raises(InvalidInput):
            normalise_skill(bad)
    assert normalise_language("zh-hant-tw") == "zh-Hant-TW"
    assert normalise_language("ES-419") == "es-419"
    with pytest.raises(InvalidInput):
        ProfilePrice("per_minute", True, "USD")  # type: ignore[arg-type]
    assert ProfilePrice("per_session", 2500, "JPY").to_json() == {"mode": "per_session", "amount": 2500, "currency": "JPY"}


# -- working hours and daylight saving ------------------------------------------------------------


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp())


def spans(hours: WorkingHours, start: str, end: str) -> list[tuple[str, str]]:
    fmt = "%Y-%m-%d %H:%M"
    return [
        (datetime.fromtimestamp(s, timezone.utc).strftime(fmt), datetime.fromtimestamp(e, timezone.utc).strftime(fmt))
        for s, e in hours.intervals(utc(start), utc(end))
    ]


def berlin(weekly: dict[str, list[list[str]]]) -> WorkingHours:
    return WorkingHours.from_json({"time_zone": "Europe/Berlin", "weekly": weekly})


def test_hours_follow_the_wall_clock_across_daylight_saving() -> None:
    hours = berlin({"sun": [["09:00", "17:00"]]})
    # 2027-03-28: Berlin goes from UTC+1 to UTC+2; 2026-10-25: back from UTC+2 to UTC+1.
    assert spans(hours, "2027-03-20", "2027-04-05") == [
        ("2027-03-21 08:00", "2027-03-21 16:00"),
        ("2027-03-28 07:00", "2027-03-28 15:00"),
        ("2027-04-04 07:00", "2027-04-04 15:00"),
    ]
    assert spans(hours, "2026-10-17", "2026-10-26") == [
        ("2026-10-18 07:00", "2026-10-18 15:00"),
        ("2026-10-25 08:00", "2026-10-25 16:00"),
    ]
    assert hours.contains(utc("2027-03-28 07:00"), utc("2027-03-28 15:00"))
    assert not hours.contains(utc("2027-03-28 06:30"), utc("2027-03-28 07:30"))
    assert not hours.contains(utc("2027-03-21 07:00"), utc("2027-03-21 08:00"))


def test_night_shift_across_the_changes() -> None:
    # Sat 22:00 to Sun 04:00 local: six hours on the wall clock, five in spring, seven in autumn.
    hours = berlin({"sat": [["22:00", "24:00"]], "sun": [["00:00", "02:30"], ["02:30", "04:00"]]})
    assert spans(hours, "2027-03-27", "2027-03-29") == [("2027-03-27 21:00", "2027-03-28 02:00")]
    assert spans(hours, "2026-10-24", "2026-10-26") == [("2026-10-24 20:00", "2026-10-25 03:00")]


def test_skipped_and_repeated_wall_times() -> None:
    # 02:30 does not exist on 2027-03-28 in Berlin: work "from 02:30" starts when clocks jump to 03:00.
    hours = berlin({"sun": [["02:30", "05:00"]]})
    assert spans(hours, "2027-03-27", "2027-03-29") == [("2027-03-28 01:00", "2027-03-28 03:00")]
    # 02:30 happens twice on 2026-10-25: the first time counts.
    hours = berlin({"sun": [["02:30", "05:00"]]})
    assert spans(hours, "2026-10-24", "2026-10-26") == [("2026-10-25 00:30", "2026-10-25 04:00")]
    # New York springs forward at 02:00 on 2027-03-14.
    ny = WorkingHours.from_json({"time_zone": "America/New_York", "weekly": {"sun": [["01:00", "04:00"]]}})
    assert spans(ny, "2027-03-13", "2027-03-15") == [("2027-03-14 06:00", "2027-03-14 08:00")]
    assert date(2027, 3, 14).weekday() == 6 and date(2027, 3, 28).weekday() == 6
