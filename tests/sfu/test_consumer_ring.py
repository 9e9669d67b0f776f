"""A consumer's NACK ring: sized to CACHE_MS of packets when the subscriber negotiated NACK,
a fixed NO_NACK_CACHE slots when it did not (it never asks for a retransmission)."""

from __future__ import annotations

import struct

from sfu.consumer import CACHE_MS, NO_NACK_CACHE, Consumer
from sfu.forwarder import ExtensionLayout, payload_offset
from sfu.producer import Codec, Producer

OPUS = Codec("audio/opus", 48000, 111, None, 2)


def _audio(nack: bool) -> tuple[Producer[Consumer], Consumer, list[bytes]]:
    producer: Producer[Consumer] = Producer("p", "alice", "audio", OPUS, max_bitrate=0,
                                               keyframe_interval=1.0)
    producer.attach_source(1234, None, 0, lambda d: True)
    sent: list[bytes] = []
    consumer = Consumer("c", producer, "bob", ssrc=1, rtx_ssrc=2,
                        send_rtp=lambda d: sent.append(bytes(d)) or True, send_rtcp=lambda d: True)
    consumer.configure(111, None, ExtensionLayout(), nack=nack)
    producer.add_consumer(consumer)
    consumer.paused = False
    return producer, consumer, sent


def _stream(producer: Producer[Consumer], seconds: float) -> int:
    """20 ms Opus packets: how many."""
    n = int(seconds * 50)
    for seq in range(1, n + 1):
        data = struct.pack("!BBHII", 0x80, 111, seq, seq * 960, 1234) + bytes(80)
        producer.receive(data, 0x80, 111, seq, seq * 960, payload_offset(data), seq * 20)
    return n


def test_without_nack_the_ring_stays_small_and_every_packet_is_forwarded() -> None:
    producer, consumer, sent = _audio(nack=False)
    n = _stream(producer, 4.0)
    assert len(consumer._cache) == NO_NACK_CACHE and len(consumer._rtx_ms) == NO_NACK_CACHE
    assert consumer.packets == n and len(sent) == n
    # in order, one sequence number after the other
    seqs = [struct.unpack_from("!H", d, 2)[0] for d in sent]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))
    producer.close()


def test_with_nack_the_ring_holds_about_cache_ms() -> None:
    producer, consumer, sent = _audio(nack=True)
    _stream(producer, 4.0)
    held = sum(p is not None for p in consumer._cache)
    assert 50 * CACHE_MS // 1000 <= held <= len(consumer._cache)
    assert len(consumer._cache) > NO_NACK_CACHE
    producer.close()


def test_producers_and_consumers_keep_no_attribute_dict() -> None:
    """Each has more attributes than a key-sharing dict holds: with a __dict__ of its own,
    ~1.5 KiB each, 8 of them a two-party call. Every attribute set on a configured, streaming
    pair is a slot, or a member of the C base."""
    producer, consumer, _ = _audio(nack=True)
    _stream(producer, 1)
    for obj in (producer, consumer):
        assert not hasattr(obj, "__dict__"), sorted(vars(obj))
