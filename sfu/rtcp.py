"""RTCP terminated per hop: the packets the SFU writes, and parsing of what it receives.

Each side of the SFU is its own RTP session (as in mediasoup): subscribers' NACKs are answered
from a per-subscriber cache, their PLI/FIR become one throttled request to the publisher, and
the SFU sends its own sender reports, receiver reports and REMB. Parsing reuses aiortc's RTCP
classes (RTCP is a few packets per second, not the hot path).
"""

from __future__ import annotations

import struct

from aiortc import rtp as aiortc_rtp

RTCP_SR = 200
RTCP_RR = 201
RTCP_RTPFB = 205
RTCP_PSFB = 206
FMT_NACK = 1
FMT_PLI = 1
FMT_FIR = 4
FMT_REMB = 15

AnyRtcpPacket = aiortc_rtp.AnyRtcpPacket
RtcpSrPacket = aiortc_rtp.RtcpSrPacket
RtcpRrPacket = aiortc_rtp.RtcpRrPacket
RtcpRtpfbPacket = aiortc_rtp.RtcpRtpfbPacket
RtcpPsfbPacket = aiortc_rtp.RtcpPsfbPacket


def parse(data: bytes) -> list[AnyRtcpPacket]:
    """Parse a compound RTCP packet; malformed input yields what parsed before the fault."""
    try:
        return aiortc_rtp.RtcpPacket.parse(data)
    except ValueError:
        return []


def remb_bitrate(packet: RtcpPsfbPacket) -> tuple[int, list[int]] | None:
    try:
        return aiortc_rtp.unpack_remb_fci(packet.fci)
    except (ValueError, struct.error):  # struct's: more SSRCs counted than the packet holds
        return None


def _header(count: int, packet_type: int, length_bytes: int) -> bytes:
    return struct.pack("!BBH", 0x80 | count, packet_type, length_bytes // 4)


def nack(sender_ssrc: int, media_ssrc: int, sequence_numbers: list[int]) -> bytes:
    """Generic NACK (RFC 4585 6.2.1), wrap-around safe: one FCI per run of 17 numbers."""
    fci = b""
    ordered = sorted(sequence_numbers, key=lambda s: (s - sequence_numbers[0]) & 0xFFFF)
    pid, blp = ordered[0], 0
    for seq in ordered[1:]:
        d = ((seq - pid) & 0xFFFF) - 1
        if 0 <= d < 16:
            blp |= 1 << d
        else:
            fci += struct.pack("!HH", pid, blp)
            pid, blp = seq, 0
    fci += struct.pack("!HH", pid, blp)
    body = struct.pack("!II", sender_ssrc, media_ssrc) + fci
    return _header(FMT_NACK, RTCP_RTPFB, len(body)) + body


def pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    return _header(FMT_PLI, RTCP_PSFB, 8) + struct.pack("!II", sender_ssrc, media_ssrc)


def remb(sender_ssrc: int, bitrate: int, ssrcs: list[int]) -> bytes:
    body = struct.pack("!II", sender_ssrc, 0) + aiortc_rtp.pack_remb_fci(bitrate, ssrcs)
    return _header(FMT_REMB, RTCP_PSFB, len(body)) + body


def receiver_report(
    sender_ssrc: int, media_ssrc: int, fraction_lost: int, packets_lost: int,
    highest_sequence: int, jitter: int, lsr: int, dlsr: int,
) -> bytes:
    lost = max(-0x800000, min(packets_lost, 0x7FFFFF)) & 0xFFFFFF
    block = struct.pack(
        "!IIIIII", media_ssrc, (fraction_lost << 24) | lost, highest_sequence & 0xFFFFFFFF,
        jitter & 0xFFFFFFFF, lsr & 0xFFFFFFFF, dlsr & 0xFFFFFFFF,
    )
    body = struct.pack("!I", sender_ssrc) + block
    return _header(1, RTCP_RR, len(body)) + body


def sender_report(ssrc: int, ntp: int, rtp_ts: int, packets: int, octets: int) -> bytes:
    body = struct.pack(
        "!IQIII", ssrc, ntp, rtp_ts & 0xFFFFFFFF, packets & 0xFFFFFFFF, octets & 0xFFFFFFFF
    )
    return _header(0, RTCP_SR, len(body)) + body
