"""Backend factories shared by the contract suite and the two-node app tests."""

from __future__ import annotations

import uuid
from typing import AsyncIterator, Callable

import redis as sync_redis

from signalling.backends.base import Backend
from signalling.backends.memory import MemoryBackend, MemoryHub
from signalling.backends.redis import RedisBackend

from .externals import require

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_available() -> bool:
    try:
        return bool(sync_redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping())
    except sync_redis.RedisError:
        return False


def delete_prefix(prefix: str) -> None:
    client = sync_redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
    if keys:
        client.delete(*keys)
    client.close()


async def node_factory(kind: str) -> AsyncIterator[Callable[[str], Backend]]:
    """Yields ``make(node_id)``: backends that share one state (a hub, or a Redis key prefix)."""
    if kind == "memory":
        hub = MemoryHub()
        yield lambda node_id: MemoryBackend(node_id, hub, stash_ttl=5)
        return
    require(redis_available(), "redis-server on 127.0.0.1:6379")
    prefix = f"test-{uuid.uuid4().hex}"
    try:
        yield lambda node_id: RedisBackend(node_id, REDIS_URL, prefix=prefix, stash_ttl=5)
    finally:
        delete_prefix(prefix)
