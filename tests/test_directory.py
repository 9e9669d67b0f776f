from __future__ import annotations

from signalling.directory import ExpertRef, MemoryExpertDirectory


async def test_lookup_and_skill_search() -> None:
    directory = MemoryExpertDirectory([ExpertRef("erin", "Erin", ("Plumbing", "python"))])
    directory.add(ExpertRef("ezra", "Ezra", ("python",)))
    assert (await directory.get("erin")).display_name == "Erin"  # type: ignore[union-attr]
    assert await directory.get("nobody") is None
    assert await directory.find_available("PYTHON") == ["erin", "ezra"]
    assert await directory.find_available("plumbing") == ["erin"]
    assert await directory.find_available("knitting") == []


class _Profile:
    def __init__(self, name: str, skills: list[str]) -> None:
        self.display_name, self.skills = name, skills


class _Expert:
    def __init__(self, id_: str, name: str, skills: list[str]) -> None:
        self.id, self.profile = id_, _Profile(name, skills)


class _Store:
    """The shape of signalling.experts.ExpertDirectory: sync get, async ranked find_available."""

    def __init__(self) -> None:
        self.experts = {"erin": _Expert("erin", "Erin", ["python"])}
        self.asked: list[tuple[str, tuple[str, ...]]] = []

    def get(self, expert_id: str) -> _Expert | None:
        return self.experts.get(expert_id)

    async def find_available(self, skill: str, states: tuple[str, ...] = ("online",)) -> list[_Expert]:
        self.asked.append((skill, states))
        if not skill.isalpha():
            raise ValueError("not a skill")
        return [e for e in self.experts.values() if skill in e.profile.skills]


async def test_the_profile_store_adapter() -> None:
    from signalling.directory import ProfileDirectory

    store = _Store()
    directory = ProfileDirectory(store)
    assert await directory.get("erin") == ExpertRef("erin", "Erin", ("python",))
    assert await directory.get("nobody") is None
    assert await directory.find_available("python") == ["erin"]
    assert store.asked == [("python", ("online", "busy"))]
    assert await directory.find_available("c++") == []
