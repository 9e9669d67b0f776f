"""``expertcall bench soak``: one publisher, subscribers coming and going, a hostile path, for minutes.

The server under test (``expertcall serve``) runs in its own process; this process runs one light
WHIP publisher (bench/clients.py: pre-encoded VP8 and Opus, no encoder), and ``--workers``
processes run ``--subscribers`` light WHEP subscribers (no decoder) between them, all on
127.0.0.1 (one client process for all would itself lose packets and set the figures):

- each subscriber stays a random 10-60 s, then leaves (WHEP DELETE) and another joins;
- ``--loss`` of the datagrams on the publisher's path to the server, and of the SRTP reaching each
  subscriber, is dropped, and as much again is delayed by 5-30 ms (reordered);
- the publisher reconnects (WHIP DELETE, a new connection, a new POST) every ``--reconnect``
  seconds, and sends padding-only RTX bursts (libwebrtc's bandwidth probes) all along.

It reports, as JSON (and a PNG with ``--plot``): freezes (a subscriber that had its first keyframe
and then got no complete frame for more than 1 s, apart from the publisher's reconnect gaps),
errors and tracebacks in the server's log, and the server's memory (RSS, USS) over time.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import click
import pylibsrtp

from . import encoded
from .clients import PICTURE_IDS, Publisher, Subscriber, _delete
from .loopback import use_loopback_ice
from .media import _open_sessions, start_server
from .procfs import tree_memory

FREEZE_S = 1.0
RECONNECT_GRACE_S = 3.0  # after a publisher reconnect, the gap is the reconnect, not a freeze


class LossyPath:
    """Drops ``loss`` of what passes and delays as much again by 5-30 ms (reordering it)."""

    def __init__(self, loss: float, rng: random.Random) -> None:
        self.loss = loss
        self.rng = rng
        self.dropped = 0
        self.delayed = 0

    def fate(self) -> float:
        """-1: drop; 0: now; else the delay in seconds."""
        draw = self.rng.random()
        if draw < self.loss:
            self.dropped += 1
            return -1.0
        if draw < 2 * self.loss:
            self.delayed += 1
            return self.rng.uniform(0.005, 0.03)
        return 0.0


class LossySubscriber(Subscriber):
    """A light WHEP subscriber whose incoming SRTP crosses a lossy path."""

    path: LossyPath | None = None

    def _on_datagram(self, data: bytes, srtp: pylibsrtp.Session, fd: int) -> None:
        path = self.path
        fate = path.fate() if path is not None else 0.0
        if fate < 0:
            return
        if fate:
            asyncio.get_running_loop().call_later(fate, super()._on_datagram, data, srtp, -1)
            return
        super()._on_datagram(data, srtp, fd)


def _lossy_publisher_socket(publisher: Publisher, path: LossyPath) -> None:
    """Wrap the sendto of the publisher's sockets (asyncio's datagram transports) in ``path``."""
    loop = asyncio.get_running_loop()
    for transceiver in publisher.pc.getTransceivers()[:1]:
        connection = transceiver.sender.transport.transport._connection
        for protocol in connection._protocols:
            transport = protocol.transport
            sendto = transport.sendto

            def lossy(data: bytes, addr: Any = None, _sendto: Any = sendto) -> None:
                fate = path.fate()
                if fate < 0:
                    return
                if fate:
                    loop.call_later(fate, _sendto, data, addr)
                    return
                _sendto(data, addr)

            transport.sendto = lossy  # type: ignore[method-assign,assignment]


async def _probe_padding(publisher: Publisher, stop: asyncio.Event) -> int:
    """Padding-only RTX bursts on the publisher's RTX SSRC, as libwebrtc probes bandwidth: no
    original sequence number, the whole payload padding."""
    from sfu.aiortc_hooks import RawSender

    transceiver = publisher.pc.getTransceivers()[0]
    sender = transceiver.sender
    rtx = next((c for c in transceiver._codecs if c.mimeType.lower() == "video/rtx"), None)
    if rtx is None or not sender._rtx_ssrc:
        return 0
    raw = RawSender(sender.transport)
    sent = 0
    padding = bytes(223) + bytes([224])
    while not stop.is_set():
        for _ in range(5):
            # aiortc's own RTX sequence (its retransmissions share the SSRC and SRTP replay
            # window): RTCRtpSender.__rtx_sequence_number
            seq = getattr(sender, "_RTCRtpSender__rtx_sequence_number")
            setattr(sender, "_RTCRtpSender__rtx_sequence_number", (seq + 1) & 0xFFFF)
            header = struct.pack("!BBHII", 0xA0, rtx.payloadType, seq, 0, sender._rtx_ssrc)
            if raw.send_rtp(header + padding):
                sent += 1
        await asyncio.sleep(0.2)
    return sent


class SubscriberLoad:
    """``slots`` subscribers, each staying a random 10-60 s and then replaced, until ``end_at``
    (wall clock): run in a worker process of its own so that one client process is not what
    limits the soak."""

    def __init__(self, base_url: str, token: str, session: str, slots: int, loss: float,
                 seed: int) -> None:
        self.base_url, self.token, self.session = base_url, token, session
        self.slots = slots
        self.loss = loss
        self.rng = random.Random(seed)
        self.table = [0.0] * PICTURE_IDS  # latency is not measured here
        self.freezes: list[tuple[float, float]] = []  # wall clock
        self.joins = 0
        self.join_failures = 0
        self.no_video = 0  # subscribers that left without a first keyframe
        self.first_frames: list[float] = []
        self.paths: list[LossyPath] = []

    async def _one(self, http: aiohttp.ClientSession, end_at: float) -> None:
        while time.time() < end_at:
            subscriber = LossySubscriber(f"{self.base_url}/whep/{self.session}", self.token,
                                         self.table, audio=True, receiver_reports=True)
            path = LossyPath(self.loss, random.Random(self.rng.random()))
            subscriber.path = path
            self.paths.append(path)
            self.joins += 1
            leave_at = min(end_at, time.time() + self.rng.uniform(10, 60))
            try:
                await subscriber.start(http)
            except Exception:  # noqa: BLE001 - counted, and another joins
                self.join_failures += 1
                await subscriber.pc.close()
                await asyncio.sleep(1)
                continue
            last_frames, last_progress, frozen_since = 0, time.time(), 0.0
            while time.time() < leave_at:
                await asyncio.sleep(0.1)
                now = time.time()
                if subscriber.frames != last_frames:
                    if frozen_since:
                        self.freezes.append((frozen_since, now))
                        frozen_since = 0.0
                    last_frames, last_progress = subscriber.frames, now
                elif subscriber.first_frame_at and not frozen_since \
                        and now - last_progress > FREEZE_S:
                    frozen_since = last_progress
            if frozen_since:
                self.freezes.append((frozen_since, time.time()))
            if subscriber.first_frame_at:
                self.first_frames.append(subscriber.first_frame_at - subscriber.started_at)
            elif time.time() < end_at:
                self.no_video += 1
            if subscriber._reports is not None:
                subscriber._reports.cancel()
            await _delete(http, subscriber.resource, self.token)
            await subscriber.pc.close()

    async def run(self, end_at: float) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            tasks = []
            for _ in range(self.slots):
                tasks.append(asyncio.ensure_future(self._one(http, end_at)))
                await asyncio.sleep(self.rng.uniform(0.05, 0.3))
            results = await asyncio.gather(*tasks, return_exceptions=True)
        return {
            "joins": self.joins, "join_failures": self.join_failures,
            "no_video": self.no_video, "freezes": self.freezes,
            "first_frames": self.first_frames,
            "dropped": sum(p.dropped for p in self.paths),
            "delayed": sum(p.delayed for p in self.paths),
            "errors": [repr(r) for r in results if isinstance(r, BaseException)],
        }


def _subscribe(base_url: str, token: str, session: str, slots: int, loss: float, seed: int,
               end_at: float, results: Any) -> None:
    """A worker process's body."""
    use_loopback_ice()
    load = SubscriberLoad(base_url, token, session, slots, loss, seed)
    try:
        results.put(asyncio.run(load.run(end_at)))
    except Exception as exc:  # noqa: BLE001 - the coordinator must hear of it
        results.put({"errors": [repr(exc)]})


