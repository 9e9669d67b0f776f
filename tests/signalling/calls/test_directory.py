from __future__ import annotations

from signalling.calls.directory import ExpertRef, MemoryExpertDirectory


async def test_lookup_and_skill_search() -> None:
    directory = MemoryExpertDirectory([ExpertRef("erin", "Erin", ("Plumbing", "python"))])
    directory.add(ExpertRef("ezra", "Ezra", ("python",)))
    assert (await directory.get("erin")).display_name == "Erin"  # type: ignore[union-attr]
    assert await directory.get("nobody") is None
    assert await directory.find_available("PYTHON") == ["erin", "ezra"]
    assert await directory.find_available("plumbing") == ["erin"]
    assert await directory.find_available("knitting") == []
