"""The C fan-out (sfu/_fastsend.c ``fanout``) against the Python one it replaces (Producer.receive's
loop over Consumer.forward and RawSender.send_rtp): the same packet stream through both, every
byte queued for the socket, every NACK ring slot and every counter the same."""

from __future__ import annotations

import contextlib
import random
import struct
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pylibsrtp
import pytest
from aiortc.rtcdtlstransport import State

from sfu import consumer as consumer_module
from sfu import fastsend
from sfu import producer as producer_module
from sfu import rtcp
from sfu.aiortc_hooks import MuxedProtocol, RawSender
from sfu.consumer import NO_NACK_CACHE, Consumer
from sfu.forwarder import ExtensionLayout
from sfu.producer import Codec, Producer

from .test_rtcp import FakeScheduler

pytestmark = pytest.mark.unit

VP8 = Codec("video/VP8", 90000, 97, rtx_payload_type=98, nack=True, pli=True, remb=True)
OPUS = Codec("audio/opus", 48000, 111)
KEY = b"\x10\x00\x9d\x01\x2a"  # VP8: start of partition 0, keyframe
DELTA = b"\x10\x01\x9d"  # VP8: start of partition 0, delta frame


class FakeMux:
    """What RawSender needs of a worker's shared socket (sfu.udp_mux.MuxSocket)."""

    def __init__(self) -> None:
        self.writable = True
        self.flushes = 0
        self.batch = fastsend.new_batch()

    def schedule_flush(self) -> None:
        self.flushes += 1


class ForwardCount:
    calls = 0  # of Consumer.forward, within counting_forwards()


@contextlib.contextmanager
def counting_forwards() -> Iterator[ForwardCount]:
    """Counts Consumer.forward's calls while inside: the packets a fan-out left to the Python."""
    count = ForwardCount()
    original = Consumer.forward

    def counting(self: Consumer, *args: Any) -> None:
        count.calls += 1
        original(self, *args)

    Consumer.forward = counting  # type: ignore[method-assign,assignment]
    try:
        yield count
    finally:
        Consumer.forward = original  # type: ignore[method-assign]


def _muxed_pair(mux: FakeMux, port: int) -> SimpleNamespace:
    """A nominated pair on the shared socket ``mux``, as aioice would nominate one."""
    protocol = MuxedProtocol.__new__(MuxedProtocol)
    protocol.socket = mux  # type: ignore[assignment]
    protocol.transport = SimpleNamespace(sendto=None)  # type: ignore[assignment]
    return SimpleNamespace(protocol=protocol, remote_addr=("127.0.0.1", port))


def _session(key: int) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=bytes([key]) * 30,
                              ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    return pylibsrtp.Session(policy=policy)


def _sender(key: int, port: int) -> tuple[RawSender, FakeMux]:
    """A RawSender routed to a shared socket's batch (by its first packet)."""
    mux = FakeMux()
    dtls = SimpleNamespace(_state=State.CONNECTED, _tx_srtp=_session(key),
                           transport=SimpleNamespace(_connection=SimpleNamespace(
                               _nominated={1: _muxed_pair(mux, port)})))
    raw = RawSender(dtls)  # type: ignore[arg-type]
    return raw, mux


def _split(data: bytes) -> tuple[bytes, int, int, int, int, int]:
    b0, b1, seq, ts, _ = struct.unpack_from("!BBHII", data)
    offset = 12 + (b0 & 0x0F) * 4
    if b0 & 0x10:
        offset += 4 + struct.unpack_from("!H", data, offset + 2)[0] * 4
    return data, b0, b1, seq, ts, offset


def _packet(seq: int, ts: int, payload: bytes, marker: int = 0, level: int | None = None,
            pt: int = 97) -> bytes:
    b0 = 0x80
    extensions = b""
    if level is not None:  # audio level, id 2 on the publisher's side
        b0 |= 0x10
        extensions = struct.pack("!HHBBH", 0xBEDE, 1, 0x20, 0x80 | level, 0)
    return struct.pack("!BBHII", b0, (marker << 7) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF,
                       1234) + extensions + payload


