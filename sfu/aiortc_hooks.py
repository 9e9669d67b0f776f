"""Every reach into aiortc's, aioice's and pylibsrtp's private internals, in one place.

The SFU keeps aiortc's RTCPeerConnection for SDP, ICE, DTLS and SRTP, but takes the packet path
away from it: decrypted RTP and RTCP go to our handlers instead of RTCRtpReceiver (no jitter
buffer, no decoder thread), and rewritten RTP leaves through the DTLS transport's SRTP context
straight onto the nominated ICE pair's socket (no MediaStreamTrack, no encoder). aiortc 1.16.0,
aioice 0.13.0 and pylibsrtp 1.0.0 are pinned in pyproject.toml; tests/sfu/test_aiortc_hooks.py fails
loudly if any name used here moves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import uuid
import weakref
import zlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pylibsrtp
from aioice import Candidate, stun
from aioice import ice as aioice_ice
from aioice.candidate import candidate_foundation, candidate_priority
from OpenSSL import SSL
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc import rtcrtpreceiver as aiortc_rtcrtpreceiver
from aiortc import clock
from aiortc import sdp as aiortc_sdp
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport, RtpRouter, State
from aiortc.utils import random32
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpReceiveParameters,
    RTCRtpSendParameters,
)

from sfu import fastsend, ingress
from sfu.forwarder import MAX_PROTECTED_RTP, SRTP_BUFFER, current_ms
from sfu.udp_mux import MuxSocket

# Called as handler(data, arrival_time_ms=...) by RTCDtlsTransport._recv_next.
RtpHandler = Callable[..., Awaitable[None]]
RtcpHandler = Callable[[bytes], Awaitable[None]]
# Called as sink(plaintext, arrival_ms) from the socket's datagram callback: must not block.
RtpSink = Callable[[bytes, int], None]
RtcpSink = Callable[[bytes], None]  # plaintext RTCP, synchronously
RelayGatherer = Callable[[int], Awaitable[list[Candidate]]]
CandidateGatherer = Callable[[Any, int, RelayGatherer], Awaitable[list[Candidate]]]

_HOOKED = "_expertcall_hooked"
_SINK = "_expertcall_rtp_sink"  # on an aioice Connection: its _Sink


def dtls_transports(pc: RTCPeerConnection) -> list[RTCDtlsTransport]:
    """The distinct DTLS transports of a connection (one when BUNDLE is used)."""
    seen: list[RTCDtlsTransport] = []
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        if dtls not in seen:
            seen.append(dtls)
    if pc.sctp is not None and pc.sctp.transport not in seen:
        seen.append(pc.sctp.transport)
    return seen


def _ice_connections(pc: RTCPeerConnection) -> Iterator[Any]:
    for dtls in dtls_transports(pc):
        yield dtls.transport.iceGatherer._connection


# An Event already set: what a started RTCIceTransport's later start() calls wait on
_STARTED = asyncio.Event()
_STARTED.set()


def drop_spent_ice_state(pc: RTCPeerConnection) -> None:
    """Drop what ICE kept of connecting, for a connected ``pc``. Each ICE connection's
    ``_check_list_state``, the asyncio.Queue (~2.5 KiB) that only carries the check list's
    outcome to aioice's connect(): once connect() has taken it and started the consent checks,
    aioice puts nothing more there (every put waits on ``_check_list_done``, already set) and
    never reads it again. Each ICE transport's ``__start``, the asyncio.Event (~0.9 KiB) that
    aiortc sets once its start() is done and that later start() calls (one per m-line and
    negotiation) only wait on: one Event already set serves them all."""
    for connection in _ice_connections(pc):
        if connection._query_consent_task is not None:
            connection._check_list_state = None
    for dtls in dtls_transports(pc):
        ice: Any = dtls.transport  # (its private __start)
        start = ice._RTCIceTransport__start
        if start is not None and start.is_set():
            ice._RTCIceTransport__start = _STARTED


def intercept_packets(pc: RTCPeerConnection, on_rtp: RtpHandler, on_rtcp: RtcpHandler,
                      rtp_sink: RtpSink | None = None, rtcp_sink: RtcpSink | None = None) -> None:
    """Send every decrypted RTP/RTCP datagram of ``pc`` to our handlers instead of aiortc's
    RtpRouter. With ``rtp_sink``, SRTP arriving on sockets bound by ``bind_host_candidate`` is
    decrypted and handed to it right in the datagram callback (see SrtpStunProtocol); ``on_rtp``
    then only sees what takes aioice's queue (TURN-relayed media). ``rtcp_sink``, ``on_rtcp``'s
    synchronous body, is what the shared socket's C reader (sfu/_ingress.c) calls with SRTCP it
    unprotected; ``on_rtcp`` gets the rest. Call after each
    setRemoteDescription/addTransceiver (new transports may appear); repeated calls are
    harmless."""
    for dtls in dtls_transports(pc):
        if type(dtls) is InterceptedDtlsTransport:
            continue
        router = _InterceptingRouter(on_rtp, on_rtcp)
        vars(router).update(vars(dtls._rtp_router))  # whatever was registered with it so far
        dtls._rtp_router = router
        dtls.__class__ = InterceptedDtlsTransport
        if rtp_sink is not None:
            setattr(dtls.transport.iceGatherer._connection, _SINK, _Sink(dtls, rtp_sink, rtcp_sink))


class _InterceptingRouter(RtpRouter):
    """aiortc's RtpRouter of an intercepted DTLS transport, with the SFU's handlers in slots."""

    __slots__ = ("on_rtcp", "on_rtp")

    def __init__(self, on_rtp: RtpHandler, on_rtcp: RtcpHandler) -> None:
        super().__init__()
        self.on_rtp = on_rtp
        self.on_rtcp = on_rtcp


class InterceptedDtlsTransport(RTCDtlsTransport):
    """What intercept_packets turns an RTCDtlsTransport into: RTCDtlsTransport._recv_next awaits
    self._handle_rtp_data(data, arrival_time_ms=...) and self._handle_rtcp_data(data) with
    plaintext after SRTP unprotect, and here those go to the handlers its _InterceptingRouter
    keeps (aiortc's own handlers are what use the router's tables). A change of class, not
    handlers set on the instance: a new attribute on aiortc's object turns its key-sharing
    __dict__ into a dict of its own, ~3 KiB more per transport (4 a call)."""

    __slots__ = ()

    async def _handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:
        await self._rtp_router.on_rtp(data, arrival_time_ms=arrival_time_ms)  # type: ignore[attr-defined]

    async def _handle_rtcp_data(self, data: bytes) -> None:
        await self._rtp_router.on_rtcp(data)  # type: ignore[attr-defined]


class _Sink:
    """Where a connection's SRTP goes from the datagram callback: its DTLS transport (whose
    receiving SRTP session it follows), the RtpSink, the RtcpSink (for the C reader only), and
    an unprotector for that session."""

    __slots__ = ("context", "deliver", "dtls", "rtcp", "session", "unprotect")

    def __init__(self, dtls: RTCDtlsTransport, deliver: RtpSink,
                 rtcp: RtcpSink | None = None) -> None:
        self.dtls = dtls
        self.deliver = deliver
        self.rtcp = rtcp
        self.session: pylibsrtp.Session | None = None
        self.unprotect: Unprotect = _no_unprotect
        # the session's libsrtp context, for the shared socket's C reader (sfu/_ingress.c)
        self.context = 0

    def adopt(self, session: pylibsrtp.Session) -> None:
        self.session = session
        self.unprotect = unprotector(session)
        self.context = int(pylibsrtp.ffi.cast("uintptr_t", session._srtp[0]))


Unprotect = Callable[[bytes], "bytes | int"]  # plaintext, or a negative status: dropped


def unprotector(session: pylibsrtp.Session) -> Unprotect:
    """``session.unprotect`` returning a negative status instead of raising, in C when
    sfu/_fastsend.c is built (one copy; pylibsrtp's wrapper copies twice and allocates), else
    pylibsrtp's own: the same plaintext either way."""
    if fastsend.native_unprotect is not None:
        context = int(pylibsrtp.ffi.cast("uintptr_t", session._srtp[0]))
        # the partial holds the session, so its libsrtp context lives as long as the unprotector
        return functools.partial(fastsend.native_unprotect, _SRTP_UNPROTECT, context, session)
    return python_unprotector(session)


def python_unprotector(session: pylibsrtp.Session) -> Unprotect:
    def unprotect(data: bytes) -> bytes | int:
        try:
            return session.unprotect(data)
        except pylibsrtp.Error:
            return -1

    return unprotect


def _no_unprotect(data: bytes) -> bytes | int:
    return -1


class SrtpStunProtocol(aioice_ice.StunProtocol):
    """aioice's socket protocol, with a short cut for SRTP once DTLS has keyed the transport:
    aioice would try to parse each datagram as STUN, queue it, and wake the DTLS transport's
    receive task, which decrypts and awaits our handler; here the datagram callback decrypts and
    calls the connection's RtpSink at once. SRTCP, STUN and DTLS still take aioice's path.

    ``writable`` follows asyncio's flow control: False while the socket's send buffer is full
    (the event loop then queues datagrams without bound) and once the socket is gone (sendto on a
    closed asyncio datagram transport raises from inside its own error handler). RawSender drops
    media for that one subscriber instead."""

    writable = True

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable = False
        super().connection_lost(exc)

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        sink = self.receiver.__dict__.get(_SINK)
        # RTP: version 2 (first byte 128-191), and not SRTCP (second byte 192-223, RFC 5761)
        if sink is not None and type(data) is bytes and 127 < data[0] < 192 and len(data) > 12 \
                and not 191 < data[1] < 224:
            dtls = sink.dtls
            srtp = dtls._rx_srtp
            if srtp is not None and dtls._state is State.CONNECTED:
                if srtp is not sink.session:
                    sink.adopt(srtp)
                plain = sink.unprotect(data)
                if isinstance(plain, int):
                    return  # replayed or forged: dropped, as aiortc does
                sink.deliver(plain, current_ms())
                return
        super().datagram_received(data, addr)


class MuxedProtocol(SrtpStunProtocol):
    """One ICE connection's share of a worker's single UDP socket (sfu.udp_mux.MuxSocket): to
    aioice it is the connection's host-candidate protocol; the socket hands it only the datagrams
    demultiplexed to it, and it sends through the shared transport. Its checks claim the address
    they go to, so the answers come back here. ``close`` leaves the socket open for the others."""

    def __init__(self, connection: Any, socket: MuxSocket) -> None:
        super().__init__(connection)
        self.socket = socket
        self.local_ufrag: str = connection.local_username
        self.local_password: bytes = connection.local_password.encode("utf8")
        assert socket.transport is not None
        self.connection_made(socket.transport)

    @property
    def writable(self) -> bool:  # type: ignore[override]  # the shared socket's flow control
        return self.socket.writable

    def send_stun(self, message: stun.Message, addr: tuple[str, int]) -> None:
        if message.message_class == stun.Class.REQUEST:
            self.socket.claim(addr, self)
        super().send_stun(message, addr)

    def socket_lost(self) -> None:
        aioice_ice.StunProtocol.connection_lost(self, None)

    def connection_lost(self, exc: Exception | None) -> None:
        aioice_ice.StunProtocol.connection_lost(self, exc)

    async def close(self) -> None:
        self.socket.release(self)
        aioice_ice.StunProtocol.connection_lost(self, None)


class LazyRemoteBitrateEstimator:
    """Stands in for aiortc's RemoteBitrateEstimator, built on its first packet. aiortc builds one
    for every video RTCRtpReceiver, with 1,000 rate buckets: about 1,000 objects that the SFU's
    receivers (which never see a packet) would keep per connection, costing ~0.4 ms to make and
    lengthening every full garbage collection. A receiver that does get packets (a test client,
    say) gets the real estimator on the first one and behaves as before."""

    __slots__ = ("_estimator",)

    def __init__(self) -> None:
        self._estimator: Any = None

    def add(self, **kwargs: Any) -> Any:
        if self._estimator is None:
            self._estimator = _RemoteBitrateEstimator()
        return self._estimator.add(**kwargs)


_RemoteBitrateEstimator = aiortc_rtcrtpreceiver.RemoteBitrateEstimator


def lazy_bitrate_estimators() -> None:
    """Make every RTCRtpReceiver created from now on in this process build its bitrate estimator
    lazily (process-wide and idempotent; RTCRtpReceiver.__init__ looks the name up in its module
    and _handle_rtp_packet only calls ``add``)."""
    aiortc_rtcrtpreceiver.RemoteBitrateEstimator = LazyRemoteBitrateEstimator  # type: ignore[misc,assignment]


class LazyQueue:
    """Stands in for a RemoteStreamTrack's asyncio.Queue, made on its first use. aiortc gives
    every received track one (filled by its receiver's decoder thread, emptied by recv()); the
    SFU's receivers never decode and nobody calls recv() on their tracks, so each stayed empty
    for the connection's life: ~3 KiB apiece (four deques and an Event), four tracks a call. A
    track that is used (a test client's, say) gets the real queue on first use and behaves as
    before."""

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Any] | None = None

    def __getattr__(self, name: str) -> Any:
        queue = self._queue
        if queue is None:  # first use: by recv() on the loop, or by the decoder thread's put
            with _LAZY_QUEUE_LOCK:  # (both at once must not make two)
                queue = self._queue
                if queue is None:
                    queue = self._queue = asyncio.Queue()
        return getattr(queue, name)


