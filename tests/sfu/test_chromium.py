"""Interop with a real browser: headless Debian Chromium (fake camera and microphone) publishes
through the SFU to an aiortc subscriber (and resumes on a fresh connection without the subscriber
noticing), and receives an aiortc publisher's video — Chromium's own SDP, with BUNDLE, rtcp-mux,
its header extensions and a simulcast offer (answered as a single stream). SDP goes straight through LocalMediaPlane; the page is served on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import pytest
from aiohttp import web

from sfu.api import AnswerToServerOffer, Offer, OpenRoom, ServerOffer, Subscribe
from sfu.options import MediaOptions
from sfu.worker import LocalMediaPlane
from tests.externals import require
from tests.media_clients import EventHub, Publisher, Subscriber, answer_to

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream", "--allow-loopback-in-peer-connection",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run",
]

PAGE = """<!doctype html><meta charset="utf-8"><title>sfu interop</title><script>
async function gathered(pc) {
  if (pc.iceGatheringState !== "complete") {
    await new Promise(r => pc.addEventListener("icegatheringstatechange",
      () => pc.iceGatheringState === "complete" && r()));
  }
  return pc.localDescription.sdp;
}
window.publish = async () => {
  const stream = await navigator.mediaDevices.getUserMedia(
    {video: {width: 640, height: 360}, audio: true});
  window.pub = new RTCPeerConnection({bundlePolicy: "max-bundle"});
  pub.addTransceiver(stream.getVideoTracks()[0], {direction: "sendonly", sendEncodings: [
    {rid: "h"}, {rid: "m", scaleResolutionDownBy: 2}, {rid: "l", scaleResolutionDownBy: 4}]});
  pub.addTransceiver(stream.getAudioTracks()[0], {direction: "sendonly"});
  await pub.setLocalDescription(await pub.createOffer());
  return await gathered(pub);
};
window.publishAnswer = async (sdp) => pub.setRemoteDescription({type: "answer", sdp});
window.subscribe = async (sdp) => {
  if (!window.sub) {
    window.sub = new RTCPeerConnection({bundlePolicy: "max-bundle"});
  }
  await sub.setRemoteDescription({type: "offer", sdp});
  await sub.setLocalDescription(await sub.createAnswer());
  return await gathered(sub);
};
window.inbound = async () => {
  const out = {};
  if (!window.sub) return out;
  (await sub.getStats()).forEach(s => {
    if (s.type === "inbound-rtp") out[s.kind] = {frames: s.framesDecoded || 0,
      packets: s.packetsReceived, width: s.frameWidth || 0};
    if (s.type === "remote-outbound-rtp") out["reports_" + s.kind] = s.reportsSent;
  });
  return out;
};
window.outbound = async () => {
  let packets = 0;
  (await pub.getStats()).forEach(s => { if (s.type === "outbound-rtp") packets += s.packetsSent; });
  return packets;
};
</script>"""


async def _serve_page() -> tuple[web.AppRunner, str]:
    app = web.Application()
    async def index(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app.router.add_get("/", index)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/"


async def _until(predicate, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.2)
    return await predicate()


async def test_chromium_publishes_and_subscribes_through_the_sfu() -> None:
    require(os.path.exists(CHROMIUM), "chromium")
    from playwright.async_api import async_playwright

    plane = LocalMediaPlane(MediaOptions(loopback=True))
    plane.start()

    hub = EventHub(plane)
    await plane.request(OpenRoom("interop"))
    runner, url = await _serve_page()
    viewer = Subscriber(plane, hub, "interop", "aiortc-viewer")
    publisher = Publisher(plane, "interop", "aiortc-publisher")
    with tempfile.TemporaryDirectory() as profile:
        async with async_playwright() as playwright:
            # A fresh profile per run (playwright passes it as --user-data-dir).
            browser = await playwright.chromium.launch_persistent_context(
                str(Path(profile)), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            )
            try:
                page = await browser.new_page()
                await page.goto(url)

                # Chromium publishes (simulcast offer) -> the SFU answers one stream.
                offer = await page.evaluate("publish()")
                assert "a=simulcast" in offer and "a=group:BUNDLE" in offer
                answer = await answer_to(plane, Offer("interop", "chrome", "publish", offer))
                assert "a=simulcast" not in answer.sdp
                await page.evaluate("sdp => publishAnswer(sdp)", answer.sdp)

                # ... and the aiortc viewer decodes Chromium's video.
                await viewer.start()
                await viewer.wait_frames(15, timeout=20)
                assert len(viewer.frames) >= 15, (
                    f"aiortc decoded {len(viewer.frames)} frames from Chromium "
                    f"(chrome sent {await page.evaluate('outbound()')} packets)"
                )
                assert viewer.audio_frames > 0

                # Chromium resumes on a fresh connection (the SFU's ICE restart): the aiortc
                # viewer keeps decoding on its stream, without renegotiating.
                offers = len(hub.of(ServerOffer))
                await page.evaluate("pub.close()")
                before = len(viewer.frames)
                offer = await page.evaluate("publish()")
                answer = await answer_to(plane, Offer("interop", "chrome", "publish", offer))
                await page.evaluate("sdp => publishAnswer(sdp)", answer.sdp)
                await viewer.wait_frames(before + 15, timeout=20)
                assert len(viewer.frames) >= before + 15, "no video after Chromium resumed"
                assert len(hub.of(ServerOffer)) == offers

                # An aiortc publisher's video reaches Chromium, which decodes it.
                async def on_offer(event: ServerOffer) -> None:
                    sdp = await page.evaluate("sdp => subscribe(sdp)", event.sdp)
                    await plane.request(AnswerToServerOffer(
                        "interop", "chrome", "subscribe", sdp, event.offer_id))

                hub.register("chrome", _BrowserClient(on_offer))  # type: ignore[arg-type]
                await publisher.start()
                await plane.request(Subscribe("interop", "chrome"))

                async def decoded():  # type: ignore[no-untyped-def]
                    stats = await page.evaluate("inbound()")
                    return stats if stats.get("video", {}).get("frames", 0) >= 30 else None

                stats = await _until(decoded)
                assert stats, f"Chromium decoded too little: {await page.evaluate('inbound()')}"
                assert stats["video"]["width"] == 160
                assert stats.get("audio", {}).get("packets", 0) > 0

                # the SFU's sender reports for both streams (one compound packet a second on
                # the connection) are each read as their stream's
                async def reported():  # type: ignore[no-untyped-def]
                    stats = await page.evaluate("inbound()")
                    return stats if min(stats.get("reports_audio", 0),
                                        stats.get("reports_video", 0)) >= 2 else None

                assert await _until(reported), await page.evaluate("inbound()")
            finally:
                await browser.close()
    await viewer.close()
    await publisher.close()
    await plane.close()
    await runner.cleanup()


class _BrowserClient:
    def __init__(self, on_offer) -> None:  # type: ignore[no-untyped-def]
        self.handle_offer = on_offer
