"""``expertcall bench media``: what forwarding costs the SFU, and what its subscribers get.

The coordinator starts the server under test (``expertcall serve``, or uses ``--url``) and, with
``--reference mediarelay``, the MediaRelay reference server (bench/mediarelay.py); then for each
subscriber count it opens one broadcast session per publisher, starts a publisher process and
subscriber processes (bench/workers.py) that reach the server over WHIP/WHEP, lets every
subscriber join at ``--join-rate``, settles, and measures a window of ``--duration`` seconds:
the server process's CPU time from /proc/<pid>/stat, and each subscriber's packets, frames, loss
and latency. Subscribers are spread round-robin over the publishers' sessions, so each receives
one video stream (and one audio stream with ``--audio``).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import click
import numpy as np

from . import calls, encoded, report
from .calls import media_env, media_label
from .procfs import process_cpu_seconds
from .report import show_progress
from .server import Server, admin_token, pid_listening_on, start_server
from .workers import Shared, cpu_of, next_result, renice, stop_clients

PICTURE_IDS = 1 << 15


@dataclass(frozen=True)
class Load:
    publishers: int
    subscribers: int
    duration: float
    audio: bool
    join_rate: float
    settle: float
    workers: int
    fps: int = 30
    client_nice: int = 0


async def _open_sessions(server: Server, count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {server.token}"}
    async with aiohttp.ClientSession() as http:
        sessions = []
        for _ in range(count):
            async with http.post(f"{server.url}/api/broadcasts", headers=headers) as response:
                if response.status != 201:
                    raise click.ClickException(f"{server.name}: POST /api/broadcasts: {response.status} "
                                               f"{await response.text()}")
                sessions.append((await response.json())["session_id"])
        return sessions


def run_load(server: Server, load: Load) -> dict[str, Any]:
    """One run of ``load`` against ``server``: its summary (bench/report.py)."""
    from . import workers

    ctx = multiprocessing.get_context("spawn")
    sessions = asyncio.run(_open_sessions(server, load.publishers))
    tables = [ctx.Array("d", PICTURE_IDS, lock=False) for _ in sessions]
    n_workers = max(1, min(load.workers, load.subscribers))
    shared = Shared(ctx.Event(), ctx.Value("d", 0.0, lock=False), ctx.Value("d", 0.0, lock=False),
                    ctx.Array("i", n_workers), ctx.Array("i", n_workers), ctx.Array("q", n_workers))
    results = ctx.Queue()
    video_params = {"fps": load.fps}
    label = f"[{server.name} {load.publishers}x{load.subscribers}]"

    publisher = ctx.Process(target=workers.publish, daemon=True, args=(
        server.url, server.token, sessions, tables, load.audio, video_params, shared, results))
    procs = [publisher]
    publisher.start()
    renice(publisher, load.client_nice)
    kind, value = next_result(results, 120, label)
    if kind != "publishers_ready":
        publisher.join(5)
        raise click.ClickException(f"{label} publishers failed: {value}")

    start = time.time() + 2.0  # time for the subscriber processes to import aiortc
    plans: list[list[tuple[int, str, float]]] = [[] for _ in range(n_workers)]
    for i in range(load.subscribers):
        index = i % load.publishers
        plans[i % n_workers].append((index, sessions[index], start + i / load.join_rate))
    for worker, plan in enumerate(plans):
        proc = ctx.Process(target=workers.subscribe, daemon=True, args=(
            worker, server.url, server.token, plan, tables, load.audio, shared, results))
        proc.start()
        renice(proc, load.client_nice)
        procs.append(proc)
    try:
        join_deadline = start + load.subscribers / load.join_rate + 30
        while True:
            joined, failed = sum(shared.joined), sum(shared.failed)
            cpu = process_cpu_seconds(server.pid)
            show_progress(f"{label} joining: {joined}/{load.subscribers} connected, {failed} failed, "
                      f"{sum(shared.packets)} packets received, server CPU {cpu:.1f} s")
            if joined + failed >= load.subscribers or time.time() > join_deadline:
                break
            time.sleep(0.5)
        window_start = time.time() + load.settle
        shared.window_end.value = window_start + load.duration
        shared.window_start.value = window_start
        time.sleep(max(0.0, window_start - time.time()))
        cpu_start, t_start = process_cpu_seconds(server.pid), time.time()
        clients_start = cpu_of(procs)
        last_packets, last_t, last_cpu = sum(shared.packets), t_start, cpu_start
        while time.time() < shared.window_end.value:
            time.sleep(min(1.0, max(0.0, shared.window_end.value - time.time())))
            now, cpu, packets = time.time(), process_cpu_seconds(server.pid), sum(shared.packets)
            show_progress(f"{label} measuring {now - t_start:4.1f}/{load.duration:.0f} s: "
                      f"{(packets - last_packets) / (now - last_t):8.0f} packets/s received, "
                      f"server {(cpu - last_cpu) / (now - last_t):.2f} cores")
            last_packets, last_t, last_cpu = packets, now, cpu
        cpu_end, t_end = process_cpu_seconds(server.pid), time.time()
        clients_cpu = cpu_of(procs) - clients_start
        load_average = os.getloadavg()[0]
        subscribers: list[dict[str, Any]] = []
        publisher_stats: list[dict[str, Any]] = []
        pending = n_workers
        while pending:
            kind, value = next_result(results, 60, label)
            if kind == "subscribers":
                subscribers.extend(value)
                pending -= 1
        shared.stop.set()
        while True:
            kind, value = next_result(results, 60, label)
            if kind in ("publishers", "publishers_failed"):
                publisher_stats = value if kind == "publishers" else [{"error": value}]
                break
    finally:
        stop_clients(shared, procs, 30)
        click.echo("", err=True)
    summary = report.summarise(server.name, load.publishers, subscribers, cpu_end - cpu_start,
                               t_end - t_start, publisher_stats, load.fps)
    # On a small machine the clients share the cores with the server: show what they took, and
    # how busy the machine was, next to the figures they qualify.
    summary["client_cpu_seconds_per_second"] = round(clients_cpu / (t_end - t_start), 3)
    summary["loadavg_1min_after"] = round(load_average, 2)
    click.echo(_one_line(summary), err=True)
    return summary


def _one_line(s: dict[str, Any]) -> str:
    return (f"[{s['target']} {s['publishers']}x{s['subscribers']}] {s['connected']} connected, "
            f"server {s['server_cpu_seconds_per_second']:.3f} cores, {s['forwarded_packets_per_second']:.0f} pkt/s, "
            f"{s['cpu_us_per_forwarded_packet']} us/pkt, fps p50 {s['fps']['p50']} min {s['fps']['min']}, "
            f"loss {s['packet_loss_pct']}%, first frame p50/p95 {s['time_to_first_frame_ms']['p50']}/"
            f"{s['time_to_first_frame_ms']['p95']} ms, latency p50/p99 {s['added_latency_ms']['p50']}/"
            f"{s['added_latency_ms']['p99']} ms{'' if s['clean'] else ' (not clean)'}")


def _counts(text: str, what: str = "subscriber") -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter("a number or a comma-separated list, e.g. 8,16,32") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter(f"{what} counts must be at least 1")
    return counts


def _check_cpus(cpus: str) -> None:
    """A taskset CPU list naming only CPUs this process may run on."""
    try:
        wanted: set[int] = set()
        for part in cpus.split(","):
            first, _, last = part.partition("-")
            wanted.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise click.BadParameter(f"{cpus!r} is not a CPU list such as 1 or 0-3", param_hint="--pin-server") from None
    allowed = os.sched_getaffinity(0)
    if not wanted or not wanted <= allowed:
        raise click.BadParameter(f"CPUs {sorted(wanted)} are not all among this machine's {sorted(allowed)}",
                                 param_hint="--pin-server")


def _media_calls(counts: list[int], reference: str | None, duration: float, json_path: Path,
                 plot_path: Path | None, join_rate: float, settle: float, workers: int, rounds: int,
                 server_nice: int, client_nice: int, pin_server: str, janus_event_loops: int,
                 sfu_workers: list[int], sfu_node: bool = False, media_port: int = 0,
                 media_per_connection: bool = False) -> None:
    click.echo("preparing pre-encoded media (cached after the first run)...", err=True)
    encoded.video(fps=30)
    encoded.audio()
    data_dir = Path(tempfile.mkdtemp(prefix="expertcall-bench-calls-"))
    try:
        load = calls.CallLoad(0, duration, join_rate, settle, workers, client_nice)  # calls: each count's
        result = calls.sweep(counts, reference, load,
                             calls.Servers(data_dir, json_path.with_suffix(""), server_nice, pin_server,
                                           janus_event_loops, tuple(dict.fromkeys(sfu_workers)), sfu_node,
                                           media_port, media_per_connection), rounds)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    report.write_json(json_path, result)
    if plot_path:
        report.plot_calls(plot_path, result["runs"])
    for target, ceiling in result["clean_ceiling"].items():
        click.echo(f"{target}: " + (f"{ceiling['largest_clean_calls']} calls clean in every round at "
                                    f"{ceiling['server_cpu_at_largest']} cores: {ceiling['calls_per_core']} calls "
                                    "per core" if ceiling else "no count was clean in every round"), err=True)
    for count, figures in result.get("reference", {}).get("per_count", {}).items():
        cpu = figures.get("cpu_ms_per_call")
        if cpu:
            click.echo(f"{reference} needs {cpu['median']}x expertcall's CPU per call at {count} calls "
                       f"(rounds: {cpu['rounds']})", err=True)
    click.echo(f"wrote {json_path}" + (f" and {plot_path}" if plot_path else ""), err=True)


# Options of the fan-out bench alone: with --calls, giving one is an error, not silently ignored.
FAN_OUT_ONLY = ("publishers", "subscribers", "url", "server_pid", "token", "audio")


@click.command("media")
@click.option("--calls", "calls", default=None,
              help="Two-party calls instead of the fan-out, or a sweep such as 10,25,50 (docs/bench.md).")
@click.option("--publishers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Publishers, each in a broadcast session of its own.")
@click.option("--subscribers", default="8", show_default=True,
              help="Subscribers, or a sweep such as 8,16,32,64; spread over the publishers.")
@click.option("--duration", type=click.FloatRange(1, 3600), default=10, show_default=True,
              help="Seconds measured, after every subscriber joined and --settle passed.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG of server CPU against subscribers (with --calls: CPU per call, loss and fps against calls).")
@click.option("--reference", type=click.Choice(["mediarelay", "janus"]), default=None,
              help="Also run the same load against aiortc's MediaRelay (decode + re-encode per subscriber), "
                   "or, with --calls, against Janus's VideoRoom (apt-get install janus).")
@click.option("--url", default=None, help="An SFU already running (http://127.0.0.1:PORT) instead of starting one.")
@click.option("--server-pid", type=int, default=None, help="Its pid, if not the one listening on --url's port.")
@click.option("--token", default=None, help="Admin token for --url (or EXPERTCALL_SECRET to mint one).")
@click.option("--audio/--no-audio", default=False, show_default=True, help="Also send a 20 ms Opus stream.")
@click.option("--join-rate", type=click.FloatRange(0.1, 1000), default=None,
              help="Subscribers joining per second [default: 50]; with --calls, calls per second [default: 10].")
@click.option("--settle", type=click.FloatRange(0, 60), default=2, show_default=True,
              help="Seconds between the last join and the measurement.")
@click.option("--workers", type=click.IntRange(1, 32), default=2, show_default=True,
              help="Subscriber processes (with --calls: client processes, each running whole calls).")
@click.option("--rounds", type=click.IntRange(1, 20), default=1, show_default=True,
              help="Measure every subscriber count this many times, the SFU and the reference "
                   "alternating, and report medians: on a machine whose speed drifts (a VM on a "
                   "shared host), a reference run minutes after the SFU's is not a fair ratio.")
@click.option("--server-nice", type=click.IntRange(-20, 19), default=0, show_default=True,
              help="Niceness of the servers started (below 0 needs root): on a machine shared with "
                   "other work, keeps the server from being starved of its core.")
@click.option("--client-nice", type=click.IntRange(-20, 19), default=0, show_default=True,
              help="Niceness of the client processes (below 0 needs root): on a busy machine, keeps "
                   "other work from starving the clients, so that the server, not the machine, sets "
                   "the ceiling.")
@click.option("--janus-event-loops", type=click.IntRange(0, 256), default=0, show_default=True,
              help="With --reference janus: event loops its handles share (Janus's event_loops); "
                   "0 keeps Janus's default, a loop and thread per handle.")
@click.option("--sfu-workers", "sfu_workers", default="1", show_default=True,
              help="With --calls: SFU worker processes of the expertcall server, or several to compare "
                   "such as 1,2 (each count is a target of its own; 1 keeps the SFU in the server's process).")
@click.option("--sfu-node", "sfu_node", is_flag=True, default=False,
              help="With --calls: also run expertcall split, a signalling node and an SFU node (--role), "
                   "each a process, finding each other in Redis on 127.0.0.1:6379 (docs/deployment.md).")
@click.option("--record", is_flag=True, default=False,
              help="Measure recording instead: CPU per recorded stream and disk bytes per second, "
                   "--publishers streams, windows forwarding-only and recording alternating --rounds times.")
@click.option("--media-port", type=click.IntRange(0, 65535), default=0,
              help="Run the expertcall server with its SFU workers' UDP ports from this base port "
                   "(serve --media-port). [default: ports the kernel picks, one per worker]")
@click.option("--media-per-connection", is_flag=True, default=False,
              help="Run the expertcall server with a UDP socket per connection instead "
                   "(serve --media-per-connection), to compare the two paths.")
@click.option("--pin-server", "pin_server", default="",
              help="Pin the servers started (and every process they start) to these CPUs, a taskset list "
                   "such as 1 or 0-3; the clients stay unpinned. [default: not pinned]")
def media(calls: str | None, publishers: int, subscribers: str, duration: float, json_path: Path,
          plot_path: Path | None, reference: str | None, url: str | None, server_pid: int | None,
          token: str | None, audio: bool, join_rate: float | None, settle: float, workers: int, rounds: int,
          server_nice: int, client_nice: int, janus_event_loops: int, sfu_workers: str, pin_server: str,
          sfu_node: bool, record: bool, media_port: int, media_per_connection: bool) -> None:
    """Measure the SFU forwarding 640x480 30 fps VP8 to subscribers (CPU, fps, loss, latency), or,
    with --calls, carrying two-party calls, or, with --record, recording."""
    if pin_server:
        _check_cpus(pin_server)
    if calls is None and click.get_current_context().get_parameter_source("sfu_workers") \
            is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--sfu-workers is for --calls; the other benches run the SFU in the server's process")
    if calls is None and sfu_node:
        raise click.UsageError("--sfu-node is for --calls")
    if record:
        if calls is not None or reference or url:
            raise click.UsageError("--record measures recording alone: without --calls, --reference or --url")
        from . import recording

        recording.run(publishers, duration, settle, rounds, json_path)
        return
    if calls is not None:
        context = click.get_current_context()
        for name in FAN_OUT_ONLY:
            if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
                raise click.UsageError(f"--{name.replace('_', '-')} is for the fan-out bench, not --calls")
        if reference == "mediarelay":
            raise click.UsageError("--reference mediarelay is for the fan-out bench; with --calls use janus")
        _media_calls(_counts(calls, "call"), reference, duration, json_path, plot_path, join_rate or 10.0,
                     settle, workers, rounds, server_nice, client_nice, pin_server, janus_event_loops,
                     _counts(sfu_workers, "SFU worker"), sfu_node, media_port, media_per_connection)
        return
    if reference == "janus":
        raise click.UsageError("--reference janus runs with --calls (two-party calls)")
    join_rate = join_rate or 50.0
    counts = _counts(subscribers)
    from . import encoded

    click.echo("preparing pre-encoded media (cached after the first run)...", err=True)
    encoded.video(fps=30)
    if audio:
        encoded.audio()
    data_dir = Path(tempfile.mkdtemp(prefix="expertcall-bench-"))
    servers: list[Server] = []
    runs: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    try:
        if url:
            secret = os.environ.get("EXPERTCALL_SECRET", "")
            if not token and not secret:
                raise click.ClickException("--url needs --token or EXPERTCALL_SECRET")
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            servers.append(Server("sfu", url.rstrip("/"), token or admin_token(secret),
                                  server_pid or pid_listening_on(port)))
        else:
            # the SFU in the server's process, as the fan-out figures have always been measured
            servers.append(start_server("sfu", data_dir, _log_path(json_path, "sfu"), server_nice, pin_server,
                                        {"EXPERTCALL_SFU_WORKERS": "1",
                                         **media_env(media_port, media_per_connection)}))
        if reference:
            servers.append(start_server(reference, data_dir, _log_path(json_path, reference), server_nice,
                                        pin_server))
        for round_ in range(1, rounds + 1):
            for count in counts:
                for server in servers:  # back to back, so that both see the machine alike
                    load = Load(publishers, count, duration, audio, join_rate, settle, workers,
                                client_nice=client_nice)
                    runs.append({**run_load(server, load), "round": round_})
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)

    result: dict[str, Any] = {
        "config": {"publishers": publishers, "subscribers": counts, "duration": duration, "rounds": rounds,
                   "audio": audio,
                   "join_rate": join_rate, "settle": settle, "workers": workers, "server_nice": server_nice,
                   "client_nice": client_nice,
                   "server_cpus": pin_server or "all",
                   "media_port": media_label(media_port, media_per_connection),
                   "video": "VP8 640x480 30 fps ~500 kbps, pre-encoded"},
        "machine": {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "runs": runs,
        "streams_per_core": report.streams_per_core([r for r in runs if r["target"] == "sfu"]),
    }
    if reference:
        result["reference"] = _ratios(runs, reference)
        for line in result["reference"]["lines"]:
            click.echo(line, err=True)
    report.write_json(json_path, result)
    if plot_path:
        report.plot(plot_path, runs)
    click.echo(f"wrote {json_path}" + (f" and {plot_path}" if plot_path else ""), err=True)


def _log_path(json_path: Path, name: str) -> Path:
    return json_path.with_name(f"{json_path.stem}.{name}.log")


def _ratios(runs: list[dict[str, Any]], reference: str) -> dict[str, Any]:
    """CPU per subscriber stream, reference over SFU, at each subscriber count both ran: each
    round's reference run against the same round's SFU run, then the median over the rounds."""
    sfu = {(r["round"], r["subscribers"]): r for r in runs if r["target"] == "sfu"}
    by_count: dict[str, list[float]] = {}
    per_frame: dict[str, list[float]] = {}
    lines: list[str] = []
    for r in runs:
        base = sfu.get((r["round"], r["subscribers"]))
        if r["target"] != reference or base is None or not base["cpu_per_subscriber_stream"]:
            continue
        count = str(r["subscribers"])
        ratio = r["cpu_per_subscriber_stream"] / base["cpu_per_subscriber_stream"]
        by_count.setdefault(count, []).append(round(ratio, 1))
        # A saturated relay delivers fewer frames for its CPU: per frame delivered is the fairer
        # figure then.
        if r["fps"]["mean"] and base["fps"]["mean"]:
            per_frame.setdefault(count, []).append(ratio * base["fps"]["mean"] / r["fps"]["mean"])
        lines.append(f"{reference} costs {ratio:.1f}x the SFU's CPU per subscriber stream at "
                     f"{r['subscribers']} subscribers ({r['cpu_per_subscriber_stream']:.4f} vs "
                     f"{base['cpu_per_subscriber_stream']:.5f} cores; {r['fps']['mean']} vs "
                     f"{base['fps']['mean']} fps), round {r['round']}")
    medians = {n: round(float(np.median(v)), 1) for n, v in by_count.items()}
    for n, values in by_count.items():
        if len(values) > 1:
            lines.append(f"{reference} costs {medians[n]}x the SFU's CPU per subscriber stream at "
                         f"{n} subscribers: median of {len(values)} rounds {values}")
    return {"ratio_per_subscriber_stream": medians,
            "ratio_per_frame_delivered": {n: round(float(np.median(v)), 1) for n, v in per_frame.items()},
            "ratio_per_round": by_count, "lines": lines}
