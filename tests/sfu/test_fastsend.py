"""sfu/fastsend.py: the C helper (libsrtp protect into the batch, sendmmsg) and the Python
fallback put the same bytes on the wire."""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest

import pylibsrtp

from sfu import aiortc_hooks, fastsend, udp_mux

from ..externals import require

pytestmark = pytest.mark.unit

CHUNK = 64  # datagrams per sendmmsg call (sfu/_fastsend.c)


def _receive_all(sock: socket.socket) -> list[tuple[bytes, int]]:
    got: list[tuple[bytes, int]] = []
    while True:
        try:
            data, addr = sock.recvfrom(2048)
        except BlockingIOError:
            return got
        got.append((data, addr[1]))


def _session(direction: int) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=bytes(range(28)), ssrc_type=direction,
                              srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM)
    return pylibsrtp.Session(policy=policy)


def _rtp(seq: int, size: int) -> bytes:
    return bytes([0x80, 96]) + seq.to_bytes(2, "big") + bytes(4) + b"\x01\x02\x03\x04" \
        + bytes([seq % 256]) * size


def _queues() -> list[tuple[aiortc_hooks.ProtectQueue, fastsend.Batch]]:
    """The C protector into the C batch, the Python one into the Python batch."""
    assert fastsend.NATIVE, "sfu/_fastsend.c was not built (pip install -e . compiles it)"
    return [(aiortc_hooks.batch_protector(_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)),
             fastsend.new_batch()),
            (aiortc_hooks.python_batch_protector(_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)),
             fastsend.PyBatch())]


def _send_with(queue: aiortc_hooks.ProtectQueue, batch: fastsend.Batch) -> list[list[bytes]]:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    sender.setblocking(False)
    receivers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for sock in receivers:
            sock.bind(("127.0.0.1", 0))
        for n in range(150):  # more than one sendmmsg chunk (64)
            queue(_rtp(2 * n, n * 9 % 1400), receivers[n % 3].getsockname(), batch)
            if n in (5, 70):
                # a datagram to an address that cannot be sent to is dropped; the rest go on
                # (the kernel takes part of a sendmmsg call, the call goes on after the failure)
                queue(_rtp(2 * n + 1, 10), ("0.0.0.0", 0), batch)
        assert len(batch) == 152
        assert batch.send(sender) == 150
        for sock in receivers:
            sock.setblocking(False)
        os.sched_yield()
        return [[data for data, _ in _receive_all(sock)] for sock in receivers]
    finally:
        sender.close()
        for sock in receivers:
            sock.close()


def test_the_native_and_python_batches_send_identical_datagrams() -> None:
    native, python = (_send_with(queue, batch) for queue, batch in _queues())
    assert native == python
    assert [len(got) for got in native] == [50, 50, 50]
    receiver = _session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
    assert receiver.unprotect(native[0][1]) == _rtp(6, 27)


def test_a_closed_socket_sends_nothing_and_raises_nothing_in_both_batches() -> None:
    """A socket closed under the batch (a worker shutting down, a flush after close): no
    datagram goes out, send() says 0 and raises nothing, as for any other error that is the
    datagrams' own; the batch is left to its caller to clear."""
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.close()
    sent = []
    for queue, batch in _queues():
        for n in range(3):
            queue(_rtp(n, 20), ("127.0.0.1", 9), batch)
        sent.append((batch.send(closed), len(batch)))
    assert sent == [(0, 3), (0, 3)]


def test_the_native_and_python_protectors_queue_identical_srtp() -> None:
    packets = [_rtp(seq, seq * 37 % 1400) for seq in range(200)]
    queued = []
    for queue, batch in _queues():
        for n, packet in enumerate(packets):
            assert queue(packet, ("127.0.0.1", 9), batch) == n + 1
        assert [address for _, address in batch.items()] == [("127.0.0.1", 9)] * len(packets)
        queued.append([datagram for datagram, _ in batch.items()])
    native, python = queued
    assert native == python
    receiver = _session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
    assert [receiver.unprotect(d) for d in native] == packets


