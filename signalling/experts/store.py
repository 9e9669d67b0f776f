"""Where expert profiles (with their price and working hours) and ratings are kept.

``ExpertStore`` is the interface ``profiles.ExpertProfiles`` asks; ``SqliteExpertStore`` keeps them
in the node's embedded SQLite file (one node), ``PostgresExpertStore``
(``store_postgres.py``) in the PostgreSQL database every node shares, so that a profile
saved through one node is what every node shows, prices and quotes, and a session is rated once
whichever node is asked. ``tests/signalling/experts/test_experts.py`` runs one contract suite on both.
"""

from __future__ import annotations

import abc
import json
from typing import Any

from ..core.database import Database
from .model import Expert, Profile, ProfilePrice, Rating, SearchQuery, WorkingHours, fold

MIGRATIONS: list[tuple[int, str]] = [
    # 1: the tables as the single-node directory made them (IF NOT EXISTS: old data dirs adopt it).
    (1, """
CREATE TABLE IF NOT EXISTS experts (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    bio TEXT NOT NULL,
    skills TEXT NOT NULL,
    languages TEXT NOT NULL,
    price_mode TEXT NOT NULL,
    price_amount INTEGER NOT NULL,
    price_currency TEXT NOT NULL,
    working_hours TEXT,
    rating_count INTEGER NOT NULL DEFAULT 0,
    rating_sum INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS expert_skills (
    skill TEXT NOT NULL,
    expert_id TEXT NOT NULL REFERENCES experts(id) ON DELETE CASCADE,
    PRIMARY KEY (skill, expert_id)
);
CREATE TABLE IF NOT EXISTS expert_languages (
    language TEXT NOT NULL,
    primary_language TEXT NOT NULL,
    expert_id TEXT NOT NULL REFERENCES experts(id) ON DELETE CASCADE,
    PRIMARY KEY (language, expert_id)
);
CREATE INDEX IF NOT EXISTS expert_languages_primary ON expert_languages (primary_language);
CREATE TABLE IF NOT EXISTS expert_ratings (
    session_id TEXT PRIMARY KEY,
    expert_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    stars INTEGER NOT NULL CHECK (stars BETWEEN 1 AND 5),
    review TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS expert_ratings_by_expert ON expert_ratings (expert_id, created_at);
"""),
    # 2: full-text search over names, skills and bios (prefix queries: "pyth" finds Python).
    (2, """
CREATE VIRTUAL TABLE experts_fts USING fts5 (expert_id UNINDEXED, body, tokenize = 'unicode61 remove_diacritics 2');
INSERT INTO experts_fts (expert_id, body)
    SELECT id, display_name || ' ' || replace(replace(replace(skills, '[', ' '), ']', ' '), '"', ' ') || ' ' || bio
    FROM experts;
"""),
    # 3: the expert's photo: a small JPEG the server made from the upload (photos.py).
    (3, """
ALTER TABLE experts ADD COLUMN photo_at INTEGER;
CREATE TABLE expert_photos (
    expert_id TEXT PRIMARY KEY REFERENCES experts(id) ON DELETE CASCADE,
    jpeg BLOB NOT NULL
);
"""),
]

# Rated experts first, best average first, then the better-established one.
ORDER = (
    "ORDER BY (e.rating_count = 0), CAST(e.rating_sum AS REAL) / MAX(e.rating_count, 1) DESC, "
    "e.rating_count DESC, e.id"
)


