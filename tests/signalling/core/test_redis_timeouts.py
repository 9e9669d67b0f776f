"""The control plane's Redis clients (signalling/core/redis_timeouts.py) against a Redis that
froze: commands fail within the timeout, and closing does not wait on the server."""

from __future__ import annotations

import pytest
import redis.exceptions

from signalling.backends.redis import RedisBackend
from signalling.core import redis_timeouts
from tests.utils import ends_within, frozen_redis

pytestmark = pytest.mark.unit


async def test_a_node_backend_beside_a_frozen_redis_fails_to_start_and_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(redis_timeouts.TIMEOUTS, "socket_timeout", 0.3)
    monkeypatch.setitem(redis_timeouts.TIMEOUTS, "socket_connect_timeout", 0.3)

    async def handler(envelope: dict[str, object]) -> None:
        return None

    async with frozen_redis() as url:
        backend = RedisBackend("n-frozen", url)
        # redis-py's own default (5 s, or none before 8.0) held the subscription here
        started, failed = await ends_within(3, backend.start(handler))
        assert started and isinstance(failed, redis.exceptions.TimeoutError)
        claimed, failed = await ends_within(3, backend.redis.set("k", "v"))
        assert claimed and isinstance(failed, redis.exceptions.TimeoutError)
        closed, failed = await ends_within(3, backend.close())
    assert closed and failed is None


def test_every_client_names_its_timeouts() -> None:
    """Not redis-py's defaults, which differ by version (none at all before 8.0)."""
    backend = RedisBackend("n", "redis://127.0.0.1:1/0")
    kwargs = backend.redis.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == redis_timeouts.COMMAND_SECONDS
    assert kwargs["socket_connect_timeout"] == redis_timeouts.CONNECT_SECONDS
