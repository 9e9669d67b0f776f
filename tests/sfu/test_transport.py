"""Transports: bad input gets coded errors, a publisher's reconnect is seamless downstream, and a
client-offered subscribe transport (the WHEP shape) works."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc import RTCRtpSender, RTCSessionDescription

from sfu.api import (
    AddIceCandidate,
    Answer,
    AnswerToServerOffer,
    Leave,
    MediaError,
    Message,
    Offer,
    OpenRoom,
    RequestKeyframe,
    ServerOffer,
    Subscribe,
    TransportClosed,
)
from sfu.options import MediaOptions
from sfu.worker import LocalMediaPlane
from tests.media_clients import (LOOPBACK, EventHub, Publisher, Subscriber, answer_to, client_pc,
                                 subscribe_offer, video_frames)

pytestmark = pytest.mark.integration


@pytest.fixture
async def plane() -> AsyncIterator[LocalMediaPlane]:
    plane = LocalMediaPlane(MediaOptions(loopback=True))
    plane.start()
    await plane.request(OpenRoom("room"))
    yield plane
    await plane.close()


async def _audio_offer() -> str:
    pc = client_pc()
    transceiver = pc.addTransceiver("audio", direction="sendonly")
    opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == "audio/opus"]
    transceiver.setCodecPreferences(opus)
    LOOPBACK.prepare(pc)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def _refused(plane: LocalMediaPlane, message: Message) -> str:
    with pytest.raises(MediaError) as info:
        await plane.request(message)
    return info.value.code


@pytest.mark.parametrize("sdp", ["", "garbage", "v=0\r\nm=audio x\r\n", "v=0\r\n" * 20000])
async def test_malformed_sdp_is_refused_with_a_code(plane: LocalMediaPlane, sdp: str) -> None:
    assert await _refused(plane, Offer("room", "alice", "publish", sdp)) == "bad_sdp"


async def test_offer_without_a_supported_codec_is_refused(plane: LocalMediaPlane) -> None:
    sdp = (await _audio_offer()).replace("opus/48000/2", "speex/16000")
    assert await _refused(plane, Offer("room", "alice", "publish", sdp)) == "unsupported_codec"


async def test_offer_without_rtcp_mux_is_refused(plane: LocalMediaPlane) -> None:
    sdp = (await _audio_offer()).replace("a=rtcp-mux\r\n", "")
    assert await _refused(plane, Offer("room", "alice", "publish", sdp)) == "bad_sdp"


async def test_too_many_tracks_are_refused(plane: LocalMediaPlane) -> None:
    pc = client_pc()
    for _ in range(17):
        pc.addTransceiver("audio", direction="sendonly")
    LOOPBACK.prepare(pc)
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await pc.close()
    assert await _refused(plane, Offer("room", "alice", "publish", offer)) == "too_many_tracks"


async def test_other_bad_requests(plane: LocalMediaPlane) -> None:
    sdp = await _audio_offer()
    assert await _refused(plane, Offer("nope", "alice", "publish", sdp)) == "unknown_room"
    assert await _refused(plane, Offer("room", "", "publish", sdp)) == "bad_participant"
    assert await _refused(plane, Offer("room", "a", "sideways", sdp)) == "bad_transport"  # type: ignore[arg-type]
    assert await _refused(
        plane, AnswerToServerOffer("room", "alice", "subscribe", sdp, 1)
    ) == "unknown_transport"
    await plane.request(Offer("room", "alice", "publish", sdp))
    for candidate in ({"candidate": 5}, {"candidate": "candidate:garbage"}, {}):
        assert await _refused(
            plane, AddIceCandidate("room", "alice", "publish", candidate)
        ) == "bad_candidate"
    assert await _refused(plane, Subscribe("room", "bob", chat="no")) == "bad_message"  # type: ignore[arg-type]
    with pytest.raises(MediaError) as info:
        Message.from_dict({"kind": "launch_missiles"})
    assert info.value.code == "bad_message"
    await plane.request(RequestKeyframe("room", "alice"))  # nothing to ask: still fine


async def test_stale_answer_is_refused(plane: LocalMediaPlane) -> None:
    hub = EventHub(plane)
    await plane.request(Subscribe("room", "bob"))
    offers = hub.of(ServerOffer)
    assert offers, "no ServerOffer after Subscribe"
    pc = client_pc()
    await pc.setRemoteDescription(RTCSessionDescription(offers[0].sdp, "offer"))
    LOOPBACK.prepare(pc)
    await pc.setLocalDescription(await pc.createAnswer())
    stale = AnswerToServerOffer("room", "bob", "subscribe", pc.localDescription.sdp, 99)
    assert await _refused(plane, stale) == "stale_offer"
    # The client may not offer on a transport the SFU offers on (glare).
    assert await _refused(plane, Offer("room", "bob", "subscribe", await _audio_offer())) \
        == "bad_state"
    await plane.request(AnswerToServerOffer(
        "room", "bob", "subscribe", pc.localDescription.sdp, offers[0].offer_id))
    await pc.close()


async def test_offer_ids_count_from_one_on_each_subscribe_transport(plane: LocalMediaPlane) -> None:
    """sfu.api.ServerOffer's contract, which the signalling protocol's new_connection rests on."""
    hub = EventHub(plane)
    await plane.request(Subscribe("room", "bob"))
    await plane.request(Subscribe("room", "bob"))  # a resume replaces the transport
    offers = hub.of(ServerOffer)
    assert [o.offer_id for o in offers] == [1, 1]


async def test_publisher_reconnect_is_one_continuous_stream(plane: LocalMediaPlane) -> None:
    """A resume (new connection, new ICE credentials, new SSRCs) on the same publish transport:
    the subscriber keeps its stream — same SSRC, sequence numbers running on by one — and keeps
    decoding, without any renegotiation."""
    hub = EventHub(plane)
    first = Publisher(plane, "room", "alice", audio=False)
    watcher = Subscriber(plane, hub, "room", "bob", decode=False, record_sequence=True)
    viewer = Subscriber(plane, hub, "room", "carol")
    second = Publisher(plane, "room", "alice", audio=False)
    try:
        await first.start()
        await watcher.start()
        await viewer.start()
        await viewer.wait_frames(20)
        offers_before = len(hub.events)
        await first.close()
        await asyncio.sleep(0.3)
        before = len(viewer.frames)
        await second.start()  # same participant, same transport, fresh connection
        deadline = time.monotonic() + 10
        while len(viewer.frames) < before + 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(viewer.frames) >= before + 20, "no video after the publisher reconnected"
        assert len([e for e in hub.events[offers_before:] if e.kind == "server_offer"]) == 0
        (sequence,) = watcher.sequences.values()
        steps = {(b - a) & 0xFFFF for a, b in itertools.pairwise(sequence)}
        assert steps == {1}, f"sequence jumps {sorted(steps)[:5]} across the reconnect"
    finally:
        for client in (viewer, watcher, second):
            await client.close()


async def test_client_offered_subscribe_transport(plane: LocalMediaPlane) -> None:
    """WHEP's shape: the viewer offers recvonly m-lines and gets the room's tracks in them."""
    publisher = Publisher(plane, "room", "alice")
    pc = client_pc()
    frames = video_frames(pc)
    try:
        await publisher.start()
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        answer = await subscribe_offer(plane, pc, "room", "viewer")
        assert "a=sendonly" in answer
        deadline = time.monotonic() + 10
        while len(frames) < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(frames) >= 10
    finally:
        await pc.close()
        await publisher.close()


async def test_trickled_candidates_connect(plane: LocalMediaPlane) -> None:
    """The client's offer carries no candidates; they arrive by AddIceCandidate. The viewer
    subscribes just before, so its renegotiation lands while its first handshake still runs."""
    hub = EventHub(plane)
    publisher = Publisher(plane, "room", "alice", video=False)
    viewer = Subscriber(plane, hub, "room", "bob", decode=False)
    await viewer.start()
    pc = publisher.pc
    from tests.media_clients import ToneTrack

    pc.addTransceiver(ToneTrack(0.5), direction="sendonly")
    LOOPBACK.prepare(pc)
    await pc.setLocalDescription(await pc.createOffer())
    lines = pc.localDescription.sdp.splitlines()
    candidates = [l[2:] for l in lines if l.startswith("a=candidate:")]
    assert candidates
    bare = "\r\n".join(l for l in lines if not l.startswith("a=candidate:")
                       and l != "a=end-of-candidates") + "\r\n"
    answer = await answer_to(plane, Offer("room", "alice", "publish", bare))
    await pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
    for candidate in candidates:
        await plane.request(AddIceCandidate(
            "room", "alice", "publish", {"candidate": candidate, "sdpMid": "0"}))
    await plane.request(AddIceCandidate("room", "alice", "publish", None))
    try:
        deadline = time.monotonic() + 10
        while sum(viewer.packets.values()) < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert sum(viewer.packets.values()) >= 20
    finally:
        await viewer.close()
        await publisher.close()


async def test_unannounced_ssrc_is_learnt_only_as_a_replacement(plane: LocalMediaPlane) -> None:
    """A second live SSRC on one m-line (declined simulcast) is dropped, not interleaved; once
    the first has been silent, a new SSRC takes over as a new epoch."""
    import struct

    publisher = Publisher(plane, "room", "alice", audio=False)
    try:
        await publisher.start()
        transport = plane.rooms["room"].participants["alice"].publish
        assert transport is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            p.packets for p in transport.producers.values()
        ):
            await asyncio.sleep(0.05)
        (producer,) = transport.producers.values()
        epoch, live = producer.epoch, producer.last_arrival_ms

        def packet(ssrc: int) -> bytes:
            return struct.pack("!BBHII", 0x80, producer.codec.payload_type, 1, 1, ssrc) + b"\x10\x00"

        await transport._on_rtp(packet(0xC0FFEE), live + 10)
        assert producer.epoch == epoch and 0xC0FFEE not in transport._rtp
        await publisher.close()
        await transport._on_rtp(packet(0xC0FFEE), producer.last_arrival_ms + 5000)
        assert producer.epoch == epoch + 1 and producer.ssrc == 0xC0FFEE
    finally:
        await publisher.close()


async def _sendonly_offer(*kinds: str) -> str:
    """A publisher's offer with tracks of ``kinds`` (no media is ever sent)."""
    pc = client_pc()
    for kind in kinds:
        pc.addTransceiver(kind, direction="sendonly")
    LOOPBACK.prepare(pc)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def _answer(offer: ServerOffer, edit: Any = None) -> tuple[Any, str]:
    pc = client_pc()
    await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
    LOOPBACK.prepare(pc)
    await pc.setLocalDescription(await pc.createAnswer())
    sdp = pc.localDescription.sdp
    return pc, edit(sdp) if edit else sdp


