"""The Meter under test, on a manual clock, with a recorder of what it calls back."""

from __future__ import annotations

import pytest

from signalling.billing.meter import Meter

from ...billing_helpers import ManualClock, Recorder, make_meter


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def meter(tmp_path, clock, rec) -> Meter:  # type: ignore[no-untyped-def]
    return make_meter(tmp_path, clock, rec)
