"""sfu/fastsend.py: the C helper (libsrtp protect into the batch, sendmmsg) and the Python
fallback put the same bytes on the wire."""

from __future__ import annotations

import os
import socket

import pytest

import pylibsrtp

from sfu import aiortc_hooks, fastsend

pytestmark = pytest.mark.unit


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
