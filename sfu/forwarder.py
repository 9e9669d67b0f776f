"""The per-packet path: read just enough of an RTP header, spot keyframes, rewrite for a subscriber.

Everything here runs once per packet (or once per packet per subscriber), so it works on raw
bytes with precompiled ``struct`` formats: no RtpPacket objects, no logging, no awaits.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

import pylibsrtp

RTP_FIXED = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence number, timestamp, SSRC
unpack_fixed = RTP_FIXED.unpack_from
ONE_BYTE_PROFILE = 0xBEDE
NTP_UNIX_OFFSET_MS = 2_208_988_800_000  # from 1900-01-01 to 1970-01-01
# The largest payload the SFU forwards: whatever one RTP packet in a 1,500-byte datagram can
# carry (a publisher's MTU is at most Ethernet's; nothing is re-packetized). What we send is
# larger by our own header (at most 12 + 4 + abs-send-time 4 + a 16-byte mid element 17,
# padded: 40), the 2-byte original sequence number of an RTX retransmission and the SRTP
# trailer, so the buffer we protect in (aiortc_hooks.fast_protect) is sized for all of it.
MAX_FORWARDED_PAYLOAD = 1500 - 12
MAX_CONSUMER_HEADER = 40
SRTP_BUFFER = MAX_CONSUMER_HEADER + 2 + MAX_FORWARDED_PAYLOAD + pylibsrtp.SRTP_MAX_TRAILER_LEN
MAX_PROTECTED_RTP = SRTP_BUFFER - pylibsrtp.SRTP_MAX_TRAILER_LEN

URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
URI_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


def current_ms() -> int:
    """aiortc.clock.current_ms() (milliseconds since the NTP epoch, the clock aiortc stamps
    packet arrivals with) without building datetime objects: every packet is stamped."""
    return ms_of(time.time())


def ms_of(unix: float) -> int:
    """current_ms() at ``unix`` (a time.time() reading)."""
    return int(unix * 1000) + NTP_UNIX_OFFSET_MS


def current_ntp() -> int:
    """aiortc.clock.current_ntp_time() (64-bit NTP: seconds since 1900, 32 bits of fraction)
    without building datetime objects: sender reports and RTT take it for every stream."""
    return ntp_of(time.time())


def ntp_of(unix: float) -> int:
    """current_ntp() at ``unix`` (a time.time() reading)."""
    seconds, fraction = divmod(unix, 1.0)
    return (int(seconds) + NTP_UNIX_OFFSET_MS // 1000) << 32 | int(fraction * 4294967296)


def payload_offset(data: bytes) -> int:
    """Offset of the payload in an RTP packet, or -1 when the header is truncated."""
    n = len(data)
    if n < 12:
        return -1
    offset = 12 + (data[0] & 0x0F) * 4
    if data[0] & 0x10:
        if offset + 4 > n:
            return -1
        offset += 4 + ((data[offset + 2] << 8) | data[offset + 3]) * 4
    return offset if offset <= n else -1


def find_extension(data: bytes, ext_id: int) -> bytes | None:
    """The value of one-byte header extension ``ext_id`` (RFC 8285), or None."""
    if not data[0] & 0x10 or not ext_id:
        return None
    start = 12 + (data[0] & 0x0F) * 4
    if (data[start] << 8 | data[start + 1]) != ONE_BYTE_PROFILE:
        return None
    pos = start + 4
    end = pos + ((data[start + 2] << 8) | data[start + 3]) * 4
    while pos < end:
        head = data[pos]
        if head == 0:
            pos += 1
            continue
        length = (head & 0x0F) + 1
        if head >> 4 == ext_id:
            return data[pos + 1 : pos + 1 + length]
        if head >> 4 == 15:
            return None
        pos += 1 + length
    return None


def vp8_keyframe_start(payload: bytes) -> bool:
    """True for the first packet of a VP8 keyframe (RFC 7741 payload descriptor)."""
    n = len(payload)
    if n < 2 or not payload[0] & 0x10 or payload[0] & 0x07:  # S=1 and partition 0
        return False
    pos = 1
    if payload[0] & 0x80:  # X: extension byte
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if pos >= n:
                return False
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: TID/KEYIDX
            pos += 1
    return pos < n and not payload[pos] & 0x01  # P bit 0 = keyframe


def h264_keyframe_start(payload: bytes) -> bool:
    """True for a packet that starts an IDR picture or carries SPS (RFC 6184)."""
    if not payload:
        return False
    nal = payload[0] & 0x1F
    if nal in (5, 7):
        return True
    if nal == 24:  # STAP-A: 16-bit size, then the NAL unit
        pos = 1
        while pos + 2 < len(payload):
            size = (payload[pos] << 8) | payload[pos + 1]
            if payload[pos + 2] & 0x1F in (5, 7):
                return True
            pos += 2 + size
        return False
    if nal == 28 and len(payload) > 1:  # FU-A: start bit and the original NAL type
        return bool(payload[1] & 0x80) and payload[1] & 0x1F in (5, 7)
    return False


def audio_keyframe_start(payload: bytes) -> bool:
    return True


KEYFRAME_DETECTORS = {
    "vp8": vp8_keyframe_start,
    "h264": h264_keyframe_start,
    "opus": audio_keyframe_start,
    "g722": audio_keyframe_start,
    "pcmu": audio_keyframe_start,
    "pcma": audio_keyframe_start,
}


@dataclass(frozen=True)
class ExtensionLayout:
    """The header extensions one subscriber's stream carries, with that connection's ids.

    The SFU writes its own block rather than copying the publisher's: ids differ per connection,
    the mid is the subscriber's, abs-send-time is the SFU's, and the rest (the publisher's
    transport-wide sequence numbers, say) mean nothing on another hop.
    """

    mid_id: int = 0
    mid: str = ""
    abs_send_time_id: int = 0
    audio_level_id: int = 0

    def header(self) -> tuple[struct.Struct, int, bytes, int]:
        """(format, dynamic word prefix, static tail, extension length in words).

        The block is [one dynamic 32-bit word (abs-send-time) or 16-bit word (audio level)]
        [mid element][padding]; the packer only fills in the dynamic word per packet."""
        tail = b""
        if self.mid_id and self.mid:
            mid = self.mid.encode()
            tail = bytes([(self.mid_id << 4) | (len(mid) - 1)]) + mid
        if self.abs_send_time_id:
            dyn_fmt, prefix, dyn_len = "I", (self.abs_send_time_id << 28) | (2 << 24), 4
        elif self.audio_level_id:
            dyn_fmt, prefix, dyn_len = "H", (self.audio_level_id << 12), 2
        else:
            dyn_fmt, prefix, dyn_len = "", 0, 0
        body = dyn_len + len(tail)
        tail += b"\x00" * (-body % 4)
        words = (body + 3) // 4
        if not words:
            return struct.Struct("!BBHII"), 0, b"", 0
        return struct.Struct(f"!BBHIIHH{dyn_fmt}{len(tail)}s"), prefix, tail, words