def _sections(sdp: str) -> list[str]:
    head, *media = sdp.split("m=")
    return [head] + ["m=" + m for m in media]


async def test_answers_to_our_offers_are_not_held_to_the_offer_limit(
        plane: LocalMediaPlane) -> None:
    """Nine participants with audio and video: the SFU's offer to a tenth has 19 m-lines."""
    hub = EventHub(plane)
    for i in range(9):
        await plane.request(Offer("room", f"p{i}", "publish", await _sendonly_offer("audio", "video")))
    await plane.request(Subscribe("room", "viewer"))
    (offer,) = hub.of(ServerOffer)
    assert offer.sdp.count("\nm=") == 19
    pc, answer = await _answer(offer)
    try:
        await plane.request(AnswerToServerOffer("room", "viewer", "subscribe", answer,
                                                offer.offer_id))
        # ... while an answer with more m-lines than our offer is still refused
        await plane.request(Subscribe("room", "viewer"))
        offer = hub.of(ServerOffer)[-1]
        extra = answer + "".join(_sections(answer)[-1:])
        assert await _refused(plane, AnswerToServerOffer("room", "viewer", "subscribe", extra,
                                                         offer.offer_id)) == "too_many_tracks"
    finally:
        await pc.close()


async def test_bundle_only_audio_is_published(plane: LocalMediaPlane) -> None:
    """webrtcbin offers its audio as ``m=audio 0 ... a=bundle-only`` (RFC 9143)."""
    sections = _sections(await _sendonly_offer("video", "audio"))
    audio = next(i for i, s in enumerate(sections) if s.startswith("m=audio"))
    port = sections[audio].split()[1]
    sections[audio] = sections[audio].replace(f"m=audio {port} ", "m=audio 0 ", 1) \
        .replace("a=mid:", "a=bundle-only\r\na=mid:", 1)
    await plane.request(Offer("room", "gst", "publish", "".join(sections)))
    transport = plane.rooms["room"].participants["gst"].publish
    assert transport is not None
    assert sorted(p.kind for p in transport.producers.values()) == ["audio", "video"]


