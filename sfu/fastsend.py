"""The fan-out's batch, in C when the helper (sfu/_fastsend.c, built at install time) is there and
in Python when it is not; both put the same bytes on the wire.

- ``Batch``: a shared socket's datagrams of one event-loop turn. In C, one buffer that libsrtp
  protects into and ``sendmmsg`` sends from (no Python object per datagram); ``PyBatch``, the
  fallback, a list that ``socket.sendto`` sends in a loop. ``send(sock)`` returns how many
  datagrams the kernel took and stops at a full socket buffer; the caller then clears the batch,
  dropping the rest. Any other error drops that one datagram; a closed socket sends none: 0,
  raising nothing, in both.
- ``protect_queue``: SRTP-protect a packet with libsrtp (through pylibsrtp's session, see
  sfu.aiortc_hooks.batch_protector) into a C ``Batch``.
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
from typing import Any, Protocol

try:
    from sfu._fastsend import (  # type: ignore[import-not-found]
        Batch as NativeBatch,
        ConsumerBase,
        ProducerBase,
        Route,
        configure as configure_fanout,
        configure_receive,
        fanout as native_fanout,
        receive as native_receive,
        ring_move as native_ring_move,
        protect_queue as native_protect_queue,
        unprotect as native_unprotect,
    )
except ImportError:  # built without a compiler: the Python below
    NativeBatch = native_protect_queue = native_unprotect = None
    native_fanout = native_ring_move = configure_fanout = ConsumerBase = Route = None
    native_receive = configure_receive = ProducerBase = None


class PyBatch:
    """The Python fallback of the C ``Batch``: the protected datagrams and their (host, port)."""

    __slots__ = ("_items", "held")

    def __init__(self) -> None:
        self._items: list[tuple[bytes, Any]] = []
        self.held = False

    def __len__(self) -> int:
        return len(self._items)

    def append(self, datagram: bytes, address: Any) -> int:
        self._items.append((datagram, address))
        return len(self._items)

    def items(self) -> list[tuple[bytes, Any]]:
        return list(self._items)

    def clear(self) -> None:
        self._items.clear()

    def send(self, sock: socket.socket) -> int:
        sendto = sock.sendto
        sent = 0
        for data, addr in self._items:
            try:
                sendto(data, addr)
            except BlockingIOError:
                return sent
            except OSError:
                continue  # this datagram's error is its own
            sent += 1
        return sent


class Batch(Protocol):
    """What a shared socket's batch is to its socket (sfu.udp_mux) and to tests."""

    held: bool  # the socket's C reader sends it at the end of its call (sfu/_ingress.c)

    def __len__(self) -> int: ...

    def items(self) -> list[tuple[bytes, Any]]: ...

    def clear(self) -> None: ...

    def send(self, sock: socket.socket) -> int: ...


NATIVE = NativeBatch is not None


def new_batch() -> Batch:
    """A batch for a shared socket: the C one when the helper is built."""
    return NativeBatch() if NativeBatch is not None else PyBatch()  # type: ignore[no-any-return]
