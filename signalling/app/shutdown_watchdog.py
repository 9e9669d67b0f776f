"""A shutdown that hangs names its cause: ``expertcall serve`` still running ``seconds`` after its
shutdown began (SIGTERM or SIGINT) writes, once, every thread's stack and every pending asyncio
task's await chain to stderr, before a process manager's SIGKILL leaves nothing to read.

Armed by the first ``on_shutdown`` hook, so it costs nothing while the node serves. The task dump
runs on a thread of its own, as the loop may be the thing that is stuck; faulthandler's own timer,
a little later, still dumps the threads if that thread cannot get the GIL.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import sys
import threading
import traceback
from types import AsyncGeneratorType, FrameType
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

# faulthandler's fallback fires this much later: only if the dump on our thread did not happen.
FALLBACK_SECONDS = 5.0


def install(app: web.Application, seconds: float) -> None:
    """Arm the watchdog when ``app`` starts shutting down; 0 disables it."""
    if seconds <= 0:
        return

    async def arm(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        faulthandler.dump_traceback_later(seconds + FALLBACK_SECONDS, exit=False, file=sys.stderr)
        threading.Thread(target=_dump_after, args=(loop, seconds), name="shutdown-watchdog", daemon=True).start()

    app.on_shutdown.insert(0, arm)


def _dump_after(loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    threading.Event().wait(seconds)
    faulthandler.cancel_dump_traceback_later()
    log.error("shutdown still running after %.0f s: the stack of every thread and every pending task follows", seconds)
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    log.error("pending asyncio tasks:\n%s", format_tasks(loop))


def format_tasks(loop: asyncio.AbstractEventLoop) -> str:
    """Each task of ``loop`` with its whole await chain, innermost frame last (Task.print_stack
    shows only the outermost coroutine, which rarely says what it waits for)."""
    blocks = []
    for task in asyncio.all_tasks(loop):  # retries if the loop adds a task meanwhile
        frames = _await_chain(task.get_coro())
        stack = "".join(traceback.format_list(traceback.StackSummary.extract((f, f.f_lineno) for f in frames)))
        waiting = getattr(task, "_fut_waiter", None)
        blocks.append(f"{task.get_name()} ({task.get_coro()!r}), waiting for {waiting!r}:\n{stack}")
    return "\n".join(sorted(blocks))


def _await_chain(awaitable: Any) -> list[FrameType]:
    frames = []
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None) \
            or getattr(awaitable, "ag_frame", None)
        if frame is None:
            # anext(agen) (an async context manager's exit) hides its generator but for the GC
            awaitable = next((r for r in gc.get_referents(awaitable) if isinstance(r, AsyncGeneratorType)), None)
            if awaitable is None:
                break
            continue
        frames.append(frame)
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None) \
            or getattr(awaitable, "ag_await", None)
    return frames
