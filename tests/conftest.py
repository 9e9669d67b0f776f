"""Shared fixtures. Tests that need an external component (redis-server, coturn, chromium) skip
when it is missing on a developer's machine, and fail under CI=true, where .ci/run installs them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from signalling.app import create_app
from signalling.settings import Settings

IN_CI = os.environ.get("CI", "").lower() == "true"
# `expertcall serve` defaults to an SFU worker process per CPU; the servers tests start keep the SFU
# in their own process unless a test asks for workers (tests/test_sfu_workers_served.py).
os.environ.setdefault("EXPERTCALL_SFU_WORKERS", "1")


def require(available: bool, what: str) -> None:
    """Skip locally, fail in CI, when an external component is missing."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but is not available")
    pytest.skip(f"{what} is not available")


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