def test_the_native_batch_grows_its_buffer_and_keeps_it() -> None:
    """Protected in place into one buffer: it grows past its first size (a turn of many
    subscribers) without moving what is already queued, and is kept, not shrunk, when cleared."""
    queue, batch = _queues()[0]
    packets = [_rtp(seq, 1200) for seq in range(300)]  # some 370 kB, the first buffer 64 kB
    for packet in packets:
        queue(packet, ("127.0.0.1", 9), batch)
    grown = batch.capacity  # type: ignore[attr-defined]
    assert grown >= 300 * 1228
    receiver = _session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
    assert [receiver.unprotect(d) for d, _ in batch.items()] == packets
    batch.clear()
    assert len(batch) == 0 and batch.items() == []
    assert batch.capacity == grown  # type: ignore[attr-defined]


def test_the_native_batch_drops_what_would_take_it_past_its_bound() -> None:
    """A turn's batch is bounded (16 MB, far more than a socket's send buffer takes): past it a
    packet is dropped, as a full socket buffer drops the rest of a batch, and nothing raises."""
    queue, batch = _queues()[0]
    packet = _rtp(0, 1400)
    queued = 0
    for seq in range(16 * 1024 * 1024 // 1400 + 100):
        queued = queue(_rtp(seq, 1400), ("127.0.0.1", 9), batch)
    assert batch.capacity == 16 * 1024 * 1024  # type: ignore[attr-defined]
    assert queued == len(batch) < 16 * 1024 * 1024 // len(packet)
    # the batch still sends and takes packets once cleared
    batch.clear()
    assert queue(_rtp(20000, 100), ("127.0.0.1", 9), batch) == 1


def test_the_native_and_python_unprotectors_give_the_same_plaintext() -> None:
    assert fastsend.native_unprotect is not None
    sender = _session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    packets = [bytes([0x80, 96]) + seq.to_bytes(2, "big") + bytes(4) + b"\x01\x02\x03\x04"
               + bytes([seq % 256]) * (seq * 37 % 1200) for seq in range(100)]
    protected = [sender.protect(p) for p in packets]
    for make in (aiortc_hooks.unprotector, aiortc_hooks.python_unprotector):
        unprotect = make(_session(pylibsrtp.Policy.SSRC_ANY_INBOUND))
        assert [unprotect(p) for p in protected] == packets
        # a replay and a forgery are refused with a negative status, not an exception
        replayed = unprotect(protected[5])
        forged = unprotect(protected[7][:-1] + bytes([protected[7][-1] ^ 1]))
        assert isinstance(replayed, int) and replayed < 0
        assert isinstance(forged, int) and forged < 0


# setns(2)'s flag for a network namespace (os.setns only came with Python 3.12)
CLONE_NEWNET = 0x40000000


class SlowLoopback:
    """A network namespace of the test's own whose loopback drains at 10 bytes a second (tbf):
    what is sent there waits in the qdisc, holding its sender's socket buffer, so a small buffer
    fills and stays full, which loopback alone never does (it frees the buffer as it sends)."""

    def __init__(self) -> None:
        self.name = f"expertcall-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, capture_output=True, text=True, timeout=30)

    def throttle(self) -> None:
        """A fresh qdisc (a full token bucket of 1600 bytes, an empty queue): what queued before
        is dropped, freeing the senders' buffers."""
        self.run("tc", "-n", self.name, "qdisc", "del", "dev", "lo", "root")
        done = self.run("tc", "-n", self.name, "qdisc", "add", "dev", "lo", "root",
                        "tbf", "rate", "80bit", "burst", "1600", "limit", "1000000")
        assert done.returncode == 0, done.stderr

    def unthrottle(self) -> None:
        done = self.run("tc", "-n", self.name, "qdisc", "del", "dev", "lo", "root")
        assert done.returncode == 0, done.stderr

    def sockets(self, count: int) -> list[socket.socket]:
        """UDP sockets in the namespace: made by a thread that enters it (setns moves only the
        calling thread), usable from any thread after."""
        made: list[socket.socket] = []
        failed: list[BaseException] = []

        def make() -> None:
            try:
                fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
                try:
                    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                finally:
                    os.close(fd)
                made.extend(socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count))
            except BaseException as exc:  # re-raised in the test's thread
                failed.append(exc)

        thread = threading.Thread(target=make)
        thread.start()
        thread.join()
        if failed:
            raise failed[0]
        return made


