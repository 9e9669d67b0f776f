"""The pool <-> worker channel (sfu/channel.py): every sfu.api message survives msgpack, and a frame
that breaks the rules is refused with a reason, never half-understood."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from typing import Any

import msgpack
import pytest

from sfu import api
from sfu.api import (
    ActiveSpeaker,
    AddIceCandidate,
    Answer,
    AnswerToServerOffer,
    CloseRoom,
    GetStats,
    Leave,
    MediaQuality,
    MediaState,
    Message,
    Offer,
    Ok,
    OpenRoom,
    RecordingFailed,
    RecordingFile,
    RecordingStarted,
    RecordingStopped,
    RecoverRecordings,
    RequestKeyframe,
    RoomClosed,
    RoomRestarted,
    ServerOffer,
    StartRecording,
    Stats,
    StopRecording,
    Subscribe,
    TransportClosed,
)
from sfu.channel import MAX_FRAME, Channel, ChannelClosed, ChannelError, decode, encode, message_of
from sfu.options import MediaOptions

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
EVERY_MESSAGE: list[Message] = [
    OpenRoom("r", {"expert_id": "erin", "client_id": "alice", "n": 3, "nested": {"a": [1, 2.5, None]}}),
    CloseRoom("r", "ended"),
    Offer("r", "alice", "publish", SDP),
    Subscribe("r", "alice"),
    Subscribe("r", "alice", chat=False),
    AnswerToServerOffer("r", "alice", "subscribe", SDP, 2),
    AddIceCandidate("r", "alice", "publish", {"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host",
                                              "sdpMid": "0", "sdpMLineIndex": 0}),
    AddIceCandidate("r", "alice", "publish", None),
    RequestKeyframe("r", "alice"),
    Leave("r", "alice"),
    Leave("r", "alice", "subscribe"),
    GetStats("r"),
    Ok(),
    Answer(SDP),
    Stats("r", [{"track_id": "alice:0", "kind": "video", "bitrate": 512000, "jitter": 0.0012, "rtt": None}]),
    ServerOffer("r", "bob", "subscribe", SDP, 1),
    MediaState("r", "alice", True, 1764763200.125, "media"),
    ActiveSpeaker("r", "alice", 17),
    MediaQuality("r", "bob", "alice", "alice:0", True, "congestion", 300000, 512000, 31),
    TransportClosed("r", "alice", "publish", "left"),
    RoomClosed("r", "shutdown"),
    RoomRestarted("r", "worker_lost"),
    StartRecording("r"),
    StopRecording("r", "hangup"),
    RecoverRecordings(),
    RecordingStarted("r", "rec-1", 1764763200.5),
    RecordingFile("r", "rec-1", "alice", "rec-1/alice.webm", 123456, 61.25, "ab" * 32, 1764763200.5, True),
    RecordingFailed("r", "rec-1", "bob", "disk_too_slow"),
    RecordingStopped("r", "rec-1", "hangup"),
]


def test_every_api_message_round_trips_through_msgpack() -> None:
    assert {m.kind for m in EVERY_MESSAGE} == set(api._REGISTRY), "a message kind is missing here"
    for original in EVERY_MESSAGE:
        for kind in ("request", "reply", "event"):
            frame: dict[str, Any] = {"t": kind, "message": original.to_dict()}
            if kind != "event":
                frame["id"] = 7
            wire = encode(frame)
            assert int.from_bytes(wire[:4], "big") == len(wire) - 4
            back = message_of(decode(wire[4:]))
            assert back == original and type(back) is type(original)


def test_a_field_left_out_by_an_older_sender_takes_its_default() -> None:
    frame = {"t": "request", "id": 7, "message": {"kind": "subscribe", "room_id": "r", "participant_id": "bob"}}
    assert message_of(decode(encode(frame)[4:])) == Subscribe("r", "bob", chat=True)


def test_media_options_round_trip() -> None:
    options = MediaOptions(loopback=True, interfaces=("127.0.0.1",), per_connection_sockets=True,
                           port_min=40000, port_max=40100,
                           ice_servers=({"urls": "stun:127.0.0.1:3478"},), media_state_debounce=1.5)
    wire = encode({"t": "hello", "options": options.to_dict(), "log_level": 20})
    assert MediaOptions.from_dict(decode(wire[4:])["options"]) == options


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\xc1", "not msgpack"),
    (msgpack.packb({"t": "ok"}) + b"\x00", "not msgpack"),  # trailing bytes
    (msgpack.packb([1, 2]), "must be a map"),
    (msgpack.packb({"t": "teleport"}), "unknown frame type"),
    (msgpack.packb({"kind": "ok"}), "unknown frame type"),
    (msgpack.packb({"t": "request", "message": {"kind": "ok"}}), "id is NoneType"),
    (msgpack.packb({"t": "request", "id": "7", "message": {"kind": "ok"}}), "id is str"),
    (msgpack.packb({"t": "request", "id": True, "message": {"kind": "ok"}}), "id is bool"),
    (msgpack.packb({"t": "load", "rooms": 1, "streams": 2, "packets_per_second": "fast", "cpu": 0.5}),
     "packets_per_second is str"),
    (msgpack.packb({"t": "load", "rooms": 1, "streams": 2, "packets_per_second": 1, "cpu": 0.5, "dropped": "3"}),
     "dropped is str"),
    (msgpack.packb({"t": "load", "rooms": 1, "streams": 2, "packets_per_second": 1, "cpu": 0.5, "dropped": True}),
     "dropped is bool"),
    (msgpack.packb({"t": "load", "rooms": 1, "streams": 2, "packets_per_second": 1, "cpu": 0.5, "draining": 1}),
     "draining is int"),
    (msgpack.packb({"t": "event", "message": msgpack.ExtType(5, b"x")}), "extension type 5"),
    (msgpack.packb({1: "x"}), "not msgpack"),  # map keys must be strings
])
def test_bad_frames_are_refused(payload: bytes, reason: str) -> None:
    with pytest.raises(ChannelError, match=reason):
        decode(payload)


def test_a_load_frame_of_the_version_before_is_taken_with_its_later_fields_defaulted() -> None:
    # an SFU node not yet upgraded reports no dropped count; only a draining node says draining
    old = decode(msgpack.packb({"t": "load", "rooms": 1, "streams": 2, "packets_per_second": 3.5, "cpu": 0.25}))
    assert old == {"t": "load", "rooms": 1, "streams": 2, "packets_per_second": 3.5, "cpu": 0.25,
                   "dropped": 0, "draining": False}
    new = decode(msgpack.packb({"t": "load", "rooms": 1, "streams": 2, "packets_per_second": 3, "cpu": 0,
                                "dropped": 7, "draining": True}))
    assert (new["dropped"], new["draining"]) == (7, True)


def test_a_bad_message_inside_a_good_frame_is_refused() -> None:
    for message in ({"kind": "teleport"}, {"kind": "offer", "room_id": "r"}):
        with pytest.raises(ChannelError, match="request frame"):
            message_of(decode(encode({"t": "request", "id": 1, "message": message})[4:]))


async def _pair() -> tuple[Channel, socket.socket]:
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    return Channel(reader, writer), theirs


@pytest.mark.parametrize(("header", "reason"), [
    ((0).to_bytes(4, "big"), "frame length 0"),
    ((MAX_FRAME + 1).to_bytes(4, "big"), f"frame length {MAX_FRAME + 1}"),
])
async def test_frame_lengths_outside_the_limit_are_refused(header: bytes, reason: str) -> None:
    channel, theirs = await _pair()
    theirs.sendall(header + b"\x80" * 16)
    with pytest.raises(ChannelError, match=reason):
        await channel.receive()
    channel.close()
    theirs.close()


async def test_a_stream_that_ends_mid_frame_is_a_peer_gone() -> None:
    channel, theirs = await _pair()
    theirs.sendall(encode({"t": "shutdown"}) + (100).to_bytes(4, "big") + b"\x81")
    assert await channel.receive() == {"t": "shutdown"}
    theirs.close()
    with pytest.raises(ChannelClosed):
        await channel.receive()
    channel.close()


def test_a_frame_too_large_is_not_sent() -> None:
    with pytest.raises(ChannelError, match="exceeds"):
        encode({"t": "event", "message": {"kind": "ok", "blob": "x" * (MAX_FRAME + 1)}})


@pytest.mark.integration
def test_a_worker_refuses_a_bad_frame_loudly_and_exits() -> None:
    ours, theirs = socket.socketpair()
    process = subprocess.Popen([sys.executable, "-m", "sfu.worker_process", "3", str(theirs.fileno())],
                               pass_fds=(theirs.fileno(),), stderr=subprocess.PIPE)
    theirs.close()
    ours.sendall(encode({"t": "hello", "options": MediaOptions(loopback=True).to_dict(), "log_level": 20}))
    ours.sendall((5).to_bytes(4, "big") + b"\x92\x01\x02\x03\x04")  # a list, then garbage
    _, stderr = process.communicate(timeout=60)
    ours.close()
    assert process.returncode == 2
    assert "sfu-worker-3" in stderr.decode() and "refusing the pool's channel" in stderr.decode()
