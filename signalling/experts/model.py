"""Experts: profile, pricing, weekly working hours in the expert's time zone, and ratings.

``profiles.ExpertProfiles`` keeps them in a ``store.ExpertStore`` (the node's
SQLite, or the PostgreSQL database every node shares). Availability (online / busy / away /
offline) and queue lengths live in the presence and queueing layers; the profiles only ask
them through two injected callables, so that they never depend on which backend runs:

- ``availability(expert_id) -> str`` (or an awaitable of it), default: everyone is offline;
- ``waiting(expert_id) -> int`` (or an awaitable of it), default: nobody waits.

Working hours are wall-clock intervals per weekday in an IANA time zone, so "Mon 09:00-17:00 in
Europe/Berlin" stays 09:00 local on both sides of a daylight-saving change. Everything that
leaves this module is in UTC (integer Unix seconds).
"""

from __future__ import annotations

import inspect
import re
import unicodedata
from urllib.parse import quote
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from fractions import Fraction
from typing import Any, Awaitable, Callable, Iterable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..core.currencies import DEFAULT_CURRENCY, MAX_PRICE_AMOUNT, PRICE_CURRENCIES
from ..core.errors import InvalidInput

AVAILABILITY = ("online", "busy", "away", "offline")
PRICE_MODES = ("free", "per_session", "per_minute")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

MAX_DISPLAY_NAME = 80
MAX_BIO = 4000
MAX_SKILLS = 30
MAX_SKILL_LENGTH = 40
MAX_LANGUAGES = 20
MAX_INTERVALS_PER_DAY = 12
MAX_REVIEW = 2000
MAX_ID = 128

_SKILL_SEPARATORS = re.compile(r"[\s_]+")
_SKILL_OK = re.compile(r"^[^\W_](?:[\w+#.\-]*[\w+#])?$")
_LANGUAGE_OK = re.compile(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*$")
# IANA zone names: letters, digits and - + _ in /-separated parts (Europe/Berlin, Etc/GMT+5).
_ZONE_OK = re.compile(r"[A-Za-z0-9_+-]{1,30}(/[A-Za-z0-9_+-]{1,30}){0,2}")
_CLOCK_OK = re.compile(r"([01][0-9]|2[0-4]):([0-5][0-9])")

Availability = Callable[[str], "str | Awaitable[str]"]
Waiting = Callable[[str], "int | Awaitable[int]"]
# session_id -> (expert_id, client_id, state) or None; the sessions layer provides it. A session
# can be rated once its state is "ended".
SessionParties = Callable[[str], "tuple[str, str, str] | None | Awaitable[tuple[str, str, str] | None]"]


def everyone_offline(expert_id: str) -> str:
    return "offline"


def nobody_waiting(expert_id: str) -> int:
    return 0


async def maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


# -- profile parts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfilePrice:
    """The stored form of an expert's price; billing turns it into charges."""

    mode: str = "free"
    amount: int = 0
    currency: str = DEFAULT_CURRENCY

    def __post_init__(self) -> None:
        if self.mode not in PRICE_MODES:
            raise InvalidInput("invalid_price_mode", f"price mode must be one of {', '.join(PRICE_MODES)}", "price.mode")
        if not isinstance(self.amount, int) or isinstance(self.amount, bool):
            raise InvalidInput("invalid_amount", "the amount must be an integer in minor units", "price.amount")
        if self.mode == "free" and self.amount != 0:
            raise InvalidInput("invalid_amount", "a free price has the amount 0", "price.amount")
        if self.mode != "free" and not (0 < self.amount <= MAX_PRICE_AMOUNT):
            raise InvalidInput(
                "invalid_amount", f"a {self.mode} amount must be 1-{MAX_PRICE_AMOUNT} minor units", "price.amount"
            )
        validate_currency(self.currency, "price.currency")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ProfilePrice":
        if not isinstance(data, dict):
            raise InvalidInput("invalid_type", 'the price is {"mode", "amount", "currency"}', "price")
        mode = data.get("mode", "free")
        return cls(mode=mode, amount=data.get("amount", 0), currency=data.get("currency", DEFAULT_CURRENCY))

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "amount": self.amount, "currency": self.currency}