async def test_a_rejected_m_line_in_an_answer_needs_no_bundle(plane: LocalMediaPlane) -> None:
    hub = EventHub(plane)
    await plane.request(Offer("room", "alice", "publish", await _sendonly_offer("audio", "video")))
    await plane.request(Subscribe("room", "bob"))
    (offer,) = hub.of(ServerOffer)

    def reject_video(sdp: str) -> str:
        sections = _sections(sdp)
        video = next(i for i, s in enumerate(sections) if s.startswith("m=video"))
        mid = sections[video].split("a=mid:")[1].split("\r\n")[0]
        port = sections[video].split()[1]
        sections[video] = sections[video].replace(f"m=video {port} ", "m=video 0 ", 1)
        group = next(line for line in sections[0].split("\r\n") if line.startswith("a=group:BUNDLE"))
        kept = " ".join(m for m in group.split()[1:] if m != mid)
        sections[0] = sections[0].replace(group, f"a=group:BUNDLE {kept}")
        return "".join(sections)

    pc, answer = await _answer(offer, reject_video)
    try:
        await plane.request(AnswerToServerOffer("room", "bob", "subscribe", answer,
                                                offer.offer_id))
    finally:
        await pc.close()


async def test_a_closed_subscriber_connection_leaves_the_room(plane: LocalMediaPlane) -> None:
    """A subscriber that closes its RTCPeerConnection (DTLS close_notify) without Leave: its
    transport leaves the room, and later publishers are not refused because of it."""
    hub = EventHub(plane)
    publisher = Publisher(plane, "room", "alice", audio=False)
    viewer = Subscriber(plane, hub, "room", "bob", decode=False)
    try:
        await publisher.start()
        await viewer.start()
        router = plane.rooms["room"]
        deadline = time.monotonic() + 10
        while not viewer.packets and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert viewer.packets
        await viewer.close()
        deadline = time.monotonic() + 10
        while "bob" in router.participants and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert "bob" not in router.participants
        assert [e.reason for e in hub.of(TransportClosed)] == ["closed"]
        await plane.request(Offer("room", "carol", "publish", await _sendonly_offer("video")))
    finally:
        await publisher.close()


