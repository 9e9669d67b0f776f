"""One UDP port per worker: every ICE, DTLS and SRTP datagram of the worker's connections on one
socket per address (mediasoup's WebRtcServer, LiveKit's single-port mode).

A firewall then opens one port per worker, and a producer's fan-out leaves through one socket:
RTP joins the socket's batch (``MuxSocket.batch``, filled by aiortc_hooks.RawSender and the C
fan-out, SRTP-protected straight into it by fastsend.protect_queue) and the datagrams one event-loop
turn produces go out together, by ``sendmmsg`` when the C helper (sfu/_fastsend.c) is built; so
does the SFU's own RTCP. STUN and
DTLS go at once, through asyncio's transport.

Incoming datagrams are demultiplexed as RFC 7983 sorts them:

- STUN (first byte 0-3): a Binding request names our side in its USERNAME (``ours:theirs``):
  the connection with that local ufrag takes it, and, once its MESSAGE-INTEGRITY checks with
  that connection's password, the sender's address is remembered as that connection's. That is
  how a client's new address (a network change, or the fresh connection of an ICE restart,
  which has a new ufrag) takes over. Responses and indications go by address.
- Anything else (DTLS, SRTP, SRTCP) goes by remote address to the connection that owns it.

With the C helper built (sfu/ingress.py) the socket is read in C, which hands SRTP from a
connected peer straight to its producer, reading these tables and the connections' own; the rest
still comes to ``datagram_received``.

A datagram nobody owns (an unknown ufrag, a forged request, an address never authenticated) is
counted in ``dropped`` and goes nowhere. Our own checks claim the address they go to, unless an
authenticated connection holds it, so that the answers come back to the connection that asked.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from aioice import stun

from sfu import fastsend, ingress

logger = logging.getLogger(__name__)

Address = tuple[Any, ...]
# The shared socket's receive buffer: it holds what every connection of the worker sends while
# the event loop is busy. Linux's default (212,992 bytes of skb truesize) is about 90 datagrams
# of video, some 40 ms of 10 calls: any longer stall dropped media that publishers then had to
# retransmit. Capped by net.core.rmem_max.
RECEIVE_BUFFER = 1 << 20
# Where the kernel takes the ports of sockets bound to port 0 (every outgoing connection's) from,
# and the ports within it that it leaves alone.
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
RESERVED_PORTS = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")


class Endpoint(Protocol):
    """One ICE connection's view of the shared socket (aiortc_hooks.MuxedProtocol)."""

    local_ufrag: str
    local_password: bytes

    def datagram_received(self, data: bytes, addr: Address) -> None: ...

    def socket_lost(self) -> None: ...


