"""The event loop a process runs on (``expertcall serve``, and the bench's own processes)."""

from __future__ import annotations

import asyncio


def install_event_loop() -> None:
    """uvloop when it is installed: the SFU's per-packet path runs on this loop."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
