"""RTP payloads back into the encoded frames a container stores: VP8 (RFC 7741), H.264 (RFC 6184,
packetization mode 1) and Opus (RFC 7587).

A depacketizer sees the packets of one frame in sequence order and returns the bytes each adds
to the frame; nothing is decoded. It also says which frames are keyframes and reads what a
container header needs from them (picture size; H.264's SPS and PPS).
"""

from __future__ import annotations

from dataclasses import dataclass

START_CODE = b"\x00\x00\x00\x01"
H264_IDR, H264_SPS, H264_PPS, H264_STAP_A, H264_FU_A = 5, 7, 8, 24, 28


class MalformedPayload(ValueError):
    """A payload that does not follow its RTP format: the frame it belongs to is dropped."""


@dataclass
class Depacketizer:
    """Opus: a packet is a frame, its payload the frame as is."""

    kind: str = "audio"

    def frame_start(self, payload: bytes) -> bool:
        """True when ``payload`` begins a frame (for formats that say so; Opus always does)."""
        return True

    def unwrap(self, payload: bytes) -> bytes:
        return payload

    def is_keyframe(self, frame: bytes) -> bool:
        return True

    def picture_size(self, frame: bytes) -> tuple[int, int] | None:
        return None

    def with_parameters(self, keyframe: bytes) -> bytes:
        """A keyframe with whatever a decoder needs to start on it."""
        return keyframe


@dataclass
class Vp8Depacketizer(Depacketizer):
    kind: str = "video"

    def frame_start(self, payload: bytes) -> bool:
        return len(payload) > 0 and bool(payload[0] & 0x10) and not payload[0] & 0x07

    def unwrap(self, payload: bytes) -> bytes:
        n = len(payload)
        if n < 1:
            raise MalformedPayload("empty VP8 payload")
        pos = 1
        if payload[0] & 0x80:  # X: an extension byte follows
            if n < 2:
                raise MalformedPayload("truncated VP8 payload descriptor")
            ext = payload[1]
            pos = 2
            if ext & 0x80:  # I: picture id, one byte or (M) two
                if pos >= n:
                    raise MalformedPayload("truncated VP8 picture id")
                pos += 2 if payload[pos] & 0x80 else 1
            if ext & 0x40:  # L: TL0PICIDX
                pos += 1
            if ext & 0x30:  # T or K: TID/Y/KEYIDX
                pos += 1
        if pos > n:
            raise MalformedPayload("truncated VP8 payload descriptor")
        return payload[pos:]

    def is_keyframe(self, frame: bytes) -> bool:
        return len(frame) >= 10 and not frame[0] & 0x01

    def picture_size(self, frame: bytes) -> tuple[int, int] | None:
        # a keyframe: 3-byte frame tag, start code 9d 01 2a, then 14-bit width and height
        if not self.is_keyframe(frame) or frame[3:6] != b"\x9d\x01\x2a":
            return None
        return (frame[6] | frame[7] << 8) & 0x3FFF, (frame[8] | frame[9] << 8) & 0x3FFF


@dataclass
class H264Depacketizer(Depacketizer):
    """NAL units to Annex B (start codes), as Matroska's muxer takes them along with the SPS and
    PPS as extradata. Remembers the newest SPS and PPS it saw."""

    kind: str = "video"
    sps: bytes = b""
    pps: bytes = b""

    def frame_start(self, payload: bytes) -> bool:
        # Any NAL unit but the middle of a fragment can begin an access unit; the frame
        # boundary is the RTP timestamp and marker bit.
        return len(payload) > 1 and not (payload[0] & 0x1F == H264_FU_A and not payload[1] & 0x80)

    def unwrap(self, payload: bytes) -> bytes:
        if len(payload) < 1:
            raise MalformedPayload("empty H.264 payload")
        nal_type = payload[0] & 0x1F
        if 1 <= nal_type <= 23:
            self._remember(payload)
            return START_CODE + payload
        if nal_type == H264_STAP_A:
            out = bytearray()
            pos, n = 1, len(payload)
            while pos + 2 <= n:
                size = payload[pos] << 8 | payload[pos + 1]
                pos += 2
                if size == 0 or pos + size > n:
                    raise MalformedPayload("STAP-A unit overruns its packet")
                unit = payload[pos : pos + size]
                self._remember(unit)
                out += START_CODE + unit
                pos += size
            return bytes(out)
        if nal_type == H264_FU_A:
            if len(payload) < 2:
                raise MalformedPayload("truncated FU-A header")
            header = payload[1]
            if header & 0x80:  # start of a fragmented unit: rebuild its NAL header
                return START_CODE + bytes([payload[0] & 0xE0 | header & 0x1F]) + payload[2:]
            return payload[2:]
        raise MalformedPayload(f"unsupported H.264 NAL unit type {nal_type}")

    def _remember(self, unit: bytes) -> None:
        nal_type = unit[0] & 0x1F
        if nal_type == H264_SPS:
            self.sps = bytes(unit)
        elif nal_type == H264_PPS:
            self.pps = bytes(unit)

    def is_keyframe(self, frame: bytes) -> bool:
        return any(unit[0] & 0x1F == H264_IDR for unit in _annexb_units(frame) if unit)

    def picture_size(self, frame: bytes) -> tuple[int, int] | None:
        return sps_picture_size(self.sps) if self.sps and self.is_keyframe(frame) else None

    def with_parameters(self, keyframe: bytes) -> bytes:
        """An IDR without its SPS and PPS (sent earlier, out of band of this frame) gets the
        newest ones in front: a file, or a player seeking, starts at any keyframe."""
        if not self.sps or not self.pps or any(
                unit and unit[0] & 0x1F == H264_SPS for unit in _annexb_units(keyframe)):
            return keyframe
        return START_CODE + self.sps + START_CODE + self.pps + keyframe


