"""The web demo's call in Chromium with one UDP port per SFU worker (``media_port``): every
connection of the call (both publishers, both viewers) reaches the server on the port of the
worker that hosts the room, media_port + its index."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import AsyncIterator

import pytest
from aiohttp import web

from sfu.pool import WorkerPool
from signalling.calls.node import MEDIA_PLANE
from signalling.core.settings import Settings
from tests.web_demo.test_web_demo import (  # noqa: F401  (browser: a fixture)
    ask, browser, frames_increasing, online_expert, serve, sign_in,
)

pytestmark = pytest.mark.integration

# The server's ports each of the page's connections uses (its selected candidate pairs).
SERVER_PORTS = """async () => {
  const call = window.expertcall.call;
  const ports = [];
  for (const pc of [call.publish, call.subscribe]) {
    const stats = await pc.getStats();
    stats.forEach((pair) => {
      if (pair.type === "candidate-pair" && pair.nominated && pair.state === "succeeded") {
        ports.push(stats.get(pair.remoteCandidateId).port);
      }
    });
  }
  return ports;
}"""


def free_udp_ports(count: int) -> int:
    """A base port with ``count`` free UDP ports from it on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError("no run of free UDP ports")


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, web.Application, int]]:
    media_port = free_udp_ports(2)
    async with serve(Settings(data_dir=tmp_path / "var", port=0, media_loopback=True,
                              sfu_workers=2, media_port=media_port)) as (base, app):
        yield base, app, media_port


async def test_a_chromium_call_through_one_port_per_worker(served, browser) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    base, app, media_port = served
    expert = await online_expert(browser, base, "Ada Expert")
    client = await sign_in(browser, base, "client", "Cleo Client")
    await ask(client, "ada-expert", "Ada Expert")
    await expert.get_by_role("button", name="Accept Cleo Client").click()
    await frames_increasing(client)
    await frames_increasing(expert)

    pool = app[MEDIA_PLANE]
    assert isinstance(pool, WorkerPool)
    (worker,) = pool.placement.values()
    for page in (client, expert):
        assert set(await page.evaluate(SERVER_PORTS)) == {media_port + worker.index}
    for page, name in ((expert, "expert"), (client, "client")):
        assert page.errors == [], name  # type: ignore[attr-defined]
