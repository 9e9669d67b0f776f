"""The web demo's call in Chromium when the SFU worker process hosting it is SIGKILLed: both
pages hear ``media_restarted``, publish again from new connections, and video flows again."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import AsyncIterator

import pytest
from aiohttp import web

from sfu.pool import WorkerPool
from signalling.calls.node import MEDIA_PLANE
from signalling.core.settings import Settings
from tests.web_demo.test_web_demo import (  # noqa: F401  (browser: a fixture)
    ask, browser, frames_increasing, serve, shoot, sign_in,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, web.Application]]:
    """The whole app on a free 127.0.0.1 port, in this process, its SFU in two worker processes."""
    async with serve(Settings(data_dir=tmp_path / "var", port=0, media_loopback=True,
                              billing_unit_seconds=2, sfu_workers=2)) as served:
        yield served


async def test_a_call_comes_back_when_its_sfu_worker_dies(served, browser) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    base, app = served
    expert = await sign_in(browser, base, "expert", "Ada Expert")
    await expert.get_by_label("Skills").fill("python")
    await expert.get_by_label("Pricing").select_option("per_minute")
    await expert.get_by_label("Price", exact=True).fill("1.50")
    await expert.get_by_role("button", name="Save profile").click()
    await expert.get_by_text("Profile saved.").wait_for()
    await expert.locator("#connection[data-state=open]").wait_for()
    client = await sign_in(browser, base, "client", "Cleo Client")
    await ask(client, "ada-expert", "Ada Expert")
    await expert.get_by_role("button", name="Accept Cleo Client").click()
    await frames_increasing(client)
    await frames_increasing(expert)
    await client.locator("[data-ref=state][data-state=live]").wait_for()

    pool = app[MEDIA_PLANE]
    assert isinstance(pool, WorkerPool)
    (room,) = pool.placement
    victim = pool.placement[room]
    os.kill(victim.pid, signal.SIGKILL)
    for page in (client, expert):
        await page.locator("[data-ref=state][data-state=paused]").wait_for()
    # Each page publishes again on media_restarted; the server offers each a new subscribe connection.
    for page in (client, expert):
        await page.locator("[data-ref=state][data-state=live]").wait_for(timeout=10000)
    assert pool.placement[room] is not victim
    await frames_increasing(client)
    await frames_increasing(expert)
    await shoot(client, "10-client-after-worker-restart")
    for page, name in ((expert, "expert"), (client, "client")):
        assert page.errors == [], name  # type: ignore[attr-defined]
