"""RTCP terminated per hop: the packets the SFU writes, and reading what it receives.

Each side of the SFU is its own RTP session (as in mediasoup): subscribers' NACKs are answered
from a per-subscriber cache, their PLI/FIR become one throttled request to the publisher, and
the SFU sends its own sender reports, receiver reports and REMB. What it receives is read in
place (``walk`` and the readers below): a compound packet arrives every few hundred ms per
stream and only a handful of its fields are used, so no object is built per packet.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from aiortc import rtp as aiortc_rtp

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_RTPFB = 205
RTCP_PSFB = 206
FMT_NACK = 1
FMT_PLI = 1
FMT_FIR = 4
FMT_REMB = 15

_HEADER = struct.Struct("!BBH")
SENDER = struct.Struct("!IQI")
"""At an SR's payload: the sender's SSRC, NTP timestamp, RTP timestamp."""
REPORT_BLOCK = struct.Struct("!II4xIII")
"""A report block (24 bytes): SSRC, fraction lost << 24 | cumulative lost (24-bit signed),
(extended highest sequence skipped), jitter, LSR, DLSR."""
MEDIA_SSRC = struct.Struct("!4xI")
"""At a feedback message's payload: the media source SSRC (after the sender's)."""
WORD = struct.Struct("!I")


def walk(data: bytes) -> list[tuple[int, int, int, int]]:
    """The SR, RR, RTPFB and PSFB packets of a compound RTCP packet, in order, each as (packet
    type, count or FMT, payload start, payload end less padding); other types are passed over.

    A compound that aiortc's RtcpPacket.parse rejects is dropped whole, as before (it raised a
    ValueError and nothing of it was handled; RFC 3550 A.2 discards an invalid compound too): a
    header or packet cut short, version not 2, padding of 0 or more than the payload, an SR or
    RR whose length is not its report count's, a feedback message under 8 bytes (RTPFB: or not
    whole words), a BYE shorter than its count. An SDES is passed over unread, its items
    unchecked: nothing here uses them, and aiortc's reading of them refused valid RFC 3550 chunks
    (it takes END for a 2-byte item and skips no padding between chunks), dropping the RR and
    REMB beside them."""
    packets: list[tuple[int, int, int, int]] = []
    size = len(data)
    pos = 0
    while pos < size:
        if size < pos + 4:
            return []
        b0, packet_type, length = _HEADER.unpack_from(data, pos)
        if b0 >> 6 != 2:
            return []
        start = pos + 4
        pos = end = start + 4 * length
        if size < end:
            return []
        if b0 & 0x20:
            padding = data[end - 1] if end > start else 0
            if not padding or padding > end - start:
                return []
            end -= padding
        count = b0 & 0x1F
        if packet_type == RTCP_SR:
            if end - start != 24 + 24 * count:
                return []
        elif packet_type == RTCP_RR:
            if end - start != 4 + 24 * count:
                return []
        elif packet_type == RTCP_RTPFB:
            if end - start < 8 or (end - start) % 4:
                return []
        elif packet_type == RTCP_PSFB:
            if end - start < 8:
                return []
        elif packet_type == RTCP_BYE:
            if end - start < 4 * count:
                return []
            continue
        else:
            continue
        packets.append((packet_type, count, start, end))
    return packets


def read_nack(data: bytes, pos: int, end: int, limit: int) -> list[int]:
    """The first ``limit`` sequence numbers a generic NACK's FCIs (from ``pos``) ask for, in
    order, each PID then its BLP's, modulo 65536 (aiortc's parser gave PID + n unwrapped)."""
    lost: list[int] = []
    for at in range(pos, end, 4):
        word = WORD.unpack_from(data, at)[0]
        pid = word >> 16
        lost.append(pid)
        blp = word & 0xFFFF
        while blp:
            low = blp & -blp
            lost.append((pid + low.bit_length()) & 0xFFFF)
            blp ^= low
        if len(lost) >= limit:
            return lost[:limit]
    return lost


def read_remb(data: bytes, pos: int, end: int) -> tuple[int, list[int]] | None:
    """A REMB's (FCI from ``pos``) bitrate and SSRCs; None if it is no REMB, or counts more
    SSRCs than it holds."""
    if end - pos < 8 or not data.startswith(b"REMB", pos):
        return None
    word = WORD.unpack_from(data, pos + 4)[0]  # SSRC count (8 bits), exponent (6), mantissa (18)
    count = word >> 24
    if pos + 8 + 4 * count > end:
        return None
    return (word & 0x3FFFF) << (word >> 18 & 0x3F), list(struct.unpack_from(f"!{count}I", data, pos + 8))


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


# The reports of one pass, by the sender of the connection they go on: each connection's in one
# compound packet (one SRTCP protection and one datagram, not one per stream; RFC 3550 6.1).
Compounds = dict[Callable[[bytes], bool], bytes]
COMPOUND_MAX = 1200  # bytes: one datagram with SRTCP's trailer, within any path's MTU


def join(compounds: Compounds, send: Callable[[bytes], bool], packet: bytes) -> None:
    """Add ``packet`` to the compound that ``send`` will carry (send_all); one that would grow
    past COMPOUND_MAX leaves first."""
    queued = compounds.get(send)
    if queued is None:
        compounds[send] = packet
    elif len(queued) + len(packet) > COMPOUND_MAX:
        send(queued)
        compounds[send] = packet
    else:
        compounds[send] = queued + packet


def send_all(compounds: Compounds) -> None:
    for send, packet in compounds.items():
        send(packet)


def sender_report(ssrc: int, ntp: int, rtp_ts: int, packets: int, octets: int) -> bytes:
    body = struct.pack(
        "!IQIII", ssrc, ntp, rtp_ts & 0xFFFFFFFF, packets & 0xFFFFFFFF, octets & 0xFFFFFFFF
    )
    return _header(0, RTCP_SR, len(body)) + body