class Soak:
    def __init__(self, base_url: str, token: str, session: str, subscribers: int, loss: float,
                 reconnect: float, seed: int, workers: int) -> None:
        self.base_url, self.token, self.session = base_url, token, session
        self.slots = subscribers
        self.loss = loss
        self.reconnect = reconnect
        self.seed = seed
        self.workers = workers
        self.rng = random.Random(seed)
        self.video = encoded.video()
        self.audio = encoded.audio()
        self.table = [0.0] * PICTURE_IDS
        self.publisher_path = LossyPath(loss, self.rng)
        self.reconnects: list[float] = []  # wall clock
        self.padding_sent = 0

    async def _publisher(self, http: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            publisher = Publisher(f"{self.base_url}/whip/{self.session}", self.token, self.video,
                                  self.audio, self.table)
            await publisher.start(http)
            _lossy_publisher_socket(publisher, self.publisher_path)
            self.reconnects.append(time.time())
            probe_stop = asyncio.Event()
            probe = asyncio.ensure_future(_probe_padding(publisher, probe_stop))
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.reconnect)
            except TimeoutError:
                pass
            probe_stop.set()
            self.padding_sent += await probe
            self.reconnects.append(time.time())
            await publisher.close(http)

    def _in_reconnect(self, start: float, end: float) -> bool:
        return any(start - RECONNECT_GRACE_S <= at <= end + RECONNECT_GRACE_S
                   for at in self.reconnects)

    async def run(self, duration: float, pid: int, on_sample: Any) -> dict[str, Any]:
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        stop = asyncio.Event()
        memory: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as http:
            publishing = asyncio.ensure_future(self._publisher(http, stop))
            await asyncio.sleep(2)
            end_at = time.time() + duration
            procs = []
            for index in range(self.workers):
                slots = self.slots // self.workers + (index < self.slots % self.workers)
                proc = ctx.Process(target=_subscribe, daemon=True, args=(
                    self.base_url, self.token, self.session, slots, self.loss,
                    self.seed * 1000 + index, end_at, results))
                proc.start()
                procs.append(proc)
            start = time.monotonic()
            while time.time() < end_at:
                used = tree_memory(pid)
                sample = {"t": round(time.monotonic() - start, 1), "rss_kb": used.rss_kb,
                          "uss_kb": used.uss_kb}
                memory.append(sample)
                on_sample(sample)
                await asyncio.sleep(5)
            loop = asyncio.get_running_loop()
            reports = [await loop.run_in_executor(None, results.get, True, 120) for _ in procs]
            for proc in procs:
                proc.join(10)
            stop.set()
            publisher_errors = [repr(e) for e in await asyncio.gather(
                publishing, return_exceptions=True) if isinstance(e, BaseException)]
        freezes = [(a, b) for r in reports for a, b in r.get("freezes", [])]
        real = [b - a for a, b in freezes if not self._in_reconnect(a, b)]
        first = sorted(f for r in reports for f in r.get("first_frames", []))
        return {
            "duration_s": duration, "subscribers": self.slots, "workers": self.workers,
            "loss": self.loss, "publisher_reconnects": len(self.reconnects) // 2,
            "padding_rtx_sent": self.padding_sent,
            "joins": sum(r.get("joins", 0) for r in reports),
            "join_failures": sum(r.get("join_failures", 0) for r in reports),
            "left_without_video": sum(r.get("no_video", 0) for r in reports),
            "injected": {
                "publisher_dropped": self.publisher_path.dropped,
                "publisher_delayed": self.publisher_path.delayed,
                "subscribers_dropped": sum(r.get("dropped", 0) for r in reports),
                "subscribers_delayed": sum(r.get("delayed", 0) for r in reports),
            },
            "freezes_over_1s": len(real),
            "longest_freeze_s": round(max(real, default=0.0), 2),
            "freezes_during_publisher_reconnects": len(freezes) - len(real),
            "first_frame_s": {"p50": first[len(first) // 2] if first else None,
                              "p95": first[int(len(first) * 0.95)] if first else None},
            "client_errors": publisher_errors + [e for r in reports for e in r.get("errors", [])],
            "memory": memory,
        }


def _server_log_faults(log: Path) -> dict[str, Any]:
    text = log.read_text(errors="replace")
    lines = text.splitlines()
    faults = [line for line in lines if "Traceback" in line or " ERROR " in line
              or line.startswith("ERROR")]
    return {"tracebacks": text.count("Traceback"), "error_lines": len(faults),
            "first_errors": faults[:5]}


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["memory"]
    t = [s["t"] for s in samples]
    figure, axis = plt.subplots(figsize=(8, 4))
    axis.plot(t, [s["rss_kb"] / 1024 for s in samples], label="RSS")
    axis.plot(t, [s["uss_kb"] / 1024 for s in samples], label="USS")
    axis.set_xlabel("seconds")
    axis.set_ylabel("server memory (MiB)")
    axis.set_title(f"soak: 1 publisher, {result['subscribers']} subscribers coming and going, "
                   f"{result['loss']:.0%} loss")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)


