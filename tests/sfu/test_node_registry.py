"""The SFU node registry (sfu/node_registry.py) against a Redis that froze: it fails its commands
within its timeout, so a node starts and shuts down without waiting on it."""

from __future__ import annotations

import pytest

from sfu import node_registry
from sfu.node_registry import NodeRegistry
from sfu.node_server import NodeServer
from sfu.options import MediaOptions
from sfu.worker import LocalMediaPlane
from tests.utils import ends_within, frozen_redis

pytestmark = pytest.mark.unit


async def test_an_sfu_node_starts_and_shuts_down_beside_a_frozen_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_registry, "REDIS_SECONDS", 0.3)
    async with frozen_redis() as url:
        server = NodeServer(LocalMediaPlane(MediaOptions(loopback=True)), lambda: {"t": "load", "rooms": 0},
                            b"k" * 32, "sfu-beside-frozen-redis", NodeRegistry(url))
        # redis-py's own default (5 s, or none before 8.0) took 10 s here: an announcement and a withdrawal
        started, _ = await ends_within(3, server.start("127.0.0.1", 0))
        assert started and not server.announced
        closed, failed = await ends_within(3, server.close())
    assert closed and failed is None