def validate_currency(code: object, field_name: str) -> str:
    if not isinstance(code, str) or code not in PRICE_CURRENCIES:
        raise InvalidInput("invalid_currency", f"{code!r} is not an ISO 4217 currency code (e.g. USD)", field_name)
    return code


def normalise_skill(raw: object, field_name: str = "skill") -> str:
    """``"  Machine Learning "`` -> ``"machine-learning"``; ``"C++"`` -> ``"c++"``."""
    if not isinstance(raw, str):
        raise InvalidInput("invalid_skill", "a skill is a string", field_name)
    tag = _SKILL_SEPARATORS.sub("-", unicodedata.normalize("NFKC", raw).strip().casefold())
    if not tag or len(tag) > MAX_SKILL_LENGTH or not _SKILL_OK.match(tag):
        raise InvalidInput(
            "invalid_skill",
            f"a skill is 1-{MAX_SKILL_LENGTH} letters, digits or + # . - and starts with a letter or digit",
            field_name,
        )
    return tag


def normalise_language(raw: object, field_name: str = "language") -> str:
    """A BCP 47 tag in its canonical case: ``"PT-br"`` -> ``"pt-BR"``, ``"zh-hant"`` -> ``"zh-Hant"``."""
    if not isinstance(raw, str) or not _LANGUAGE_OK.match(raw.strip()):
        raise InvalidInput("invalid_language", "a language is a BCP 47 tag such as en, pt-BR or zh-Hant", field_name)
    primary, *rest = raw.strip().split("-")
    parts = [primary.lower()]
    for sub in rest:
        if len(sub) == 2 and sub.isalpha():
            parts.append(sub.upper())
        elif len(sub) == 4 and sub.isalpha():
            parts.append(sub.title())
        else:
            parts.append(sub.lower())
    return "-".join(parts)


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# -- working hours -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkingHours:
    """Weekly wall-clock intervals in an IANA time zone.

    ``weekly[d]`` holds (start, end) minutes after local midnight for weekday d (0 = Monday),
    sorted and disjoint; end may be 1440 (24:00). Hours past midnight go on the next day: a
    Friday 22:00-02:00 shift is fri 22:00-24:00 plus sat 00:00-02:00, merged when converted.
    """

    time_zone: str
    weekly: tuple[tuple[tuple[int, int], ...], ...] = ((),) * 7

    def __post_init__(self) -> None:
        if not isinstance(self.time_zone, str) or not _ZONE_OK.fullmatch(self.time_zone):
            raise InvalidInput("invalid_time_zone", "the time zone is an IANA name such as Europe/Berlin", "working_hours.time_zone")
        try:
            ZoneInfo(self.time_zone)
        # OSError: a name that is no file name at all (too long, or naming a directory).
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise InvalidInput(
                "invalid_time_zone", f"unknown IANA time zone {self.time_zone!r}", "working_hours.time_zone"
            ) from None
        if len(self.weekly) != 7:
            raise InvalidInput("invalid_hours", "working hours have seven weekdays", "working_hours.weekly")
        for day, intervals in zip(WEEKDAYS, self.weekly):
            where = f"working_hours.weekly.{day}"
            if len(intervals) > MAX_INTERVALS_PER_DAY:
                raise InvalidInput("invalid_hours", f"at most {MAX_INTERVALS_PER_DAY} intervals a day", where)
            previous_end = -1
            for start, end in intervals:
                if not (0 <= start < end <= 1440):
                    raise InvalidInput("invalid_hours", "an interval starts before it ends, within 00:00-24:00", where)
                if start < previous_end:
                    raise InvalidInput("overlapping_hours", "a day's intervals must not overlap", where)
                previous_end = end

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "WorkingHours":
        if not isinstance(data, dict):
            raise InvalidInput("invalid_type", 'working hours are {"time_zone", "weekly"}', "working_hours")
        weekly_in = data.get("weekly", {})
        if not isinstance(weekly_in, dict) or set(weekly_in) - set(WEEKDAYS):
            raise InvalidInput("invalid_hours", f"weekly maps {', '.join(WEEKDAYS)} to intervals", "working_hours.weekly")
        weekly: list[tuple[tuple[int, int], ...]] = []
        for day in WEEKDAYS:
            intervals = []
            for i, pair in enumerate(_list(weekly_in.get(day, []), f"working_hours.weekly.{day}")):
                where = f"working_hours.weekly.{day}[{i}]"
                if not isinstance(pair, list) or len(pair) != 2:
                    raise InvalidInput("invalid_hours", 'an interval is ["HH:MM", "HH:MM"]', where)
                intervals.append((_parse_clock(pair[0], where), _parse_clock(pair[1], where)))
            weekly.append(tuple(sorted(intervals)))
        return cls(time_zone=data.get("time_zone", ""), weekly=tuple(weekly))

    def to_json(self) -> dict[str, Any]:
        return {
            "time_zone": self.time_zone,
            "weekly": {
                day: [[_format_clock(s), _format_clock(e)] for s, e in intervals]
                for day, intervals in zip(WEEKDAYS, self.weekly)
                if intervals
            },
        }

    def intervals(self, start: int, end: int) -> list[tuple[int, int]]:
        """The working time within [start, end) as merged UTC [from, to) pairs of Unix seconds."""
        if end <= start:
            return []
        zone = self.zone
        first = datetime.fromtimestamp(start, zone).date() - timedelta(days=1)
        last = datetime.fromtimestamp(end, zone).date() + timedelta(days=1)
        found: list[tuple[int, int]] = []
        day = first
        while day <= last:
            for s, e in self.weekly[day.weekday()]:
                found.append((_wall_to_utc(day, s, zone), _wall_to_utc(day, e, zone)))
            day += timedelta(days=1)
        merged: list[tuple[int, int]] = []
        for s, e in sorted(found):
            s, e = max(s, start), min(e, end)
            if s >= e:
                continue
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        return merged

    def contains(self, start: int, end: int) -> bool:
        """Whether [start, end) lies entirely inside working time."""
        return self.intervals(start, end) == [(start, end)]


