"""Recording from the web demo in headless Chromium: one side asks, the other allows, both see the
REC indicator, either stops; the files hold what the browsers' cameras showed.

Chromium's fake camera plays a Y4M file of counter frames (tests/media_clients.draw_counter) and
its fake microphone a WAV of a beep a second, so the recorded files can be decoded back and
checked: codecs, duration against the wall clock, every counter in order, the beeps.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import wave
from pathlib import Path
from typing import AsyncIterator

import av
import numpy as np
import pytest

from signalling.core.settings import Settings
from tests.conftest import require
from tests.media_clients import HEIGHT, WIDTH, draw_counter
from tests.recording_clients import read_file
from tests.web_demo.test_web_demo import (
    CHROMIUM, CHROMIUM_ARGS, ask, frames_increasing, online_expert, serve, shoot, sign_in,
)

pytestmark = pytest.mark.integration

LOOP_FRAMES = 300  # the fake camera's file: 10 s at 30 fps, looped by Chromium


def write_media(folder: Path) -> tuple[Path, Path]:
    """A Y4M of counter frames 0..LOOP_FRAMES-1 and a WAV with a 100 ms beep every second."""
    video = folder / "counter.y4m"
    with open(video, "wb") as out:
        out.write(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F30:1 Ip A1:1 C420jpeg\n".encode())
        for n in range(LOOP_FRAMES):
            frame = av.VideoFrame.from_ndarray(draw_counter(n), format="rgb24").reformat(format="yuv420p")
            out.write(b"FRAME\n")
            for plane in frame.planes:
                data = np.frombuffer(bytes(plane), np.uint8).reshape(-1, plane.line_size)
                out.write(data[:, : plane.width].tobytes())
    audio = folder / "beeps.wav"
    t = np.arange(48000 * 10) / 48000
    pcm = np.where((t % 1.0) < 0.1, np.sin(2 * math.pi * 440 * t) * 0.8, 0.0)
    with wave.open(str(audio), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(48000)
        wav.writeframes((pcm * 32767).astype(np.int16).tobytes())
    return video, audio


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Settings]]:
    settings = Settings(data_dir=tmp_path / "var", port=0, media_loopback=True)
    async with serve(settings) as (base, _):
        yield base, settings


@pytest.fixture
async def counter_browser(tmp_path: Path):  # type: ignore[no-untyped-def]
    require(os.path.exists(CHROMIUM), "chromium")
    from playwright.async_api import async_playwright

    video, audio = write_media(tmp_path)
    args = [*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={video}",
            f"--use-file-for-fake-audio-capture={audio}"]
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield browser
        finally:
            await browser.close()


async def test_both_agree_both_see_it_and_the_files_hold_what_was_shown(served, counter_browser) -> None:  # type: ignore[no-untyped-def]
    base, settings = served
    expert = await online_expert(counter_browser, base, "Rita Recorder", skill="recording")
    client = await sign_in(counter_browser, base, "client", "Cora Client")
    await ask(client, "rita-recorder", "Rita Recorder", skill="recording")
    await expert.get_by_role("button", name="Accept Cora Client").click()
    await frames_increasing(client)
    await frames_increasing(expert)

    # The expert asks; nothing is recorded until the client allows it.
    for page in (client, expert):
        assert await page.get_by_test_id("recording-indicator").is_hidden()
    await expert.get_by_test_id("record-button").click()
    consent = client.get_by_test_id("recording-consent")
    await consent.get_by_text("Rita Recorder asks to record this call").wait_for()
    assert await expert.get_by_test_id("recording-indicator").is_hidden()
    # The expert's own copy of the state comes in its own message, maybe after the client's.
    await expert.wait_for_function(
        "document.querySelector('[data-testid=record-button]')?.textContent === 'Cancel request'")
    await shoot(client, "rec-01-client-asked")
    await consent.get_by_role("button", name="Allow recording").click()
    allowed_at = time.time()
    for page in (client, expert):
        await page.get_by_test_id("recording-indicator").wait_for()
        assert await page.get_by_test_id("record-button").inner_text() == "Stop recording"
    await shoot(client, "rec-02-client-recording")
    await shoot(expert, "rec-02-expert-recording")
    await asyncio.sleep(5)

    # Either side stops it: the client does.
    await client.get_by_test_id("record-button").click()
    stopped_at = time.time()
    for page in (client, expert):
        await page.get_by_test_id("recording-indicator").wait_for(state="hidden")
    await shoot(expert, "rec-03-expert-stopped")

    folder = settings.data_dir / "recordings"
    for _ in range(100):
        files = sorted(folder.glob("*/*.webm"))
        if len(files) == 2 and not list(folder.glob("*/*.recording")):
            break
        await asyncio.sleep(0.1)
    assert len(files) == 2, files
    wall = stopped_at - allowed_at
    for path in files:
        contents = read_file(str(path))
        assert (contents.video_codec, contents.audio_codec) == ("vp8", "opus")
        assert abs(contents.duration - wall) < 0.5, (path.name, contents.duration, wall)
        counters = [c for _, c in contents.frames]
        # the camera's frames in order, none repeated (the file loops at LOOP_FRAMES). How many the
        # browser sent is its encoder's business: Chromium skips capture frames on a busy machine
        # (the exact frames sent are checked with aiortc publishers, tests/sfu/test_recorder.py).
        # Chromium delivers the file's first frame twice where it loops (299, 0, 0, 1): no other repeat.
        steps = [(b - a) % LOOP_FRAMES for a, b in zip(counters, counters[1:]) if a or b]
        assert all(1 <= step < LOOP_FRAMES // 2 for step in steps), [s for s in steps if s != 1]
        assert len(counters) >= wall * 30 * 0.5, len(counters)
        # the microphone's beeps, a second apart
        gaps = [b - a for a, b in zip(contents.beeps, contents.beeps[1:])]
        assert len(contents.beeps) >= 4 and all(abs(g - 1.0) < 0.1 for g in gaps), contents.beeps
    for page in (client, expert):
        assert page.errors == []  # type: ignore[attr-defined]
