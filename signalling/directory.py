"""How signalling finds experts: the narrow interface the experts module implements.

Signalling needs two things from the expert profiles: whether an expert exists (and their display
name), and who has a given skill. ``create_app`` backs it with the profile store
(``wiring.ProfileDirectory``); ``MemoryExpertDirectory`` is what signalling tests use.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpertRef:
    expert_id: str
    display_name: str
    skills: tuple[str, ...] = ()


class ExpertDirectory(Protocol):
    async def get(self, expert_id: str) -> ExpertRef | None:
        """The expert with this user id, or None when there is no such expert."""
        ...

    async def find_available(self, skill: str) -> list[str]:
        """Ids of experts with ``skill`` who take instant requests, best first.

        Signalling then keeps only those whose live presence is online or busy and picks the one
        with the shortest queue, so an implementation need not consult presence itself.
        """
        ...


class MemoryExpertDirectory:
    def __init__(self, experts: list[ExpertRef] | None = None) -> None:
        self._experts = {e.expert_id: e for e in experts or ()}

    def add(self, expert: ExpertRef) -> None:
        self._experts[expert.expert_id] = expert

    async def get(self, expert_id: str) -> ExpertRef | None:
        return self._experts.get(expert_id)

    async def find_available(self, skill: str) -> list[str]:
        wanted = skill.casefold()
        return [e.expert_id for e in self._experts.values() if wanted in (s.casefold() for s in e.skills)]


class ProfileDirectory:
    """``ExpertDirectory`` over the experts module's profile store (``signalling.experts``), whose
    ``get`` returns an ``Expert`` (``.id``, ``.profile.display_name``, ``.profile.skills``), sync or
    async, and whose ``find_available(skill, states)`` returns ranked ``Expert``s."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def get(self, expert_id: str) -> ExpertRef | None:
        expert = self.store.get(expert_id)
        if inspect.isawaitable(expert):
            expert = await expert
        if expert is None:
            return None
        return ExpertRef(expert.id, expert.profile.display_name, tuple(expert.profile.skills))

    async def find_available(self, skill: str) -> list[str]:
        try:
            experts = await self.store.find_available(skill, states=("online", "busy"))
        except Exception as exc:
            # The store refuses skills it cannot normalise: for a client that is "nobody has it".
            log.info("no experts for skill %r: %s", skill, exc)
            return []
        return [expert.id for expert in experts]
