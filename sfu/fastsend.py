"""The fan-out's batch, in C when the helper (sfu/_fastsend.c, built at install time) is there and
in Python when it is not; both put the same bytes on the wire.

- ``send_batch``: a batch of datagrams on one socket, by ``sendmmsg`` or ``socket.sendto`` in a
  loop; both stop at a full socket buffer.
- ``protect_queue``: SRTP-protect a packet with libsrtp (through pylibsrtp's session, see
  sfu.aiortc_hooks.batch_protector) and append it and its address to the batch.
- ``unprotect``: SRTP-unprotect an arriving packet the same way (sfu.aiortc_hooks.unprotector).
- ``fanout``: one incoming packet to all of a producer's consumers (sfu.producer): for each, what
  Consumer.forward and RawSender.send_rtp do (header rewrite, NACK ring, protect into the batch,
  counters) in one C call; what is not the plain case goes to that consumer's Python ``forward``,
  which stays the reference (tests/sfu/test_fanout.py compares the two byte for byte).
  ``ConsumerBase`` is sfu.consumer.Consumer's base class, its per-packet attributes in C, and
  ``Route`` a RawSender's route as the fan-out reads it (sfu.aiortc_hooks); ``ring_move`` is
  Consumer._resize's loop.
- ``receive``: Producer.receive's plain case (the next packet of a known source, nothing to
  police, ask for or wait for, no keyframe starting; a packet of the GOP run after a keyframe is
  cached too) and its fan-out in one C call; False for the rest, which Producer.receive's Python
  does. ``ProducerBase`` is Producer's base class, its per-packet attributes in C. sfu/_ingress.c
  calls the same C entry through a capsule, without a Python frame.
  ``configure_fanout`` (sfu.aiortc_hooks, at import) gives it libsrtp's protect and aiortc's
  connected state; until then every consumer takes its Python path.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

Datagrams = list[bytes]
# the i-th datagram goes to the i-th address: (host, port), or the C fan-out's Address of one
Addresses = list[Any]
SendBatch = Callable[[socket.socket, Datagrams, Addresses], int]

try:
    from sfu._fastsend import (  # type: ignore[import-not-found]
        ConsumerBase,
        ProducerBase,
        Route,
        configure as configure_fanout,
        configure_receive,
        fanout as native_fanout,
        receive as native_receive,
        ring_move as native_ring_move,
        protect_queue as native_protect_queue,
        send_batch as _native_send_batch,
        unprotect as native_unprotect,
    )
except ImportError:  # built without a compiler: the Python below
    _native_send_batch = native_protect_queue = native_unprotect = None
    native_fanout = native_ring_move = configure_fanout = ConsumerBase = Route = None
    native_receive = configure_receive = ProducerBase = None


def send_batch_python(sock: socket.socket, datagrams: Datagrams, addresses: Addresses) -> int:
    sendto = sock.sendto
    sent = 0
    for data, addr in zip(datagrams, addresses):
        if addr.__class__ is not tuple:  # the C fan-out's Address (with send_batch patched)
            addr = addr.address
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
