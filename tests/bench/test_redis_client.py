"""The bench's Redis clients against a Redis that froze (accepts, never answers): with the
server's timeouts (signalling/core/redis_timeouts.py) a run fails saying so, instead of hanging."""

from __future__ import annotations

import asyncio

import click
import pytest
import redis.exceptions

from bench import metering
from bench.signalling import delete_redis_prefix
from signalling.core import redis_timeouts
from tests.utils import ends_within, frozen_redis

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shorter than redis-py's own default (5 s, none before 8.0): a client built without the
    server's timeouts does not end within the tests' bounds."""
    monkeypatch.setitem(redis_timeouts.TIMEOUTS, "socket_timeout", 0.3)
    monkeypatch.setitem(redis_timeouts.TIMEOUTS, "socket_connect_timeout", 0.3)


async def test_the_metering_bench_fails_before_its_run_naming_a_frozen_redis() -> None:
    async with frozen_redis() as url:
        ended, failed = await ends_within(4, metering.run(sessions=1, duration=0, unit_seconds=1, redis_url=url))
    assert ended and isinstance(failed, click.ClickException), failed
    assert failed.message.startswith(f"Redis at {url} did not answer")


async def test_the_signalling_bench_cleanup_fails_on_a_frozen_redis() -> None:
    async with frozen_redis() as url:
        ended, failed = await ends_within(4, asyncio.to_thread(delete_redis_prefix, url, "bench-x"))
    assert ended and isinstance(failed, redis.exceptions.TimeoutError), failed