def _world(native: bool) -> dict[str, Any]:
    """Run one packet stream through a video and an audio producer and their consumers; return
    everything they sent and kept."""
    random.seed(15)
    scheduler = FakeScheduler()
    video: Producer[Consumer] = Producer("v", "alice", "video", VP8, max_bitrate=0,
                                         keyframe_interval=1.0, scheduler=scheduler)
    # (the audio publisher sends more than it may: some of its packets are policed away)
    audio: Producer[Consumer] = Producer("a", "alice", "audio", OPUS, max_bitrate=40_000,
                                         keyframe_interval=1.0, scheduler=scheduler)
    video.attach_source(1234, None, 0, lambda d: True)
    audio.attach_source(1234, None, 2, lambda d: True)
    consumers: dict[str, Consumer] = {}
    senders: dict[str, tuple[RawSender, FakeMux]] = {}
    plain: dict[str, list[bytes]] = {}

    def add(name: str, producer: Producer[Consumer], layout: ExtensionLayout, *,
            fast: bool = True, resume: bool = True, broken: bool = False,
            closes: str = "", nack: bool = True) -> Consumer:
        index = len(consumers)
        if fast:
            senders[name] = _sender(index + 1, 40000 + index)
            raw = senders[name][0]
            consumer = Consumer(name, producer, name, ssrc=0x1000 + index, rtx_ssrc=0x2000 + index,
                                send_rtp=raw.send_rtp, send_rtcp=raw.send_rtcp)
            consumer.fast_sender = raw
        else:
            sent = plain[name] = []

            def send(data: bytes) -> bool:
                if broken:
                    raise RuntimeError("broken")
                sent.append(data)
                if closes and len(sent) == 400:  # in the middle of one packet's fan-out
                    consumers[closes].close()
                return True

            consumer = Consumer(name, producer, name, ssrc=0x1000 + index, rtx_ssrc=0x2000 + index,
                                send_rtp=send, send_rtcp=lambda d: True)
        consumer.configure(100 + index, 120 + index, layout, nack=nack)
        producer.add_consumer(consumer)
        if resume:
            consumer.resume()
        consumers[name] = consumer
        return consumer

    add("abs_mid", video, ExtensionLayout(mid_id=4, mid="0", abs_send_time_id=9))
    add("mid", video, ExtensionLayout(mid_id=3, mid="video-17"))
    add("bare", video, ExtensionLayout())
    add("plain", video, ExtensionLayout(mid_id=4, mid="1"), fast=False)
    add("broken", video, ExtensionLayout(), fast=False, broken=True)
    add("paused", video, ExtensionLayout(abs_send_time_id=2), resume=False)
    add("closer", video, ExtensionLayout(), fast=False, closes="victim")
    add("victim", video, ExtensionLayout(mid_id=2, mid="v"))
    gated = add("gated", video, ExtensionLayout(abs_send_time_id=2))
    refused = add("refused", video, ExtensionLayout(mid_id=1, mid="9"))
    add("level_mid", audio, ExtensionLayout(mid_id=4, mid="2", audio_level_id=1))
    add("level", audio, ExtensionLayout(audio_level_id=5))
    add("audio_bare", audio, ExtensionLayout())
    add("audio_no_nack", audio, ExtensionLayout(mid_id=4, mid="3"), nack=False)
    # (audio has few consumers, video many: the C fan-out's two ways of copying the list)
    add("audio_closer", audio, ExtensionLayout(), fast=False, closes="audio_victim")
    add("audio_victim", audio, ExtensionLayout(mid_id=4, mid="4"))

    # "refused": its SRTP session already protected the sequence numbers it is about to send,
    # so libsrtp refuses them as replays (a raise in the fan-out, counted in send_errors)
    session = senders["refused"][0]._dtls._tx_srtp
    for n in range(1, 40):
        session.protect(struct.pack("!BBHII", 0x80, 100, (refused._last_seq + n) & 0xFFFF, 0,
                                    refused.ssrc) + b"x")

    received = 0  # packets the C receive took whole
    trace: list[tuple[tuple[int, int, int, float, float, int], ...]] = []

    def receive(*args: Any) -> bool:
        nonlocal received
        taken: bool = fastsend.native_receive(*args)
        received += taken
        return taken

    saved = (producer_module._fanout, producer_module._receive, consumer_module._ring_move,
             producer_module.current_ms, consumer_module.current_ms)
    producer_module._fanout = fastsend.native_fanout if native else None
    producer_module._receive = receive if native else None
    consumer_module._ring_move = fastsend.native_ring_move if native else None
    # the wall clock (a replay's arrival time, when a NACK was answered) the same in both runs
    producer_module.current_ms = consumer_module.current_ms = lambda: 3_900_000_001_000
    with counting_forwards() as forwards:
        try:
            seq, ts, arrival = 65400, 4_000_000_000, 3_900_000_000_000
            for n in range(700):
                if n == 300:  # the publisher reconnects: a new epoch, video waits for a keyframe
                    video.attach_source(1234, None, 0, lambda d: True)
                    audio.attach_source(1234, None, 2, lambda d: True)
                    seq, ts = 100, 50_000
                if n == 120:
                    senders["gated"][1].writable = False  # the socket's buffer is full
                if n == 160:
                    senders["gated"][1].writable = True
                if n == 200:
                    gated.pause()
                if n == 230:
                    gated.resume()
                if n == 250:  # ring packets someone holds: the C fan-out must not rewrite them
                    held = [(p, bytes(p)) for p in consumers["abs_mid"]._cache if p is not None]
                if n == 350:  # aioice nominates another pair (an ICE restart): a new address
                    raw, mux = senders["mid"]
                    raw._nominated[1] = _muxed_pair(mux, 41000)
                if n == 450:  # a new SRTP session (a DTLS restart): the sender picks it up
                    senders["bare"][0]._dtls._tx_srtp = _session(99)
                if n % 100 == 50:  # NACKs mid-stream: the resent slots move with the rings' resizes
                    for consumer in consumers.values():
                        consumer.retransmit([(consumer._last_seq - k) & 0xFFFF for k in (1, 2, 5)])
                arrival += 3 + n % 5
                frame = n // 6
                # (few keyframes: the packets of the GOP run a video producer caches after one
                # are the C receive's too, the keyframe's start alone is Python's)
                keyframe = n in (0, 301, 455)
                payload = (KEY if keyframe else DELTA) + bytes([n & 0xFF]) * (n % 200)
                vts = ts + frame * 3000
                if n % 17 == 5:
                    seq += 1  # a packet lost on the way
                if n % 23 == 7:  # a late one, older than the newest
                    video.receive(*_split(_packet(seq - 3, vts, payload)), arrival)
                video.receive(*_split(_packet(seq, vts, payload, marker=n % 6 == 5)), arrival)
                audio.receive(*_split(_packet(seq, ts + n * 960, bytes([n & 0xFF]) * 60, pt=111,
                                              level=None if n % 11 == 0 else n % 100)), arrival)
                seq += 1
                # the producers' state as it moves (a reconnect resets some of it)
                trace.append(tuple((p._cycles, p._max_seq, p.packets, p._jitter, p._tokens,
                                    len(p._gop) if p._gop is not None else -1)
                                   for p in (video, audio)))
            # NACKs are answered from the ring the fan-out filled
            for consumer in consumers.values():
                consumer.rtt = 0.001
                consumer.retransmit([(consumer._last_seq - k) & 0xFFFF for k in range(0, 300, 7)])
        finally:
            (producer_module._fanout, producer_module._receive, consumer_module._ring_move,
             producer_module.current_ms, consumer_module.current_ms) = saved

    state = {
        name: {key: getattr(c, key) for key in (
            "_cache", "_size", "_rtx_ms", "_last_seq", "_last_ts", "_last_ms", "_seq_offset",
            "_ts_offset", "_epoch", "_turn_seq", "_turn_ts", "packets", "bytes",
            "packets_dropped", "send_errors", "retransmitted", "paused", "_waiting")}
        for name, c in consumers.items()
    }
    return {
        "state": state,
        "batches": {name: ([d for d, _ in mux.batch.items()], [a for _, a in mux.batch.items()],
                           mux.flushes)
                    for name, (_, mux) in senders.items()},
        "plain": plain,
        "forwards": forwards.calls,
        "received": received,
        "trace": trace,
        "producers": {p.kind: {key: getattr(p, key) for key in (
            "packets", "bytes", "last_arrival_ms", "_base_seq", "_max_seq", "_cycles",
            "_transit", "_jitter", "_tokens", "_bucket_ms", "level_sum", "level_count",
            "packets_policed", "packets_oversized", "waiting_for_keyframe", "_gop", "_gop_seq")}
            | {"nacks": dict(p._nacks.pending),
               "asked": {seq: (ms, [c.id for c in cs]) for seq, (ms, cs) in p._asked.items()}}
            for p in (video, audio)},
        "held": all(p == copy for p, copy in held),
    }


