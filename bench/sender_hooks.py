"""Every private reach of the bench's and tests' aiortc *clients* into ``RTCRtpSender``.

The SFU's own reaches are in ``sfu/aiortc_hooks.py``; these are the clients', which play a
publisher more exactly than aiortc does (pre-encoded media sent by hand, sender reports on the
capture clock). aiortc is pinned; ``tests/bench/test_sender_hooks.py`` says which of these an
upgrade broke.
"""

from __future__ import annotations

from aiortc import RTCRtpSender

NTP_UNIX = 2_208_988_800  # seconds from 1900 (NTP) to 1970 (Unix)


def ntp_of(unix_seconds: float) -> int:
    """A Unix time as a 64-bit NTP timestamp."""
    return int((unix_seconds + NTP_UNIX) * (1 << 32))


def last_sent_timestamp(sender: RTCRtpSender) -> int:
    """The RTP timestamp of the last packet ``sender`` sent (what its next report maps)."""
    return int(sender._RTCRtpSender__rtp_timestamp)  # type: ignore[attr-defined]


def set_report_clock(sender: RTCRtpSender, ntp: int, rtp_timestamp: int) -> None:
    """Make ``sender``'s next sender reports say that ``rtp_timestamp`` is NTP time ``ntp``
    (aiortc's own pair is when its last packet went out, and its RTP timestamp)."""
    sender._RTCRtpSender__ntp_timestamp = ntp  # type: ignore[attr-defined]
    sender._RTCRtpSender__rtp_timestamp = rtp_timestamp  # type: ignore[attr-defined]
