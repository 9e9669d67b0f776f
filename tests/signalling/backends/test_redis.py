"""The Redis backend's own life (the contract both backends keep is test_backends.py): what it
opened on the server is closed by close(), whether or not start() ran."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from signalling.backends.redis import RedisBackend

from ...backends import REDIS_URL, redis_available
from ...externals import require

pytestmark = pytest.mark.integration


async def _connected(observer: aioredis.Redis, name: str, expected: bool) -> bool:
    """Whether the server lists a client named ``name``, once it agrees with ``expected`` (a
    closed socket leaves the server's list a moment after the client closed it)."""
    for _ in range(100):
        listed = any(client.get("name") == name for client in await observer.client_list())
        if listed == expected:
            break
        await asyncio.sleep(0.05)
    return listed


@pytest.mark.parametrize("started", [False, True])
async def test_close_releases_the_connections_whether_or_not_it_started(started: bool) -> None:
    require(redis_available(), "redis-server on 127.0.0.1:6379")
    name = f"test-close-{uuid.uuid4().hex}"
    backend = RedisBackend("n", REDIS_URL, prefix=name)

    async def ignore(envelope: dict[str, object]) -> None:
        return None

    observer = aioredis.Redis.from_url(REDIS_URL)
    try:
        if started:
            await backend.start(ignore)
        await backend.redis.client_setname(name)  # on a connection the pool keeps open
        assert await _connected(observer, name, True)
        await backend.close()
        assert not await _connected(observer, name, False)
        await backend.close()  # a second close is harmless
    finally:
        await observer.aclose()