def test_the_c_fan_out_sends_and_keeps_what_the_python_one_does() -> None:
    assert fastsend.native_fanout is not None, "sfu/_fastsend.c was not built"
    python = _world(native=False)
    native = _world(native=True)
    assert native["batches"] == python["batches"]
    assert native["plain"] == python["plain"]
    assert native["producers"] == python["producers"]
    assert native["trace"] == python["trace"]
    for name, state in python["state"].items():
        assert native["state"][name] == state, name
    # the stream exercised what it should: rings resized, packets sent, dropped and refused
    state = python["state"]
    assert state["abs_mid"]["_size"] > 64 and state["abs_mid"]["packets"] > 500
    assert state["gated"]["packets_dropped"] > 0
    assert state["refused"]["send_errors"] > 0 and state["broken"]["send_errors"] > 0
    assert state["paused"]["packets"] == 0
    assert 0 < state["victim"]["packets"] < state["bare"]["packets"] and state["victim"]["_cache"] == []
    assert 0 < state["audio_victim"]["packets"] < state["audio_bare"]["packets"]
    assert state["audio_victim"]["_cache"] == []
    assert ("127.0.0.1", 41000) in python["batches"]["mid"][1]
    assert native["held"] and python["held"]
    assert all(s["retransmitted"] for n, s in state.items() if n not in ("paused", "broken", "victim"))
    producers = python["producers"]
    assert producers["audio"]["packets_policed"] > 0 and producers["audio"]["level_count"] > 0
    assert producers["video"]["nacks"] or producers["video"]["asked"] or \
        producers["video"]["packets"] > 700
    # ... and the C path took most of it: Consumer.forward ran for what is not the plain case,
    # Producer.receive's Python for what is not the plain case of receive
    assert native["forwards"] < python["forwards"] // 3
    assert python["received"] == 0 and native["received"] > 600


