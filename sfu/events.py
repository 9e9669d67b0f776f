"""Handing a media plane's events to the control plane's handlers, local or from a worker."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from sfu.api import EventHandler, Message

logger = logging.getLogger(__name__)


class EventFanout:
    """Calls every handler with each event; a handler that returns an awaitable runs as a task,
    and a handler's failure is logged, never raised into the media plane."""

    def __init__(self) -> None:
        self._handlers: list[EventHandler] = []
        self._pending: set[asyncio.Future[Any]] = set()

    def add(self, handler: EventHandler) -> None:
        self._handlers.append(handler)

    def emit(self, event: Message) -> None:
        for handler in list(self._handlers):
            try:
                result = handler(event)
            except Exception:
                logger.exception("media event handler failed on %s", event.kind)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._pending.add(task)
                task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Future[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("media event handler failed", exc_info=task.exception())

    def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        self._handlers.clear()
