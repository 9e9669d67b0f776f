"""A small jitter window: puts one stream's packets back in sequence order before depacketizing.

A packet ahead of the next expected one waits (and the missing ones are NACKed, once); the window
gives up on a hole after ``max_delay_ms`` of arrivals or ``max_packets`` waiting packets, and
says so to whoever takes the packets, so that a frame with a hole is dropped rather than written.
It runs on the packet path: no timers, no allocation beyond the waiting packets themselves.
"""

from __future__ import annotations

from collections.abc import Callable

MAX_NACK = 64  # sequence numbers asked for at once


class JitterWindow:
    def __init__(
        self,
        release: Callable[[bytes, bool], None],
        nack: Callable[[list[int]], None],
        *,
        max_delay_ms: int = 200,
        max_packets: int = 256,
    ) -> None:
        self._release = release  # (packet, a hole was skipped just before it)
        self._nack = nack
        self.max_delay_ms = max_delay_ms
        self.max_packets = max_packets
        self._next = -1  # the sequence number released next; -1 before the first packet
        self._highest = 0  # the highest sequence number seen
        self._waiting: dict[int, bytes] = {}
        self._hole_since = 0  # arrival of the first packet that waited for the current hole
        self.late = 0  # packets that came after the window had given up on them
        self.skipped = 0  # sequence numbers the window gave up on

    def push(self, seq: int, packet: bytes, arrival_ms: int) -> None:
        if self._next < 0:
            self._next = self._highest = seq
        delta = (seq - self._next) & 0xFFFF
        if delta >= 0x8000:
            self.late += 1  # older than what was released: a duplicate or too late
            return
        if delta == 0:
            self._next = (seq + 1) & 0xFFFF
            if ((seq - self._highest) & 0xFFFF) < 0x8000:
                self._highest = seq
            self._release(packet, False)
            if self._waiting:
                self._drain(False, arrival_ms)
            return
        if seq in self._waiting:
            return
        if not self._waiting:
            self._hole_since = arrival_ms
        self._waiting[seq] = packet
        ahead = (seq - self._highest) & 0xFFFF
        if 0 < ahead < 0x8000:
            missing = [(self._highest + i) & 0xFFFF for i in range(1, min(ahead, MAX_NACK + 1))]
            self._highest = seq
            if missing:
                self._nack(missing)
        if arrival_ms - self._hole_since > self.max_delay_ms or len(self._waiting) > self.max_packets:
            self._skip(arrival_ms)

    def flush(self) -> None:
        """Release whatever waits, holes and all (the stream ends)."""
        while self._waiting:
            self._skip(0)

    def _skip(self, arrival_ms: int) -> None:
        """Give up on the hole: go on from the oldest waiting packet."""
        nearest = min(self._waiting, key=lambda s: (s - self._next) & 0xFFFF)
        self.skipped += (nearest - self._next) & 0xFFFF
        self._next = nearest
        self._drain(True, arrival_ms)

    def _drain(self, hole: bool, arrival_ms: int) -> None:
        waiting = self._waiting
        while True:
            packet = waiting.pop(self._next, None)
            if packet is None:
                break
            self._next = (self._next + 1) & 0xFFFF
            self._release(packet, hole)
            hole = False
        if waiting:  # the next hole: its wait starts now
            self._hole_since = arrival_ms
