from __future__ import annotations

import asyncio
import logging

from sfu.tasks import cancel_and_wait


async def swallows_one_cancellation(reached: asyncio.Event) -> None:
    """Like redis-py when a cancellation lands inside a command: it goes on waiting for the reply."""
    try:
        reached.set()
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        pass
    await asyncio.Event().wait()


async def test_a_task_that_swallows_its_cancellation_is_waited_for_at_most_the_timeout(caplog) -> None:  # type: ignore[no-untyped-def]
    reached = asyncio.Event()
    stuck = asyncio.create_task(swallows_one_cancellation(reached), name="stuck")
    plain = asyncio.create_task(asyncio.sleep(30), name="plain")
    await reached.wait()
    async with asyncio.timeout(2):  # `task.cancel(); await task` waits forever here
        await cancel_and_wait(stuck, plain, None, timeout=0.2)
    assert plain.cancelled()
    assert "stuck did not end within" in caplog.text
    await asyncio.sleep(0)  # cancelled once more, it ends
    assert stuck.cancelled()


async def test_a_task_that_failed_is_logged_not_raised(caplog) -> None:  # type: ignore[no-untyped-def]
    async def fails() -> None:
        raise ValueError("boom")

    task = asyncio.create_task(fails(), name="failing")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR):
        await cancel_and_wait(task)
    assert "failing had failed" in caplog.text and "boom" in caplog.text
