"""``ExpertStore`` in the PostgreSQL database every node shares (``--database postgresql://``)."""

from __future__ import annotations

import re
from typing import Any

from ..core.postgres import migrate
from .model import Expert, Profile, Rating, SearchQuery
from .store import ExpertStore, expert_from_row, filters, profile_columns, rating_from_row, search_body

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE experts (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    bio TEXT NOT NULL,
    skills TEXT NOT NULL,
    languages TEXT NOT NULL,
    price_mode TEXT NOT NULL,
    price_amount BIGINT NOT NULL,
    price_currency TEXT NOT NULL,
    working_hours TEXT,
    rating_count INTEGER NOT NULL DEFAULT 0,
    rating_sum INTEGER NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE expert_skills (
    skill TEXT NOT NULL,
    expert_id TEXT NOT NULL REFERENCES experts (id) ON DELETE CASCADE,
    PRIMARY KEY (skill, expert_id)
);
CREATE TABLE expert_languages (
    language TEXT NOT NULL,
    primary_language TEXT NOT NULL,
    expert_id TEXT NOT NULL REFERENCES experts (id) ON DELETE CASCADE,
    PRIMARY KEY (language, expert_id)
);
CREATE INDEX expert_languages_primary ON expert_languages (primary_language);
CREATE TABLE expert_ratings (
    session_id TEXT PRIMARY KEY,
    expert_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    stars INTEGER NOT NULL CHECK (stars BETWEEN 1 AND 5),
    review TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX expert_ratings_by_expert ON expert_ratings (expert_id, created_at);
"""),
    # 2: full-text search over names, skills and bios (prefix queries: "pyth" finds Python).
    (2, """
-- search_text is written with each profile (expert_store.search_body: folded in Python, so that
-- accents match as on SQLite); rows from before get an unfolded copy until their next save.
ALTER TABLE experts ADD COLUMN search_text TEXT NOT NULL DEFAULT '';
UPDATE experts SET search_text = lower(display_name || ' ' || translate(skills, '[]",', '    ') || ' ' || bio);
ALTER TABLE experts ADD COLUMN search tsvector GENERATED ALWAYS AS (to_tsvector('simple', search_text)) STORED;
CREATE INDEX experts_search ON experts USING GIN (search);
"""),
    # 3: the expert's photo: a small JPEG the server made from the upload (photos.py).
    (3, """
ALTER TABLE experts ADD COLUMN photo_at BIGINT;
CREATE TABLE expert_photos (
    expert_id TEXT PRIMARY KEY REFERENCES experts (id) ON DELETE CASCADE,
    jpeg BYTEA NOT NULL
);
"""),
]

ORDER = (
    "ORDER BY (e.rating_count = 0), e.rating_sum::float8 / GREATEST(e.rating_count, 1) DESC, "
    "e.rating_count DESC, e.id"
)


def numbered(sql: str) -> str:
    """``?`` placeholders (the shared filter builder's) as PostgreSQL's ``$1, $2, ...``."""
    counter = iter(range(1, 1000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


class PostgresExpertStore(ExpertStore):
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, pool: Any) -> "PostgresExpertStore":
        await migrate(pool, "experts", MIGRATIONS)
        return cls(pool)

    async def get(self, expert_id: str) -> Expert | None:
        row = await self.pool.fetchrow("SELECT * FROM experts e WHERE id = $1", expert_id)
        return expert_from_row(row) if row else None

    async def upsert(self, expert_id: str, profile: Profile, now: int) -> Expert:
        c = profile_columns(profile)
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(
                    """INSERT INTO experts (id, display_name, bio, skills, languages, price_mode, price_amount,
                           price_currency, working_hours, rating_count, rating_sum, created_at, updated_at,
                           search_text)
                       SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, count(*), coalesce(sum(stars), 0), $10, $10, $11
                       FROM expert_ratings WHERE expert_id = $1
                       ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name, bio = excluded.bio,
                           skills = excluded.skills, languages = excluded.languages,
                           price_mode = excluded.price_mode, price_amount = excluded.price_amount,
                           price_currency = excluded.price_currency, working_hours = excluded.working_hours,
                           updated_at = excluded.updated_at, search_text = excluded.search_text""",
                    expert_id, c["name"], c["bio"], c["skills"], c["languages"], c["mode"], c["amount"],
                    c["currency"], c["hours"], now, search_body(profile),
                )
                await conn.execute("DELETE FROM expert_skills WHERE expert_id = $1", expert_id)
                await conn.executemany(
                    "INSERT INTO expert_skills VALUES ($1, $2)", [(s, expert_id) for s in profile.skills]
                )
                await conn.execute("DELETE FROM expert_languages WHERE expert_id = $1", expert_id)
                await conn.executemany(
                    "INSERT INTO expert_languages VALUES ($1, $2, $3)",
                    [(lang, lang.split("-")[0], expert_id) for lang in profile.languages],
                )
                row = await conn.fetchrow("SELECT * FROM experts e WHERE id = $1", expert_id)
        return expert_from_row(row)

    async def search(self, query: SearchQuery, page: bool) -> tuple[list[Expert], int]:
        where, params = filters(query)
        if query.words:
            # Every word as a prefix (pyth:*); the words are letters and digits only.
            where.append("e.search @@ to_tsquery('simple', ?)")
            params.append(" & ".join(f"{w}:*" for w in query.words))
        sql_where = f"WHERE {' AND '.join(where)}" if where else ""
        if not page:
            rows = await self.pool.fetch(numbered(f"SELECT * FROM experts e {sql_where} {ORDER}"), *params)
            return [expert_from_row(r) for r in rows], len(rows)
        total = await self.pool.fetchval(numbered(f"SELECT count(*) FROM experts e {sql_where}"), *params)
        rows = await self.pool.fetch(
            numbered(f"SELECT * FROM experts e {sql_where} {ORDER} LIMIT ? OFFSET ?"), *params, query.limit, query.offset
        )
        return [expert_from_row(r) for r in rows], int(total)

    async def with_skill(self, skill: str) -> list[Expert]:
        rows = await self.pool.fetch(
            f"SELECT * FROM experts e WHERE e.id IN (SELECT expert_id FROM expert_skills WHERE skill = $1) {ORDER}",
            skill,
        )
        return [expert_from_row(r) for r in rows]

    async def set_photo(self, expert_id: str, jpeg: bytes | None, now: int) -> bool:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                status = await conn.execute(
                    "UPDATE experts SET photo_at = $1 WHERE id = $2", now if jpeg else None, expert_id)
                if status.endswith(" 0"):
                    return False
                await conn.execute("DELETE FROM expert_photos WHERE expert_id = $1", expert_id)
                if jpeg:
                    await conn.execute("INSERT INTO expert_photos VALUES ($1, $2)", expert_id, jpeg)
        return True

    async def photo(self, expert_id: str) -> bytes | None:
        jpeg = await self.pool.fetchval("SELECT jpeg FROM expert_photos WHERE expert_id = $1", expert_id)
        return bytes(jpeg) if jpeg is not None else None

    async def add_rating(self, rating: Rating) -> bool:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                inserted = await conn.fetchval(
                    "INSERT INTO expert_ratings VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (session_id) DO NOTHING"
                    " RETURNING session_id",
                    rating.session_id, rating.expert_id, rating.client_id, rating.stars, rating.review, rating.created_at,
                )
                if inserted is not None:
                    await conn.execute(
                        "UPDATE experts SET rating_count = rating_count + 1, rating_sum = rating_sum + $1 WHERE id = $2",
                        rating.stars, rating.expert_id,
                    )
        return inserted is not None

    async def ratings(self, expert_id: str, limit: int, offset: int) -> list[Rating]:
        rows = await self.pool.fetch(
            "SELECT * FROM expert_ratings WHERE expert_id = $1 ORDER BY created_at DESC, session_id LIMIT $2 OFFSET $3",
            expert_id, limit, offset,
        )
        return [rating_from_row(r) for r in rows]
