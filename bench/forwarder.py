"""CPU cost of the SFU's per-packet path, without clients: `python -m bench.forwarder`.

One producer fans a recorded-like VP8 stream (1100-byte packets) out to S consumers. Each
forwarded packet pays what it pays in the SFU: header rewrite, retransmission cache, SRTP
protect with the profile aiortc negotiates, and a UDP ``sendto`` on 127.0.0.1 (to a socket that
is never read, so the kernel drops it). Each incoming packet also pays SRTP unprotect. Prints
JSON: CPU µs per forwarded packet (ingress amortised over the fan-out), and per stage.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import time

from pylibsrtp import Policy, Session

from sfu.consumer import Consumer
from sfu.forwarder import ExtensionLayout, payload_offset, unpack_fixed
from sfu.producer import Codec, Producer

VP8 = Codec("video/VP8", 90000, 96, rtx_payload_type=97, nack=True, pli=True, remb=True)


def _session(key: bytes, outbound: bool) -> Session:
    policy = Policy(
        key=key,
        ssrc_type=Policy.SSRC_ANY_OUTBOUND if outbound else Policy.SSRC_ANY_INBOUND,
        srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    )
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return Session(policy)


def run(subscribers: int, packets: int) -> dict[str, float]:
    key = os.urandom(28)
    ingress_tx, ingress_rx = _session(key, True), _session(key, False)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    address = sink.getsockname()
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.setblocking(False)

    producer: Producer[Consumer] = Producer("p", "alice", "video", VP8, max_bitrate=0, keyframe_interval=1.0)
    producer.attach_source(1234, None, 0, lambda d: True)
    for i in range(subscribers):
        srtp = _session(os.urandom(28), True)

        def send(data: bytes, _protect=srtp.protect, _sendto=out.sendto) -> bool:  # type: ignore[no-untyped-def]
            try:
                _sendto(_protect(data), address)
            except BlockingIOError:
                pass
            return True

        consumer = Consumer(f"c{i}", producer, f"s{i}", ssrc=1000 + i, rtx_ssrc=2000 + i,
                            send_rtp=send, send_rtcp=lambda d: True)
        consumer.configure(96, 97, ExtensionLayout(mid_id=1, mid="0", abs_send_time_id=3))
        producer.add_consumer(consumer)
        consumer.paused = False

    extension = struct.pack("!HHBBBB", 0xBEDE, 1, 0x32, 1, 2, 3)
    wire = []
    for seq in range(packets):
        header = struct.pack("!BBHII", 0x90, 96, seq & 0xFFFF, seq // 3 * 3000, 1234)
        wire.append(ingress_tx.protect(header + extension + b"\x10\x01" + bytes(1080)))

    start = time.process_time()
    for index, data in enumerate(wire):
        plain = ingress_rx.unprotect(data)
        offset = payload_offset(plain)
        b0, b1, seq, ts, _ = unpack_fixed(plain)
        producer.receive(plain, b0, b1, seq, ts, offset, index // 3 * 33)
    elapsed = time.process_time() - start
    forwarded = packets * subscribers
    sink.close()
    out.close()
    return {
        "subscribers": subscribers,
        "incoming_packets": packets,
        "forwarded_packets": forwarded,
        "cpu_seconds": round(elapsed, 4),
        "cpu_us_per_forwarded_packet": round(elapsed / forwarded * 1e6, 3),
        "forwarded_packets_per_cpu_second": round(forwarded / elapsed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--packets", type=int, default=3000)
    args = parser.parse_args()
    print(json.dumps([run(s, args.packets) for s in args.subscribers], indent=2))


if __name__ == "__main__":
    main()