_LAZY_QUEUE_LOCK = threading.Lock()


_remote_track_init = aiortc_rtcrtpreceiver.RemoteStreamTrack.__init__


def _lazy_remote_track_init(self: Any, kind: str, id: str | None = None) -> None:
    """RemoteStreamTrack.__init__ (aiortc 1.16.0), with a LazyQueue for its queue."""
    aiortc_rtcrtpreceiver.MediaStreamTrack.__init__(self)
    self.kind = kind
    if id is not None:
        self._id = id
    self._queue = LazyQueue()


def lazy_track_queues() -> None:
    """Make every RemoteStreamTrack created from now on in this process make its frame queue on
    first use (process-wide and idempotent)."""
    aiortc_rtcrtpreceiver.RemoteStreamTrack.__init__ = _lazy_remote_track_init  # type: ignore[method-assign]


def disarm_receiver(
    receiver: RTCRtpReceiver, on_parameters: Callable[[RTCRtpReceiveParameters], None]
) -> None:
    """Make ``receiver`` a DisarmedReceiver, so that the decoder thread, jitter buffer and RTCP
    task never start; ``on_parameters`` gets the negotiated receive parameters instead."""
    if type(receiver) is DisarmedReceiver:
        return
    receiver.__class__ = DisarmedReceiver
    receiver._RTCRtpReceiver__rtcp_task = on_parameters  # type: ignore[attr-defined]


