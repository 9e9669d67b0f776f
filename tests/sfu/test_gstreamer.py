"""Interop with a sender that is neither Chromium nor aiortc: stock GStreamer webrtcbin (Debian's
gstreamer1.0-plugins-bad and -nice, installed by scripts/test) publishes over WHIP and watches
over WHEP, VP8 + Opus and H.264 + Opus, on 127.0.0.1. The viewer joins first.

webrtcbin brings what broke it before: an RSA DTLS certificate (the SFU, as DTLS client, must
offer RSA suites), 1,400-byte RTP packets (beyond what the SFU forwarded), and bundle-only audio.
It runs under Debian's /usr/bin/python3 (the venv has no gi): tests/sfu/gst_peer.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from signalling.app.factory import create_app
from signalling.calls.node import MEDIA_PLANE
from signalling.calls.whip import WHIP_RESOURCES, WhipResources
from signalling.core.settings import Settings

from ..signalling.calls.test_whip import bearer, loopback_ice, settings  # noqa: F401 (fixtures)

GST_PYTHON = "/usr/bin/python3"
PEER = str(Path(__file__).with_name("gst_peer.py"))


async def _peer(mode: str, endpoint: str, token: str, codec: str, seconds: float) -> Any:
    return await asyncio.create_subprocess_exec(
        GST_PYTHON, PEER, mode, endpoint, token, codec, str(seconds),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _result(process: Any) -> dict[str, Any]:
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    lines = stdout.decode().strip().splitlines()
    assert process.returncode == 0 and lines, stderr.decode()[-2000:]
    return json.loads(lines[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_webrtcbin_publishes_over_whip_to_a_webrtcbin_viewer_over_whep(
        codec: str, aiohttp_client: Any, settings: Settings) -> None:  # noqa: F811
    client: TestClient = await aiohttp_client(create_app(settings))
    admin = bearer(settings)
    created = await client.post("/api/broadcasts", headers=admin)
    session = (await created.json())["session_id"]
    base = f"http://127.0.0.1:{client.server.port}"
    token = admin["Authorization"].removeprefix("Bearer ")
    resources: WhipResources = client.app[WHIP_RESOURCES]

    viewer = await _peer("view", f"{base}/whep/{session}", token, codec, 16)
    for _ in range(200):  # the viewer is in the session before the publisher
        if len(resources) == 1:
            break
        await asyncio.sleep(0.05)
    assert len(resources) == 1
    publisher = await _peer("publish", f"{base}/whip/{session}", token, codec, 12)
    published, watched = await asyncio.gather(_result(publisher), _result(viewer))

    assert published["status"] == 201 and watched["status"] == 201, (published, watched)
    assert "a=bundle-only" in published["offer"]  # webrtcbin's audio, as it offers it
    for answer in (published["answer"], watched["answer"]):
        assert answer.count("a=rtpmap:") - answer.count(" rtx/") == 2  # one codec per m-line
    assert published["connection_state"] == "connected", published
    # 30 fps for about ten seconds: most of it must be decoded, audio too
    assert watched["video_frames"] >= 150, watched
    assert watched["audio_buffers"] >= 250, watched
    tracks = {(t["kind"], t["direction"]): t
              for t in client.app[MEDIA_PLANE].rooms[session].stats()}
    assert tracks[("video", "inbound")]["packets_oversized"] == 0
