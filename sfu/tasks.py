"""Stopping a background task at shutdown without waiting for it forever: the media plane's
helper, and the control plane's (signalling/core/tasks.py hands it on)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)

# Long enough for a task to finish what it may not abandon halfway (a commit), short enough that
# a shutdown made of several such steps ends well within a process manager's 30 s.
CANCEL_WAIT_SECONDS = 5.0


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None, timeout: float = CANCEL_WAIT_SECONDS) -> None:
    """Cancel ``tasks`` and wait, at most ``timeout`` seconds, for them to end. Not ``await task``:
    a task that swallows its cancellation (redis-py can, when it lands inside a command) would hold
    the shutdown forever; such a task is cancelled once more and left. A task that failed is logged,
    not raised: the rest of the shutdown still runs."""
    pending = {task for task in tasks if task is not None}
    if not pending:
        return
    for task in pending:
        task.cancel()
    done, stuck = await asyncio.wait(pending, timeout=timeout)
    for task in stuck:
        log.warning("task %s did not end within %.0f s of its cancellation: cancelled again and left", task.get_name(),
                    timeout)
        task.cancel()
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s had failed", task.get_name(), exc_info=task.exception())