class MuxSocket(asyncio.DatagramProtocol):
    """The shared socket of one address: its demultiplexing tables and its send batch."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.writable = False
        self.by_ufrag: dict[str, Endpoint] = {}
        self.by_addr: dict[tuple[str, int], Endpoint] = {}
        self._authenticated: set[tuple[str, int]] = set()
        self.dropped = 0
        # the turn's datagrams (fastsend.Batch), the same for the socket's life: senders hold it
        self.batch = fastsend.new_batch()
        self._sock: socket.socket | None = None
        # ``flush`` at the end of this event-loop turn: loop.call_soon bound in C (no Python
        # frame per batch); a no-op until the socket is made
        self.schedule_flush: Callable[[], object] = _nothing

    # --- asyncio ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.writable = True
        # asyncio's own socket object cannot send: the batch goes through a duplicate of it
        self._sock = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
        self._sock.setblocking(False)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except OSError:
            logger.warning("udp %s: could not enlarge the receive buffer",
                           transport.get_extra_info("sockname"))
        self.schedule_flush = functools.partial(asyncio.get_running_loop().call_soon, self.flush)

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable = False
        self.batch.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        endpoints = list(self.by_ufrag.values())
        self.by_ufrag.clear()
        self.by_addr.clear()
        for endpoint in endpoints:
            endpoint.socket_lost()

    def error_received(self, exc: Exception) -> None:
        return None  # an ICMP error for one peer: ICE consent notices a peer that is gone

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if data and data[0] < 4:
            self._stun_received(data, (addr[0], addr[1]))
            return
        # (an IPv4 address is already the (host, port) key: no new tuple per packet)
        endpoint = self.by_addr.get(addr if len(addr) == 2 else (addr[0], addr[1]))
        if endpoint is None:
            self.dropped += 1
            return
        endpoint.datagram_received(data, addr)

    def _stun_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message = stun.parse_message(data)
        except ValueError:
            self.dropped += 1
            return
        if message.message_class == stun.Class.REQUEST:
            username = message.attributes.get("USERNAME")
            ufrag = username.split(":", 1)[0] if isinstance(username, str) else ""
            endpoint = self.by_ufrag.get(ufrag)
            if endpoint is None:
                self.dropped += 1
                return
            if self.by_addr.get(addr) is not endpoint or addr not in self._authenticated:
                if "MESSAGE-INTEGRITY" not in message.attributes or \
                        not message.check_message_integrity(endpoint.local_password):
                    self.dropped += 1
                    return
                self.by_addr[addr] = endpoint
                self._authenticated.add(addr)
        else:
            endpoint = self.by_addr.get(addr)  # type: ignore[assignment]
            if endpoint is None:
                self.dropped += 1
                return
        endpoint.datagram_received(data, addr)

    # --- the connections' side ---------------------------------------------------------------

    def register(self, endpoint: Endpoint) -> None:
        if endpoint.local_ufrag in self.by_ufrag:
            raise ValueError(f"ICE ufrag {endpoint.local_ufrag!r} is already on this socket")
        self.by_ufrag[endpoint.local_ufrag] = endpoint

    def claim(self, addr: tuple[str, int], endpoint: Endpoint) -> None:
        """``endpoint`` sends a check to ``addr``: the answer comes back to it, unless another
        connection has authenticated that address."""
        if addr not in self._authenticated:
            self.by_addr[addr] = endpoint

    def release(self, endpoint: Endpoint) -> None:
        if self.by_ufrag.get(endpoint.local_ufrag) is endpoint:
            del self.by_ufrag[endpoint.local_ufrag]
        for addr in [a for a, e in self.by_addr.items() if e is endpoint]:
            del self.by_addr[addr]
            self._authenticated.discard(addr)

    def flush(self) -> None:
        """Send the turn's batch. A sender queues into ``batch`` itself (RawSender, through
        fastsend.protect_queue) and calls ``schedule_flush`` when it made it non-empty, unless
        the batch is ``held``: the C reader (sfu/_ingress.c) is in its call and does this at its
        end."""
        batch = self.batch
        if not len(batch):
            return
        try:
            if self._sock is not None and self.writable:
                # a full socket buffer drops the rest of the batch, as RawSender drops media for
                # a subscriber whose socket cannot take it: media is never queued without bound
                batch.send(self._sock)
        finally:
            # emptied whatever happened, or no sender would schedule a flush again
            batch.clear()


def _nothing() -> None:
    return None


class UdpMux:
    """The worker's shared sockets, one per address, all on ``port`` (0: each on a port the kernel
    picks)."""

    def __init__(self, port: int = 0) -> None:
        if port and not 1024 <= port <= 65535:
            raise ValueError("the media port must be 0 (any) or lie within 1024-65535")
        self.port = port
        self.sockets: dict[str, MuxSocket] = {}
        self._bound: dict[str, socket.socket] = {}  # by ``bind``, for the first ``socket`` call
        self._lock = asyncio.Lock()
        self._dropped_before = 0  # by sockets closed since

    @property
    def dropped(self) -> int:
        """Datagrams nobody owned (unknown, forged or unauthenticated), over this mux's life."""
        return self._dropped_before + sum(mux.dropped for mux in self.sockets.values())

    def bind(self, addresses: Iterable[str]) -> None:
        """Bind ``port`` on each of ``addresses`` now (the first room's connections then use these
        sockets): a fixed port someone else holds fails the start, not every call later. Raises
        OSError naming the address and port; nothing stays bound then."""
        try:
            for address in addresses:
                if address not in self._bound and address not in self.sockets:
                    self._bound[address] = bind_udp(address, self.port)
        except OSError:
            self.close()
            raise

    async def socket(self, address: str) -> MuxSocket:
        """The shared socket on ``address`` (bound on first use, unless ``bind`` did). Raises
        OSError when the port is taken."""
        async with self._lock:
            found = self.sockets.get(address)
            if found is not None:
                if found.transport is not None and not found.transport.is_closing():
                    return found
                self._dropped_before += found.dropped
            sock = self._bound.pop(address, None) or bind_udp(address, self.port)
            transport: asyncio.DatagramTransport
            try:
                if ingress.NATIVE:  # read in C (sfu/ingress.py)
                    transport, protocol = ingress.endpoint_on(sock, MuxSocket)
                else:
                    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
                        MuxSocket, sock=sock)
            except BaseException:
                sock.close()
                raise
            self.sockets[address] = protocol
            logger.info("media on udp %s:%d (one port for this worker)", address,
                        transport.get_extra_info("sockname")[1])
            return protocol

    def close(self) -> None:
        for mux in self.sockets.values():
            self._dropped_before += mux.dropped
            if mux.transport is not None:
                mux.transport.close()
        self.sockets.clear()
        for sock in self._bound.values():
            sock.close()
        self._bound.clear()


def bind_udp(address: str, port: int) -> socket.socket:
    """A non-blocking UDP socket on ``address:port`` (an IP address, as host candidates announce
    it: no name lookup blocks the loop)."""
    sock = None
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            address, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)[0]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        sock.bind(sockaddr)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise OSError(exc.errno, f"cannot bind udp {address}:{port}: {exc.strerror}") from None
    return sock


def ephemeral_overlap(first: int, last: int) -> tuple[int, int] | None:
    """The kernel's ephemeral port range when ports ``first``-``last`` lie partly within it and
    are not reserved (``ip_local_reserved_ports``): any socket of this host bound to port 0 (every
    outgoing connection's) may take one of them first. None when they do not, or when /proc does
    not say."""
    held: set[int] = set()
    try:
        low, high = (int(n) for n in EPHEMERAL_RANGE.read_text().split())
        reserved = RESERVED_PORTS.read_text().strip() if RESERVED_PORTS.exists() else ""
        for part in filter(None, reserved.split(",")):
            start, _, end = part.partition("-")
            held.update(range(int(start), int(end or start) + 1))
    except (OSError, ValueError):
        return None
    if any(low <= port <= high and port not in held for port in range(first, last + 1)):
        return low, high
    return None
