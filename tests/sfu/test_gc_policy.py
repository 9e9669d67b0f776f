"""Full garbage collections after departures, not during join storms."""

from __future__ import annotations

import asyncio
import gc

import pytest

from sfu.api import TransportClosed
from sfu.gc_policy import NEVER, CollectAfterDepartures
from sfu.options import MediaOptions
from sfu.worker import LocalMediaPlane

pytestmark = pytest.mark.integration


async def test_a_full_collection_follows_departures_of_a_quarter_of_the_open_transports() -> None:
    before = gc.get_threshold()
    open_transports = [400]
    collected: list[int] = []
    policy = CollectAfterDepartures(lambda: open_transports[0], min_closed=16, max_interval=60,
                                    collect=lambda: collected.append(1))
    policy.install()
    assert gc.get_threshold() == (before[0], before[1], NEVER)  # joins no longer trigger one
    for _ in range(79):
        open_transports[0] -= 1
        policy.transport_closed()
    await asyncio.sleep(0)
    assert collected == []  # 79 gone, 321 open: not yet a quarter
    open_transports[0] -= 1
    policy.transport_closed()
    policy.transport_closed()  # (one collection however many close before it runs)
    await asyncio.sleep(0)
    assert collected == [1] and policy.closed == 0
    # a small room: at least min_closed departures
    open_transports[0] = 2
    for _ in range(15):
        policy.transport_closed()
    await asyncio.sleep(0)
    assert collected == [1]
    policy.transport_closed()
    await asyncio.sleep(0)
    assert collected == [1, 1]
    policy.uninstall()
    assert gc.get_threshold() == before


async def test_the_periodic_check_collects_stragglers_and_nothing_when_idle() -> None:
    collected: list[int] = []
    policy = CollectAfterDepartures(lambda: 100, max_interval=0.05,
                                    collect=lambda: collected.append(1) or gc.collect(2))
    policy.install()
    policy.start()
    policy.transport_closed()  # one departure: far below a quarter, left for the periodic check
    await asyncio.sleep(0.08)
    assert collected == [1]
    await asyncio.sleep(0.12)
    assert collected == [1]  # nothing promoted since (the collection itself reset the counts)
    policy.uninstall()


async def test_the_media_plane_installs_it_and_counts_closed_transports() -> None:
    before = gc.get_threshold()
    plane = LocalMediaPlane(MediaOptions(loopback=True))
    plane.start()
    assert gc.get_threshold()[2] == NEVER
    second = LocalMediaPlane(MediaOptions(loopback=True))
    second.start()
    plane._emit(TransportClosed("room", "bob", "subscribe", "left"))
    assert plane.collector.closed == 1
    await plane.close()
    assert gc.get_threshold()[2] == NEVER  # still one plane open
    await second.close()
    assert gc.get_threshold() == before
