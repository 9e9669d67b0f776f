"""Microbenchmark of the router's periodic bookkeeping (not a test): Router._tick for N
two-party rooms (each participant publishes audio+video and subscribes to the other's), with
fake RTCP senders that only count bytes. Prints µs per room per second (RTCP_EVERY ticks) and,
with --profile, a cProfile of the ticks.

    .venv/bin/python scripts/tick_microbench.py --rooms 10 --seconds 2000 [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import pstats
import random
import time
from types import SimpleNamespace
from typing import Any

from sfu.consumer import Consumer
from sfu.options import MediaOptions
from sfu.producer import Codec, Producer
from sfu.router import RTCP_EVERY, Participant, Router

AUDIO = Codec("audio/opus", 48000, 111, channels=2)
VIDEO = Codec("video/VP8", 90000, 96, rtx_payload_type=97, nack=True, pli=True, remb=True)


def _room(index: int, sent: list[int], packets: list[bytes] | None = None) -> Router:
    router = Router(f"room{index}", MediaOptions(loopback=True), lambda message: None)

    def send(data: bytes) -> bool:
        sent[0] += 1
        sent[1] += len(data)
        if packets is not None:
            packets.append(data)
        return True

    now = router.now_ms()
    names = ("a", "b")
    for name in names:
        transport: Any = SimpleNamespace(connected=True, last_packet_ms=now + 10**9,
                                         state="connected", closed=True)
        router.participants[name] = Participant(name, publish=transport, subscribe=transport)
        for mid, kind, codec in (("0", "audio", AUDIO), ("1", "video", VIDEO)):
            producer = router.create_producer(name, mid, kind, codec)
            producer.attach_source((index * 4 + len(name) * 2 + (kind == 'video')) * 7919 + ord(name), None, 0, send)
            producer._base_seq = 100
            producer._max_seq = 1100
            producer.packets = 990
            producer.bytes = 990_000
            producer.handle_sender_report(5 << 32, 1234)
    ssrc = 1000 + index * 16
    for producer in router.producers.values():
        ssrc += 1
        consumer = Consumer(f"c{ssrc}", producer, "b" if producer.participant_id == "a" else "a",
                            ssrc=ssrc, rtx_ssrc=ssrc + 5000, send_rtp=lambda d: True,
                            send_rtcp=send)
        consumer.packets, consumer.bytes = 1000, 1_000_000
        consumer.remb_bitrate = 2_000_000
        consumer.paused = False
        producer.add_consumer(consumer)
    return router


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=2000, help="simulated seconds")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--digest", action="store_true",
                        help="on a frozen clock, print a digest of every RTCP packet and bitrate "
                             "(to compare what goes on the wire before and after a change)")
    args = parser.parse_args()
    sent = [0, 0]
    if args.digest:
        random.seed(1)
        clock = [1_700_000_000.123456]
        time.time = lambda: clock[0]  # type: ignore[assignment]
        time.monotonic = lambda: clock[0] - 1_600_000_000  # type: ignore[assignment]
        packets: list[bytes] = []
        hashing = hashlib.sha256()
        paused = 0
    rooms = [_room(i, sent, packets if args.digest else None) for i in range(args.rooms)]
    ticks = args.seconds * RTCP_EVERY
    if args.digest:
        for second in range(args.seconds):
            for slot in range(RTCP_EVERY):
                for room in rooms:
                    for producer in room.producers.values():
                        producer.bytes += 1000 + 7 * second + slot
                        producer._max_seq += 10 + second % 3
                        producer.packets += 9 + second % 2
                        for consumer in producer.consumers:
                            consumer.bytes += 900 + 11 * second
                            consumer.packets += 9
                            consumer.remb_bitrate = 10_000 + 30_000 * (second // 7 % 5)
                    room._tick()
                    paused += sum(c.gate.paused for p in room.producers.values()
                                  for c in p.consumers)
                    clock[0] += 0.0625
                    hashing.update(repr([(p.bitrate, [(c.bitrate, c.paused, c.gate.paused)
                                                      for c in p.consumers])
                                         for p in room.producers.values()]).encode())
        for data in packets:
            hashing.update(data)
        print(f"{len(packets)} packets, {paused} paused consumer-ticks, digest {hashing.hexdigest()}")
        return

    def traffic(room: Router) -> None:
        """The bytes a second brings, so the bitrates are not constant."""
        for producer in room.producers.values():
            producer.bytes += 12_500
            producer._max_seq += 100
            producer.packets += 100
            for consumer in producer.consumers:
                consumer.bytes += 12_500
                consumer.packets += 100

    def run() -> None:
        for _ in range(ticks):
            for room in rooms:
                traffic(room)
                room._tick()

    run()  # warm up
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return
    # the per-tick packet bump above, alone, to subtract
    def bump() -> None:
        for _ in range(ticks):
            for room in rooms:
                traffic(room)

    results = []
    for _ in range(args.repeat):
        sent[:] = [0, 0]
        t0 = time.perf_counter()
        bump()
        t1 = time.perf_counter()
        run()
        t2 = time.perf_counter()
        results.append(((t2 - t1) - (t1 - t0)) / (args.seconds * args.rooms) * 1e6)
    results.sort()
    print(f"us per room-second: median {results[len(results) // 2]:.1f} "
          f"min {results[0]:.1f} max {results[-1]:.1f}  "
          f"(rtcp packets per room-second {sent[0] / args.seconds / args.rooms:.1f}, "
          f"bytes {sent[1] / args.seconds / args.rooms:.0f})")


if __name__ == "__main__":
    asyncio.run(main())
