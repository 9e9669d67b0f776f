"""A real redis-server for the billing tests, under a unique key prefix that is deleted afterwards."""

from __future__ import annotations

import uuid
from typing import AsyncIterator

import pytest
from redis.asyncio import Redis

from .conftest import require

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
        available = True
    except OSError:
        available = False
    require(available, "redis-server on 127.0.0.1:6379")
    yield client
    await client.aclose()


@pytest.fixture
async def stream(redis: Redis) -> AsyncIterator[str]:
    key = f"test:{uuid.uuid4().hex}:metering"
    yield key
    await redis.delete(key)