class DisarmedReceiver(RTCRtpReceiver):
    """An RTCRtpReceiver whose ``receive`` only hands the parameters on. A change of class, not a
    ``receive`` set on the instance: a new attribute on aiortc's object turns its key-sharing
    __dict__ into a dict of its own, ~1.8 KiB more per receiver (8 a call). The handler is kept
    in ``__rtcp_task``, which only aiortc's ``receive`` (replaced here) sets and only a started
    receiver's stop() reads: an ordinary reference, freed with the connection."""

    __slots__ = ()

    async def receive(self, parameters: RTCRtpReceiveParameters) -> None:
        self._RTCRtpReceiver__rtcp_task(parameters)  # type: ignore[attr-defined]


def disarm_sender(sender: RTCRtpSender) -> None:
    """Make ``sender`` a DisarmedSender, so that no encoder, RTP or RTCP task starts: the SFU
    writes this m-line's packets itself."""
    if type(sender) is RTCRtpSender:
        sender.__class__ = DisarmedSender


class DisarmedSender(RTCRtpSender):
    """An RTCRtpSender whose ``send`` does nothing (a class, as DisarmedReceiver)."""

    __slots__ = ()

    async def send(self, parameters: RTCRtpSendParameters) -> None:
        return None


# aiortc offers only ECDHE-ECDSA suites (its certificates are ECDSA). That is all a DTLS
# *server* with our certificate can use, but as a DTLS *client* (the SFU answers offers with
# a=setup:active) it must also offer the suites of a server with an RSA certificate, such as
# GStreamer's webrtcbin, or the handshake ends in "no shared cipher".
DTLS_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA"
)


def accept_rsa_dtls_peers(pc: RTCPeerConnection) -> None:
    """Make ``pc``'s DTLS handshakes offer RSA suites too (see DTLS_CIPHERS). The connection
    keeps its own certificate: only the SSL context built from it changes."""
    for certificate in pc._RTCPeerConnection__certificates:  # type: ignore[attr-defined]
        if getattr(certificate, _HOOKED, False):
            continue
        original = certificate._create_ssl_context

        def create(srtp_profiles: Any, _original: Any = original) -> Any:
            context = _original(srtp_profiles)
            context.set_cipher_list(DTLS_CIPHERS)
            return context

        certificate._create_ssl_context = create
        setattr(certificate, _HOOKED, True)