@pytest.fixture
def slow_loopback() -> Iterator[SlowLoopback]:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("a network namespace of its own needs Linux and root")
    require(shutil.which("ip") is not None and shutil.which("tc") is not None,
            "iproute2 (ip, tc)")
    net = SlowLoopback()
    made = net.run("ip", "netns", "add", net.name)
    if made.returncode != 0:  # a container without CAP_SYS_ADMIN: nothing to install
        pytest.skip(f"cannot make a network namespace: {made.stderr.strip()}")
    try:
        up = net.run("ip", "-n", net.name, "link", "set", "lo", "up")
        assert up.returncode == 0, up.stderr
        net.throttle()
        yield net
    finally:
        net.run("ip", "netns", "del", net.name)


def _fill_and_flush(net: SlowLoopback, queue: aiortc_hooks.ProtectQueue,
                    batch: fastsend.Batch) -> tuple[int, list[bytes], list[bytes], int]:
    """A batch of 200 datagrams (more than three sendmmsg chunks) through a full socket buffer:
    (what send() reported, what was queued, what arrived, what the batch took after)."""
    net.throttle()
    receiver, sender = net.sockets(2)
    try:
        receiver.bind(("127.0.0.1", 0))
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        receiver.settimeout(5)
        sender.setblocking(False)
        # some 120 kB of skbs: room for more than one chunk of these small datagrams
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 60000)
        for n in range(200):
            queue(_rtp(n, 100), receiver.getsockname(), batch)
        queued = [datagram for datagram, _ in batch.items()]
        sent = batch.send(sender)
        assert len(batch) == 200  # send() leaves the clearing to its caller
        arrived = [receiver.recv(2048)]  # the bucket's first 1600 bytes pass at once
        receiver.setblocking(False)
        arrived += [data for data, _ in _receive_all(receiver)]
        receiver.settimeout(5)
        # MuxSocket.flush: a full buffer drops the rest of the batch, raises nothing, and leaves
        # the batch empty for the next turn, which goes out whole once the socket drains
        mux = udp_mux.MuxSocket()
        mux.batch, mux._sock, mux.writable = batch, sender, True
        for n in range(200, 210):
            queue(_rtp(n, 100), receiver.getsockname(), batch)
        mux.flush()
        assert len(batch) == 0
        net.unthrottle()
        for n in range(210, 220):
            queue(_rtp(n, 100), receiver.getsockname(), batch)
        after = batch.send(sender)
        assert [receiver.recv(2048) for _ in range(after)] == [d for d, _ in batch.items()]
        batch.clear()
        return sent, queued, arrived, after
    finally:
        receiver.close()
        sender.close()


def test_a_full_socket_buffer_ends_the_send_and_drops_the_rest(slow_loopback: SlowLoopback) -> None:
    """sendmmsg refused with EAGAIN, part way through a chunk and past the first: send() reports
    what the kernel took, no more, and raises nothing; the Python fallback does the same."""
    native, python = (_fill_and_flush(slow_loopback, queue, batch) for queue, batch in _queues())
    assert native == python
    sent, queued, arrived, after = native
    assert CHUNK < sent < 200
    # what went out is the head of the batch, in order; nothing past the refusal
    assert 1 <= len(arrived) <= sent and arrived == queued[:len(arrived)]
    assert after == 10
