"""RTP payloads back into frames: VP8 descriptors stripped, H.264 units in Annex B."""

from __future__ import annotations

import fractions

import av
import pytest

from sfu.depacketizer import (
    START_CODE,
    H264Depacketizer,
    MalformedPayload,
    Vp8Depacketizer,
    depacketizer_for,
    sps_picture_size,
)

# A VP8 keyframe's first bytes: frame tag (P=0), start code, 640x480
VP8_KEY = bytes([0x50, 0x42, 0x00, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0xE0, 0x01]) + b"rest"


def x264_sps(width: int, height: int, profile: str) -> bytes:
    """The SPS libx264 writes for a picture size (encoding here is the test's, not the SFU's)."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = fractions.Fraction(1, 30)
    encoder.options = {"profile": profile, "tune": "zerolatency"}
    frame = av.VideoFrame(width, height, "yuv420p")
    frame.pts = 0
    data = b"".join(bytes(p) for p in encoder.encode(frame) + encoder.encode(None))
    return next(u for u in data.split(START_CODE) if u and u[0] & 0x1F == 7)


SPS_640 = x264_sps(640, 480, "baseline")


def test_vp8_descriptor_is_stripped_and_the_keyframe_read() -> None:
    vp8 = Vp8Depacketizer()
    # X=1, S=1; I=1 with a two-byte picture id, L=1, T=1
    payload = bytes([0x90, 0xE0, 0x80, 0x01, 0x05, 0x20]) + VP8_KEY
    assert vp8.frame_start(payload)
    frame = vp8.unwrap(payload)
    assert frame == VP8_KEY
    assert vp8.is_keyframe(frame) and vp8.picture_size(frame) == (640, 480)
    assert not vp8.frame_start(bytes([0x00]) + b"middle")
    assert not vp8.is_keyframe(bytes([0x51]) + VP8_KEY[1:])
    with pytest.raises(MalformedPayload):
        vp8.unwrap(bytes([0x80]))


def test_h264_single_stap_a_and_fu_a_become_annex_b() -> None:
    h264 = H264Depacketizer()
    pps = bytes([0x68, 0xCE, 0x38, 0x80])
    stap = bytes([0x18]) + len(SPS_640).to_bytes(2, "big") + SPS_640 + len(pps).to_bytes(2, "big") + pps
    assert h264.unwrap(stap) == START_CODE + SPS_640 + START_CODE + pps
    idr_start = h264.unwrap(bytes([0x7C, 0x85, 1, 2]))  # FU-A, S=1, type 5
    idr_end = h264.unwrap(bytes([0x7C, 0x45, 3]))
    frame = idr_start + idr_end
    assert frame == START_CODE + bytes([0x65, 1, 2, 3])
    assert h264.is_keyframe(frame)
    assert h264.picture_size(frame) == (640, 480)
    # an IDR that came without its SPS/PPS gets them in front; one that has them is left alone
    assert h264.with_parameters(frame) == START_CODE + SPS_640 + START_CODE + pps + frame
    whole = START_CODE + SPS_640 + START_CODE + pps + frame
    assert h264.with_parameters(whole) == whole
    assert not h264.frame_start(bytes([0x7C, 0x05, 0]))  # the middle of a fragment
    assert h264.unwrap(bytes([0x41, 9])) == START_CODE + bytes([0x41, 9])
    with pytest.raises(MalformedPayload):
        h264.unwrap(bytes([0x18, 0x00, 0x09, 0x67]))  # a STAP-A unit longer than the packet
    with pytest.raises(MalformedPayload):
        h264.unwrap(bytes([0x1D, 0x80]))  # FU-B: not in packetization mode 1


@pytest.mark.parametrize("width, height, profile", [
    (640, 480, "baseline"), (1280, 720, "high"), (1920, 1080, "high"), (176, 144, "main"),
])
def test_sps_sizes(width: int, height: int, profile: str) -> None:
    assert sps_picture_size(x264_sps(width, height, profile)) == (width, height)


def test_a_cut_off_sps_is_refused() -> None:
    with pytest.raises(MalformedPayload):
        sps_picture_size(SPS_640[:4])


def test_opus_packets_are_frames() -> None:
    opus = depacketizer_for("opus")
    assert opus.unwrap(b"\x78abc") == b"\x78abc" and opus.is_keyframe(b"\x78")
    with pytest.raises(ValueError):
        depacketizer_for("g711")
