"""The fan-out's batch, in C when the helper (sfu/_fastsend.c, built at install time) is there and
in Python when it is not; both put the same bytes on the wire.

- ``send_batch``: a batch of datagrams on one socket, by ``sendmmsg`` or ``socket.sendto`` in a
  loop; both stop at a full socket buffer.
- ``protect_queue``: SRTP-protect a packet with libsrtp (through pylibsrtp's session, see
  sfu.aiortc_hooks.batch_protector) and append it and its address to the batch.
- ``unprotect``: SRTP-unprotect an arriving packet the same way (sfu.aiortc_hooks.unprotector).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

Datagrams = list[bytes]
Addresses = list[tuple[str, int]]  # the i-th datagram goes to the i-th address
SendBatch = Callable[[socket.socket, Datagrams, Addresses], int]

try:
    from sfu._fastsend import (  # type: ignore[import-not-found]
        protect_queue as native_protect_queue,
        send_batch as _native_send_batch,
        unprotect as native_unprotect,
    )
except ImportError:  # built without a compiler: the Python below
    _native_send_batch = native_protect_queue = native_unprotect = None


def send_batch_python(sock: socket.socket, datagrams: Datagrams, addresses: Addresses) -> int:
    sendto = sock.sendto
    sent = 0
    for data, addr in zip(datagrams, addresses):
        try:
            sendto(data, addr)
        except BlockingIOError:
            return sent
        except OSError:
            continue  # this datagram's error is its own
        sent += 1
    return sent


def send_batch_native(sock: socket.socket, datagrams: Datagrams, addresses: Addresses) -> int:
    return _native_send_batch(sock.fileno(), datagrams, addresses)  # type: ignore[misc,no-any-return]


NATIVE = _native_send_batch is not None
send_batch: SendBatch = (
    send_batch_native if NATIVE else send_batch_python)
