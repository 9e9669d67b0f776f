"""sfu/aiortc_hooks.py reaches into aiortc/aioice private internals. If an upgrade moves any of
them, these tests say exactly which one, before the SFU silently decodes or drops media."""

from __future__ import annotations

import asyncio
import gc
import inspect
import re
import weakref
from types import SimpleNamespace
from typing import Any

import aioice
import aiortc
import pylibsrtp
import pytest
from aioice import ice as aioice_ice
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.rtcdtlstransport import RTCDtlsTransport, State

from sfu import aiortc_hooks, fastsend
from tests.media_clients import client_pc

pytestmark = pytest.mark.integration


def test_pinned_versions() -> None:
    assert aiortc.__version__ == "1.16.0", (
        f"aiortc {aiortc.__version__}: sfu/aiortc_hooks.py was written against 1.16.0; review "
        "every hook there, then update the pin in pyproject.toml and this test"
    )
    assert aioice.__version__ == "0.13.0", f"aioice {aioice.__version__} is not the pinned 0.13.0"


def _source(obj: object) -> str:
    return inspect.getsource(obj)  # type: ignore[arg-type]


def test_dtls_transport_delivers_decrypted_packets_through_overridable_methods() -> None:
    recv = _source(RTCDtlsTransport._recv_next)
    assert "await self._handle_rtp_data(data, arrival_time_ms=arrival_time_ms)" in recv, (
        "RTCDtlsTransport._recv_next no longer calls self._handle_rtp_data(data, "
        "arrival_time_ms=...): intercept_packets would not see RTP"
    )
    assert "await self._handle_rtcp_data(data)" in recv, (
        "RTCDtlsTransport._recv_next no longer calls self._handle_rtcp_data(data)"
    )
    send = _source(RTCDtlsTransport._send_rtp)
    assert "self._tx_srtp.protect(data)" in send and "self._tx_srtp.protect_rtcp(data)" in send, (
        "RTCDtlsTransport no longer protects with self._tx_srtp: RawSender cannot encrypt"
    )
    assert "self._state" in _source(RTCDtlsTransport.state.fget), (  # type: ignore[attr-defined]  # a property
        "RTCDtlsTransport._state is gone: RawSender checks it against State.CONNECTED"
    )
    assert State.CONNECTED.name == "CONNECTED"


def test_srtp_arrives_through_the_stun_protocol_of_each_socket() -> None:
    received = _source(aioice_ice.StunProtocol.datagram_received)
    assert "self.receiver.data_received(data, self.local_candidate.component)" in received, (
        "aioice StunProtocol.datagram_received no longer hands non-STUN to "
        "receiver.data_received: SrtpStunProtocol's short cut would bypass something new"
    )
    assert "self._queue.put_nowait((data, component))" in _source(
        aioice_ice.Connection.data_received
    ), "aioice Connection.data_received no longer just queues: review SrtpStunProtocol"
    assert "self._rx_srtp: Session = None" in _source(RTCDtlsTransport.__init__), (
        "RTCDtlsTransport._rx_srtp is gone: SrtpStunProtocol cannot decrypt"
    )
    recv = _source(RTCDtlsTransport._recv_next)
    assert "data = self._rx_srtp.unprotect(data)" in recv and "clock.current_ms()" in recv, (
        "RTCDtlsTransport._recv_next handles SRTP differently: SrtpStunProtocol copies it"
    )
    assert "self._connection = " in _source(aiortc.rtcicetransport.RTCIceGatherer.__init__)