def _annexb_units(frame: bytes) -> list[bytes]:
    return frame.split(START_CODE)


def depacketizer_for(codec_name: str) -> Depacketizer:
    if codec_name == "vp8":
        return Vp8Depacketizer()
    if codec_name == "h264":
        return H264Depacketizer()
    if codec_name == "opus":
        return Depacketizer()
    raise ValueError(f"no depacketizer for {codec_name}")


class _Bits:
    """Exp-Golomb reader for the few SPS fields that give the picture size."""

    def __init__(self, data: bytes) -> None:
        # emulation prevention: 00 00 03 -> 00 00
        self.data = data.replace(b"\x00\x00\x03", b"\x00\x00")
        self.pos = 0

    def bit(self) -> int:
        byte = self.pos >> 3
        if byte >= len(self.data):
            raise MalformedPayload("SPS ends early")
        value = self.data[byte] >> (7 - (self.pos & 7)) & 1
        self.pos += 1
        return value

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = value << 1 | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise MalformedPayload("bad Exp-Golomb code in SPS")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)


def sps_picture_size(sps: bytes) -> tuple[int, int]:
    """Width and height (after cropping) from an H.264 sequence parameter set (ITU-T H.264
    7.3.2.1.1); raises MalformedPayload on one it cannot read."""
    bits = _Bits(sps[1:])  # past the NAL header
    profile = bits.bits(8)
    bits.bits(16)  # constraint flags, level
    bits.ue()  # seq_parameter_set_id
    chroma_format = 1
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma_format = bits.ue()
        if chroma_format == 3:
            bits.bit()  # separate_colour_plane_flag
        bits.ue()  # bit_depth_luma
        bits.ue()  # bit_depth_chroma
        bits.bit()  # qpprime_y_zero_transform_bypass
        if bits.bit():  # seq_scaling_matrix_present
            for index in range(8 if chroma_format != 3 else 12):
                if bits.bit():
                    _skip_scaling_list(bits, 16 if index < 6 else 64)
    bits.ue()  # log2_max_frame_num
    order_type = bits.ue()
    if order_type == 0:
        bits.ue()
    elif order_type == 1:
        bits.bit()
        bits.se()
        bits.se()
        for _ in range(bits.ue()):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.bit()  # gaps_in_frame_num_allowed
    width_mbs = bits.ue() + 1
    height_units = bits.ue() + 1
    frame_mbs_only = bits.bit()
    if not frame_mbs_only:
        bits.bit()  # mb_adaptive_frame_field
    bits.bit()  # direct_8x8_inference
    width = width_mbs * 16
    height = height_units * 16 * (2 - frame_mbs_only)
    if bits.bit():  # frame_cropping
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        crop_x = 2 if chroma_format in (1, 2) else 1
        crop_y = (2 if chroma_format == 1 else 1) * (2 - frame_mbs_only)
        width -= (left + right) * crop_x
        height -= (top + bottom) * crop_y
    return width, height


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = following = 8
    for _ in range(size):
        if following:
            following = (last + bits.se() + 256) % 256
        last = following or last