def sender_ssrcs(sender: RTCRtpSender) -> tuple[int, int]:
    """The (media, RTX) SSRCs aiortc announced in SDP for this sender."""
    return sender._ssrc, sender._rtx_ssrc


def renew_sender(sender: RTCRtpSender) -> None:
    """Give a reused m-line's sender new SSRCs and a new track id (msid), announced in the next
    offer: the subscriber sees a new stream, not the old one's numbering jumping."""
    sender._ssrc = random32()
    sender._rtx_ssrc = random32()
    sender._track_id = str(uuid.uuid4())


def fast_protect(session: pylibsrtp.Session) -> Callable[[bytes], bytes]:
    """``session.protect`` without the per-call allocation and checks of pylibsrtp's wrapper
    (about 0.8 of its 1.9 µs): the same libsrtp call, on a buffer of ours. pylibsrtp's own is
    1,500 bytes less room for the longest trailer (1,356 of packet): too small for what a
    publisher on a 1,500-byte MTU sends once our header extensions are on it. pylibsrtp is
    pinned with aiortc."""
    srtp = session._srtp[0]
    cdata = pylibsrtp.ffi.new("char[]", SRTP_BUFFER)
    buffer = pylibsrtp.ffi.buffer(cdata)
    length = pylibsrtp.ffi.new("int *")
    protect = pylibsrtp.lib.srtp_protect

    def protect_rtp(data: bytes, _session: pylibsrtp.Session = session) -> bytes:
        n = len(data)
        if n > MAX_PROTECTED_RTP:
            raise ValueError("packet is too long")
        length[0] = n
        buffer[0:n] = data
        status = protect(srtp, cdata, length)
        if status:
            raise pylibsrtp.Error(f"srtp_protect failed ({status})")
        return buffer[0 : length[0]]  # type: ignore[no-any-return]

    return protect_rtp


# libsrtp's srtp_protect, as an address sfu/_fastsend.c can call
_SRTP_PROTECT = int(pylibsrtp.ffi.cast("uintptr_t", pylibsrtp.ffi.addressof(pylibsrtp.lib, "srtp_protect")))
_SRTP_PROTECT_RTCP = int(pylibsrtp.ffi.cast("uintptr_t",
                                          pylibsrtp.ffi.addressof(pylibsrtp.lib, "srtp_protect_rtcp")))
_SRTP_UNPROTECT = int(pylibsrtp.ffi.cast("uintptr_t",
                                         pylibsrtp.ffi.addressof(pylibsrtp.lib, "srtp_unprotect")))
_SRTP_UNPROTECT_RTCP = int(pylibsrtp.ffi.cast(
    "uintptr_t", pylibsrtp.ffi.addressof(pylibsrtp.lib, "srtp_unprotect_rtcp")))
ProtectQueue = Callable[[bytes, Any, Any], int]


if ingress.configure is not None:
    ingress.configure(_SRTP_UNPROTECT, _SRTP_UNPROTECT_RTCP, State.CONNECTED, MuxedProtocol, _SINK,
                      _Sink)

if fastsend.configure_fanout is not None:
    fastsend.configure_fanout(_SRTP_PROTECT, pylibsrtp.SRTP_MAX_TRAILER_LEN, State.CONNECTED,
                              pylibsrtp.Error)


def batch_protector(session: pylibsrtp.Session, rtcp: bool = False) -> ProtectQueue:
    """``queue(packet, address, batch)``: SRTP-protect ``packet`` (SRTCP-protect with ``rtcp``)
    with ``session`` into a shared socket's batch (sfu.udp_mux), to ``address``; returns the
    batch's length, or minus libsrtp's status when it refused the packet. In C when
    sfu/_fastsend.c is built (libsrtp called on pylibsrtp's own context, into the C batch's
    buffer: one copy, no Python frame), else with ``fast_protect``/``protect_rtcp`` into a
    fastsend.PyBatch: the same bytes either way."""
    if fastsend.native_protect_queue is not None:
        context = int(pylibsrtp.ffi.cast("uintptr_t", session._srtp[0]))
        # the partial holds the session, so its libsrtp context lives as long as the protector
        if rtcp:  # srtp_protect_rtcp has srtp_protect's signature, and a longer trailer
            return functools.partial(fastsend.native_protect_queue, _SRTP_PROTECT_RTCP, context,
                                     session, pylibsrtp.SRTP_MAX_SRTCP_TRAILER_LEN)
        return functools.partial(fastsend.native_protect_queue, _SRTP_PROTECT, context, session,
                                 pylibsrtp.SRTP_MAX_TRAILER_LEN)
    return python_batch_protector(session, rtcp)


def python_batch_protector(session: pylibsrtp.Session, rtcp: bool = False) -> ProtectQueue:
    protect = session.protect_rtcp if rtcp else fast_protect(session)

    def queue(packet: bytes, address: Any, batch: fastsend.PyBatch) -> int:
        try:
            return batch.append(protect(packet), address)
        except pylibsrtp.Error:
            return -1

    return queue


