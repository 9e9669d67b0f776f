"""NodeServer (sfu/node_server.py) on its own, without Redis: what its shutdown waits for."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sfu import node_server
from sfu.node_registry import NodeRegistry
from sfu.node_server import NodeServer
from sfu.options import MediaOptions
from sfu.worker import LocalMediaPlane

pytestmark = pytest.mark.unit


class StuckRegistry(NodeRegistry):
    """The first announcement goes through; the next hangs, and swallows the cancellation that
    lands inside it, as redis-py can inside a command."""

    def __init__(self) -> None:
        self.announcements = 0
        self.stuck = asyncio.Event()

    async def announce(self, node_id: str, host: str, port: int, load: dict[str, Any]) -> None:
        self.announcements += 1
        if self.announcements == 1:
            return
        self.stuck.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
        await asyncio.Event().wait()

    async def withdraw(self, node_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


async def test_close_does_not_wait_forever_for_a_ticker_that_swallows_its_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(node_server, "LOAD_INTERVAL", 0.01)
    registry = StuckRegistry()
    server = NodeServer(LocalMediaPlane(MediaOptions(loopback=True)), lambda: {"t": "load", "rooms": 0},
                        b"k" * 32, "sfu-stuck", registry)
    server.stop_seconds = 0.2
    await server.start("127.0.0.1", 0)
    await registry.stuck.wait()  # the ticker is inside its second announcement
    ticker = server._ticker
    assert ticker is not None
    closing = asyncio.create_task(server.close())
    # asyncio.wait cancels nothing: a timeout here would end the stuck wait by cancelling it again
    done, _ = await asyncio.wait({closing}, timeout=5)
    if not done:  # `cancel(); await ticker` waits here forever
        ticker.cancel()
        await closing
    assert done == {closing} and closing.exception() is None
    await asyncio.sleep(0)  # cancelled once more, it ends
    assert ticker.cancelled()