async def test_the_sfus_offers_reuse_the_m_lines_of_closed_tracks(plane: LocalMediaPlane) -> None:
    """Tracks come and go: the subscriber's offer does not grow with each, and a reused m-line
    carries a new SSRC."""
    hub = EventHub(plane)
    viewer = Subscriber(plane, hub, "room", "bob", decode=False)
    try:
        await viewer.start()
        router = plane.rooms["room"]
        transport = router.participants["bob"].subscribe
        assert transport is not None
        ssrcs = set()
        for i in range(4):
            await plane.request(Offer("room", f"p{i}", "publish",
                                      await _sendonly_offer("audio", "video")))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (
                    len(transport.consumers) < 2 or transport.pc.signalingState != "stable"):
                await asyncio.sleep(0.02)
            assert len(transport.consumers) == 2
            ssrcs |= {c.ssrc for c in transport.consumers.values()}
            await plane.request(Leave("room", f"p{i}", None))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (
                    transport.consumers or transport.pc.signalingState != "stable"
                    or any(t.currentDirection != "inactive" for t in transport.pc.getTransceivers())):
                await asyncio.sleep(0.02)
        assert len(transport.pc.getTransceivers()) == 2  # one audio, one video m-line, reused
        assert len(ssrcs) == 8  # each track its own SSRC
        last_offer = hub.of(ServerOffer)[-1].sdp
        assert last_offer.count("\nm=") == 3  # audio, video, chat
    finally:
        await viewer.close()


