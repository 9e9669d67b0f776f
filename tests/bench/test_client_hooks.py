"""bench/client_hooks.py reaches into aiortc's and aioice's privates: if an upgrade moves one,
these tests say which, before a bench or a recording test measures something else."""

from __future__ import annotations

import inspect

import aioice
import aiortc
import pytest
from aioice import ice as aioice_ice
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc import rtp as aiortc_rtp
from aiortc.rtcdtlstransport import RTCDtlsTransport

from bench import client_hooks
from tests.media_clients import client_pc

pytestmark = pytest.mark.unit


def test_pinned_versions() -> None:
    assert aiortc.__version__ == "1.16.0", "review bench/client_hooks.py against the new aiortc"
    assert aioice.__version__ == "0.13.0", "review bench/client_hooks.py against the new aioice"


def _source(obj: object) -> str:
    return inspect.getsource(obj)  # type: ignore[arg-type]


def test_sender_reports_pair_the_last_sent_timestamp_with_its_ntp_time() -> None:
    rtp = _source(RTCRtpSender._run_rtp)
    assert "self.__ntp_timestamp = clock.current_ntp_time()" in rtp
    assert "self.__rtp_timestamp = packet.timestamp" in rtp
    rtcp = _source(RTCRtpSender._run_rtcp)
    assert "ntp_timestamp=self.__ntp_timestamp" in rtcp and "rtp_timestamp=self.__rtp_timestamp" in rtcp
    assert "packet_count=self.__packet_count" in rtcp and "octet_count=self.__octet_count" in rtcp
    # the track's recv() runs right after the previous frame's packets went out, with no await
    # in between: a report cannot slip out between aiortc's pair and the one set in recv()
    assert "data = await self.__track.recv()" in _source(RTCRtpSender._next_encoded_frame)


def test_a_hand_made_sender_is_what_aiortc_would_write_and_retransmit() -> None:
    assert "self.__rtp_header_extensions_map = rtp.HeaderExtensionsMap()" in _source(RTCRtpSender.__init__)
    assert "self.__ids = HeaderExtensions()" in _source(aiortc_rtp.HeaderExtensionsMap.__init__)
    assert "packet.extensions.mid = self.__mid" in _source(RTCRtpSender._run_rtp)
    assert "self.__rtp_history.get(sequence_number % RTP_HISTORY_SIZE)" in _source(RTCRtpSender._retransmit)
    assert "self._send_keyframe()" in _source(RTCRtpSender._handle_rtcp_packet)


def test_a_counting_subscriber_takes_decrypted_rtp_from_the_sockets() -> None:
    recv = _source(RTCDtlsTransport._recv_next)
    assert "await self._handle_rtp_data(data, arrival_time_ms=arrival_time_ms)" in recv
    assert "await self._handle_rtcp_data(data)" in recv
    assert "self._rx_srtp: Session = None" in _source(RTCDtlsTransport.__init__)
    assert "self._connection = " in _source(aiortc.rtcicetransport.RTCIceGatherer.__init__)
    assert "self._protocols: list[StunProtocol] = []" in _source(aioice_ice.Connection.__init__)
    assert "decoder_worker" in _source(RTCRtpReceiver.receive)  # what idle_receiver avoids


async def test_the_hooks_reach_what_they_name() -> None:
    pc = client_pc()
    try:
        sender = pc.addTransceiver("video", direction="sendonly").sender
        assert client_hooks.last_sent_timestamp(sender) == 0
        client_hooks.set_report_clock(sender, client_hooks.ntp_of(1.5), 4800)
        assert client_hooks.last_sent_timestamp(sender) == 4800
        assert sender._RTCRtpSender__ntp_timestamp == (2_208_988_801 << 32) + (1 << 31)  # type: ignore[attr-defined]
        client_hooks.count_sent(sender, 3, 300, client_hooks.ntp_of(2.0), 9600)
        assert (sender._RTCRtpSender__packet_count, sender._RTCRtpSender__octet_count) == (3, 300)  # type: ignore[attr-defined]
        assert client_hooks.extension_ids(client_hooks.header_extensions(sender)) == (0, 0)  # none negotiated yet
        assert client_hooks.sender_mid(sender) == ""
        history: dict[int, bytes] = {}
        client_hooks.replace_history(sender, history)
        assert sender._RTCRtpSender__rtp_history is history  # type: ignore[attr-defined]
        asked: list[bool] = []
        client_hooks.on_keyframe_request(sender, lambda: asked.append(True))
        sender._send_keyframe()
        assert asked == [True]
        transport = pc.addTransceiver("video", direction="recvonly").receiver.transport
        assert client_hooks.rx_srtp(transport) is None  # not keyed yet
        assert client_hooks.socket_protocols(transport) == []  # not gathered yet
    finally:
        await pc.close()
