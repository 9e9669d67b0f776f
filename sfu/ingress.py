"""The shared socket's receiving side in C (sfu/_ingress.c, built at install time like
sfu/_fastsend.c; without it sfu/udp_mux.py keeps the event loop's datagram transport).

The event loop's datagram transport makes a bytes object and an address tuple per datagram, one
``recvmsg`` each, and calls three Python methods before the producer sees the packet. With the
helper, the socket is read by ``_ingress.Reader`` (``loop.add_reader``): ``recvmmsg`` batches, and
SRTP from a connected peer is unprotected and handed to its producer in C, SRTCP to its
Transport's RTCP handler (no aioice queue, no wake of aiortc's DTLS task). Everything else reaches
``MuxSocket.datagram_received`` as before. uvloop's datagram transport cannot stop reading, so the
socket gets ``SocketTransport`` instead: sending as asyncio's does it (a full socket buffer queues
and pauses the protocol's writing), reading left to the Reader.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from collections.abc import Callable
from typing import Any

try:
    from sfu._ingress import (  # type: ignore[import-not-found]
        Reader,
        TransportBase,
        configure,
        configure_transport,
    )
except ImportError:  # built without a compiler: the event loop's datagram transport
    Reader = TransportBase = configure = configure_transport = None

NATIVE = Reader is not None

HIGH_WATER = 64 * 1024  # queued bytes that pause the protocol's writing (asyncio's default)


class SocketTransport(asyncio.DatagramTransport):
    """A datagram transport for a socket that ``reader`` reads (added to the loop for its fd)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol: asyncio.DatagramProtocol,
                 reader: Callable[[asyncio.DatagramProtocol, "SocketTransport"], Callable[[], Any]]
                 ) -> None:
        super().__init__({"socket": sock, "sockname": sock.getsockname(), "peername": None})
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._queue: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._queued = 0
        self._paused = False
        self._closing = False
        protocol.connection_made(self)
        self.reader = reader(protocol, self)
        loop.add_reader(self._fd, self.reader)

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            return
        if not self._queue:
            try:
                self._sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._fd, self._drain)
            except OSError as exc:
                self._protocol.error_received(exc)
                return
        self._queue.append((bytes(data), addr))
        self._queued += len(data)
        if not self._paused and self._queued > HIGH_WATER:
            self._paused = True
            self._protocol.pause_writing()

    def _drain(self) -> None:
        while self._queue:
            data, addr = self._queue[0]
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
            self._queue.popleft()
            self._queued -= len(data)
        self._loop.remove_writer(self._fd)
        if self._paused:
            self._paused = False
            self._protocol.resume_writing()

    def get_write_buffer_size(self) -> int:
        return self._queued

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._queue.clear()
        self._loop.call_soon(self._lost)

    def abort(self) -> None:
        self.close()

    def _lost(self) -> None:
        try:
            self._protocol.connection_lost(None)
        finally:
            self._sock.close()


def native_reader(protocol: asyncio.DatagramProtocol, transport: SocketTransport) -> Callable[[], Any]:
    loop = asyncio.get_running_loop()

    def failed(exc: BaseException) -> None:
        loop.call_exception_handler({
            "message": "the shared socket's datagram handler failed", "exception": exc,
            "transport": transport, "protocol": protocol})

    assert Reader is not None
    return Reader(transport.get_extra_info("socket").fileno(), protocol, failed)  # type: ignore[no-any-return]


def endpoint_on(sock: socket.socket, protocol_factory: Callable[[], asyncio.DatagramProtocol]
                ) -> tuple[SocketTransport, Any]:
    """A datagram endpoint on ``sock`` (a UDP socket already bound, non-blocking; sfu.udp_mux.bind_udp),
    read by the C Reader."""
    protocol = protocol_factory()
    return SocketTransport(asyncio.get_running_loop(), sock, protocol, native_reader), protocol
