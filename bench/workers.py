"""The bench's client processes: one for the publishers, several for the subscribers.

Each runs many clients on one uvloop event loop, so that on a 2-core machine the clients are not
what limits the measurement. They talk to the coordinator (bench/media.py) through a few shared
values and a result queue, never through the server under test.
"""

from __future__ import annotations

import asyncio
import gc
import os
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import click

from .procfs import process_cpu_seconds

if TYPE_CHECKING:
    from .clients import Publisher, Subscriber


@dataclass(frozen=True)
class Shared:
    """What the coordinator and the workers share (multiprocessing values and arrays)."""

    stop: Any  # Event: publishers stop, subscribers leave
    window_start: Any  # Value('d'): wall time the measurement window opens, 0 until known
    window_end: Any  # Value('d')
    joined: Any  # Array('i', workers): subscribers connected, per worker
    failed: Any  # Array('i', workers)
    packets: Any  # Array('q', workers): packets received so far, per worker


def _run(main: Any) -> None:
    import uvloop

    from .loopback import use_loopback_ice

    use_loopback_ice()
    uvloop.run(main)


def publish(base_url: str, token: str, sessions: list[str], tables: Sequence[Any], audio: bool,
            video_params: dict[str, Any], shared: Shared, results: Any) -> None:
    _run(_publish(base_url, token, sessions, tables, audio, video_params, shared, results))


async def _publish(base_url: str, token: str, sessions: list[str], tables: Sequence[Any], audio: bool,
                   video_params: dict[str, Any], shared: Shared, results: Any) -> None:
    from . import encoded
    from .clients import Publisher

    video = encoded.video(**video_params)
    opus = encoded.audio() if audio else None
    publishers = [Publisher(f"{base_url}/whip/{session}", token, video, opus, table)
                  for session, table in zip(sessions, tables)]
    async with aiohttp.ClientSession() as http:
        try:
            await asyncio.gather(*(p.start(http) for p in publishers))
            results.put(("publishers_ready", None))
            gc.collect()
            gc.freeze()
            while not shared.stop.is_set():
                await asyncio.sleep(0.1)
            results.put(("publishers", [{"frames_sent": p.frames_sent, "frames_skipped": p.frames_skipped,
                                         "keyframe_requests": p.keyframe_requests} for p in publishers]))
        except Exception as exc:  # noqa: BLE001 - whatever it is, the coordinator must hear of it
            results.put(("publishers_failed", repr(exc)))
        finally:
            await asyncio.gather(*(p.close(http) for p in publishers), return_exceptions=True)


def subscribe(worker: int, base_url: str, token: str, plan: list[tuple[int, str, float]],
              tables: Sequence[Any], audio: bool, shared: Shared, results: Any) -> None:
    """``plan``: (publisher index, session id, join time) per subscriber of this worker."""
    _run(_subscribe(worker, base_url, token, plan, tables, audio, shared, results))


async def _subscribe(worker: int, base_url: str, token: str, plan: list[tuple[int, str, float]],
                     tables: Sequence[Any], audio: bool, shared: Shared, results: Any) -> None:
    from .clients import Subscriber

    subscribers = [Subscriber(f"{base_url}/whep/{session}", token, tables[index], audio)
                   for index, session, _ in plan]
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def join(subscriber: Subscriber, at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.time()))
            try:
                await subscriber.start(http)
                shared.joined[worker] += 1
            except Exception as exc:  # noqa: BLE001 - a failed join is counted and reported, not fatal
                subscriber.error = subscriber.error or repr(exc)
                shared.failed[worker] += 1

        joins = [asyncio.ensure_future(join(s, at)) for s, (_, _, at) in zip(subscribers, plan)]

        async def progress() -> None:
            while True:
                shared.packets[worker] = sum(s.video.received + s.audio_counters.received for s in subscribers)
                await asyncio.sleep(0.5)

        reporter = asyncio.ensure_future(progress())
        report = await measure(subscribers, shared, lambda s: not s.error and bool(s.resource))
        reporter.cancel()
        results.put(("subscribers", report))
        while not shared.stop.is_set():
            await asyncio.sleep(0.05)
        for task in joins:
            task.cancel()
        await asyncio.gather(*(s.close(http) for s in subscribers), return_exceptions=True)


async def measure(subscribers: Sequence[Subscriber], shared: Shared, ok: Callable[[Subscriber], bool],
                  sources: Sequence[Publisher] = ()) -> list[dict[str, Any]]:
    """Wait for the coordinator's window, take every subscriber's counters at its start and end;
    one dict per subscriber for bench/report.py (``ok``: it joined as it should). ``sources[i]``,
    when given, is the publisher whose frames ``subscribers[i]`` watches, in this process: what
    it sent and skipped in the window tells a server that drops frames from clients too busy to
    send them."""
    while not shared.window_start.value and not shared.stop.is_set():
        await asyncio.sleep(0.05)
    # A full collection over hundreds of peer connections stalls this loop for tens of ms,
    # which would be charged to the server as latency: collect now, not in the window.
    gc.collect()
    gc.freeze()
    gc.disable()
    await asyncio.sleep(max(0.0, shared.window_start.value - time.time()))
    before = [s.snapshot() for s in subscribers]
    sent_before = [(p.frames_sent, p.frames_skipped) for p in sources]
    for s in subscribers:
        s.measuring = True
    await asyncio.sleep(max(0.0, shared.window_end.value - time.time()))
    after = [s.snapshot() for s in subscribers]
    sent_after = [(p.frames_sent, p.frames_skipped) for p in sources]
    for s in subscribers:
        s.measuring = False
    gc.enable()
    source = [{"source_frames_sent": a[0] - b[0], "source_frames_skipped": a[1] - b[1]}
              for b, a in zip(sent_before, sent_after)] or [{} for _ in subscribers]
    return [{
        "ok": ok(s),
        "error": s.error,
        "time_to_first_frame": (s.first_frame_at - s.started_at) if s.first_frame_at else None,
        "time_to_answer": (s.answered_at - s.started_at) if s.answered_at else None,
        "time_to_connected": (s.connected_at - s.started_at) if s.connected_at else None,
        "before": asdict(b),
        "after": asdict(a),
        "latencies": s.latencies,
        "delivered_latencies": s.delivered_latencies,
        "other_packets": s.other_packets,
        **extra,
    } for s, b, a, extra in zip(subscribers, before, after, source)]


def renice(proc: Any, nice: int) -> None:
    """Set a just started client process's niceness (before it starts threads: they inherit it)."""
    if nice:
        os.setpriority(os.PRIO_PROCESS, proc.pid, nice)


def stop_clients(shared: Shared, procs: list[Any], wait: float) -> None:
    """Tell the client processes to stop; whichever is not gone ``wait`` seconds later is ended."""
    shared.stop.set()
    for proc in procs:
        proc.join(wait)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


def cpu_of(procs: list[Any]) -> float:
    return sum(process_cpu_seconds(p.pid) for p in procs if p.pid is not None)


def next_result(results: Any, timeout: float, label: str) -> tuple[str, Any]:
    try:
        kind, value = results.get(timeout=timeout)
    except queue.Empty:
        raise click.ClickException(f"{label} a client process sent nothing for {timeout:.0f} s: "
                                   "it died or is stuck (see its output above)") from None
    return kind, value
