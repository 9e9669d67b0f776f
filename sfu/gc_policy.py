"""When a media process runs CPython's full garbage collections: after connections leave, not
while they join.

CPython runs a full (generation 2) collection whenever the objects that survived the younger
collections have grown by a quarter since the last one. In an SFU that is a join storm: each
subscriber connection adds a few hundred long-lived objects (aiortc's peer connection, ICE, DTLS)
and each full collection walks all of them while every packet waits. `bench media` saw pauses of
56-167 ms at 300-500 subscribers, each collecting nothing. What a media server turns into garbage
is the connections that leave: aiortc's objects hold reference cycles, so only a full collection
frees them. With the policy installed, automatic full collections are off (the younger
generations still run as usual) and a full collection runs soon after the transports closed
since the last one reach a quarter of those still open (at least ``min_closed``); a periodic check
every ``max_interval`` collects whatever else reached the old generation (signalling's garbage, a
few departures), so nothing is held for longer than that.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

NEVER = 1 << 30  # generation 2's threshold counts generation-1 collections: a few a second at most

_installs = 0
_saved_threshold: tuple[int, int, int] | None = None


class CollectAfterDepartures:
    def __init__(
        self,
        open_transports: Callable[[], int],
        *,
        min_closed: int = 16,
        max_interval: float = 300.0,
        collect: Callable[[], Any] = lambda: gc.collect(2),
    ) -> None:
        self.open_transports = open_transports
        self.min_closed = min_closed
        self.max_interval = max_interval
        self._collect_now = collect
        self.closed = 0  # transports closed since the last full collection
        self.collections = 0
        self._installed = False
        self._soon: asyncio.Handle | None = None
        self._periodic: asyncio.TimerHandle | None = None

    def install(self) -> None:
        """Turn automatic full collections off in this process (counted: the last uninstall
        restores CPython's threshold)."""
        global _installs, _saved_threshold
        if self._installed:
            return
        self._installed = True
        if _installs == 0:
            _saved_threshold = gc.get_threshold()
            gc.set_threshold(_saved_threshold[0], _saved_threshold[1], NEVER)
        _installs += 1

    def uninstall(self) -> None:
        global _installs
        if not self._installed:
            return
        self._installed = False
        for handle in (self._soon, self._periodic):
            if handle is not None:
                handle.cancel()
        self._soon = self._periodic = None
        _installs -= 1
        if _installs == 0 and _saved_threshold is not None:
            gc.set_threshold(*_saved_threshold)

    def start(self) -> None:
        """Arm the periodic check (needs the running loop; repeated calls are harmless)."""
        if self._installed and self._periodic is None:
            self._periodic = asyncio.get_running_loop().call_later(self.max_interval, self._tick)

    def transport_closed(self) -> None:
        self.closed += 1
        if self._installed and self._soon is None \
                and self.closed >= max(self.min_closed, self.open_transports() // 4):
            # not inside the close path that told us: right after it
            self._soon = asyncio.get_running_loop().call_soon(self._collect)

    def _tick(self) -> None:
        self._periodic = None
        # generation 2's count: generation-1 collections since the last full one, i.e. whether
        # anything at all was promoted to the old generation meanwhile
        if self.closed or gc.get_count()[2]:
            self._collect()
        self.start()

    def _collect(self) -> None:
        self._soon = None
        self.closed = 0
        self.collections += 1
        self._collect_now()