def _list(value: object, field_name: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidInput("invalid_type", "expected a list", field_name)
    return value


def _parse_clock(raw: object, where: str) -> int:
    match = _CLOCK_OK.fullmatch(raw) if isinstance(raw, str) else None
    minutes = int(match.group(1)) * 60 + int(match.group(2)) if match else -1
    if not (0 <= minutes <= 1440):
        raise InvalidInput("invalid_hours", "times are HH:MM between 00:00 and 24:00", where)
    return minutes


def _format_clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _wall_to_utc(day: date, minute: int, zone: ZoneInfo) -> int:
    """The first instant at which the wall clock in ``zone`` reads ``day`` + ``minute``.

    A repeated wall time (autumn) is its first occurrence. A skipped one (spring) is the moment
    the clocks jump over it: work "from 02:30" on a day that jumps 02:00 -> 03:00 starts at 03:00.
    """
    naive = datetime(day.year, day.month, day.day) + timedelta(minutes=minute)
    first = int(naive.replace(tzinfo=zone, fold=0).timestamp())
    if datetime.fromtimestamp(first, zone).replace(tzinfo=None) == naive:
        return first
    lo = int(naive.replace(tzinfo=zone, fold=1).timestamp())
    hi = first
    before = datetime.fromtimestamp(lo, zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return hi


# -- profile, expert, rating ----------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """What an expert edits. Constructing one validates and normalises it."""

    display_name: str
    bio: str = ""
    skills: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    price: ProfilePrice = field(default_factory=ProfilePrice)
    working_hours: WorkingHours | None = None

    def __post_init__(self) -> None:
        name = " ".join(self.display_name.split()) if isinstance(self.display_name, str) else ""
        if not (0 < len(name) <= MAX_DISPLAY_NAME):
            raise InvalidInput("invalid_display_name", f"the display name is 1-{MAX_DISPLAY_NAME} characters", "display_name")
        if not isinstance(self.bio, str) or len(self.bio) > MAX_BIO:
            raise InvalidInput("invalid_bio", f"the bio is at most {MAX_BIO} characters", "bio")
        skills = _unique(normalise_skill(s, f"skills[{i}]") for i, s in enumerate(self.skills))
        if len(skills) > MAX_SKILLS:
            raise InvalidInput("too_many_skills", f"at most {MAX_SKILLS} skills", "skills")
        languages = _unique(normalise_language(s, f"languages[{i}]") for i, s in enumerate(self.languages))
        if len(languages) > MAX_LANGUAGES:
            raise InvalidInput("too_many_languages", f"at most {MAX_LANGUAGES} languages", "languages")
        object.__setattr__(self, "display_name", name)
        object.__setattr__(self, "bio", self.bio.strip())
        object.__setattr__(self, "skills", skills)
        object.__setattr__(self, "languages", languages)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Profile":
        hours = data.get("working_hours")
        return cls(
            display_name=data.get("display_name", ""),
            bio=data.get("bio", ""),
            skills=tuple(_list(data.get("skills", []), "skills")),
            languages=tuple(_list(data.get("languages", []), "languages")),
            price=ProfilePrice.from_json(data.get("price", {})),
            working_hours=WorkingHours.from_json(hours) if hours is not None else None,
        )


@dataclass(frozen=True)
class Expert:
    id: str
    profile: Profile
    rating_count: int
    rating_sum: int
    created_at: int
    updated_at: int
    # When the expert's photo was last set (None: no photo); also its URL's version.
    photo_at: int | None = None

    @property
    def rating_average(self) -> float | None:
        return round(self.rating_sum / self.rating_count, 2) if self.rating_count else None

    def to_json(self, availability: str | None = None) -> dict[str, Any]:
        p = self.profile
        out: dict[str, Any] = {
            "id": self.id,
            "display_name": p.display_name,
            "bio": p.bio,
            "skills": list(p.skills),
            "languages": list(p.languages),
            "price": p.price.to_json(),
            "working_hours": p.working_hours.to_json() if p.working_hours else None,
            "rating": {"average": self.rating_average, "count": self.rating_count},
            "updated_at": iso_utc(self.updated_at),
            "photo": f"/api/experts/{quote(self.id, safe='')}/photo?v={self.photo_at}" if self.photo_at is not None else None,
        }
        if availability is not None:
            out["availability"] = availability
        return out


@dataclass(frozen=True)
class Rating:
    session_id: str
    expert_id: str
    client_id: str
    stars: int
    review: str | None
    created_at: int

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "expert_id": self.expert_id,
            "client_id": self.client_id,
            "stars": self.stars,
            "review": self.review,
            "created_at": iso_utc(self.created_at),
        }


def iso_utc(ts: int) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class SearchQuery:
    skill: str | None = None
    max_price: int | None = None
    currency: str | None = None
    mode: str | None = None
    min_rating: Fraction | None = None
    available: tuple[str, ...] = ()
    language: str | None = None
    # Words that must all start a word of the expert's name, skills or bio ("pyth deb" finds a
    # Python debugging expert): lower-case letters and digits only (``search_words``).
    words: tuple[str, ...] = ()
    limit: int = 20
    offset: int = 0


MAX_SEARCH_WORDS = 8
MAX_SEARCH_TEXT = 200
_WORD = re.compile(r"[^\W_]+")


def fold(text: str) -> str:
    """Lower case without accents ("Béa" -> "bea"): how search compares words, on every backend."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()


def search_words(text: str) -> tuple[str, ...]:
    """The words of a free-text search, lower-cased, letters and digits only (so that they are
    safe inside an FTS5 or tsquery expression), at most ``MAX_SEARCH_WORDS``."""
    if len(text) > MAX_SEARCH_TEXT:
        raise InvalidInput("invalid_q", f"q is at most {MAX_SEARCH_TEXT} characters", "q")
    words = tuple(dict.fromkeys(_WORD.findall(fold(text))))
    if len(words) > MAX_SEARCH_WORDS:
        raise InvalidInput("invalid_q", f"q has at most {MAX_SEARCH_WORDS} words", "q")
    return words


@dataclass(frozen=True)
class SearchResult:
    experts: list[tuple[Expert, str]]
    total: int
