"""Every private reach of the bench's and tests' aiortc *clients* into aiortc and aioice.

The SFU's own reaches are in ``sfu/aiortc_hooks.py``; these are the clients', which play a
publisher more exactly than aiortc does (pre-encoded media sent by hand, sender reports on the
capture clock) and a subscriber more cheaply (packets counted, never decoded). aiortc is pinned;
``tests/bench/test_client_hooks.py`` says which of these an upgrade broke.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport

NTP_UNIX = 2_208_988_800  # seconds from 1900 (NTP) to 1970 (Unix)


def ntp_of(unix_seconds: float) -> int:
    """A Unix time as a 64-bit NTP timestamp."""
    return int((unix_seconds + NTP_UNIX) * (1 << 32))


# --- a publisher's sender ----------------------------------------------------------------------

def last_sent_timestamp(sender: RTCRtpSender) -> int:
    """The RTP timestamp of the last packet ``sender`` sent (what its next report maps)."""
    return int(sender._RTCRtpSender__rtp_timestamp)  # type: ignore[attr-defined]


def set_report_clock(sender: RTCRtpSender, ntp: int, rtp_timestamp: int) -> None:
    """Make ``sender``'s next sender reports say that ``rtp_timestamp`` is NTP time ``ntp``
    (aiortc's own pair is when its last packet went out, and its RTP timestamp)."""
    sender._RTCRtpSender__ntp_timestamp = ntp  # type: ignore[attr-defined]
    sender._RTCRtpSender__rtp_timestamp = rtp_timestamp  # type: ignore[attr-defined]


def count_sent(sender: RTCRtpSender, packets: int, octets: int, ntp: int, rtp_timestamp: int) -> None:
    """Packets we sent past ``sender`` (on its transport): counted in its sender reports, and
    the last one's timestamp sent at ``ntp``."""
    sender._RTCRtpSender__packet_count += packets  # type: ignore[attr-defined]
    sender._RTCRtpSender__octet_count += octets  # type: ignore[attr-defined]
    set_report_clock(sender, ntp, rtp_timestamp)


def header_extensions(sender: RTCRtpSender) -> Any:
    """The sender's negotiated header extension map (aiortc's HeaderExtensionsMap)."""
    return sender._RTCRtpSender__rtp_header_extensions_map  # type: ignore[attr-defined]


def extension_ids(extensions_map: Any) -> tuple[int, int]:
    """(mid, abs-send-time) one-byte extension ids in ``extensions_map``; 0 where not negotiated."""
    ids = extensions_map._HeaderExtensionsMap__ids
    return ids.mid or 0, ids.abs_send_time or 0


def sender_mid(sender: RTCRtpSender) -> str:
    """The mid the sender writes into its packets' mid extension."""
    return str(sender._RTCRtpSender__mid or "")  # type: ignore[attr-defined]


def replace_history(sender: RTCRtpSender, history: Any) -> None:
    """The packets ``sender`` answers NACKs from (a dict: sequence % RTP_HISTORY_SIZE -> packet)."""
    sender._RTCRtpSender__rtp_history = history  # type: ignore[attr-defined]


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """``callback`` instead of the encoder's forced keyframe, on PLI or FIR."""
    sender._send_keyframe = callback  # type: ignore[method-assign]


# --- a subscriber's receiver -------------------------------------------------------------------

def idle_receiver(receiver: RTCRtpReceiver) -> None:
    """RTCRtpReceiver.receive would start a decoder thread and an RTCP task: do neither."""

    async def receive(parameters: Any) -> None:
        return None

    receiver.receive = receive  # type: ignore[method-assign]


def take_rtp(transport: RTCDtlsTransport, on_rtp: Callable[[bytes, int], Awaitable[None]]) -> None:
    """Decrypted RTP to ``on_rtp(data, arrival_time_ms)`` (RTCDtlsTransport._recv_next awaits
    ``_handle_rtp_data``); RTCP dropped: SR/SDES from the sender are of no use to a counter."""

    async def ignore_rtcp(data: bytes) -> None:
        return None

    transport._handle_rtp_data = on_rtp  # type: ignore[method-assign,assignment]
    transport._handle_rtcp_data = ignore_rtcp  # type: ignore[method-assign]


def socket_protocols(transport: RTCDtlsTransport) -> list[Any]:
    """The asyncio datagram protocols of the transport's ICE connection (aioice StunProtocol)."""
    return list(transport.transport._connection._protocols)


def rx_srtp(transport: RTCDtlsTransport) -> Any:
    """The transport's inbound SRTP session once DTLS keyed it, else None."""
    return transport._rx_srtp
