"""Named one-shot timers that run a coroutine, replaced when re-armed and all cancelled on close."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Hashable

from .tasks import cancel_and_wait

log = logging.getLogger(__name__)


class Timers:
    def __init__(self) -> None:
        self._handles: dict[Hashable, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def start(self, key: Hashable, delay: float, callback: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``callback(*args)`` after ``delay`` seconds, replacing any timer under ``key``."""
        if self._closed:
            return
        self.cancel(key)
        loop = asyncio.get_running_loop()
        self._handles[key] = loop.call_later(max(0.0, delay), self._fire, key, callback, args)

    def cancel(self, key: Hashable) -> None:
        handle = self._handles.pop(key, None)
        if handle is not None:
            handle.cancel()

    def pending(self, key: Hashable) -> bool:
        return key in self._handles

    def _fire(self, key: Hashable, callback: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        self._handles.pop(key, None)
        task = asyncio.ensure_future(self._run(key, callback, args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: Hashable, callback: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        try:
            await callback(*args)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("timer %r failed", key)

    async def close(self) -> None:
        """Cancel every timer and wait for callbacks already running; safe to call twice."""
        self._closed = True
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()
        await cancel_and_wait(*self._tasks)
