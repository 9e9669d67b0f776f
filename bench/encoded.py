"""Media encoded once and looped by every bench publisher, so no publisher encodes per run.

Video: a 640x480 30 fps test pattern (a moving gradient with the frame number drawn in big digits)
encoded with libvpx at ~500 kbps, keyframe only at the start of the loop, plus a keyframe
encoding of every frame: when the SFU asks for a keyframe (PLI/FIR) the publisher sends the
keyframe version of the current frame and carries on with the delta stream, as a live encoder
would. (A decoder would drift slightly until the loop restarts; bench subscribers never decode.)
Audio: a 440 Hz tone as 20 ms Opus packets. Both are cached on disk keyed by their parameters.
"""

from __future__ import annotations

import fractions
import hashlib
import pickle
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import av
import numpy as np

VIDEO_CLOCK = 90_000
AUDIO_CLOCK = 48_000
MAX_PAYLOAD = 1200  # VP8 bytes per RTP packet, leaving room for SRTP, headers and the descriptor

# 3x5 bitmaps of the digits 0-9, one string of 15 pixels each, row by row.
_DIGITS = [
    "111101101101111", "010110010010111", "111001111100111", "111001111001111", "101101111001001",
    "111100111001111", "111100111101111", "111001001001001", "111101111101111", "111101111001111",
]


@dataclass(frozen=True)
class EncodedVideo:
    fps: int
    width: int
    height: int
    bitrate: int
    # Per frame of the loop, the VP8 frame split into RTP-sized chunks (no payload descriptor).
    delta: list[list[bytes]]
    keyframes: list[list[bytes]]

    @property
    def mean_bitrate(self) -> float:
        total = sum(len(chunk) for frame in self.delta for chunk in frame)
        return total * 8 * self.fps / len(self.delta)


@dataclass(frozen=True)
class EncodedAudio:
    frame_ms: int
    packets: list[bytes]


def test_pattern(index: int, width: int, height: int) -> np.ndarray:
    """An RGB frame: a gradient moving with time and the frame number in white digits."""
    x = np.arange(width, dtype=np.uint16)
    y = np.arange(height, dtype=np.uint16)[:, None]
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = (x + 4 * index) % 256
    image[..., 1] = (y + 2 * index) % 256
    image[..., 2] = ((x[None, :] + y) // 2 + 3 * index) % 256
    scale = 12
    for position, digit in enumerate(f"{index:05d}"):
        bitmap = np.array([int(b) for b in _DIGITS[int(digit)]], dtype=bool).reshape(5, 3)
        block = np.kron(bitmap, np.ones((scale, scale), dtype=bool))
        top, left = 40, 40 + position * 4 * scale
        region = image[top:top + 5 * scale, left:left + 3 * scale]
        region[block] = 255
        region[~block] = 0
    return image


def _chunks(data: bytes) -> list[bytes]:
    count = -(-len(data) // MAX_PAYLOAD)
    size = -(-len(data) // count)
    return [data[i:i + size] for i in range(0, len(data), size)]


def _vp8_encoder(width: int, height: int, fps: int, bitrate: int, gop: int) -> Any:
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, fps)
    codec.framerate = fractions.Fraction(fps, 1)
    codec.bit_rate = bitrate
    codec.gop_size = gop
    # What a WebRTC sender does: realtime, no lookahead, CBR.
    codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0",
                     "end-usage": "cbr", "error-resilient": "1"}
    return codec


def _encode(codec: Any, frames: list[av.VideoFrame]) -> list[bytes]:
    out: list[bytes] = []
    for frame in frames:
        packets = codec.encode(frame)
        assert len(packets) == 1, "libvpx with lag-in-frames=0 yields one packet per frame"
        out.append(bytes(packets[0]))
    return out


def encode_video(seconds: int = 10, fps: int = 30, width: int = 640, height: int = 480,
                 bitrate: int = 500_000) -> EncodedVideo:
    count = seconds * fps
    frames = []
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(test_pattern(i, width, height), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = i
        frame.time_base = fractions.Fraction(1, fps)
        frames.append(frame)
    delta = _encode(_vp8_encoder(width, height, fps, bitrate, gop=count + 1), frames)
    # Keyframes are several times a delta frame, as from a real encoder asked for one.
    keys = _encode(_vp8_encoder(width, height, fps, bitrate * 6, gop=1), frames)
    assert not delta[0][0] & 1 and all(not k[0] & 1 for k in keys), "keyframes must be intra"
    return EncodedVideo(fps, width, height, bitrate, [_chunks(d) for d in delta], [_chunks(k) for k in keys])


def encode_audio(seconds: int = 5, frame_ms: int = 20) -> EncodedAudio:
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = AUDIO_CLOCK
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = 32_000
    samples = AUDIO_CLOCK * frame_ms // 1000
    packets: list[bytes] = []
    t = np.arange(AUDIO_CLOCK * seconds) / AUDIO_CLOCK
    tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    for i in range(0, len(tone), samples):
        chunk = np.repeat(tone[i:i + samples], 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
        frame.sample_rate = AUDIO_CLOCK
        frame.pts = i
        packets.extend(bytes(p) for p in codec.encode(frame))
    return EncodedAudio(frame_ms, packets)


T = TypeVar("T")


def cached(name: str, build: Callable[..., T], **params: Any) -> T:
    """Build once per parameters and keep the result in the temp dir (a few MB)."""
    key = hashlib.sha256(repr(sorted(params.items())).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"expertcall-bench-{name}-{key}.pickle"
    if path.exists():
        with path.open("rb") as f:
            return pickle.load(f)  # type: ignore[no-any-return]
    value = build(**params)
    tmp = path.with_suffix(f".{key}.tmp")
    with tmp.open("wb") as f:
        pickle.dump(value, f)
    tmp.replace(path)
    return value


def video(**params: Any) -> EncodedVideo:
    return cached("vp8", encode_video, **params)


def audio(**params: Any) -> EncodedAudio:
    return cached("opus", encode_audio, **params)
