"""sfu/fastsend.py: the C helper's sendmmsg and the Python loop put the same bytes on the wire."""

from __future__ import annotations

import os
import socket

import pytest

from sfu import fastsend

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
        batch: fastsend.Batch = []
        for n in range(150):  # more than one sendmmsg chunk (64)
            sock = receivers[n % 3]
            batch.append((bytes([n]) * (1 + n * 9 % 1400), sock.getsockname()))
        # a datagram to an address that cannot be sent to is dropped; the rest go on
        batch.insert(5, (b"nowhere", ("0.0.0.0", 0)))
        sent = send(sender, batch)
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