def _rtpmaps(sdp: str) -> list[list[str]]:
    """Per m-line, the codec names of its a=rtpmap lines."""
    return [[line.split()[1].split("/")[0] for line in section.split("\r\n")
             if line.startswith("a=rtpmap:")] for section in _sections(sdp)[1:]]


@pytest.mark.parametrize("codec", ["video/VP8", "video/H264"])
async def test_a_whep_viewer_before_the_publisher_gets_media_when_it_comes(
        plane: LocalMediaPlane, codec: str) -> None:
    """The viewer's answer into an empty room is sendonly with one codec per m-line (and its
    RTX), and the publisher's tracks fill those m-lines when they arrive, without a new offer."""
    pc = client_pc()
    frames: list[object] = []
    audio: list[object] = []

    def on_track(track) -> None:  # type: ignore[no-untyped-def]
        async def read() -> None:
            while True:
                (frames if track.kind == "video" else audio).append(await track.recv())

        asyncio.ensure_future(read())

    pc.on("track", on_track)
    publisher = Publisher(plane, "room", "alice", video_codec=codec)
    try:
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        LOOPBACK.prepare(pc)
        await pc.setLocalDescription(await pc.createOffer())
        answer = await answer_to(plane, Offer("room", "viewer", "subscribe", pc.localDescription.sdp))
        assert "a=inactive" not in answer.sdp
        video_codecs, audio_codecs = _rtpmaps(answer.sdp)
        assert video_codecs == ["VP8", "rtx"] and audio_codecs == ["opus"]
        await pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
        if codec == "video/H264":
            # the viewer answered VP8 for video before any track: only audio can fill it now
            await publisher.start()
            deadline = time.monotonic() + 10
            while len(audio) < 10 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert len(audio) >= 10 and frames == []
            return
        await publisher.start()
        deadline = time.monotonic() + 15
        while (len(frames) < 10 or len(audio) < 10) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(frames) >= 10 and len(audio) >= 10
    finally:
        await pc.close()
        await publisher.close()


async def test_a_whep_m_line_carries_on_through_a_publisher_that_leaves_and_comes_back(
        plane: LocalMediaPlane) -> None:
    """A WHEP viewer's m-line keeps its SSRC from one publisher to the next (WHEP cannot
    renegotiate): the next track's packets must continue its sequence, or SRTP refuses every
    one of them as a replay (srtp_protect error 10) and the viewer stays frozen."""
    pc = client_pc()
    frames = video_frames(pc)
    first = Publisher(plane, "room", "alice", audio=False)
    second = Publisher(plane, "room", "carol", audio=False)
    try:
        await first.start()
        pc.addTransceiver("video", direction="recvonly")
        await subscribe_offer(plane, pc, "room", "viewer")
        deadline = time.monotonic() + 10
        while len(frames) < 30 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(frames) >= 30
        await plane.request(Leave("room", "alice", None))
        await first.close()
        before = len(frames)
        await second.start()
        deadline = time.monotonic() + 10
        while len(frames) < before + 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(frames) >= before + 20, "the viewer froze when the next publisher came"
        viewer = plane.rooms["room"].participants["viewer"].subscribe
        assert viewer is not None
        assert all(c.send_errors == 0 for c in viewer.consumers.values())
    finally:
        await pc.close()
        await first.close()
        await second.close()


SPROP = "Z0IAH5WoFAFuQA==,aM48gA=="


async def _h264_offer_with_parameter_sets() -> str:
    """A publisher's H.264-only offer whose fmtp carries ``sprop-parameter-sets`` (RFC 6184)."""
    lines = (await _sendonly_offer("video")).split("\r\n")
    h264 = next(line.split()[0].split(":")[1] for line in lines
                if line.startswith("a=rtpmap:") and "H264/90000" in line)
    offer = "\r\n".join(
        line + f";sprop-parameter-sets={SPROP}" if line.startswith(f"a=fmtp:{h264} ") else line
        for line in lines)
    return "\r\n".join(line for line in offer.split("\r\n")
                       if not (line.startswith("a=rtpmap:") and "VP8/90000" in line))