async def test_srtp_stun_protocol_decrypts_rtp_in_the_callback_and_passes_the_rest_on() -> None:
    queued: list[bytes] = []
    sunk: list[bytes] = []
    connection = SimpleNamespace(data_received=lambda data, component: queued.append(data))
    protocol = aiortc_hooks.SrtpStunProtocol(connection)  # type: ignore[arg-type]  # a stand-in connection
    protocol.local_candidate = SimpleNamespace(component=1)  # type: ignore[assignment]
    key = bytes(range(30))
    sender = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    plain = bytes([0x80, 96]) + bytes(14)
    rtp = sender.protect(plain)
    rtcp = bytes([0x80, 200]) + bytes(14) + b"auth"

    protocol.datagram_received(rtp, ("127.0.0.1", 1))  # no sink: aioice's path
    assert queued == [rtp]
    dtls = SimpleNamespace(_rx_srtp=None, _state=State.CONNECTING)
    connection._expertcall_rtp_sink = aiortc_hooks._Sink(
        dtls, lambda data, ms: sunk.append(data))  # type: ignore[arg-type]
    protocol.datagram_received(rtp, ("127.0.0.1", 1))  # not keyed yet: aioice's path
    assert len(queued) == 2 and not sunk

    dtls._rx_srtp = pylibsrtp.Session(
        pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
    dtls._state = State.CONNECTED
    protocol.datagram_received(rtp, ("127.0.0.1", 1))
    assert sunk == [plain] and len(queued) == 2  # decrypted, not queued
    forged = sender.protect(bytes([0x80, 96, 0, 1]) + bytes(12))
    protocol.datagram_received(forged[:-1] + bytes([forged[-1] ^ 1]), ("127.0.0.1", 1))
    assert len(sunk) == 1 and len(queued) == 2  # dropped
    protocol.datagram_received(rtcp, ("127.0.0.1", 1))
    assert queued[-1] == rtcp and len(sunk) == 1  # SRTCP takes aiortc's path


def test_receiver_starts_its_decoder_in_receive_only() -> None:
    receive = _source(RTCRtpReceiver.receive)
    assert "decoder_worker" in receive, (
        "RTCRtpReceiver.receive no longer starts the decoder thread: check that "
        "disarm_receiver still keeps every decoder and jitter buffer from starting"
    )
    assert "self.__transport._register_rtp_receiver" in receive
    assert "self.__decoder_thread" in _source(RTCRtpReceiver.__init__)


def test_sender_starts_its_encoder_in_send_only() -> None:
    send = _source(RTCRtpSender.send)
    assert "self._run_rtp" in send and "self._run_rtcp" in send, (
        "RTCRtpSender.send no longer starts the RTP/RTCP tasks: review disarm_sender"
    )
    init = _source(RTCRtpSender.__init__)
    assert "self._ssrc = " in init and "self._rtx_ssrc = " in init, (
        "RTCRtpSender no longer keeps _ssrc/_rtx_ssrc: sender_ssrcs() reads them"
    )


async def test_a_renewed_sender_is_announced_with_its_new_ssrcs_and_track_id() -> None:
    pc = client_pc()
    transceiver = pc.addTransceiver("video", direction="sendonly")
    aiortc_hooks.renew_sender(transceiver.sender)
    ssrc, rtx = aiortc_hooks.sender_ssrcs(transceiver.sender)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    assert f"a=ssrc:{ssrc} " in sdp and f"a=ssrc-group:FID {ssrc} {rtx}" in sdp, (
        "aiortc no longer announces RTCRtpSender._ssrc/_rtx_ssrc: review renew_sender"
    )
    assert transceiver.sender._track_id in sdp, (
        "aiortc no longer announces RTCRtpSender._track_id in msid: review renew_sender"
    )


def test_transceiver_keeps_negotiated_codecs_in_codecs() -> None:
    assert "self._codecs" in _source(RTCRtpTransceiver.__init__), (
        "RTCRtpTransceiver._codecs is gone: negotiated_codecs/restrict_codecs must change"
    )
    assert "self._headerExtensions" in _source(RTCRtpTransceiver.__init__), (
        "RTCRtpTransceiver._headerExtensions is gone: negotiated_header_extensions must change"
    )
    remote = _source(RTCPeerConnection.setRemoteDescription)
    assert "transceiver._codecs = common" in remote
    assert "transceiver._headerExtensions = find_common_header_extensions" in remote


def test_aioice_gathering_and_sending_internals() -> None:
    connection = aioice_ice.Connection
    assert "get_component_candidates" in _source(connection.gather_candidates), (
        "aioice gathers without get_component_candidates: replace_candidate_gathering breaks"
    )
    init = _source(connection.__init__)
    for name in ("self._protocols", "self._nominated", "self.stun_server"):
        assert name in init, f"aioice Connection lost {name}"
    assert "active_pair.protocol.send_data(data, active_pair.remote_addr)" in _source(
        connection.sendto
    ), "aioice no longer sends on _nominated[component].protocol: RawSender would break"
    assert "self.transport.sendto(data, addr)" in _source(aioice_ice.StunProtocol.send_data)
    assert callable(aioice_ice.server_reflexive_candidate)
    assert "addresses" in inspect.signature(connection.get_component_candidates).parameters


async def test_hooks_apply_to_a_live_connection() -> None:
    pc = client_pc()
    transceiver = pc.addTransceiver("video", direction="sendonly")
    seen: list[object] = []

    async def on_rtp(data: bytes, arrival_time_ms: int) -> None:
        seen.append(data)

    async def on_rtcp(data: bytes) -> None:
        seen.append(data)

    def sink(data: bytes, arrival_ms: int) -> None:
        seen.append(data)

    aiortc_hooks.intercept_packets(pc, on_rtp, on_rtcp, sink)
    aiortc_hooks.intercept_packets(pc, on_rtp, on_rtcp, sink)  # again: harmless
    dtls = aiortc_hooks.dtls_transports(pc)[0]
    await dtls._handle_rtp_data(b"rtp", arrival_time_ms=1)
    await dtls._handle_rtcp_data(b"rtcp")
    assert seen == [b"rtp", b"rtcp"]
    seen.clear()
    connection = dtls.transport.iceGatherer._connection
    installed = getattr(connection, "_expertcall_rtp_sink")
    assert installed.dtls is dtls and installed.deliver is sink
    candidate = await aiortc_hooks.bind_host_candidate(connection, 1, "127.0.0.1", 0, None)
    assert isinstance(connection._protocols[-1], aiortc_hooks.SrtpStunProtocol)
    assert candidate.host == "127.0.0.1"
    aiortc_hooks.disarm_sender(transceiver.sender)
    await transceiver.sender.send("parameters")  # type: ignore[arg-type]
    assert transceiver.sender._RTCRtpSender__rtp_task is None  # type: ignore[attr-defined]
    assert aiortc_hooks.sender_ssrcs(transceiver.sender)[0] == transceiver.sender._ssrc
    assert aiortc_hooks.negotiated_codecs(transceiver) == []
    await pc.close()


def test_fast_protect_is_pylibsrtps_protect() -> None:
    import os
    import struct

    import pytest

    assert pylibsrtp.__version__ == "1.0.0", (
        f"pylibsrtp {pylibsrtp.__version__}: aiortc_hooks.fast_protect reaches into Session's "
        "_srtp, _cdata and _buffer; review it, then update the pin"
    )
    key = os.urandom(30)

    def session() -> pylibsrtp.Session:
        policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        return pylibsrtp.Session(policy)

    reference, ours = session(), session()
    protect = aiortc_hooks.fast_protect(ours)
    for seq in range(3):
        packet = struct.pack("!BBHII", 0x80, 96, seq, 1000, 1234) + os.urandom(1200)
        assert protect(packet) == reference.protect(packet)
    with pytest.raises(ValueError):
        protect(bytes(aiortc_hooks.MAX_PROTECTED_RTP + 1))
    # sfu/_fastsend.c calls srtp_protect on the context by address: its C signature must hold
    assert pylibsrtp.ffi.typeof(pylibsrtp.lib.srtp_protect).cname == \
        "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"
    assert pylibsrtp.ffi.typeof(ours._srtp[0]).cname == "struct srtp_ctx_t_ *"
    assert pylibsrtp.ffi.typeof(pylibsrtp.lib.srtp_unprotect).cname == \
        "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"
    queue = aiortc_hooks.batch_protector(session())
    batch = fastsend.new_batch()
    packet = struct.pack("!BBHII", 0x80, 96, 7, 1000, 1234) + os.urandom(1200)
    assert queue(packet, ("127.0.0.1", 9), batch) == 1
    assert batch.items() == [(reference.protect(packet), ("127.0.0.1", 9))]


def test_rtcp_joins_the_batch_as_pylibsrtps_protect_rtcp_makes_it() -> None:
    import os

    from sfu import rtcp

    key = os.urandom(30)

    def session() -> pylibsrtp.Session:
        policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        return pylibsrtp.Session(policy)

    # sfu/_fastsend.c calls srtp_protect_rtcp by address, as it calls srtp_protect
    assert pylibsrtp.ffi.typeof(pylibsrtp.lib.srtp_protect_rtcp).cname == \
        "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"
    reports = [rtcp.pli(1, 2), rtcp.receiver_report(1, 2, 0, 0, 100, 0, 0, 0) + rtcp.remb(1, 500_000, [2])]
    for queue, batch in ((aiortc_hooks.batch_protector(session(), rtcp=True), fastsend.new_batch()),
                         (aiortc_hooks.python_batch_protector(session(), rtcp=True),
                          fastsend.PyBatch())):
        reference = session()
        for n, report in enumerate(reports, 1):
            assert queue(report, ("127.0.0.1", 9), batch) == n
        assert batch.items() == [(reference.protect_rtcp(report), ("127.0.0.1", 9))
                                 for report in reports]


def test_receivers_build_their_bitrate_estimator_only_when_packets_come() -> None:
    from aiortc import rtcrtpreceiver

    init = _source(RTCRtpReceiver.__init__)
    assert "RemoteBitrateEstimator()" in init, (
        "RTCRtpReceiver.__init__ no longer builds RemoteBitrateEstimator() by its module-level "
        "name: lazy_bitrate_estimators would not take effect"
    )
    uses = _source(RTCRtpReceiver._handle_rtp_packet)
    assert "self.__remote_bitrate_estimator.add(" in uses and uses.count("remote_bitrate_estimator") == 2, (
        "RTCRtpReceiver uses its bitrate estimator for more than add(): LazyRemoteBitrateEstimator "
        "stands in for add() only"
    )
    aiortc_hooks.lazy_bitrate_estimators()
    assert rtcrtpreceiver.RemoteBitrateEstimator is aiortc_hooks.LazyRemoteBitrateEstimator
    lazy = aiortc_hooks.LazyRemoteBitrateEstimator()
    real = aiortc_hooks._RemoteBitrateEstimator()
    assert lazy._estimator is None
    results = []
    for i in range(1000):  # 5 s of 1000-byte packets, with jitter: the estimator answers REMB
        packet = {"arrival_time_ms": 5 * i + i % 7, "abs_send_time": (5 * i * 262144 // 1000) & 0xFFFFFF,
                  "payload_size": 1000, "ssrc": 5}
        results.append((lazy.add(**packet), real.add(**packet)))
    assert all(a == b for a, b in results) and any(a is not None for a, _ in results)


def test_peer_connections_keep_their_certificates_where_accept_rsa_dtls_peers_looks() -> None:
    from aiortc.rtcdtlstransport import RTCCertificate

    assert "self.__certificates = [RTCCertificate.generateCertificate()]" in _source(
        RTCPeerConnection.__init__), "RTCPeerConnection.__certificates moved: review accept_rsa_dtls_peers"
    assert "ctx.set_cipher_list(" in _source(RTCCertificate._create_ssl_context), (
        "RTCCertificate._create_ssl_context no longer sets the cipher list: review DTLS_CIPHERS"
    )


def test_a_connection_shares_a_socket_through_its_protocols() -> None:
    """What MuxedProtocol (one UDP port per worker) rests on."""
    stun_protocol = _source(aioice_ice.StunProtocol)
    assert "self.receiver.protocol_lost(self)" in stun_protocol and \
        "self.__closed.set_result(True)" in stun_protocol and "await self.__closed" in stun_protocol, (
        "aioice StunProtocol no longer closes through connection_lost: MuxedProtocol.close, which "
        "must leave the shared socket open, would hang or leak"
    )
    assert "self.transport.sendto(data, addr)" in _source(aioice_ice.StunProtocol.send_data), (
        "StunProtocol.send_data no longer sends on self.transport: DTLS would miss the shared socket"
    )
    assert "self.__protocol.send_stun(self.__request, self.__addr)" in _source(
        aioice.stun.Transaction), (
        "aioice's STUN transactions no longer send through protocol.send_stun: MuxedProtocol "
        "would not claim the address its checks go to, and their answers would be dropped"
    )
    close = _source(aioice_ice.Connection.close)
    assert "for protocol in self._protocols:" in close and "await protocol.close()" in close
    connection = aioice_ice.Connection(ice_controlling=True)
    assert isinstance(connection.local_username, str) and isinstance(connection.local_password, str)


async def test_connections_share_one_certificate_and_one_ssl_context(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from aiortc.rtcdtlstransport import SRTP_AES128_CM_SHA1_80, RTCCertificate
    from OpenSSL import SSL

    assert "self.__local_certificate._create_ssl_context(" in _source(RTCDtlsTransport.start), (
        "RTCDtlsTransport.start no longer asks its certificate for the SSL context: review "
        "SharedCertificate")
    assert "def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate)" in _source(
        RTCCertificate.__init__)
    first, second = client_pc(), client_pc()
    for pc in (first, second):
        aiortc_hooks.share_dtls_certificate(pc)
        aiortc_hooks.accept_rsa_dtls_peers(pc)  # as a Transport does: nothing left to add
    (certificate,) = first._RTCPeerConnection__certificates  # type: ignore[attr-defined]
    assert isinstance(certificate, aiortc_hooks.SharedCertificate)
    assert second._RTCPeerConnection__certificates == [certificate]  # type: ignore[attr-defined]
    assert "_create_ssl_context" not in vars(certificate)
    context = certificate._create_ssl_context([SRTP_AES128_CM_SHA1_80])
    assert certificate._create_ssl_context([SRTP_AES128_CM_SHA1_80]) is context
    assert context.get_session_cache_mode() == SSL.SESS_CACHE_OFF
    assert context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS  # (set_mode adds to, and returns, the mode)
    assert "ECDHE-RSA-AES128-GCM-SHA256" in SSL.Connection(context).get_cipher_list()

    first.addTransceiver("audio")
    await first.setLocalDescription(await first.createOffer())
    assert certificate.getFingerprints()[-1].value in first.localDescription.sdp

    assert (certificate.expires - aiortc.clock.current_datetime()).days == 29
    monkeypatch.setattr(aiortc_hooks, "CERTIFICATE_MIN_DAYS_LEFT", 30)  # due for renewal
    third = client_pc()
    aiortc_hooks.share_dtls_certificate(third)
    assert third._RTCPeerConnection__certificates != [certificate]  # type: ignore[attr-defined]
    assert first._RTCPeerConnection__certificates == [certificate]  # type: ignore[attr-defined]
    for pc in (first, second, third):
        await pc.close()


def _methods_reading(cls: type, attribute: str) -> set[str]:
    return {name for name, member in vars(cls).items()
            if inspect.isfunction(member) and attribute in _source(member)}


def test_the_state_release_transceiver_state_drops_is_read_only_by_the_packet_paths_it_disarms() -> None:
    # RTCRtpReceiver: receive() (disarmed), the decoder and RTCP tasks it would start, stop() once
    # started, and _handle_rtp_packet, which only aiortc's RTP router calls (intercept_packets
    # takes the packets before it)
    receiver_paths = {"__init__", "receive", "_handle_rtp_packet", "_run_rtcp", "stop",
                      "_RTCRtpReceiver__stop_decoder"}
    for name in aiortc_hooks.UNUSED_RECEIVER_STATE:
        users = _methods_reading(RTCRtpReceiver, f"self.__{name}")
        assert "__init__" in users and users <= receiver_paths, (
            f"RTCRtpReceiver.__{name} is read by {sorted(users - receiver_paths)}: review "
            "UNUSED_RECEIVER_STATE")
    sender_paths = {"__init__", "send", "_run_rtp", "_run_rtcp", "stop", "_retransmit"}
    for name in aiortc_hooks.UNUSED_SENDER_STATE:
        users = _methods_reading(RTCRtpSender, f"self.__{name}")
        assert "__init__" in users and users <= sender_paths, (
            f"RTCRtpSender.__{name} is read by {sorted(users - sender_paths)}: review "
            "UNUSED_SENDER_STATE")
    for cls in (RTCRtpReceiver, RTCRtpSender):
        stop = _source(cls.stop)
        assert stop.index("if self.__started:") < stop.index("await"), (
            f"{cls.__name__}.stop awaits something even when never started")
        assert "self.__started = False" in _source(cls.__init__)
        assert "self.__started = True" in _source(getattr(cls, "receive" if cls is RTCRtpReceiver
                                                          else "send"))


async def test_a_side_aiortc_already_started_keeps_its_state() -> None:
    pc = client_pc()
    transceiver = pc.addTransceiver("video", direction="sendrecv")
    transceiver.sender._RTCRtpSender__started = True  # type: ignore[attr-defined]  # as after send()
    aiortc_hooks.release_transceiver_state(transceiver)
    assert transceiver.sender._RTCRtpSender__rtp_started is not None  # type: ignore[attr-defined]
    assert type(transceiver.sender) is RTCRtpSender
    assert transceiver.receiver._RTCRtpReceiver__jitter_buffer is None  # type: ignore[attr-defined]
    transceiver.sender._RTCRtpSender__started = False  # type: ignore[attr-defined]  # nothing to stop
    await pc.close()


async def test_a_released_transceiver_still_negotiates_and_closes() -> None:
    pc, peer = client_pc(), client_pc()
    sending = pc.addTransceiver("video", direction="sendonly")
    receiving = pc.addTransceiver("audio", direction="recvonly")
    parameters: list[object] = []
    aiortc_hooks.disarm_receiver(receiving.receiver, parameters.append)
    for transceiver in (sending, receiving):
        aiortc_hooks.release_transceiver_state(transceiver)
        aiortc_hooks.release_transceiver_state(transceiver)  # again: harmless
    assert receiving.receiver._RTCRtpReceiver__jitter_buffer is None  # type: ignore[attr-defined]
    assert sending.sender._RTCRtpSender__rtp_history is None  # type: ignore[attr-defined]
    await pc.setLocalDescription(await pc.createOffer())
    await peer.setRemoteDescription(pc.localDescription)
    peer.getTransceivers()[1].direction = "sendonly"
    await peer.setLocalDescription(await peer.createAnswer())
    await pc.setRemoteDescription(peer.localDescription)
    for _ in range(100):
        if pc.connectionState == "connected" and parameters:
            break
        await asyncio.sleep(0.05)
    assert pc.connectionState == "connected"
    assert parameters  # the disarmed receiver's callback still got its parameters
    await pc.getStats()
    await pc.close()
    await peer.close()


async def test_remote_tracks_make_their_frame_queue_on_first_use() -> None:
    from aiortc.mediastreams import MediaStreamError
    from aiortc.rtcrtpreceiver import RemoteStreamTrack

    original = _source(aiortc_hooks._remote_track_init)
    assert "super().__init__()" in original and "self._queue: asyncio.Queue = asyncio.Queue()" in original, (
        "RemoteStreamTrack.__init__ changed: review _lazy_remote_track_init")
    assert original.count("self.") == 3  # kind, _id and _queue: nothing _lazy_remote_track_init misses
    assert "self._track._queue," in _source(RTCRtpReceiver.receive), (
        "the receiver no longer hands the decoder its track's queue: review LazyQueue")
    aiortc_hooks.lazy_track_queues()
    aiortc_hooks.lazy_track_queues()  # again: harmless
    track = RemoteStreamTrack(kind="video", id="t1")
    assert (track.kind, track.id, track.readyState) == ("video", "t1", "live")
    assert RemoteStreamTrack(kind="audio").id  # a fresh id when none is given
    queue = track._queue
    assert isinstance(queue, aiortc_hooks.LazyQueue) and queue._queue is None  # nothing made yet
    # used as the decoder thread and recv() use it: the real queue, made on first use
    waiting = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    assert isinstance(queue._queue, asyncio.Queue)
    await queue.put("frame")
    assert await waiting == "frame"
    queue.put_nowait(None)  # the end of the stream
    with pytest.raises(MediaStreamError):
        await track.recv()
    assert track.readyState == "ended"


def test_a_lazy_queue_used_from_two_threads_at_once_makes_one_queue() -> None:
    import sys

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between the check and the making, if they can
    try:
        _use_lazy_queues_from_four_threads(1000)
    finally:
        sys.setswitchinterval(interval)


def _use_lazy_queues_from_four_threads(times: int) -> None:
    import threading

    for _ in range(times):
        lazy = aiortc_hooks.LazyQueue()
        start = threading.Barrier(4)
        seen: list[object] = []

        def use() -> None:
            start.wait()
            seen.append(lazy.put_nowait.__self__)  # the queue behind the bound method

        threads = [threading.Thread(target=use) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len({id(q) for q in seen}) == 1 and seen[0] is lazy._queue


def test_a_connected_dtls_transport_uses_only_what_released_dtls_stands_in_for() -> None:
    """release_dtls swaps RTCDtlsTransport._ssl for a ReleasedDtls: after the handshake aiortc
    must call nothing else on it, and must take its SSL.Error as nothing to deliver or send."""
    after_handshake = "".join(_source(method) for method in (
        RTCDtlsTransport._recv_next, RTCDtlsTransport.stop, RTCDtlsTransport._write_ssl,
        RTCDtlsTransport._send_data))
    used = set(re.findall(r"self\._ssl\.(\w+)", after_handshake))
    # DTLSv1_handle_timeout only follows a timeout from DTLSv1_get_timeout, which is None
    assert used - {"DTLSv1_handle_timeout"} == {
        name for name in dir(aiortc_hooks.ReleasedDtls) if not name.startswith("_")
    }, f"RTCDtlsTransport now calls {sorted(used)} on _ssl after the handshake"
    recv = _source(RTCDtlsTransport._recv_next)
    assert "except SSL.Error:\n                data = b\"\"" in recv
    assert "elif data and self._data_receiver:" in recv
    assert "except SSL.Error:\n            data = b\"\"" in _source(RTCDtlsTransport._write_ssl)
    # probe_consent sends the consent check aioice's own loop sends, and closes as it does
    consent = _source(aioice_ice.Connection.query_consent)
    for used_there in ("self._nominated.values()", "self.build_request(pair, nominate=False)",
                       "pair.protocol.request(", "pair.remote_addr",
                       'integrity_key=self.remote_password.encode("utf8")',
                       "retransmissions=0", "except stun.TransactionError:",
                       "return await self.close()"):
        assert used_there in consent, f"aioice's query_consent no longer has {used_there}"
    # what release_dtls checks: no SCTP registered, connected
    assert "self._data_receiver = receiver" in _source(RTCDtlsTransport._register_data_receiver)
    assert "self._ssl: Optional[SSL.Connection] = None" in _source(RTCDtlsTransport.__init__)


async def test_release_dtls_frees_the_openssl_connection_and_leaves_srtp() -> None:
    offerer, answerer = client_pc(), client_pc()
    for pc in (offerer, answerer):
        aiortc_hooks.share_dtls_certificate(pc)
        pc.addTransceiver("audio")
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)
    try:
        async with asyncio.timeout(10):
            while not (offerer.connectionState == answerer.connectionState == "connected"):
                await asyncio.sleep(0.01)
        dtls = aiortc_hooks.dtls_transports(answerer)[0]
        srtp = dtls._rx_srtp, dtls._tx_srtp
        ssl = weakref.ref(dtls._ssl)
        assert aiortc_hooks.release_dtls(dtls)
        assert not aiortc_hooks.release_dtls(dtls)  # once
        gc.collect()
        assert ssl() is None and isinstance(dtls._ssl, aiortc_hooks.ReleasedDtls)
        assert (dtls._rx_srtp, dtls._tx_srtp) == srtp and dtls.state == "connected"
        # an alert, which nobody can authenticate now (forged, say), only prompts a consent
        # check: the live peer answers it, and the connection stays
        released = dtls._ssl
        released.bio_write(b"\x15\xfe\xfd" + bytes(24))
        assert released._probe is not None
        await released._probe
        assert answerer.connectionState == "connected" and dtls.state == "connected"
        # the peer goes: its close_notify starts a check nobody answers, and when our side
        # closes meanwhile, the check goes with it rather than retransmitting for 3.5 s
        await offerer.close()
        await asyncio.sleep(0.2)
        probe = released._probe
        assert probe is not None and not probe.done()
        await answerer.close()
        assert probe.cancelled()
    finally:
        await offerer.close()
        await answerer.close()


def test_peer_connections_keep_their_descriptions_where_compact_descriptions_looks() -> None:
    init = _source(RTCPeerConnection.__init__)
    for name in ("currentLocal", "currentRemote", "pendingLocal", "pendingRemote"):
        assert f"self.__{name}Description: Optional[sdp.SessionDescription] = None" in init, (
            f"RTCPeerConnection.__{name}Description is gone: review compact_descriptions"
        )
    # every read of a kept description goes through these two (or the two properties that render
    # one), and reads attributes of it or renders it
    source = _source(RTCPeerConnection)
    assert source.count("__localDescription()") + source.count("__remoteDescription()") == 9, (
        "RTCPeerConnection reads its descriptions in new places: review CompactDescription")
    for name in ("currentLocal", "currentRemote", "pendingLocal", "pendingRemote"):
        assert source.count(f"self.__{name}Description") == 3 + name.startswith("pending"), (
            f"RTCPeerConnection uses __{name}Description in new places: review CompactDescription")
    assert "sdp=str(session_description), type=session_description.type" in _source(
        aiortc.rtcpeerconnection.wrap_session_description)


async def test_compacted_descriptions_render_the_same_and_negotiate_again() -> None:
    pc, peer = client_pc(), client_pc()
    pc.addTransceiver("audio", direction="sendrecv")
    pc.createDataChannel("chat")
    await pc.setLocalDescription(await pc.createOffer())
    await peer.setRemoteDescription(pc.localDescription)
    await peer.setLocalDescription(await peer.createAnswer())
    await pc.setRemoteDescription(peer.localDescription)
    before = (pc.localDescription.sdp, pc.remoteDescription.sdp)
    aiortc_hooks.compact_descriptions(pc)
    aiortc_hooks.compact_descriptions(pc)  # again: harmless
    # (an offerer's own offer stays pending after the answer, in aiortc)
    kept = [getattr(pc, f"_RTCPeerConnection__{name}Description")
            for name in ("pendingLocal", "currentRemote")]
    assert all(isinstance(d, aiortc_hooks.CompactDescription) for d in kept)
    assert (pc.localDescription.sdp, pc.remoteDescription.sdp) == before
    assert (pc.localDescription.type, pc.remoteDescription.type) == ("offer", "answer")
    # a renegotiation reads them again (createOffer, the answer's check against the offer)
    pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    await peer.setRemoteDescription(pc.localDescription)
    await peer.setLocalDescription(await peer.createAnswer())
    await pc.setRemoteDescription(peer.localDescription)
    assert [t.mid for t in pc.getTransceivers()] == ["0", "2"]
    assert pc.localDescription.sdp.startswith(before[0][:40])
    aiortc_hooks.compact_descriptions(pc)
    await pc.addIceCandidate(None)  # end of candidates: recorded in the remote description
    assert "a=end-of-candidates" in pc.remoteDescription.sdp
    await pc.close()
    await peer.close()


def test_aioice_uses_the_check_list_queue_only_until_connect_starts_consent_checks() -> None:
    """drop_spent_ice_state drops Connection._check_list_state once _query_consent_task is
    set: connect() must have read the queue before, and every put must wait on
    _check_list_done, which is set with the put that connect() reads."""
    source = _source(aioice_ice.Connection)
    assert "self._query_consent_task: asyncio.Task[None] | None = None" in source
    assert source.count("self._check_list_state") == 5  # its creation, one get, three puts
    for guarded_put in (
        "if not self._check_list_done:\n            self._check_list_state.put_nowait(ICE_FAILED)",
        'if not self._check_list_done:\n                self.__log_info("ICE completed")\n'
        "                self._check_list_state.put_nowait(ICE_COMPLETED)",
        'if not self._check_list_done:\n            self.__log_info("ICE failed")\n'
        "            self._check_list_state.put_nowait(ICE_FAILED)",
    ):
        assert guarded_put in source, f"aioice no longer has {guarded_put!r}"
    connect = _source(aioice_ice.Connection.connect)
    assert connect.index("await self._check_list_state.get()") < connect.index(
        "self._query_consent_task = asyncio.create_task(")


def test_aiortc_sets_an_ice_transports_start_event_once_and_then_only_waits_on_it() -> None:
    """drop_spent_ice_state gives a started RTCIceTransport one shared Event, already set, for
    its own: start() must set it only when done, and nothing may clear it or set another."""
    transport = _source(aiortc.rtcicetransport.RTCIceTransport)
    assert transport.count("self.__start") == 5, (
        "RTCIceTransport uses __start in new places: review drop_spent_ice_state")
    start = _source(aiortc.rtcicetransport.RTCIceTransport.start)
    for line in ("if self.__start is not None:\n            await self.__start.wait()\n"
                 "            return\n        self.__start = asyncio.Event()",
                 "        self.__start.set()\n"):
        assert line in start, f"RTCIceTransport.start no longer has {line!r}"
    assert start.index("await self._connection.connect()") < start.index("self.__start.set()")
    assert "self.__start: Optional[asyncio.Event] = None" in _source(
        aiortc.rtcicetransport.RTCIceTransport.__init__)


def test_disarmed_receivers_and_intercepted_transports_keep_their_handlers_where_aiortc_no_longer_looks() -> None:
    """DisarmedReceiver keeps its handler in __rtcp_task, which only receive() (replaced) sets and
    only a started receiver's stop() reads; InterceptedDtlsTransport keeps its handlers on its
    RtpRouter, set once in __init__ and reached only through self._rtp_router."""
    assert _methods_reading(RTCRtpReceiver, "self.__rtcp_task") == {"__init__", "receive", "stop"}
    assert _source(RTCRtpReceiver.stop).index("if self.__started:") < _source(
        RTCRtpReceiver.stop).index("self.__rtcp_task")
    init = _source(RTCDtlsTransport.__init__)
    assert "self._rtp_router = RtpRouter()" in init
    assert _source(RTCDtlsTransport).count("self._rtp_router =") == 1
    assert "._rtp_router" not in _source(aiortc.rtcpeerconnection)
    assert "._rtp_router" not in _source(aiortc.rtcrtpreceiver)
    assert "._rtp_router" not in _source(aiortc.rtcrtpsender)


async def test_disarming_and_intercepting_add_no_attribute_to_aiortcs_objects() -> None:
    """A new attribute on an aiortc object turns its key-sharing __dict__ into a dict of its own
    (~1.8 KiB more per receiver, ~3 KiB per DTLS transport); the hooks change their class
    instead, and keep their handlers in attributes aiortc already has."""
    import sys

    pc = client_pc()
    transceiver = pc.addTransceiver("video", direction="recvonly")
    receiver, sender = transceiver.receiver, transceiver.sender
    dtls = receiver.transport
    objects = (receiver, sender, dtls)
    before = [(list(vars(o)), sys.getsizeof(vars(o))) for o in objects]
    seen: list[object] = []

    async def on_rtp(data: bytes, arrival_time_ms: int) -> None:
        seen.append(data)

    async def on_rtcp(data: bytes) -> None:
        seen.append(data)

    aiortc_hooks.disarm_receiver(receiver, seen.append)
    aiortc_hooks.disarm_sender(sender)
    aiortc_hooks.intercept_packets(pc, on_rtp, on_rtcp)
    assert [(list(vars(o)), sys.getsizeof(vars(o))) for o in objects] == before
    assert isinstance(receiver, RTCRtpReceiver) and isinstance(dtls, RTCDtlsTransport)
    await receiver.receive("parameters")  # type: ignore[arg-type]
    await dtls._handle_rtp_data(b"rtp", arrival_time_ms=1)
    await dtls._handle_rtcp_data(b"rtcp")
    assert seen == ["parameters", b"rtp", b"rtcp"]
    await pc.close()


# Every write aiortc makes to a field of its codec, RTCP feedback and header extension
# parameters, or to a transceiver's lists of them (other than assigning a new list)
_PARAMETER_WRITE = re.compile(
    r"\.(mimeType|clockRate|channels|payloadType|rtcpFeedback|parameters|parameter|uri)\s*=[^=]"
    r"|\.(rtcpFeedback|parameters|headerExtensions|codecs|_codecs|_headerExtensions"
    r"|_preferred_codecs)(\[[^]]*\]\s*=[^=]|\.(append|update|pop|insert|clear|extend|remove|sort"
    r"|setdefault|reverse)\()")


def test_aiortc_changes_negotiated_parameters_only_while_making_them() -> None:
    """share_negotiated_parameters gives every connection's transceivers the same objects: aiortc
    must never change one a transceiver keeps. It writes to them only in the SDP parser (objects
    it is making) and in find_common_codecs (on a deep copy, before the transceiver gets it)."""
    from pathlib import Path

    writes = sorted(f"{path.name}: {line.strip()}"
                    for path in Path(aiortc.__file__).parent.rglob("*.py")
                    for line in path.read_text().splitlines() if _PARAMETER_WRITE.search(line))
    assert writes == [
        "rtcpeerconnection.py: codec.payloadType = c.payloadType",
        "rtcpeerconnection.py: codec.rtcpFeedback = list(",
        "sdp.py: codec.parameters = parameters_from_sdp(format_desc)",
        "sdp.py: codec.rtcpFeedback.append(",
        "sdp.py: current_media.rtp.codecs.append(codec)",
        "sdp.py: current_media.rtp.headerExtensions.append(extension)",
    ], "aiortc changes codec or header extension parameters in new places: review " \
       "share_negotiated_parameters"
    common = _source(aiortc.rtcpeerconnection.find_common_codecs)
    assert common.index("codec = copy.deepcopy(codec)") < common.index("codec.payloadType =")
    parse = _source(aiortc.sdp.SessionDescription.parse)
    assert "codec = RTCRtpCodecParameters(" in parse and "extension = RTCRtpHeaderExtensionParameters(" in parse
    transceiver = _source(RTCRtpTransceiver)
    for name in aiortc_hooks._NEGOTIATED:
        assert f"self.{name}: list[" in transceiver, f"RTCRtpTransceiver.{name} is gone"


async def _negotiated_pair() -> tuple[RTCPeerConnection, RTCPeerConnection]:
    pc, peer = client_pc(), client_pc()
    pc.addTransceiver("audio", direction="sendonly")
    video = pc.addTransceiver("video", direction="sendonly")
    video.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                               if c.mimeType in ("video/VP8", "video/rtx")])
    await pc.setLocalDescription(await pc.createOffer())
    await peer.setRemoteDescription(pc.localDescription)
    await peer.setLocalDescription(await peer.createAnswer())
    await pc.setRemoteDescription(peer.localDescription)
    await _connected(pc, peer)
    return pc, peer


async def _connected(*pcs: RTCPeerConnection) -> None:
    """(A connection closed while it connects stays alive, in aiortc's connect task.)"""
    for _ in range(200):
        if all(pc.connectionState == "connected" for pc in pcs):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not connected")


def _negotiated(pc: RTCPeerConnection) -> list[list[Any]]:
    return [getattr(t, name) for t in pc.getTransceivers() for name in aiortc_hooks._NEGOTIATED]


def _share_all(pairs: list[tuple[RTCPeerConnection, RTCPeerConnection]]) -> list[weakref.ref[object]]:
    """Share the parameters of two negotiated pairs, check them, and return weak references to
    all of them (a function: the test holds none of them itself)."""
    before = [_negotiated(pc) for pair in pairs for pc in pair]
    assert before[0][0] is not before[2][0] and before[0][0] == before[2][0]  # aiortc: copies
    for pair in pairs:
        for pc in pair:
            aiortc_hooks.share_negotiated_parameters(pc)
            aiortc_hooks.share_negotiated_parameters(pc)  # again: harmless
    after = [_negotiated(pc) for pair in pairs for pc in pair]
    assert after == before
    for mine, theirs in ((after[0], after[2]), (after[1], after[3])):  # offerers, answerers
        for own, other in zip(mine, theirs):
            assert own is other
            assert all(a is b for a, b in zip(own, other))
    assert after[0][0][0].rtcpFeedback is after[2][0][0].rtcpFeedback
    return [weakref.ref(item) for lists in after for items in lists for item in items]


async def test_connections_share_their_negotiated_parameters_and_free_them() -> None:
    """Two connections negotiated alike keep the same codec, feedback and header extension
    objects, equal to what each had; they go once no connection keeps them."""
    pairs = [await _negotiated_pair() for _ in range(2)]
    negotiated = repr(_negotiated(pairs[0][0]))
    kept = _share_all(pairs)
    assert kept
    # a renegotiation starts from the shared objects and replaces them
    first, first_peer = pairs[0]
    first.addTransceiver("audio", direction="sendonly")
    await first.setLocalDescription(await first.createOffer())
    await first_peer.setRemoteDescription(first.localDescription)
    await first_peer.setLocalDescription(await first_peer.createAnswer())
    await first.setRemoteDescription(first_peer.localDescription)
    await _connected(first, first_peer)
    assert len(first.getTransceivers()) == 3
    assert repr(_negotiated(first)[:6]) == negotiated
    for pair in pairs:
        for pc in pair:
            await pc.close()
    del pairs, pair, pc, first, first_peer
    for _ in range(40):  # (their connect tasks end in a later event-loop turn)
        gc.collect()
        if all(ref() is None for ref in kept):
            break
        await asyncio.sleep(0.05)
    assert [ref() for ref in kept if ref() is not None] == []
