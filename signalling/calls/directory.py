"""How signalling finds experts: the narrow interface the experts module implements.

Signalling needs two things from the expert profiles: whether an expert exists (and their display
name), and who has a given skill. ``create_app`` backs it with the profile store
(``wiring.ProfileDirectory``); ``MemoryExpertDirectory`` is what signalling tests use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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