async def test_a_whep_answer_carries_the_publishers_h264_parameter_sets(
        plane: LocalMediaPlane) -> None:
    sprop = SPROP
    await plane.request(Offer("room", "gst", "publish", await _h264_offer_with_parameter_sets()))
    pc = client_pc()
    try:
        pc.addTransceiver("video", direction="recvonly")
        LOOPBACK.prepare(pc)
        await pc.setLocalDescription(await pc.createOffer())
        answer = await plane.request(Offer("room", "viewer", "subscribe", pc.localDescription.sdp))
        assert isinstance(answer, Answer)
        assert f"sprop-parameter-sets={sprop}" in answer.sdp
        assert _rtpmaps(answer.sdp)[0] == ["H264", "rtx"]
    finally:
        await pc.close()


async def test_our_offers_carry_the_publishers_h264_parameter_sets(plane: LocalMediaPlane) -> None:
    """The SFU's own offer to a subscriber: aiortc writes its fmtp from its capabilities, so the
    publisher's out-of-band SPS/PPS must be put in, on the m-line of that track alone; they stay
    through a renegotiation."""
    hub = EventHub(plane)
    await plane.request(Offer("room", "gst", "publish", await _h264_offer_with_parameter_sets()))
    await plane.request(Subscribe("room", "viewer"))
    (offer,) = hub.of(ServerOffer)
    (video,) = [m for m in _sections(offer.sdp) if m.startswith("m=video")]
    fmtp = [line for line in video.split("\r\n") if line.startswith("a=fmtp:")]
    assert len([line for line in fmtp if f"sprop-parameter-sets={SPROP}" in line]) == 1
    assert f"sprop-parameter-sets={SPROP}" in next(line for line in fmtp if "packetization" in line)
    pc, answer = await _answer(offer)
    try:
        await plane.request(AnswerToServerOffer("room", "viewer", "subscribe", answer,
                                                offer.offer_id))
        await plane.request(Offer("room", "other", "publish", await _sendonly_offer("video")))
        await asyncio.sleep(0.1)  # the renegotiation is scheduled
        again = hub.of(ServerOffer)[-1]
        assert again.offer_id == offer.offer_id + 1
        first, second = [m for m in _sections(again.sdp) if m.startswith("m=video")]
        assert f"sprop-parameter-sets={SPROP}" in first and "sprop" not in second
    finally:
        await pc.close()


async def test_a_subscriber_that_negotiated_no_nack_gets_no_retransmission_cache(
        plane: LocalMediaPlane) -> None:
    """Opus as aiortc (and browsers) negotiate it has no NACK feedback: its consumer's ring keeps
    only the few slots the fan-out rewrites packets in; the video consumer, with NACK, keeps
    its cache."""
    from sfu.consumer import MIN_CACHE, NO_NACK_CACHE

    hub = EventHub(plane)
    viewer = Subscriber(plane, hub, "room", "bob", decode=False)
    try:
        await viewer.start()
        transport = plane.rooms["room"].participants["bob"].subscribe
        assert transport is not None
        await plane.request(Offer("room", "alice", "publish", await _sendonly_offer("audio", "video")))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
                len(transport.consumers) < 2 or transport.pc.signalingState != "stable"):
            await asyncio.sleep(0.02)
        rings = {c.kind: len(c._cache) for c in transport.consumers.values()}
        assert rings == {"audio": NO_NACK_CACHE, "video": MIN_CACHE}
    finally:
        await viewer.close()