class RawSender:
    """Sends plaintext RTP/RTCP on a connected DTLS transport without awaiting: SRTP-protect with
    the transport's context, then ``sendto`` on the nominated pair's socket. Silently drops while
    the transport is not connected or ICE has no nominated pair (a subscriber still handshaking,
    or gone). The pair's socket and address are cached until aioice nominates another pair. On a
    worker's shared socket (sfu.udp_mux) RTP and RTCP join the socket's batch, sent once per
    event-loop turn: the router's reports of all its rooms leave by one sendmmsg, not a sendto
    each."""

    __slots__ = ("_addr", "_batch", "_dtls", "_fast", "_gate", "_mux",
                 "_nominated", "_pair", "_protect", "_queue", "_rtcp_queue", "_send_now",
                 "_sendto", "_srtp")

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self._dtls = dtls
        self._nominated: dict[int, Any] = dtls.transport._connection._nominated
        self._pair: Any = None
        self._sendto: Callable[[bytes, Any], None] = _no_sendto  # RTP
        self._send_now: Callable[[bytes, Any], None] = _no_sendto  # RTCP: not batched
        self._addr: Any = None
        self._gate: Any = _OPEN
        self._srtp: pylibsrtp.Session | None = None
        # for the C fan-out (sfu/fastsend.py), with the helper built: set to (pair, session, its
        # libsrtp context, address, the batch, the socket) on a shared socket, else
        # cleared; one object for the sender's life, so consumers hold it (Consumer.fast_sender)
        self._fast: Any = fastsend.Route(dtls, self._nominated) if fastsend.Route is not None else None
        self._protect: Callable[[bytes], bytes] = _no_protect
        # on a worker's shared socket: its batch, and how packets join it
        self._mux: MuxSocket | None = None
        self._queue: ProtectQueue = _no_queue
        self._rtcp_queue: ProtectQueue = _no_queue
        self._batch: Any = None

    def _route(self, pair: Any) -> None:
        self._pair = pair
        self._sendto = self._send_now = pair.protocol.transport.sendto
        self._addr = pair.remote_addr
        # a TURN-relayed pair's protocol has no flow control of ours: always open
        self._gate = pair.protocol if isinstance(pair.protocol, SrtpStunProtocol) else _OPEN
        if isinstance(pair.protocol, MuxedProtocol):  # goes out with the event-loop turn's batch
            self._mux = pair.protocol.socket
            self._gate = self._mux  # its plain attribute, not the protocol's property
            self._batch = self._mux.batch
        else:
            self._mux = None
        self._fast_route()

    def _fast_route(self) -> None:
        fast, srtp = self._fast, self._srtp
        if fast is None:
            return
        if self._mux is None or srtp is None:
            fast.clear()
            return
        context = int(pylibsrtp.ffi.cast("uintptr_t", srtp._srtp[0]))
        fast.set(self._pair, srtp, context, self._addr, self._batch, self._mux)

    def _ready(self) -> bool:
        """Whether a packet may go now: connected, on the nominated pair (routed again when aioice
        nominated another), its socket writable; keyed with the transport's current SRTP session
        (taken when DTLS renewed it). The one check before every RTP and RTCP packet."""
        dtls = self._dtls
        if dtls._state is not State.CONNECTED:
            return False
        # no pair yet (ICE still checking while DTLS is up) or none any more (ICE closed):
        # nowhere to send, so the packet is dropped, not counted as sent
        pair = self._nominated.get(1)
        if pair is None:
            return False
        if pair is not self._pair:
            self._route(pair)
        if not self._gate.writable:
            return False
        if dtls._tx_srtp is not self._srtp:
            self._rekey(dtls._tx_srtp)
        return True

    def send_rtp(self, data: bytes) -> bool:
        """True when sent; False when dropped (not connected, no nominated pair, or the socket
        is full or gone)."""
        if not self._ready():
            return False
        if self._mux is not None:
            queued = self._queue(data, self._addr, self._batch)
            if queued == 1 and not self._batch.held:
                self._mux.schedule_flush()
            elif queued < 0:
                raise pylibsrtp.Error(f"srtp_protect failed ({-queued})")
            return True
        self._sendto(self._protect(data), self._addr)
        return True

    def send_rtcp(self, data: bytes) -> bool:
        if not self._ready():
            return False
        if self._mux is not None:
            queued = self._rtcp_queue(data, self._addr, self._batch)
            if queued == 1 and not self._batch.held:
                self._mux.schedule_flush()
            elif queued < 0:
                raise pylibsrtp.Error(f"srtp_protect_rtcp failed ({-queued})")
            return True
        self._send_now(self._srtp.protect_rtcp(data), self._addr)  # type: ignore[union-attr]
        return True

    def _rekey(self, srtp: pylibsrtp.Session) -> None:
        self._srtp = srtp
        self._protect = fast_protect(srtp)
        self._queue = batch_protector(srtp)
        self._rtcp_queue = batch_protector(srtp, rtcp=True)
        self._fast_route()


class _Open:
    __slots__ = ()
    writable = True


_OPEN = _Open()


def _no_sendto(data: bytes, addr: Any) -> None:
    return None


def _no_protect(data: bytes) -> bytes:
    raise RuntimeError("no SRTP context yet")


def _no_queue(data: bytes, address: Any, batch: Any) -> int:
    raise RuntimeError("no SRTP context yet")


def replace_candidate_gathering(pc: RTCPeerConnection, gather: CandidateGatherer) -> None:
    """Make every ICE gatherer of ``pc`` gather through ``gather(connection, component, relay)``
    instead of aioice's own host-address discovery (which leaves out 127.0.0.1 and cannot be
    limited to interfaces or a port range); ``relay(component)`` runs aioice's TURN allocation.
    Call before setLocalDescription; repeated calls are harmless."""
    for connection in _ice_connections(pc):
        if getattr(connection, _HOOKED, False):
            continue
        original = connection.get_component_candidates

        async def relay(component: int, _original: Any = original) -> list[Candidate]:
            # With no addresses aioice binds no host socket and queries no STUN server; it only
            # allocates on the TURN server, if one is configured.
            return await _original(component=component, addresses=[])

        async def get_component_candidates(
            component: int, addresses: list[str], timeout: int = 5, _c: Any = connection,
            _relay: RelayGatherer = relay,
        ) -> list[Candidate]:
            return await gather(_c, component, _relay)

        connection.get_component_candidates = get_component_candidates
        setattr(connection, _HOOKED, True)