class ExpertStore(abc.ABC):
    @abc.abstractmethod
    async def get(self, expert_id: str) -> Expert | None: ...

    @abc.abstractmethod
    async def upsert(self, expert_id: str, profile: Profile, now: int) -> Expert:
        """Create or replace the profile; ratings are kept."""

    @abc.abstractmethod
    async def search(self, query: SearchQuery, page: bool) -> tuple[list[Expert], int]:
        """Experts matching the query's stored filters (skill, language, mode, price, rating),
        rated best first: one page of them (``page``) or all, with the number matching."""

    @abc.abstractmethod
    async def with_skill(self, skill: str) -> list[Expert]:
        """Experts with a (normalised) skill, rated best first."""

    @abc.abstractmethod
    async def set_photo(self, expert_id: str, jpeg: bytes | None, now: int) -> bool:
        """Store (or with None, remove) the expert's photo; False if there is no such expert."""

    @abc.abstractmethod
    async def photo(self, expert_id: str) -> bytes | None: ...

    @abc.abstractmethod
    async def add_rating(self, rating: Rating) -> bool:
        """Store a session's rating and count it in the expert's; False if the session has one."""

    @abc.abstractmethod
    async def ratings(self, expert_id: str, limit: int, offset: int) -> list[Rating]:
        """The newest first."""


class SqliteExpertStore(ExpertStore):
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate_versions("experts", MIGRATIONS)

    async def get(self, expert_id: str) -> Expert | None:
        row = self.db.fetchone("SELECT * FROM experts e WHERE id = ?", (expert_id,))
        return expert_from_row(row) if row else None

    async def upsert(self, expert_id: str, profile: Profile, now: int) -> Expert:
        p = profile
        with self.db.transaction() as conn:
            conn.execute(
                """INSERT INTO experts (id, display_name, bio, skills, languages, price_mode, price_amount,
                       price_currency, working_hours, rating_count, rating_sum, created_at, updated_at)
                   SELECT :id, :name, :bio, :skills, :languages, :mode, :amount, :currency, :hours,
                       COUNT(*), COALESCE(SUM(stars), 0), :now, :now FROM expert_ratings WHERE expert_id = :id
                   ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name, bio = excluded.bio,
                       skills = excluded.skills, languages = excluded.languages,
                       price_mode = excluded.price_mode, price_amount = excluded.price_amount,
                       price_currency = excluded.price_currency, working_hours = excluded.working_hours,
                       updated_at = excluded.updated_at""",
                {"id": expert_id, **profile_columns(p), "now": now},
            )
            conn.execute("DELETE FROM experts_fts WHERE expert_id = ?", (expert_id,))
            conn.execute("INSERT INTO experts_fts (expert_id, body) VALUES (?, ?)", (expert_id, search_body(p)))
            conn.execute("DELETE FROM expert_skills WHERE expert_id = ?", (expert_id,))
            conn.executemany("INSERT INTO expert_skills VALUES (?, ?)", [(s, expert_id) for s in p.skills])
            conn.execute("DELETE FROM expert_languages WHERE expert_id = ?", (expert_id,))
            conn.executemany(
                "INSERT INTO expert_languages VALUES (?, ?, ?)",
                [(lang, lang.split("-")[0], expert_id) for lang in p.languages],
            )
        expert = await self.get(expert_id)
        assert expert is not None
        return expert

    async def search(self, query: SearchQuery, page: bool) -> tuple[list[Expert], int]:
        where, params = filters(query)
        if query.words:
            # Every word as a prefix ("pyth"*); the words are letters and digits only.
            where.append("e.id IN (SELECT expert_id FROM experts_fts WHERE experts_fts MATCH ?)")
            params.append(" ".join(f'"{w}"*' for w in query.words))
        sql_where = f"WHERE {' AND '.join(where)}" if where else ""
        if not page:
            rows = self.db.fetchall(f"SELECT * FROM experts e {sql_where} {ORDER}", params)
            return [expert_from_row(r) for r in rows], len(rows)
        total = self.db.fetchall(f"SELECT COUNT(*) FROM experts e {sql_where}", params)[0][0]
        rows = self.db.fetchall(
            f"SELECT * FROM experts e {sql_where} {ORDER} LIMIT ? OFFSET ?", [*params, query.limit, query.offset]
        )
        return [expert_from_row(r) for r in rows], int(total)

    async def with_skill(self, skill: str) -> list[Expert]:
        rows = self.db.fetchall(
            f"SELECT * FROM experts e WHERE e.id IN (SELECT expert_id FROM expert_skills WHERE skill = ?) {ORDER}",
            (skill,),
        )
        return [expert_from_row(r) for r in rows]

    async def set_photo(self, expert_id: str, jpeg: bytes | None, now: int) -> bool:
        with self.db.transaction() as conn:
            if not conn.execute("UPDATE experts SET photo_at = ? WHERE id = ?", (now if jpeg else None, expert_id)).rowcount:
                return False
            conn.execute("DELETE FROM expert_photos WHERE expert_id = ?", (expert_id,))
            if jpeg:
                conn.execute("INSERT INTO expert_photos VALUES (?, ?)", (expert_id, jpeg))
        return True

    async def photo(self, expert_id: str) -> bytes | None:
        row = self.db.fetchone("SELECT jpeg FROM expert_photos WHERE expert_id = ?", (expert_id,))
        return bytes(row["jpeg"]) if row else None

    async def add_rating(self, rating: Rating) -> bool:
        with self.db.transaction() as conn:
            inserted = conn.execute(
                "INSERT INTO expert_ratings VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (session_id) DO NOTHING",
                (rating.session_id, rating.expert_id, rating.client_id, rating.stars, rating.review, rating.created_at),
            ).rowcount
            if inserted:
                conn.execute(
                    "UPDATE experts SET rating_count = rating_count + 1, rating_sum = rating_sum + ? WHERE id = ?",
                    (rating.stars, rating.expert_id),
                )
        return bool(inserted)

    async def ratings(self, expert_id: str, limit: int, offset: int) -> list[Rating]:
        rows = self.db.fetchall(
            "SELECT * FROM expert_ratings WHERE expert_id = ? ORDER BY created_at DESC, session_id LIMIT ? OFFSET ?",
            (expert_id, limit, offset),
        )
        return [rating_from_row(r) for r in rows]


