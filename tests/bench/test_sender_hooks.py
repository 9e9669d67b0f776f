"""bench/sender_hooks.py reaches into aiortc's RTCRtpSender privates: if an upgrade moves one,
these tests say which, before a bench or a recording test measures something else."""

from __future__ import annotations

import inspect

import aiortc
import pytest
from aiortc import RTCRtpSender

from bench import sender_hooks
from tests.media_clients import client_pc

pytestmark = pytest.mark.unit


def test_pinned_version() -> None:
    assert aiortc.__version__ == "1.16.0", "review bench/sender_hooks.py against the new aiortc"


def test_sender_reports_pair_the_last_sent_timestamp_with_its_ntp_time() -> None:
    rtp = inspect.getsource(RTCRtpSender._run_rtp)
    assert "self.__ntp_timestamp = clock.current_ntp_time()" in rtp
    assert "self.__rtp_timestamp = packet.timestamp" in rtp
    rtcp = inspect.getsource(RTCRtpSender._run_rtcp)
    assert "ntp_timestamp=self.__ntp_timestamp" in rtcp and "rtp_timestamp=self.__rtp_timestamp" in rtcp
    # the track's recv() runs right after the previous frame's packets went out, with no await
    # in between: a report cannot slip out between aiortc's pair and the one set in recv()
    assert "data = await self.__track.recv()" in inspect.getsource(RTCRtpSender._next_encoded_frame)


async def test_the_report_clock_is_read_and_set() -> None:
    pc = client_pc()
    try:
        sender = pc.addTransceiver("audio", direction="sendonly").sender
        assert sender_hooks.last_sent_timestamp(sender) == 0
        sender_hooks.set_report_clock(sender, sender_hooks.ntp_of(1.5), 4800)
        assert sender_hooks.last_sent_timestamp(sender) == 4800
        assert sender._RTCRtpSender__ntp_timestamp == (2_208_988_801 << 32) + (1 << 31)  # type: ignore[attr-defined]
    finally:
        await pc.close()