async def bind_host_candidate(
    connection: Any, component: int, address: str, port: int, announced: str | None
) -> Candidate:
    """Bind a UDP socket for ``connection`` on (address, port) and register it as a host
    candidate, announced as ``announced`` when the server sits behind a 1:1 NAT. Raises OSError
    when the port is taken."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: SrtpStunProtocol(connection), local_addr=(address, port)
    )
    return _host_candidate(connection, component, protocol, announced)


async def bind_muxed_candidate(
    connection: Any, component: int, socket: MuxSocket, announced: str | None
) -> Candidate:
    """Register ``connection`` on a worker's shared socket (sfu.udp_mux) as a host candidate
    on that socket's address and port, announced as ``announced`` behind a 1:1 NAT."""
    protocol = MuxedProtocol(connection, socket)
    socket.register(protocol)
    return _host_candidate(connection, component, protocol, announced)


def _host_candidate(connection: Any, component: int, protocol: Any, announced: str | None) -> Candidate:
    """Make ``protocol`` one of ``connection``'s host candidates, on the address its transport
    is bound to (``announced`` instead behind a 1:1 NAT)."""
    bound = protocol.transport.get_extra_info("sockname")
    host = announced or bound[0]
    protocol.local_candidate = Candidate(
        foundation=candidate_foundation("host", "udp", host),
        component=component,
        transport="udp",
        priority=candidate_priority(component, "host"),
        host=host,
        port=bound[1],
        type="host",
    )
    connection._protocols.append(protocol)
    return protocol.local_candidate


async def server_reflexive_candidates(connection: Any) -> list[Candidate]:
    """Ask the configured STUN server (if any) for our public address, per host socket."""
    if not connection.stun_server:
        return []
    found = []
    for protocol in list(connection._protocols):
        try:
            candidate, _ = await asyncio.wait_for(
                aioice_ice.server_reflexive_candidate(protocol, connection.stun_server), 5
            )
        except (TimeoutError, OSError, stun.TransactionFailed, stun.TransactionTimeout):
            continue
        found.append(candidate)
    return found


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """The codecs common to both sides after setRemoteDescription, remote order."""
    return list(transceiver._codecs)


def restrict_codecs(transceiver: RTCRtpTransceiver, codecs: list[RTCRtpCodecParameters]) -> None:
    """Answer with exactly ``codecs`` (one media codec and its RTX): a forwarding SFU cannot
    let a publisher switch to a codec its subscribers were not offered."""
    transceiver._codecs = list(codecs)


def filter_rtp_input(pc: RTCPeerConnection, keep: Callable[[bytes], bool]) -> None:
    """Drop decrypted RTP for which ``keep`` is false before aiortc (or our hooks) sees it: the
    loss injection that tests and benches use."""
    for dtls in dtls_transports(pc):
        inner = dtls._handle_rtp_data

        async def handle(data: bytes, arrival_time_ms: int, _inner: Any = inner) -> None:
            if keep(data):
                await _inner(data, arrival_time_ms=arrival_time_ms)

        dtls._handle_rtp_data = handle  # type: ignore[method-assign]
        connection = dtls.transport.iceGatherer._connection
        sink = connection.__dict__.get(_SINK)
        if sink is not None:

            def filtered(data: bytes, arrival_ms: int, _deliver: RtpSink = sink.deliver) -> None:
                if keep(data):
                    _deliver(data, arrival_ms)

            sink.deliver = filtered


def negotiated_header_extensions(transceiver: RTCRtpTransceiver) -> list[Any]:
    """The header extensions (with the remote side's ids) agreed for this m-line."""
    return list(transceiver._headerExtensions)


# What a transceiver keeps of a negotiation: its codecs (each with its RTCP feedback and fmtp
# dict), its header extensions, its codec preferences; lists of aiortc's parameter dataclasses
_NEGOTIATED = ("_codecs", "_headerExtensions", "_preferred_codecs")
# One object per distinct value, held by the transceivers that use it: a value no live transceiver
# keeps leaves the table (no connection is kept alive by it, nor the table grown by clients)
_shared_parameters: weakref.WeakValueDictionary[tuple[Any, ...], Any] = weakref.WeakValueDictionary()


class _SharedList(list[Any]):
    """A list of shared parameters, itself shared: a list, as aiortc keeps them, that the table
    can refer to weakly."""

    __slots__ = ("__weakref__",)


