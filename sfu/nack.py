"""NACKs towards a publisher: which sequence numbers are still worth asking for, and when again.

A hole in the publisher's stream is asked for at once, then again every retry interval (1.5
round trips, measured on the first answer to each request: Karn's rule), and given up once it is
older than a receiver's jitter buffer would wait or has been asked for too often. Retries are
driven by packet arrivals (the producer checks ``due_ms``), so no timer runs per producer.
"""

from __future__ import annotations

MAX_PENDING = 256  # sequence numbers remembered
MAX_TRIES = 5  # NACKs per sequence number, the first included
MAX_AGE_MS = 1000  # after this a retransmission arrives too late for anyone's jitter buffer
MIN_RETRY_MS = 10
INITIAL_RTT_MS = 100  # until the first retransmission has been timed


class UpstreamNacks:
    __slots__ = ("due_ms", "given_up", "pending", "requested", "rtt_ms")

    def __init__(self) -> None:
        self.pending: dict[int, list[int]] = {}  # seq -> [first asked, last asked, tries] (ms)
        self.rtt_ms = float(INITIAL_RTT_MS)
        self.due_ms = 0  # when the earliest retry is due; 0: nothing pending
        self.requested = 0  # sequence numbers asked for, retries included
        self.given_up = 0

    def clear(self) -> None:
        self.pending.clear()
        self.due_ms = 0

    @property
    def retry_ms(self) -> int:
        return max(MIN_RETRY_MS, int(self.rtt_ms * 1.5))

    def missing(self, sequence_numbers: list[int], now_ms: int) -> list[int]:
        """New holes: returns those to ask for now (the ones not already pending)."""
        pending = self.pending
        fresh = [seq for seq in sequence_numbers if seq not in pending]
        for seq in fresh:
            pending[seq] = [now_ms, now_ms, 1]
        while len(pending) > MAX_PENDING:
            del pending[next(iter(pending))]  # the oldest hole: given up
            self.given_up += 1
        if fresh and not self.due_ms:
            self.due_ms = now_ms + self.retry_ms
        self.requested += len(fresh)
        return fresh

    def arrived(self, seq: int, now_ms: int, retransmitted: bool) -> bool:
        """``seq`` came (late, or as a retransmission): True when it was a pending hole."""
        entry = self.pending.pop(seq, None)
        if entry is None:
            return False
        if retransmitted and entry[2] == 1:  # the answer to our only request: a clean sample
            self.rtt_ms += (max(1, now_ms - entry[1]) - self.rtt_ms) / 8
        if not self.pending:
            self.due_ms = 0
        return True

    def due(self, now_ms: int) -> list[int]:
        """The holes to ask for again now; drops those no longer worth it."""
        retry = self.retry_ms
        again = []
        next_due = 0
        for seq, entry in list(self.pending.items()):
            if now_ms - entry[0] > MAX_AGE_MS or entry[2] >= MAX_TRIES:
                del self.pending[seq]
                self.given_up += 1
                continue
            if now_ms - entry[1] >= retry:
                entry[1] = now_ms
                entry[2] += 1
                again.append(seq)
            at = entry[1] + retry
            if not next_due or at < next_due:
                next_due = at
        self.due_ms = next_due
        self.requested += len(again)
        return again
