"""A stock GStreamer webrtcbin peer for the interop test: publishes over WHIP or watches over WHEP.

Run by Debian's /usr/bin/python3 (python3-gi; the project's venv has no gi), as a subprocess of
tests/sfu/test_gstreamer.py:

    gst_peer.py publish|view ENDPOINT TOKEN vp8|h264 SECONDS

(ENDPOINT: the WHIP or WHEP URL, http://127.0.0.1:PORT/whip/SESSION.)

Nothing is adapted to the SFU: webrtcbin's own RSA certificate, its payloaders' default MTU
(1,400 bytes), max-bundle (its audio is then offered bundle-only, RFC 9143), non-trickle ICE.
Its host candidates are limited to 127.0.0.1 (libnice would gather every interface). The last
line printed is JSON: what reached the peer and the states it ended in.
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.request
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice  # noqa: E402

VIDEO = {
    "vp8": ("vp8enc deadline=1 cpu-used=8 keyframe-max-dist=60 target-bitrate=800000 "
            "! rtpvp8pay", "VP8"),
    "h264": ("openh264enc bitrate=800000 gop-size=60 ! h264parse "
             "! rtph264pay config-interval=-1 aggregate-mode=zero-latency", "H264"),
}


class Peer:
    def __init__(self, mode: str, url: str, token: str, codec: str, seconds: float) -> None:
        self.mode, self.url, self.token, self.codec = mode, url, token, codec
        self.loop = GLib.MainLoop()
        self.result: dict[str, Any] = {"mode": mode, "codec": codec, "video_frames": 0,
                                       "audio_buffers": 0, "status": None, "error": None}
        self.pipeline = Gst.Pipeline.new("peer")
        self.webrtc = Gst.ElementFactory.make("webrtcbin", "webrtc")
        self.webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
        # Held for the peer's lifetime: PyGObject's wrapper of the ICE agent (a type without a
        # typelib) drops a reference it does not own when it goes.
        self._ice = self.webrtc.get_property("ice-agent")
        self._agent = self._ice.get_property("agent")
        loopback = Nice.Address.new()
        loopback.set_from_string("127.0.0.1")
        self._agent.add_local_address(loopback)  # all traffic on 127.0.0.1
        self.pipeline.add(self.webrtc)
        if mode == "publish":
            self._add_sources()
        else:
            self._add_receivers()
            self.webrtc.connect("pad-added", self._on_pad)
        self.webrtc.connect("notify::ice-gathering-state", self._on_gathering)
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_error)
        GLib.timeout_add(int(seconds * 1000), self._finish)

    def _add_sources(self) -> None:
        encoder, name = VIDEO[self.codec]
        video = Gst.parse_bin_from_description(
            "videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=480,"
            f"framerate=30/1 ! videoconvert ! {encoder} "
            f"! capsfilter caps=application/x-rtp,media=video,encoding-name={name},payload=96",
            True)
        audio = Gst.parse_bin_from_description(
            "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! opusenc "
            "! rtpopuspay ! capsfilter caps=application/x-rtp,media=audio,encoding-name=OPUS,"
            "payload=111", True)
        for source in (video, audio):
            self.pipeline.add(source)
            source.link(self.webrtc)
        self.webrtc.connect("on-negotiation-needed", self._offer)

    def _add_receivers(self) -> None:
        _, name = VIDEO[self.codec]
        extra = ",packetization-mode=(string)1" if name == "H264" else ""
        for caps in (f"application/x-rtp,media=video,encoding-name={name},payload=96,"
                     f"clock-rate=90000{extra}",
                     "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,"
                     "clock-rate=48000"):
            self.webrtc.emit("add-transceiver",
                             GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY,
                             Gst.Caps.from_string(caps))
        GLib.idle_add(self._offer)

    def _offer(self, *args: Any) -> bool:
        promise = Gst.Promise.new_with_change_func(self._on_offer, None)
        self.webrtc.emit("create-offer", None, promise)
        return False

    def _on_offer(self, promise: Gst.Promise, _: Any) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None and reply.has_field("offer") \
            else None
        if offer is None:
            self.result["error"] = f"create-offer failed: {reply.to_string() if reply else None}"
            GLib.idle_add(self._finish)
            return
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())

    def _on_gathering(self, *args: Any) -> None:
        if self.webrtc.get_property("ice-gathering-state") != \
                GstWebRTC.WebRTCICEGatheringState.COMPLETE or self.result["status"] is not None:
            return
        sdp = self.webrtc.get_property("local-description").sdp.as_text()
        self.result["offer"] = sdp
        threading.Thread(target=self._post, args=(sdp,), daemon=True).start()

    def _post(self, sdp: str) -> None:
        request = urllib.request.Request(
            self.url, data=sdp.encode(), method="POST",
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                self.result["status"] = response.status
                answer = response.read().decode()
        except Exception as exc:  # the test reports it
            self.result["status"] = getattr(exc, "code", -1)
            self.result["error"] = str(exc)
            GLib.idle_add(self._finish)
            return
        self.result["answer"] = answer
        GLib.idle_add(self._answer, answer)

    def _answer(self, text: str) -> bool:
        _, message = GstSdp.SDPMessage.new_from_text(text)
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        self.webrtc.emit("set-remote-description", answer, Gst.Promise.new())
        return False

    def _on_pad(self, _: Any, pad: Gst.Pad) -> None:
        if pad.direction != Gst.PadDirection.SRC:
            return
        media = pad.get_current_caps().get_structure(0).get_value("media")
        decode = Gst.ElementFactory.make("decodebin")
        decode.connect("pad-added", self._on_decoded, media)
        self.pipeline.add(decode)
        decode.sync_state_with_parent()
        pad.link(decode.get_static_pad("sink"))

    def _on_decoded(self, _: Any, pad: Gst.Pad, media: str) -> None:
        sink = Gst.ElementFactory.make("fakesink")
        sink.set_property("sync", False)
        sink.set_property("signal-handoffs", True)
        key = "video_frames" if media == "video" else "audio_buffers"
        sink.connect("handoff", lambda *a: self._count(key))
        self.pipeline.add(sink)
        sink.sync_state_with_parent()
        pad.link(sink.get_static_pad("sink"))

    def _count(self, key: str) -> None:
        self.result[key] += 1

    def _on_error(self, _: Any, message: Gst.Message) -> None:
        error, debug = message.parse_error()
        self.result["error"] = f"{error.message} ({debug})"

    def _finish(self) -> bool:
        self.result["connection_state"] = self.webrtc.get_property("connection-state").value_nick
        self.result["ice_connection_state"] = \
            self.webrtc.get_property("ice-connection-state").value_nick
        self.loop.quit()
        return False

    def run(self) -> dict[str, Any]:
        self.pipeline.set_state(Gst.State.PLAYING)
        self.loop.run()
        self.pipeline.set_state(Gst.State.NULL)
        return self.result


def main() -> None:
    mode, url, token, codec, seconds = sys.argv[1:6]
    Gst.init(None)
    print(json.dumps(Peer(mode, url, token, codec, float(seconds)).run()), flush=True)


if __name__ == "__main__":
    main()