def _frozen(value: Any) -> Any:
    """``value`` as a hashable key that tells apart what renders differently (types, order)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value), *(_frozen(getattr(value, f.name)) for f in dataclasses.fields(value)))
    if isinstance(value, dict):
        return (dict, *((_frozen(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, list):
        return (list, *map(_frozen, value))
    return (type(value), value)


def _share(parameters: Any) -> Any:
    key = _frozen(parameters)
    try:
        shared = _shared_parameters.get(key)
    except TypeError:  # an unhashable value somewhere in it: kept as it is
        return parameters
    if shared is None:
        _shared_parameters[key] = shared = parameters
    return shared


def share_negotiated_parameters(pc: RTCPeerConnection) -> None:
    """Make ``pc``'s transceivers keep one process-wide object per distinct codec, header
    extension and codec preference, and per list of them, instead of their own: aiortc makes
    them per transceiver at each negotiation (a deep copy of its codecs with the agreed payload
    type and feedback, the remote description's extensions, a capability per preference),
    ~1.5 KiB an m-line, the same values on every connection. aiortc only reads them once made
    (its own offers already share its module-level CODECS and HEADER_EXTENSIONS objects between
    connections; a new negotiation replaces the lists), and so does the SFU
    (dataclasses.replace or a copy of ``parameters`` where it changes one). Call after each
    negotiation; repeated calls are harmless."""
    for transceiver in pc.getTransceivers():
        for name in _NEGOTIATED:
            kept = getattr(transceiver, name)
            if type(kept) is not _SharedList:
                setattr(transceiver, name, _share(_SharedList(map(_share, kept))))


# --- memory: per-connection state the SFU does not need (issue 15) ----------------------------
# What aiortc builds for every connection of a media endpoint and a forwarding SFU can share or
# leave out. Kept apart from the packet-path hooks above.

# aiortc's certificates are valid for 30 days from their making: a new one after a day
CERTIFICATE_MIN_DAYS_LEFT = 29


class SharedCertificate(RTCCertificate):
    """One DTLS certificate for all of a process's connections, as Janus and mediasoup have, and
    one SSL context per SRTP profile list built from it (with DTLS_CIPHERS, as
    accept_rsa_dtls_peers gives). aiortc makes an EC key, an X.509 certificate and an OpenSSL
    SSL_CTX for every connection: ~25 KiB of native memory each, four connections a call, and a
    key generation per connection. Each handshake still agrees ephemeral ECDHE keys (forward
    secrecy is unchanged); the session cache is off, or a shared context would keep a session
    per handshake for five minutes. Its connections release their idle record buffers
    (SSL_MODE_RELEASE_BUFFERS): after the handshake, DTLS carries only the rare data channel
    message or alert (media is SRTP, outside OpenSSL), and each connection's read and write
    buffers would otherwise stay allocated for its life (~10 KiB a connection, measured)."""

    def __init__(self, key: Any, cert: Any) -> None:
        super().__init__(key=key, cert=cert)
        self._contexts: dict[tuple[bytes, ...], SSL.Context] = {}
        setattr(self, _HOOKED, True)  # accept_rsa_dtls_peers: done here once for all

    def _create_ssl_context(self, srtp_profiles: list[Any]) -> SSL.Context:
        key = tuple(profile.openssl_profile for profile in srtp_profiles)
        context = self._contexts.get(key)
        if context is None:
            context = super()._create_ssl_context(srtp_profiles)
            context.set_cipher_list(DTLS_CIPHERS)
            context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            context.set_mode(SSL.MODE_RELEASE_BUFFERS)
            self._contexts[key] = context
        return context


_shared: list[SharedCertificate] = []  # the process's current one


def share_dtls_certificate(pc: RTCPeerConnection) -> None:
    """Make ``pc`` use the process's SharedCertificate (a new one each day; connections keep the
    one they started with) instead of its own. Call right after making ``pc``, before any of its
    transports exists."""
    if not _shared or (_shared[0].expires - clock.current_datetime()).days < CERTIFICATE_MIN_DAYS_LEFT:
        _shared[:] = [SharedCertificate.generateCertificate()]
    pc._RTCPeerConnection__certificates = [_shared[0]]  # type: ignore[attr-defined]


# Per-stream state of RTCRtpReceiver and RTCRtpSender that only their own packet path uses (the
# decoder thread's queue and error event, the jitter buffer, the NACK generator, the RTP history,
# the asyncio events of their RTP/RTCP tasks): dropped once disarm_receiver/disarm_sender make
# sure that path never starts. ~6 KiB per m-line and side (a video jitter buffer alone is a list of
# 512 slots); tests/sfu/test_aiortc_hooks.py pins that nothing else reads these names.
UNUSED_RECEIVER_STATE = (
    "decoder_error", "decoder_queue", "jitter_buffer", "nack_generator",
    "remote_bitrate_estimator", "rtcp_exited", "rtcp_started", "timestamp_mapper",
)
UNUSED_SENDER_STATE = (
    "rtcp_exited", "rtcp_started", "rtp_exited", "rtp_history", "rtp_started",
)


def release_transceiver_state(transceiver: RTCRtpTransceiver) -> None:
    """For an m-line whose media the SFU carries itself, one way: disarm whichever of its
    receiver and sender is not yet (the SFU neither sends media on a publish m-line nor receives
    any on a subscribe one), then drop both sides' unused state. A side aiortc already started
    (an m-line negotiated before the SFU took it over) keeps its state: its tasks and stop() use
    it. Repeated calls are harmless."""
    receiver, sender = transceiver.receiver, transceiver.sender
    if not receiver._RTCRtpReceiver__started:  # type: ignore[attr-defined]
        disarm_receiver(receiver, _ignore_parameters)  # (kept as it is when already disarmed)
        for name in UNUSED_RECEIVER_STATE:
            setattr(receiver, f"_RTCRtpReceiver__{name}", None)
    if not sender._RTCRtpSender__started:  # type: ignore[attr-defined]
        disarm_sender(sender)
        for name in UNUSED_SENDER_STATE:
            setattr(sender, f"_RTCRtpSender__{name}", None)


def _ignore_parameters(parameters: RTCRtpReceiveParameters) -> None:
    return None


# A consent check's retransmissions after the peer's DTLS alert (RFC 7675 checks, 0.5 s RTO
# doubling in aioice): unanswered for 3.5 s, the peer has gone
CONSENT_PROBE_RETRANSMISSIONS = 2
DTLS_ALERT = 21  # the DTLS record content type


class ReleasedDtls:
    """What stands in for a DTLS transport's SSL.Connection once release_dtls has freed it.
    aiortc's RTCDtlsTransport goes on calling these: _recv_next for each DTLS record that still
    arrives (and for a handshake timer, of which there is none any more), stop() to close. A
    record from the peer is dropped unread: with the connection's keys gone nothing arriving over
    DTLS can be authenticated, so nothing is acted upon (a retransmitted flight, an alert, a
    close_notify). An alert is taken as a hint only: the peer that sends close_notify is closing
    its connection, so its ICE agent is asked for consent at once (probe_consent), and the
    connection closes when it does not answer, as after RFC 7675's 30 s, not before; a forged
    alert costs a STUN check the peer answers. ``shutdown`` queues the close_notify made,
    encrypted and with the next sequence number, just before the connection was freed, so stop()
    still tells the peer."""

    __slots__ = ("_close_notify", "_connection", "_pending", "_probe")

    def __init__(self, close_notify: bytes, connection: Any) -> None:
        self._close_notify = close_notify
        self._connection = connection  # the aioice Connection under the DTLS transport
        self._pending = b""
        self._probe: asyncio.Task[None] | None = None

    def DTLSv1_get_timeout(self) -> None:
        return None

    def bio_write(self, data: bytes) -> int:
        if data[0] == DTLS_ALERT and (self._probe is None or self._probe.done()):
            self._probe = asyncio.ensure_future(probe_consent(self._connection))
        return len(data)

    def recv(self, bufsiz: int) -> bytes:
        raise SSL.WantReadError()  # _recv_next: nothing to deliver

    def send(self, data: bytes) -> int:  # _send_data: SCTP's, and a transport with SCTP is kept
        raise ConnectionError("this DTLS connection was released: it carries no data channel")

    def shutdown(self) -> bool:
        # stop(): the transport closes anyway, so a consent check still running has no purpose
        # (and would retransmit over a closed socket for up to 3.5 s)
        if self._probe is not None:
            self._probe.cancel()
        self._pending = self._close_notify
        return True

    def bio_read(self, bufsiz: int) -> bytes:
        data, self._pending = self._pending, b""
        if not data:
            raise SSL.WantReadError()  # _write_ssl: nothing to send
        return data


async def probe_consent(connection: Any) -> None:
    """One consent check (RFC 7675, as aioice's Connection.query_consent sends them) on each of
    ``connection``'s nominated pairs now; the connection closes, as when consent expires, if one
    goes unanswered."""
    password = connection.remote_password
    if password is None:
        return
    for pair in list(connection._nominated.values()):
        request = connection.build_request(pair, nominate=False)
        try:
            await pair.protocol.request(request, pair.remote_addr,
                                        integrity_key=password.encode("utf8"),
                                        retransmissions=CONSENT_PROBE_RETRANSMISSIONS)
        except stun.TransactionError:
            await connection.close()
            return


def release_dtls(dtls: RTCDtlsTransport) -> bool:
    """Free ``dtls``'s OpenSSL connection, which media no longer needs once the SRTP keys are
    out of it: ~85 KiB of native memory after the handshake (scripts/dtls_memory.py), for four
    connections a call. Only for a transport that carries no SCTP (data channels are DTLS
    records), and only once the peer has shown its handshake is complete, by an SRTP or SRTCP
    packet that this transport's keys authenticated: as DTLS server we keep our last flight for a
    peer that lost it and sends its own again, and a peer with SRTP keys has had it. DTLS 1.2
    only (in 1.3 the last flight waits for an ACK, and keys may be updated). True when released
    now; False when not connected, already released, or carrying SCTP."""
    ssl = dtls._ssl
    if (dtls._state is not State.CONNECTED or type(ssl) is not SSL.Connection
            or dtls._data_receiver is not None or ssl.get_protocol_version_name() != "DTLSv1.2"):
        return False
    ssl.shutdown()
    try:
        close_notify = ssl.bio_read(1500)
    except SSL.Error:
        close_notify = b""
    dtls._ssl = ReleasedDtls(close_notify, dtls.transport._connection)  # type: ignore[assignment]
    return True


class CompactDescription:
    """A negotiated session description that aiortc keeps on its peer connection, held as
    zlib-compressed SDP text (~1.2 KiB) instead of aiortc's parsed objects (~21 KiB for an
    audio, video and data channel offer with its candidates). aiortc reads a connection's
    descriptions again only to negotiate once more (createOffer/createAnswer, the checks of
    setLocal/RemoteDescription, addIceCandidate, the localDescription and remoteDescription
    properties): the first attribute read parses the text back and keeps the result, which the
    next negotiation replaces. aiortc's rendering is stable: the text parses back into a
    description that renders the same."""

    __slots__ = ("_parsed", "_text", "type")

    def __init__(self, description: aiortc_sdp.SessionDescription) -> None:
        self._text = zlib.compress(str(description).encode("utf8"))
        self._parsed: aiortc_sdp.SessionDescription | None = None
        self.type: str | None = description.type

    def _description(self) -> aiortc_sdp.SessionDescription:
        parsed = self._parsed
        if parsed is None:
            parsed = aiortc_sdp.SessionDescription.parse(zlib.decompress(self._text).decode("utf8"))
            parsed.type = self.type
            self._parsed, self._text = parsed, b""
        return parsed

    def __getattr__(self, name: str) -> Any:  # what aiortc reads: media, group, ... (parsed)
        return getattr(self._description(), name)

    def __str__(self) -> str:  # what wrap_session_description renders
        if self._parsed is not None:
            return str(self._parsed)
        return zlib.decompress(self._text).decode("utf8")

    def compact(self) -> None:
        """Back to text after a read parsed it (as written since, addIceCandidate's included)."""
        if self._parsed is not None:
            self._text, self._parsed = zlib.compress(str(self._parsed).encode("utf8")), None


# RTCPeerConnection's four descriptions: its own and its peer's, current and pending
_DESCRIPTIONS = tuple(f"_RTCPeerConnection__{state}{side}Description"
                      for state in ("current", "pending") for side in ("Local", "Remote"))


def compact_descriptions(pc: RTCPeerConnection) -> None:
    """Keep ``pc``'s parsed session descriptions as CompactDescription, and those parsed again
    since as text again. Call after each negotiation's last step (the answer set, locally or
    remotely), and once the connection started its receivers (aiortc reads the remote
    description for their parameters once DTLS is up); repeated calls are harmless."""
    for name in _DESCRIPTIONS:
        description = getattr(pc, name)
        if type(description) is aiortc_sdp.SessionDescription:
            setattr(pc, name, CompactDescription(description))
        elif type(description) is CompactDescription:
            description.compact()
