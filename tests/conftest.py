"""Fixtures shared by every test folder: settings and an app client, the billing store on both
backends, a real Redis stream and PostgreSQL database under unique names, and two signalling
nodes on one backend (memory or Redis)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from redis.asyncio import Redis

from signalling.app.factory import create_app
from signalling.backends.memory import MemoryBackend, MemoryHub
from signalling.billing.store import BillingStore
from signalling.billing.store_postgres import PostgresBillingStore
from signalling.billing.store_sqlite import SqliteBillingStore
from signalling.calls.node import BACKEND
from signalling.core.database import Database
from signalling.core.postgres import connect
from signalling.core.settings import Settings

from .backends import REDIS_URL, delete_prefix, redis_available
from .externals import require
from .postgres_helpers import ADMIN_URL, create_database, drop_database
from .utils import FakePlane, build_app

TWO_NODE_SECRET = "two-node-secret-0123456789abcdef"

# A test that uses one of these talks to a live app, a real database or Redis: an integration test.
INTEGRATION_FIXTURES = frozenset(
    {"aiohttp_client", "aiohttp_server", "client", "two_nodes", "billing_store", "redis", "stream", "postgres_url"}
)

# `expertcall serve` defaults to an SFU worker process per CPU; the servers tests start keep the SFU
# in their own process unless a test asks for workers (tests/sfu/test_pool_served.py).
os.environ.setdefault("EXPERTCALL_SFU_WORKERS", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test is ``unit`` or ``integration`` (``scripts/test -m unit`` runs the quick ones).
    A module that starts servers, processes, browsers or real media says ``integration`` itself;
    otherwise a test is an integration test when it uses a live fixture, and a unit test if not."""
    for item in items:
        if item.get_closest_marker("integration") or item.get_closest_marker("unit"):
            continue
        live = INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ()))
        item.add_marker(pytest.mark.integration if live else pytest.mark.unit)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        secret="test-secret-0123456789abcdef-0123456789",
        media_loopback=True,
        billing_unit_seconds=60,
    )


@pytest.fixture
async def client(aiohttp_client, settings):  # type: ignore[no-untyped-def]
    return await aiohttp_client(create_app(settings))


@pytest.fixture(params=["sqlite", "postgresql"])
async def billing_store(request: Any, tmp_path: Any) -> AsyncIterator[BillingStore]:
    if request.param == "sqlite":
        db = Database.in_dir(tmp_path)
        yield SqliteBillingStore(db)
        db.close()
        return
    url = await create_database()
    require(url is not None, f"PostgreSQL at {ADMIN_URL}")
    assert url is not None
    pool = await connect(url)
    try:
        yield await PostgresBillingStore.open(pool)
    finally:
        await pool.close()
        await drop_database(url)


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


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    url = await create_database()
    require(url is not None, f"PostgreSQL at {ADMIN_URL}")
    assert url is not None
    try:
        yield url
    finally:
        await drop_database(url)


@pytest.fixture(params=["memory", "redis"])
async def two_nodes(request, aiohttp_client, tmp_path: Path) -> AsyncIterator[tuple]:  # type: ignore[no-untyped-def,type-arg]
    prefix = f"test-{uuid.uuid4().hex}"
    hub = MemoryHub()
    if request.param == "redis":
        require(redis_available(), "redis-server on 127.0.0.1:6379")
    servers, planes = [], []
    for name in ("a", "b"):
        settings = Settings(
            data_dir=tmp_path / name,
            secret=TWO_NODE_SECRET,
            node_id=f"node-{name}",
            redis_url=REDIS_URL if request.param == "redis" else "",
            redis_prefix=prefix,
            ring_timeout=5.0,
        )
        plane = FakePlane()
        app = build_app(settings, plane)
        if request.param == "memory":
            app[BACKEND] = MemoryBackend(settings.node_id, hub, stash_ttl=settings.resume_grace)
        servers.append(await aiohttp_client(app))
        planes.append(plane)
    yield servers[0], servers[1], planes[0], planes[1]
    for server in servers:
        await server.close()
    if request.param == "redis":
        delete_prefix(prefix)
