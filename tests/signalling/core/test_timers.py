from __future__ import annotations

import asyncio

from signalling.core.timers import Timers


async def test_rearming_replaces_and_close_cancels() -> None:
    timers = Timers()
    fired: list[str] = []

    async def note(what: str) -> None:
        fired.append(what)

    timers.start("k", 0.01, note, "first")
    timers.start("k", 0.02, note, "second")
    timers.start("gone", 0.01, note, "cancelled")
    timers.cancel("gone")
    timers.start("late", 30, note, "never")
    assert timers.pending("late")
    await asyncio.sleep(0.1)
    assert fired == ["second"]
    await timers.close()
    timers.start("after-close", 0, note, "ignored")
    await asyncio.sleep(0.02)
    assert fired == ["second"] and not timers.pending("late")