def test_protected_datagrams_decrypt_to_the_rewritten_packets() -> None:
    native = _world(native=True)
    datagrams, _, _ = native["batches"]["abs_mid"]
    policy = pylibsrtp.Policy(key=bytes([1]) * 30, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
    receiver = pylibsrtp.Session(policy=policy)
    plaintexts = []
    for data in datagrams:
        try:
            plaintexts.append(receiver.unprotect(data))
        except pylibsrtp.Error:
            pass  # a retransmission of a packet already received: a replay to libsrtp
    state = native["state"]["abs_mid"]
    assert len(plaintexts) == state["packets"] + state["retransmitted"]  # RTX: its own SSRC
    cache = [bytes(p) for p in state["_cache"] if p is not None]
    # every packet the ring can answer a NACK with went out (a late duplicate of an old one
    # takes its slot, with that slot's sequence number, but libsrtp refuses it as a replay)
    sent = {p[2:4] for p in plaintexts}
    assert cache and all(p[2:4] in sent for p in cache)
    assert set(cache) & set(plaintexts)


@pytest.mark.parametrize("native", [False, True])
def test_a_sender_with_no_nominated_pair_counts_nothing_as_sent(
        native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Connected but with no pair nominated by ICE (yet, or any more): nothing goes out, so
    nothing counts as sent, in the C fan-out or in Python; packets go once a pair is nominated."""
    if native:
        assert fastsend.native_fanout is not None, "sfu/_fastsend.c was not built"
    monkeypatch.setattr(producer_module, "_fanout", fastsend.native_fanout if native else None)
    monkeypatch.setattr(producer_module, "_receive", fastsend.native_receive if native else None)
    raw, mux = _sender(1, 40000)
    pair = raw._nominated.pop(1)  # DTLS up, ICE not yet nominated
    audio: Producer[Consumer] = Producer("a", "alice", "audio", OPUS, max_bitrate=0,
                                         keyframe_interval=1.0, scheduler=FakeScheduler())
    audio.attach_source(1234, None, 2, lambda d: True)
    consumer = Consumer("c", audio, "bob", ssrc=0x1000, rtx_ssrc=0x2000,
                        send_rtp=raw.send_rtp, send_rtcp=raw.send_rtcp)
    consumer.fast_sender = raw
    consumer.configure(100, 120, ExtensionLayout(audio_level_id=5))
    audio.add_consumer(consumer)
    consumer.resume()

    def send(first: int, count: int) -> None:
        for seq in range(first, first + count):
            audio.receive(*_split(_packet(seq, seq * 960, b"\x01" * 60, pt=111, level=30)),
                          3_900_000_000_000 + seq * 20)

    send(1, 5)
    consumer.retransmit([consumer._last_seq, (consumer._last_seq - 1) & 0xFFFF])  # a NACK
    assert (consumer.packets, consumer.bytes, consumer.retransmitted) == (0, 0, 0)
    assert consumer.packets_dropped == 5 and len(mux.batch) == 0
    assert not raw.send_rtp(_packet(99, 0, b"x")) and not raw.send_rtcp(rtcp.pli(1, 2))
    raw._nominated[1] = pair  # ICE nominated a pair: packets go, and count
    send(6, 5)
    assert consumer.packets == len(mux.batch) == 5 and consumer.packets_dropped == 5
    assert not native or raw._fast.ready  # (the C fan-out's route to the pair, once routed)
    consumer.retransmit([consumer._last_seq])
    assert consumer.retransmitted == 1 and len(mux.batch) == 6
    raw._nominated.clear()  # ICE closed: the pair (and the C fan-out's route to it) is gone
    send(11, 5)
    consumer.retransmit([(consumer._last_seq - 1) & 0xFFFF])
    assert consumer.packets == 5 and consumer.retransmitted == 1 and len(mux.batch) == 6
    assert consumer.packets_dropped == 10


H264 = Codec("video/H264", 90000, 102)


class Recorder:
    """A consumer that keeps what the producer forwards to it: (seq, keyframe)."""

    remb_bitrate = 0
    gate: Any = SimpleNamespace(paused=False)

    def __init__(self) -> None:
        self.forwarded: list[tuple[int, bool]] = []

    def forward(self, payload: bytes, padding: int, marker: int, seq: int, ts: int, level: int,
                abs24: int, keyframe: bool, epoch: int, arrival_ms: int) -> None:
        self.forwarded.append((seq, keyframe))

    def restart(self) -> None:
        pass

    def failed(self, exc: Exception) -> None:
        raise exc

    def close(self, reason: str = "closed") -> None:
        pass


def _receive_all(native: bool, codec: Codec, packets: list[tuple[int, bytes, int]]
                 ) -> dict[str, Any]:
    """``packets`` (seq, payload, arrival_ms; a frame per 3000 of RTP time) through a video
    producer, the C receive on or off: what it forwarded, the GOP run it kept, and how many
    packets the C receive took."""
    producer: Producer[Recorder] = Producer("v", "alice", "video", codec, max_bitrate=0,
                                            keyframe_interval=1.0, scheduler=FakeScheduler())
    recorder = Recorder()
    producer.add_consumer(recorder)
    taken = 0

    def receive(*args: Any) -> bool:
        nonlocal taken
        done: bool = fastsend.native_receive(*args)
        taken += done
        return done

    saved = producer_module._receive
    producer_module._receive = receive if native else None
    try:
        for seq, payload, arrival_ms in packets:
            producer.receive(*_split(_packet(seq, seq // 3 * 3000, payload, pt=codec.payload_type)),
                             arrival_ms)
    finally:
        producer_module._receive = saved
    gop = producer._gop
    return {"forwarded": recorder.forwarded, "taken": taken, "gop_seq": producer._gop_seq,
            "gop": None if gop is None else [(seq, ts, marker) for _, _, marker, seq, ts in gop]}


STAP_A = 0x78
FU_A = 0x7C


@pytest.mark.parametrize("payload, start", [
    (b"\x65\x88\x84", True),  # an IDR slice alone
    (b"\x67\x42\xc0", True),  # an SPS alone
    (b"\x68\xce", False),  # a PPS alone
    (b"\x41\x9a", False),  # a non-IDR slice
    (bytes([STAP_A]) + b"\x00\x02\x67\x42" + b"\x00\x02\x68\xce", True),  # SPS first
    (bytes([STAP_A]) + b"\x00\x02\x06\x05" + b"\x00\x02\x65\x88", True),  # SEI, then IDR
    (bytes([STAP_A]) + b"\x00\x02\x06\x05" + b"\x00\x02\x41\x9a", False),
    (bytes([STAP_A]) + b"\x00\x09\x06\x05\x65", False),  # a size past the end: not read on
    (bytes([STAP_A]) + b"\x00\x01", False),  # too short for a NAL header
    (bytes([FU_A, 0x85]) + b"\x88", True),  # FU-A: the start of an IDR slice
    (bytes([FU_A, 0x05]) + b"\x88", False),  # ... its middle
    (bytes([FU_A, 0x45]) + b"\x88", False),  # ... its end
    (bytes([FU_A, 0x81]) + b"\x9a", False),  # the start of a non-IDR slice
    (bytes([FU_A]), False),  # an FU-A without its header
    (b"", False),
])
def test_the_c_receive_finds_h264_keyframe_starts_as_python_does(payload: bytes,
                                                                 start: bool) -> None:
    """After a keyframe, a packet that starts another (a new picture) begins a new GOP run, and
    one that does not joins the run; the C receive takes the second kind itself."""
    packets = [(1, b"\x65\x88", 0), (2, b"\x41\x9a", 5), (3, payload, 10), (4, b"\x41\x9a", 15)]
    python = _receive_all(False, H264, packets)
    native = _receive_all(True, H264, packets)
    assert native == {**python, "taken": native["taken"]}
    assert python["forwarded"] == [(1, True), (2, False), (3, start), (4, False)]
    assert python["gop"] == ([(3, 3000, 0), (4, 3000, 0)] if start else
                             [(1, 0, 0), (2, 0, 0), (3, 3000, 0), (4, 3000, 0)])
    assert native["taken"] == (2 if start else 3)  # all but the keyframes' starts


def test_the_c_receive_caches_the_gop_run_and_ends_it_as_python_does() -> None:
    """The run after a keyframe grows with every packet, in C, until it is too long (a run of
    GOP_MAX_PACKETS) or too old (GOP_MAX_AGE_MS after its keyframe); it stays ended until the
    next keyframe."""
    max_packets, max_ms = producer_module.GOP_MAX_PACKETS, producer_module.GOP_MAX_AGE_MS
    # a keyframe and a run longer than the cache holds, 1 ms apart
    packets = [(0, KEY, 0)] + [(seq, DELTA, seq) for seq in range(1, max_packets + 5)]
    python = _receive_all(False, VP8, packets)
    native = _receive_all(True, VP8, packets)
    assert python["gop"] is None and native == {**python, "taken": native["taken"]}
    assert native["taken"] == len(packets) - 1
    # the same, stopped one packet short of the cache's end: the whole run is kept
    python = _receive_all(False, VP8, packets[:max_packets])
    native = _receive_all(True, VP8, packets[:max_packets])
    assert len(python["gop"]) == max_packets and native == {**python, "taken": native["taken"]}
    # a keyframe, a run 100 ms apart that outlives the cache's age, then a keyframe that starts
    # another run
    slow = [(0, KEY, 0)] + [(seq, DELTA, seq * 100) for seq in range(1, max_ms // 100 + 3)]
    last = slow[-1][0]
    for tail in ([], [(last + 1, KEY, last * 100 + 100), (last + 2, DELTA, last * 100 + 200)]):
        python = _receive_all(False, VP8, slow + tail)
        native = _receive_all(True, VP8, slow + tail)
        assert native == {**python, "taken": native["taken"]}
        assert native["taken"] == len(slow) - 1 + len(tail) // 2
    assert python["gop"] == [(last + 1, (last + 1) // 3 * 3000, 0), (last + 2, (last + 2) // 3 * 3000, 0)]
    assert python["gop_seq"] == last + 1


class _Dtls:
    """A DTLS transport's attributes the sender reads, in an instance dict as aiortc's own."""

    def __init__(self, nominated: dict[int, Any]) -> None:
        self._state = State.CONNECTED
        self._tx_srtp = _session(1)
        self.transport = SimpleNamespace(_connection=SimpleNamespace(_nominated=nominated))


def _audio_through(raw: RawSender, nack: bool) -> tuple[Producer[Consumer], Consumer]:
    """An audio producer and one resumed consumer of it that sends through ``raw``."""
    audio: Producer[Consumer] = Producer("a", "alice", "audio", OPUS, max_bitrate=0,
                                         keyframe_interval=1.0, scheduler=FakeScheduler())
    audio.attach_source(1234, None, 0, lambda d: True)
    consumer = Consumer("c", audio, "c", ssrc=0x1000, rtx_ssrc=0x2000, send_rtp=raw.send_rtp,
                        send_rtcp=raw.send_rtcp)
    consumer.fast_sender = raw
    consumer.configure(100, 120, ExtensionLayout(), nack=nack)
    audio.add_consumer(consumer)
    consumer.resume()
    return audio, consumer


def test_the_c_fan_out_sees_every_change_of_a_senders_state() -> None:
    """The C fan-out skips its per-consumer lookups while the sender's DTLS transport, nominated
    pairs and socket are unchanged: a change of any of them (by attribute stores the interpreter
    has specialised, in a loop) reaches the next packet, as the Python path sees it."""
    assert fastsend.native_fanout is not None, "sfu/_fastsend.c was not built"
    mux = FakeMux()
    nominated = {1: _muxed_pair(mux, 40000)}
    dtls = _Dtls(nominated)
    raw = RawSender(dtls)  # type: ignore[arg-type]
    audio, consumer = _audio_through(raw, nack=True)
    sent: list[tuple[int, int]] = []  # (sequence number, port) of what should be in the batch
    receiver = pylibsrtp.Session(policy=pylibsrtp.Policy(
        key=bytes([1]) * 30, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
    with counting_forwards() as forwards:
        for n in range(90):
            connected = n % 7 not in (3, 4)
            dtls._state = State.CONNECTED if connected else State.CLOSED
            mux.writable = n % 11 != 5
            if n == 40:  # aioice nominates another pair
                nominated[1] = _muxed_pair(mux, 40001)
            if n == 60:  # DTLS renewed the keys
                dtls._tx_srtp = _session(2)
                receiver = pylibsrtp.Session(policy=pylibsrtp.Policy(
                    key=bytes([2]) * 30, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
            audio.receive(*_split(_packet(n, n * 960, b"x" * 20, pt=111)), 3_900_000_000_000 + 20 * n)
            if connected and mux.writable:
                sent.append((n, 40001 if n >= 40 else 40000))
            datagram, address = mux.batch.items()[-1]
            if sent and sent[-1][0] == n:  # it was queued, keyed as the sender now is
                out_seq = struct.unpack_from("!H", receiver.unprotect(datagram), 2)[0]
                assert (out_seq - n) & 0xFFFF == consumer._seq_offset & 0xFFFF
            assert (len(mux.batch), address[1]) == (len(sent), sent[-1][1]), n
    assert forwards.calls < 45  # the C path took the plain packets


def test_a_ring_without_nack_turns_in_the_c_fan_out() -> None:
    """A subscriber that negotiated no NACK (Opus as browsers offer it) keeps a ring of
    NO_NACK_CACHE slots that no turn resizes: its turns, one every NO_NACK_CACHE packets, are
    the C fan-out's too, and every packet goes out as the Python path sends it."""
    assert fastsend.native_fanout is not None, "sfu/_fastsend.c was not built"
    raw, mux = _sender(1, 40000)
    audio, consumer = _audio_through(raw, nack=False)
    with counting_forwards() as forwards:
        audio.receive(*_split(_packet(0, 0, b"x" * 20, pt=111)), 3_900_000_000_000)
        first = forwards.calls  # (the first packet sets the stream up in Python)
        for n in range(1, 5 * NO_NACK_CACHE + 1):
            audio.receive(*_split(_packet(n, n * 960, b"x" * 20, pt=111)),
                          3_900_000_000_000 + 20 * n)
    assert forwards.calls == first
    assert consumer.packets == len(mux.batch) == 5 * NO_NACK_CACHE + 1
    assert len(consumer._cache) == NO_NACK_CACHE


def test_a_ring_with_nack_turns_in_the_c_fan_out() -> None:
    """A subscriber that negotiated NACK: at each turn of its ring only Consumer._turned runs in
    Python (it may resize the ring); the packet itself stays the C fan-out's, and lands in the
    ring as it is after the resize."""
    assert fastsend.native_fanout is not None, "sfu/_fastsend.c was not built"
    raw, mux = _sender(1, 40000)
    audio, consumer = _audio_through(raw, nack=True)
    turns: list[int] = []
    turned = Consumer._turned

    def counting(self: Consumer, out_seq: int, out_ts: int) -> None:
        turns.append(out_seq)
        turned(self, out_seq, out_ts)

    Consumer._turned = counting  # type: ignore[method-assign]
    try:
        with counting_forwards() as forwards:
            audio.receive(*_split(_packet(0, 0, b"x" * 20, pt=111)), 3_900_000_000_000)
            first = forwards.calls  # (the first packet sets the stream up in Python)
            n = 400
            for seq in range(1, n + 1):
                audio.receive(*_split(_packet(seq, seq * 960, b"x" * 20, pt=111)),
                              3_900_000_000_000 + 20 * seq)
    finally:
        Consumer._turned = turned  # type: ignore[method-assign]
    assert turns  # the ring came round, and was sized to the stream's rate
    assert forwards.calls == first
    assert consumer.packets == len(mux.batch) == n + 1
    last = consumer._last_seq
    newest = consumer._cache[last % consumer._size]
    assert newest is not None and struct.unpack_from("!H", newest, 2)[0] == last
    assert sum(p is not None for p in consumer._cache) >= 50  # a second of 20 ms packets


def test_a_ring_turn_that_changes_the_route_sends_nothing_on_the_old_one() -> None:
    """The C fan-out checked the consumer's route before Consumer._turned ran in Python: a turn
    that changed it (here: no sender any more) must not have the packet sent where it was
    routed; the consumer is told (failed), and the fan-out carries on."""
    assert fastsend.native_fanout is not None, "sfu/_fastsend.c was not built"
    raw, mux = _sender(1, 40000)
    audio, consumer = _audio_through(raw, nack=True)
    turned = Consumer._turned
    failures: list[Exception] = []

    def unrouting(self: Consumer, out_seq: int, out_ts: int) -> None:
        turned(self, out_seq, out_ts)
        self.fast_sender = None

    audio.receive(*_split(_packet(0, 0, b"x" * 20, pt=111)), 3_900_000_000_000)
    Consumer._turned = unrouting  # type: ignore[method-assign]
    failed = Consumer.failed
    Consumer.failed = lambda self, exc: failures.append(exc)  # type: ignore[method-assign]
    try:
        seq = 0
        while not failures and seq < 400:
            seq += 1
            audio.receive(*_split(_packet(seq, seq * 960, b"x" * 20, pt=111)),
                          3_900_000_000_000 + 20 * seq)
    finally:
        Consumer._turned = turned  # type: ignore[method-assign]
        Consumer.failed = failed  # type: ignore[method-assign]
    assert [type(exc) for exc in failures] == [RuntimeError]
    assert consumer.packets == len(mux.batch) == seq  # the turn's packet was not sent


@pytest.mark.parametrize("native", [False, True])
def test_a_consumer_closed_during_the_fan_out_leaves_the_others_their_packet(
        native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A consumer whose sending closes another one (as a subscriber's transport closing all its
    consumers would) does not take the packet from the consumer after it: the C fan-out walks a
    copy of the list, and the Python one must do the same."""
    if native:
        assert fastsend.native_fanout is not None, "sfu/_fastsend.c was not built"
    monkeypatch.setattr(producer_module, "_fanout", fastsend.native_fanout if native else None)
    monkeypatch.setattr(producer_module, "_receive", fastsend.native_receive if native else None)
    audio: Producer[Consumer] = Producer("a", "alice", "audio", OPUS, max_bitrate=0,
                                         keyframe_interval=1.0, scheduler=FakeScheduler())
    audio.attach_source(1234, None, 2, lambda d: True)
    sent: dict[str, list[int]] = {"first": [], "closer": [], "last": []}
    consumers: dict[str, Consumer] = {}

    def sender(name: str) -> Any:
        def send_rtp(data: bytes) -> bool:
            sent[name].append(struct.unpack_from("!H", data, 2)[0])
            if name == "closer":
                consumers["first"].close()
            return True
        return send_rtp

    for i, name in enumerate(sent):
        consumer = Consumer(name, audio, "bob", ssrc=0x1000 + i, rtx_ssrc=0x2000 + i,
                            send_rtp=sender(name), send_rtcp=lambda d: True)
        consumer.configure(111, None, ExtensionLayout())
        audio.add_consumer(consumer)
        consumer.resume()
        consumers[name] = consumer
    audio.receive(*_split(_packet(1, 960, b"\x01" * 60, pt=111)), 3_900_000_000_000)
    assert [len(sent[name]) for name in sent] == [1, 1, 1]
    assert audio.consumers == [consumers["closer"], consumers["last"]]
    audio.close()
