"""The recorder's jitter window: order restored, holes NACKed once and given up on in time."""

from __future__ import annotations

from sfu.jitter import JitterWindow


class Taker:
    def __init__(self, max_delay_ms: int = 200, max_packets: int = 256) -> None:
        self.released: list[tuple[int, bool]] = []
        self.nacked: list[list[int]] = []
        self.window = JitterWindow(lambda p, hole: self.released.append((p[0] << 8 | p[1], hole)),
                                   self.nacked.append, max_delay_ms=max_delay_ms,
                                   max_packets=max_packets)

    def push(self, seq: int, at: int = 0) -> None:
        self.window.push(seq, bytes([seq >> 8, seq & 0xFF]), at)


def test_reordered_packets_come_out_in_order_across_the_wrap() -> None:
    taker = Taker()
    for seq in (65534, 0, 65535, 2, 1, 3):
        taker.push(seq)
    assert taker.released == [(s, False) for s in (65534, 65535, 0, 1, 2, 3)]
    assert taker.nacked == [[65535], [1]]


def test_a_hole_waits_then_is_skipped_and_said() -> None:
    taker = Taker(max_delay_ms=100)
    taker.push(10, at=0)
    taker.push(12, at=10)
    taker.push(13, at=50)
    assert taker.released == [(10, False)]
    assert taker.nacked == [[11]]
    taker.push(14, at=111)  # past the window: 11 is given up
    assert taker.released == [(10, False), (12, True), (13, False), (14, False)]
    taker.push(11, at=120)  # too late now
    assert taker.window.late == 1 and taker.window.skipped == 1


def test_too_many_waiting_packets_skip_the_hole_at_once() -> None:
    taker = Taker(max_packets=3)
    taker.push(1)
    for seq in (3, 4, 5, 6):
        taker.push(seq)
    assert [s for s, _ in taker.released] == [1, 3, 4, 5, 6]


def test_duplicates_are_dropped_and_flush_releases_the_rest() -> None:
    taker = Taker()
    taker.push(5)
    taker.push(5)
    taker.push(7)
    taker.push(7)
    taker.window.flush()
    assert taker.released == [(5, False), (7, True)]
