"""End-to-end CPU of the SFU per forwarded packet: `python -m bench.forward_e2e`.

The SFU (LocalMediaPlane on uvloop, loopback mode) runs in a child process and is driven over a
pipe with sfu.api messages as dicts. In this process, one light publisher sends synthetic VP8-like
RTP (1100-byte packets at about 500 kbps, no encoder) and S light subscribers count packets (no
decoder), both through aiortc connections disarmed by sfu.aiortc_hooks. The child's CPU time
(user + system, ICE/DTLS/SRTP/RTCP/bookkeeping included) over the measured window divided by the
packets the subscribers received gives µs per forwarded packet. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import struct
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

PACKETS_PER_SECOND = 57  # 1100-byte packets: about 500 kbps
KEYFRAME_EVERY = 30  # packets: the synthetic publisher ignores PLI, so it repeats them


def _serve(conn: Connection, media_port: int, per_connection: bool) -> None:
    """Child process: a LocalMediaPlane answering requests from the pipe."""
    import uvloop

    from sfu.api import MediaError, Message
    from sfu.options import MediaOptions
    from sfu.worker import LocalMediaPlane

    async def main() -> None:
        plane = LocalMediaPlane(MediaOptions(loopback=True, max_publish_bitrate=0, media_port=media_port,
                                             per_connection_sockets=per_connection))
        plane.start()
        plane.on_event(lambda event: conn.send(("event", event.to_dict())))
        loop = asyncio.get_running_loop()
        while True:
            request = await loop.run_in_executor(None, conn.recv)
            if request == "cpu":
                times = os.times()
                conn.send(("reply", times.user + times.system))
            elif request == "stop":
                break
            else:
                try:
                    conn.send(("reply", (await plane.request(Message.from_dict(request))).to_dict()))
                except MediaError as exc:
                    conn.send(("reply", {"kind": "error", "code": exc.code}))
        await plane.close()

    uvloop.run(main())


class _Remote:
    """This process's side of the pipe: requests in order, server offers to a callback."""

    def __init__(self, conn: Connection, on_offer: Any) -> None:
        self._conn = conn
        self._loop = asyncio.get_running_loop()
        self._replies: asyncio.Queue[Any] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._on_offer = on_offer
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                kind, body = self._conn.recv()
            except (EOFError, OSError):
                return
            if kind == "reply":
                self._loop.call_soon_threadsafe(self._replies.put_nowait, body)
            elif body.get("kind") == "server_offer":
                self._loop.call_soon_threadsafe(self._on_offer, body)

    async def request(self, message: Any) -> Any:
        async with self._lock:
            self._conn.send(message if isinstance(message, str) else message.to_dict())
            return await self._replies.get()


async def measure(subscribers: int, duration: float, media_port: int = 0,
                  per_connection: bool = False) -> dict[str, Any]:
    from aiortc import (
        RTCBundlePolicy,
        RTCConfiguration,
        RTCPeerConnection,
        RTCSessionDescription,
    )

    from sfu import aiortc_hooks
    from sfu.api import AnswerToServerOffer, Offer, OpenRoom, Subscribe
    from sfu.network import NetworkOptions

    loopback = NetworkOptions(loopback=True)

    def client_pc() -> RTCPeerConnection:
        return RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )

    parent, child = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(target=_serve, args=(child, media_port, per_connection))
    process.start()
    received: dict[str, int] = {}
    viewers: dict[str, RTCPeerConnection] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def answer(offer: dict[str, Any]) -> None:
        name = offer["participant_id"]
        pc = viewers[name]
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        for transceiver in pc.getTransceivers():
            aiortc_hooks.disarm_receiver(transceiver.receiver, lambda parameters: None)

        async def count(data: bytes, arrival_time_ms: int) -> None:
            received[name] = received.get(name, 0) + 1

        async def ignore(data: bytes) -> None:
            return None

        aiortc_hooks.intercept_packets(pc, count, ignore)
        loopback.prepare(pc)
        await pc.setLocalDescription(await pc.createAnswer())
        await remote.request(AnswerToServerOffer(
            "bench", name, "subscribe", pc.localDescription.sdp, offer["offer_id"]))

    def on_offer(offer: dict[str, Any]) -> None:
        task = asyncio.ensure_future(answer(offer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    remote = _Remote(parent, on_offer)
    await remote.request(OpenRoom("bench"))
    publisher = client_pc()
    transceiver = publisher.addTransceiver("video", direction="sendonly")
    aiortc_hooks.disarm_sender(transceiver.sender)
    loopback.prepare(publisher)
    await publisher.setLocalDescription(await publisher.createOffer())
    reply = await remote.request(Offer("bench", "pub", "publish", publisher.localDescription.sdp))
    await publisher.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
    for i in range(subscribers):
        viewers[f"s{i}"] = client_pc()
        await remote.request(Subscribe("bench", f"s{i}"))
    while publisher.connectionState != "connected":
        await asyncio.sleep(0.05)
    raw = aiortc_hooks.RawSender(aiortc_hooks.dtls_transports(publisher)[0])
    ssrc = aiortc_hooks.sender_ssrcs(transceiver.sender)[0]
    payload_type = aiortc_hooks.negotiated_codecs(transceiver)[0].payloadType
    sequence = 0

    async def publish(seconds: float) -> None:
        nonlocal sequence
        due = time.monotonic()
        end = due + seconds
        while due < end:
            descriptor = b"\x10\x00" if sequence % KEYFRAME_EVERY == 0 else b"\x10\x01"
            header = struct.pack("!BBHII", 0x80, payload_type, sequence & 0xFFFF,
                                 (sequence // 2 * 3000) & 0xFFFFFFFF, ssrc)
            raw.send_rtp(header + descriptor + bytes(1078))
            sequence += 1
            due += 1 / PACKETS_PER_SECOND
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    await publish(3.0)  # connect everyone, first keyframes
    before, cpu_before, start = sum(received.values()), await remote.request("cpu"), time.monotonic()
    await publish(duration)
    cpu = await remote.request("cpu") - cpu_before
    elapsed = time.monotonic() - start
    forwarded = sum(received.values()) - before
    parent.send("stop")
    process.join(10)
    for pc in [publisher, *viewers.values()]:
        await pc.close()
    return {
        "subscribers": subscribers,
        "seconds": round(elapsed, 2),
        "sfu_cpu_seconds_per_second": round(cpu / elapsed, 4),
        "forwarded_packets_per_second": round(forwarded / elapsed),
        "cpu_us_per_forwarded_packet": round(cpu / max(forwarded, 1) * 1e6, 2),
        "subscribers_receiving": len([n for n in received.values() if n]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--media-port", type=int, default=0,
                        help="the SFU's one UDP port (sfu/udp_mux.py); 0: one the kernel picks")
    parser.add_argument("--per-connection", action="store_true",
                        help="a UDP socket per connection instead of the one port")
    args = parser.parse_args()
    results = [asyncio.run(measure(s, args.duration, args.media_port, args.per_connection)) for s in args.subscribers]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
