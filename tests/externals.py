"""External components (redis-server, PostgreSQL, coturn, chromium): a test that needs one skips
when it is missing on a developer's machine, and fails under CI=true, where .ci/run installs them."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(available: bool, what: str) -> None:
    """Skip locally, fail in CI, when an external component is missing."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but is not available")
    pytest.skip(f"{what} is not available")
