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


def _send_with(send: fastsend.SendBatch) -> list[list[tuple[bytes, int]]]:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    sender.setblocking(False)
    receivers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for sock in receivers:
            sock.bind(("127.0.0.1", 0))
        datagrams: fastsend.Datagrams = []
        addresses: fastsend.Addresses = []
        for n in range(150):  # more than one sendmmsg chunk (64)
            datagrams.append(bytes([n]) * (1 + n * 9 % 1400))
            addresses.append(receivers[n % 3].getsockname())
        # a datagram to an address that cannot be sent to is dropped; the rest go on
        datagrams.insert(5, b"nowhere")
        addresses.insert(5, ("0.0.0.0", 0))
        sent = send(sender, datagrams, addresses)
        assert sent == 150
        for sock in receivers:
            sock.setblocking(False)
        os.sched_yield()
        return [_receive_all(sock) for sock in receivers]
    finally:
        sender.close()
        for sock in receivers:
            sock.close()


def test_the_native_helper_and_the_python_loop_send_identical_datagrams() -> None:
    assert fastsend.NATIVE, "sfu/_fastsend.c was not built (pip install -e . compiles it)"
    native = _send_with(fastsend.send_batch_native)
    python = _send_with(fastsend.send_batch_python)
    assert [[data for data, _ in got] for got in native] == \
        [[data for data, _ in got] for got in python]
    assert [len(got) for got in native] == [50, 50, 50]
    assert native[0][1][0] == bytes([3]) * 28



def _session(direction: int) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=bytes(range(28)), ssrc_type=direction,
                              srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM)
    return pylibsrtp.Session(policy=policy)


def test_the_native_and_python_protectors_queue_identical_srtp() -> None:
    assert fastsend.native_protect_queue is not None
    packets = [bytes([0x80, 96]) + seq.to_bytes(2, "big") + bytes(4) + b"\x01\x02\x03\x04"
               + bytes([seq % 256]) * (seq * 37 % 1400) for seq in range(200)]
    queued = []
    for make in (aiortc_hooks.batch_protector, aiortc_hooks.python_batch_protector):
        queue = make(_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
        datagrams: fastsend.Datagrams = []
        addresses: fastsend.Addresses = []
        for n, packet in enumerate(packets):
            assert queue(packet, ("127.0.0.1", 9), datagrams, addresses) == n + 1
        assert addresses == [("127.0.0.1", 9)] * len(packets)
        queued.append(datagrams)
    native, python = queued
    assert native == python
    receiver = _session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
    assert [receiver.unprotect(d) for d in native] == packets


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
