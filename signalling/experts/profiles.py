"""Expert profiles as the REST API and billing see them: saved, searched, ranked and rated, over
a ``store.ExpertStore`` (the node's SQLite, or the PostgreSQL every node shares), with
availability and queue lengths asked of the signalling layer through two injected callables."""

from __future__ import annotations

import logging
import time
from fractions import Fraction
from typing import Callable, Sequence

from ..core.errors import ApiError, InvalidInput
from .model import (
    AVAILABILITY,
    MAX_ID,
    MAX_REVIEW,
    Availability,
    Expert,
    Profile,
    Rating,
    SearchQuery,
    SearchResult,
    Waiting,
    everyone_offline,
    maybe_await,
    nobody_waiting,
    normalise_skill,
)
from .store import ExpertStore

log = logging.getLogger(__name__)


class ExpertProfiles:
    """Profiles, search and ratings over a ``store.ExpertStore`` (SQLite for one node,
    PostgreSQL for many), with availability and queue lengths asked of the signalling layer."""

    def __init__(
        self,
        store: ExpertStore,
        availability: Availability = everyone_offline,
        waiting: Waiting = nobody_waiting,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.availability = availability
        self.waiting = waiting
        self.clock = clock

    # profiles

    async def get(self, expert_id: str) -> Expert | None:
        return await self.store.get(expert_id)

    async def upsert_profile(self, expert_id: str, profile: Profile) -> Expert:
        """Create or replace the profile; ratings are kept."""
        if not isinstance(expert_id, str) or not (0 < len(expert_id) <= MAX_ID):
            raise InvalidInput("invalid_expert_id", f"an expert id is 1-{MAX_ID} characters", "id")
        return await self.store.upsert(expert_id, profile, int(self.clock()))

    # search

    async def search(self, query: SearchQuery) -> SearchResult:
        """Experts matching every given filter, rated best first, each with its availability."""
        if not query.available:
            experts, total = await self.store.search(query, page=True)
            return SearchResult([(e, await self.availability_of(e.id)) for e in experts], total)
        # Availability lives outside the store: filter the ordered candidates, then page.
        matches: list[tuple[Expert, str]] = []
        for expert in (await self.store.search(query, page=False))[0]:
            state = await self.availability_of(expert.id)
            if state in query.available:
                matches.append((expert, state))
        return SearchResult(matches[query.offset : query.offset + query.limit], len(matches))

    async def find_available(self, skill: str, states: Sequence[str] = ("online",), limit: int = 20) -> list[Expert]:
        """Experts with ``skill`` whose availability is in ``states``: earlier states first, then
        the best rated, then the one with the fewest clients waiting."""
        ranked: list[tuple[int, tuple[bool, Fraction, int], int, str, Expert]] = []
        for expert in await self.store.with_skill(normalise_skill(skill)):
            state = await self.availability_of(expert.id)
            if state in states:
                waiting = int(await maybe_await(self.waiting(expert.id)))
                ranked.append((list(states).index(state), _rating_key(expert), waiting, expert.id, expert))
        ranked.sort(key=lambda t: t[:4])
        return [t[4] for t in ranked[:limit]]

    async def availability_of(self, expert_id: str) -> str:
        state = await maybe_await(self.availability(expert_id))
        if state not in AVAILABILITY:
            log.warning("availability(%r) returned %r; treating it as offline", expert_id, state)
            return "offline"
        return str(state)

    # ratings

    async def add_rating(
        self, session_id: str, expert_id: str, client_id: str, stars: object, review: object = None
    ) -> Rating:
        """One rating per session. The caller has checked that ``client_id`` was that session's client."""
        if not isinstance(stars, int) or isinstance(stars, bool) or not (1 <= stars <= 5):
            raise InvalidInput("invalid_stars", "stars is a whole number from 1 to 5", "stars")
        if review is not None and not isinstance(review, str):
            raise InvalidInput("invalid_review", "the review is a string", "review")
        text = review.strip() if review else ""
        if len(text) > MAX_REVIEW:
            raise InvalidInput("invalid_review", f"the review is at most {MAX_REVIEW} characters", "review")
        rating = Rating(session_id, expert_id, client_id, stars, text or None, int(self.clock()))
        if not await self.store.add_rating(rating):
            raise ApiError("already_rated", "this session has already been rated", "session_id", status=409)
        return rating

    async def ratings(self, expert_id: str, limit: int = 20, offset: int = 0) -> list[Rating]:
        """The newest ratings first."""
        return await self.store.ratings(expert_id, limit, offset)


def _rating_key(expert: Expert) -> tuple[bool, Fraction, int]:
    if not expert.rating_count:
        return (True, Fraction(0), 0)
    return (False, -Fraction(expert.rating_sum, expert.rating_count), -expert.rating_count)
