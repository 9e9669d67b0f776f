"""Sending a batch of datagrams on one socket: ``sendmmsg`` through the C helper (sfu/_fastsend.c,
built at install time) when it is there, ``socket.sendto`` in a loop when it is not. Both send
the same bytes to the same addresses in the same order and stop at a full socket buffer."""

from __future__ import annotations

import socket
from collections.abc import Callable

Batch = list[tuple[bytes, tuple[str, int]]]
SendBatch = Callable[[socket.socket, Batch], int]

try:
    from sfu._fastsend import send_batch as _native_send_batch  # type: ignore[import-not-found]
except ImportError:  # built without a compiler: the Python loop below
    _native_send_batch = None


def send_batch_python(sock: socket.socket, batch: Batch) -> int:
    sendto = sock.sendto
    sent = 0
    for data, addr in batch:
        try:
            sendto(data, addr)
        except BlockingIOError:
            return sent
        except OSError:
            continue  # this datagram's error is its own
        sent += 1
    return sent


def send_batch_native(sock: socket.socket, batch: Batch) -> int:
    return _native_send_batch(sock.fileno(), batch)  # type: ignore[misc,no-any-return]


NATIVE = _native_send_batch is not None
send_batch: SendBatch = (
    send_batch_native if NATIVE else send_batch_python)
