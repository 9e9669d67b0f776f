"""The bench's Redis clients, with the control plane's timeouts (signalling.core.redis_timeouts):
a Redis that stalls fails a run, naming it, instead of holding it forever (redis-py before 8.0
waits forever unless told, and later versions' defaults are theirs to change)."""

from __future__ import annotations

import click
import redis
import redis.asyncio as aioredis

from signalling.core.redis_timeouts import TIMEOUTS


def connect(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, **TIMEOUTS)


def connect_sync(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, **TIMEOUTS)


async def connected(url: str) -> aioredis.Redis:
    """A client whose Redis answered: one that is stalled or absent fails the run here, before
    it starts, not in the relay's retries at its end."""
    client = connect(url)
    try:
        await client.ping()
    except (redis.RedisError, OSError) as exc:
        await client.aclose()
        raise click.ClickException(f"Redis at {url} did not answer: {exc}") from None
    return client