@click.command()
@click.option("--subscribers", type=click.IntRange(1, 256), default=64, show_default=True)
@click.option("--duration", type=click.FloatRange(10, 3600), default=600, show_default=True,
              help="Seconds measured.")
@click.option("--loss", type=click.FloatRange(0, 0.5), default=0.02, show_default=True,
              help="Share of datagrams dropped (and as many delayed) on each path.")
@click.option("--reconnect", type=click.FloatRange(5, 3600), default=60, show_default=True,
              help="Seconds between publisher reconnects.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--workers", type=click.IntRange(1, 32), default=2, show_default=True,
              help="Subscriber processes.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), required=True)
@click.option("--plot", "plot_path", type=click.Path(path_type=Path))
def soak(subscribers: int, duration: float, loss: float, reconnect: float, seed: int,
         workers: int, json_path: Path, plot_path: Path | None) -> None:
    """Soak the SFU: one publisher, subscribers joining and leaving, loss and reordering,
    publisher reconnects and padding-only RTX; freezes, errors and memory as JSON."""
    use_loopback_ice()
    data_dir = Path(tempfile.mkdtemp(prefix="expertcall-soak-"))
    log = json_path.with_suffix(".server.log")
    server = start_server("sfu", data_dir, log)
    try:
        (session,) = asyncio.run(_open_sessions(server, 1))
        soaker = Soak(server.url, server.token, session, subscribers, loss, reconnect, seed,
                      min(workers, subscribers))

        def show(sample: dict[str, Any]) -> None:
            click.echo(f"\r\033[K[soak] {sample['t']:.0f}/{duration:.0f} s, "
                       f"{sample['rss_kb'] / 1024:.0f} MiB RSS", err=True, nl=False)

        result = asyncio.run(soaker.run(duration, server.pid, show))
        click.echo("", err=True)
    finally:
        server.stop()
    result["server_log"] = _server_log_faults(log)
    memory = result["memory"]
    if len(memory) >= 4:
        settled = memory[len(memory) // 4:]  # after the first quarter: joins have ramped up
        result["rss_growth_kb"] = settled[-1]["rss_kb"] - settled[0]["rss_kb"]
        result["uss_growth_kb"] = settled[-1]["uss_kb"] - settled[0]["uss_kb"]
    json_path.write_text(json.dumps(result, indent=2))
    summary = {k: v for k, v in result.items() if k != "memory"}
    click.echo(json.dumps(summary, indent=2))
    if plot_path is not None:
        _plot(result, plot_path)