async def test_negotiated_connections_keep_their_descriptions_compact(plane: LocalMediaPlane) -> None:
    """Once an offer/answer is done, each transport's connection keeps its SDP as compact text,
    not as aiortc's parsed objects (~20 KiB each); a later renegotiation still works."""
    from sfu.aiortc_hooks import CompactDescription

    hub = EventHub(plane)
    await plane.request(Offer("room", "alice", "publish", await _sendonly_offer("audio")))
    await plane.request(Subscribe("room", "bob"))
    pc, answer = await _answer(hub.of(ServerOffer)[-1])
    try:
        await plane.request(AnswerToServerOffer("room", "bob", "subscribe", answer, 1))
        router = plane.rooms["room"]
        for participant in ("alice", "bob"):
            for transport in router.participants[participant].transports():
                kept = [getattr(transport.pc, f"_RTCPeerConnection__{name}Description")
                        for name in ("currentLocal", "currentRemote", "pendingLocal", "pendingRemote")]
                assert [d for d in kept if d is not None]
                assert all(isinstance(d, CompactDescription) for d in kept if d is not None)
        # a second track: the SFU offers bob again, from its compacted descriptions
        await plane.request(Offer("room", "carol", "publish", await _sendonly_offer("video")))
        offer = hub.of(ServerOffer)[-1]
        assert offer.offer_id == 2 and offer.sdp.count("\nm=") == 3
        await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await plane.request(AnswerToServerOffer("room", "bob", "subscribe", pc.localDescription.sdp, 2))
    finally:
        await pc.close()


async def test_a_connected_publishers_descriptions_stay_compact(
        plane: LocalMediaPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiortc reads the remote description again (parsing it back) for the receive parameters
    once DTLS is up: the transport makes it text again once its producers are attached, once
    for all of them (and once after the answer)."""
    from sfu import aiortc_hooks
    from sfu.aiortc_hooks import CompactDescription

    compacted: list[Any] = []
    compact = aiortc_hooks.compact_descriptions

    def counting(pc: Any) -> None:
        compacted.append(pc)
        compact(pc)

    monkeypatch.setattr(aiortc_hooks, "compact_descriptions", counting)
    publisher = Publisher(plane, "room", "alice")
    try:
        await publisher.start()
        (transport,) = plane.rooms["room"].participants["alice"].transports()
        deadline = time.monotonic() + 10
        while not all(p.ssrc for p in transport.producers.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(transport.producers) == 2 and all(p.ssrc for p in transport.producers.values())
        await asyncio.sleep(0)  # the event-loop turn in which the receivers started is over
        kept = [getattr(transport.pc, f"_RTCPeerConnection__{name}Description")
                for name in ("currentLocal", "currentRemote", "pendingLocal", "pendingRemote")]
        assert [type(d) for d in kept if d is not None] == [CompactDescription] * 2
        assert all(d._parsed is None for d in kept if d is not None)
        assert transport.pc.remoteDescription.sdp.count("\nm=") == 3
        assert compacted.count(transport.pc) == 2
    finally:
        await publisher.close()


async def test_a_connected_transport_keeps_no_ice_check_list_queue(plane: LocalMediaPlane) -> None:
    """aioice's per-connection queue for the check list's outcome is spent once connected, and
    so is aiortc's per-transport Event for its start."""
    from sfu.aiortc_hooks import _ice_connections

    publisher = Publisher(plane, "room", "alice")
    try:
        await publisher.start()
        (transport,) = plane.rooms["room"].participants["alice"].transports()
        deadline = time.monotonic() + 10
        while not transport.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert transport.connected
        connections = list(_ice_connections(transport.pc))
        assert connections and all(c._check_list_state is None for c in connections)
        # and its ICE transport keeps the one start Event, already set, that all share
        from sfu.aiortc_hooks import _STARTED, dtls_transports

        assert all(d.transport._RTCIceTransport__start is _STARTED  # type: ignore[attr-defined]
                   for d in dtls_transports(transport.pc))
    finally:
        await publisher.close()


async def test_transports_keep_no_attribute_dict(plane: LocalMediaPlane) -> None:
    """Every attribute a publish and a subscribe transport set while carrying media is a slot, or
    a member of the C base: no per-instance __dict__ (four transports a two-party call)."""
    hub = EventHub(plane)
    publisher = Publisher(plane, "room", "alice")
    viewer = Subscriber(plane, hub, "room", "bob", decode=False)
    try:
        await publisher.start()
        await viewer.start()
        await viewer.wait_frames(5)
        transports = [t for p in plane.rooms["room"].participants.values() for t in p.transports()]
        assert sorted(t.kind for t in transports) == ["publish", "subscribe"]
        for transport in transports:
            assert not hasattr(transport, "__dict__"), sorted(vars(transport))
    finally:
        await viewer.close()
        await publisher.close()