def profile_columns(p: Profile) -> dict[str, Any]:
    return {
        "name": p.display_name,
        "bio": p.bio,
        "skills": json.dumps(p.skills),
        "languages": json.dumps(p.languages),
        "mode": p.price.mode,
        "amount": p.price.amount,
        "currency": p.price.currency,
        "hours": json.dumps(p.working_hours.to_json()) if p.working_hours else None,
    }


def search_body(p: Profile) -> str:
    """What free-text search reads of a profile: name, skills and bio, folded (``experts.fold``)."""
    return fold(" ".join((p.display_name, " ".join(p.skills), p.bio)))


def rating_from_row(r: Any) -> Rating:
    return Rating(r["session_id"], r["expert_id"], r["client_id"], r["stars"], r["review"], r["created_at"])


def filters(q: SearchQuery) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if q.skill is not None:
        where.append("e.id IN (SELECT expert_id FROM expert_skills WHERE skill = ?)")
        params.append(q.skill)
    if q.language is not None:
        # "pt" finds pt-BR and pt-PT speakers; "pt-BR" only the former.
        column = "language" if "-" in q.language else "primary_language"
        where.append(f"e.id IN (SELECT expert_id FROM expert_languages WHERE {column} = ?)")
        params.append(q.language)
    if q.mode is not None:
        where.append("e.price_mode = ?")
        params.append(q.mode)
    if q.max_price is not None:
        where.append("(e.price_mode = 'free' OR (e.price_currency = ? AND e.price_amount <= ?))")
        params += [q.currency, q.max_price]
    if q.min_rating is not None:
        where.append("e.rating_count > 0 AND e.rating_sum * ? >= ? * e.rating_count")
        params += [q.min_rating.denominator, q.min_rating.numerator]
    return where, params



def expert_from_row(row: Any) -> Expert:
    hours = json.loads(row["working_hours"]) if row["working_hours"] else None
    profile = Profile(
        display_name=row["display_name"],
        bio=row["bio"],
        skills=tuple(json.loads(row["skills"])),
        languages=tuple(json.loads(row["languages"])),
        price=ProfilePrice(row["price_mode"], row["price_amount"], row["price_currency"]),
        working_hours=WorkingHours.from_json(hours) if hours else None,
    )
    return Expert(
        row["id"], profile, row["rating_count"], row["rating_sum"], row["created_at"], row["updated_at"], row["photo_at"],
    )
