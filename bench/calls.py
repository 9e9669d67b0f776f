"""``expertcall bench media --calls N[,N2,...]``: concurrent two-party calls, the load expertcall carries.

Each call is an expert and a client, each publishing VP8 640x480 30 fps (~500 kbps) and 20 ms Opus
and watching the other, from light clients that never encode or decode (bench/call_workers.py).
For every call count and every round, each server under test (expertcall, and with ``--reference
janus`` Janus's VideoRoom, back to back) is started afresh, optionally pinned to CPUs and
reniced; its idle CPU and memory are read; the calls join at ``--join-rate`` calls per second;
after ``--settle`` seconds a window of ``--duration`` seconds is measured: the CPU time of the
server's whole process tree (every worker process it may have), its memory (USS, PSS, RSS) against
the idle server's, and every subscriber's packets, frames, loss, first-frame time and latency.

Figures per run (bench/report.py): CPU per call (ms of CPU per second of call), CPU per forwarded
packet, memory per call, loss, fps, first-frame time (from the moment both participants begin to
publish), added latency, and whether the run was clean (every participant connected, < 1% loss,
>= 29 fps). Over the sweep: medians and ranges over the rounds, the largest count clean in every
round and the calls a core would carry at its CPU, and Janus's figures over expertcall's
(per-round ratios, then the median).
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import click

from . import report
from .call_workers import PRICE
from .procfs import process_tree, processes_cpu_seconds, tree_cpu_seconds, tree_memory
from .report import show_progress
from .server import Server, start_server
from .signalling import SERVER_ENV, register_experts, split
from .workers import Shared, cpu_of, next_result, renice, stop_clients

TARGETS = ("expertcall", "janus")


def expertcall_target(sfu_workers: int) -> str:
    """The name a run of expertcall with this many SFU worker processes goes by (1: as before)."""
    return "expertcall" if sfu_workers == 1 else f"expertcall-{sfu_workers}w"


# expertcall as a signalling node and an SFU node, each a process (bench/split_nodes.py)
NODE_TARGET = "expertcall-node"


def sfu_workers_of(target: str) -> int:
    if target in ("expertcall", NODE_TARGET):
        return 1
    return int(target.removeprefix("expertcall-").removesuffix("w"))
IDLE_SECONDS = 2.0  # after start-up, before the calls: the idle server's CPU and memory


@dataclasses.dataclass(frozen=True)
class CallLoad:
    calls: int
    duration: float
    join_rate: float  # calls per second
    settle: float
    workers: int  # client processes
    client_nice: int = 0


@dataclasses.dataclass(frozen=True)
class Servers:
    """How the servers under test are started."""

    data_dir: Path
    log_stem: Path  # logs go to <stem>.<target>.<calls>.<round>.log
    nice: int = 0
    cpus: str = ""  # taskset CPU list, "" for all
    janus_event_loops: int = 0  # 0: Janus's default, a loop and thread per handle
    sfu_workers: tuple[int, ...] = (1,)  # expertcall runs with each of these SFU worker counts
    sfu_node: bool = False  # and split: a signalling node and an SFU node (NODE_TARGET)
    media_port: int = 0  # expertcall's one UDP port per SFU worker (base); 0: ports the kernel picks
    media_per_connection: bool = False  # a UDP socket per connection instead (serve --media-per-connection)


def media_env(media_port: int, per_connection: bool) -> dict[str, str]:
    """The expertcall server's environment for its media sockets (serve --media-port,
    --media-per-connection); empty: its default, one port per SFU worker picked by the kernel."""
    if per_connection:
        return {"EXPERTCALL_MEDIA_PER_CONNECTION": "1"}
    return {"EXPERTCALL_MEDIA_PORT": str(media_port)} if media_port else {}


def media_label(media_port: int, per_connection: bool) -> str | int:
    """What the JSON's config.media_port says ran."""
    if per_connection:
        return "a socket per connection"
    return media_port or "one per SFU worker, picked by the kernel"


def start(target: str, servers: Servers, calls: int, round_: int) -> Server:
    log = servers.log_stem.with_name(f"{servers.log_stem.name}.{target}.{calls}.{round_}.log")
    directory = servers.data_dir / f"{target}-{calls}-{round_}"
    if target != "janus":
        env = {**SERVER_ENV, "EXPERTCALL_SFU_WORKERS": str(sfu_workers_of(target))}
        env.update(media_env(servers.media_port, servers.media_per_connection))
        server = start_server(NODE_TARGET if target == NODE_TARGET else "expertcall", directory, log,
                              servers.nice, servers.cpus, env)
        try:
            asyncio.run(register_experts([server.url], server.token, [f"e{i}" for i in range(calls)], PRICE))
        except BaseException:
            server.stop()
            raise
        return server
    from .janus import start_janus

    url, process = start_janus(directory, log, servers.nice, servers.cpus, servers.janus_event_loops)
    return Server("janus", url, "", process.pid, process)


def run_calls(target: str, servers: Servers, load: CallLoad, round_: int) -> dict[str, Any]:
    """One run: a fresh ``target`` server carrying ``load.calls`` calls; its summary."""
    from . import call_workers

    server = start(target, servers, load.calls, round_)
    label = f"[{target} {load.calls} calls, round {round_}]"
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    shares = split(load.calls, load.workers)
    shared = Shared(ctx.Event(), ctx.Value("d", 0.0, lock=False), ctx.Value("d", 0.0, lock=False),
                    ctx.Array("i", len(shares)), ctx.Array("i", len(shares)), ctx.Array("q", len(shares)))
    results = ctx.Queue()
    try:
        cpu_idle, t_idle = tree_cpu_seconds(server.pid), time.time()
        time.sleep(IDLE_SECONDS)
        idle_cpu = (tree_cpu_seconds(server.pid) - cpu_idle) / (time.time() - t_idle)
        idle_memory = tree_memory(server.pid)

        start_at = time.time() + 2.5  # for the client processes to import aiortc and load the media
        plans: list[list[tuple[int, float]]] = [[] for _ in shares]
        for i in range(load.calls):  # call i in process i mod W: each process's calls spread in time
            plans[i % len(shares)].append((i, start_at + i / load.join_rate))
        for worker, plan in enumerate(plans):
            proc = ctx.Process(target=call_workers.run, daemon=True, args=(
                worker, "janus" if target == "janus" else "expertcall", server.url, server.secret, plan, shared,
                results))
            proc.start()
            renice(proc, load.client_nice)
            procs.append(proc)

        join_deadline = start_at + load.calls / load.join_rate + call_workers.JOIN_TIMEOUT + 5
        while True:
            up, failed = sum(shared.joined), sum(shared.failed)
            show_progress(f"{label} joining: {up}/{load.calls} calls up, {failed} failed, "
                      f"{sum(shared.packets)} packets received, server CPU {tree_cpu_seconds(server.pid):.1f} s")
            if up + failed >= load.calls or time.time() > join_deadline:
                break
            if any(not p.is_alive() for p in procs):
                raise click.ClickException(f"{label} a client process died during the joins")
            time.sleep(0.5)
        window_start = time.time() + load.settle
        shared.window_end.value = window_start + load.duration
        shared.window_start.value = window_start
        time.sleep(max(0.0, window_start - time.time()))
        cpu_start, t_start, clients_start = tree_cpu_seconds(server.pid), time.time(), cpu_of(procs)
        per_process_start = processes_cpu_seconds(server.pid)
        last = (t_start, cpu_start, sum(shared.packets))
        while time.time() < shared.window_end.value:
            time.sleep(min(1.0, max(0.0, shared.window_end.value - time.time())))
            now, cpu, packets = time.time(), tree_cpu_seconds(server.pid), sum(shared.packets)
            show_progress(f"{label} measuring {now - t_start:4.1f}/{load.duration:.0f} s: "
                      f"{(packets - last[2]) / (now - last[0]):7.0f} packets/s received, "
                      f"server {(cpu - last[1]) / (now - last[0]):.2f} cores")
            last = (now, cpu, packets)
        cpu_end, t_end = tree_cpu_seconds(server.pid), time.time()
        per_process_end = processes_cpu_seconds(server.pid)
        clients_cpu = cpu_of(procs) - clients_start
        loaded_memory = tree_memory(server.pid)
        processes = len(process_tree(server.pid))
        load_average = os.getloadavg()[0]
        outcomes = []
        for _ in procs:
            kind, value = next_result(results, 60, label)
            if kind == "calls":
                outcomes.append(value)
        if server.process is not None and server.process.poll() is not None:
            raise click.ClickException(f"{label} the server exited during the run: see its log")
    finally:
        stop_clients(shared, procs, 60)
        server.stop()
        click.echo("", err=True)

    subscribers = [s for o in outcomes for s in o["subscribers"]]
    publishers = {key: sum(o["publishers"][key] for o in outcomes)
                  for key in ("count", "frames_sent", "frames_skipped", "keyframe_requests")}
    window = t_end - t_start
    summary = report.summarise(target, 2 * load.calls, subscribers, cpu_end - cpu_start, window,
                               [publishers], 30)
    errors: dict[str, int] = {}
    for o in outcomes:
        for error, n in o["errors"].items():
            errors[error] = errors.get(error, 0) + n
    setup = sorted(ms for o in outcomes for ms in o["call_setup_ms"])
    summary.update(report.call_figures(load.calls, summary, idle_memory, loaded_memory, idle_cpu, setup))
    # How the server's CPU spread over its processes (those alive through the whole window).
    spread = sorted(((role, round((cpu - per_process_start[pid][1]) / window, 3))
                     for pid, (role, cpu) in per_process_end.items() if pid in per_process_start),
                    key=lambda rc: (rc[0] != "main", rc[0]))
    summary.update({
        "round": round_,
        "sfu_workers": sfu_workers_of(target) if target != "janus" else None,
        "server_process_cores": dict(spread),
        "busiest_process_cores": max((cores for _, cores in spread), default=0.0),
        "call_errors": errors,
        "server_processes": processes,
        "client_cpu_seconds_per_second": round(clients_cpu / window, 3),
        "loadavg_1min_after": round(load_average, 2),
    })
    click.echo(_one_line(summary), err=True)
    return summary


def _one_line(s: dict[str, Any]) -> str:
    memory = s["memory_per_call_kb"]
    return (f"[{s['target']} {s['calls']} calls, round {s['round']}] {s['calls_up']} up, server "
            f"{s['server_cpu_seconds_per_second']:.3f} cores = {s['cpu_ms_per_call']} ms/s per call, "
            f"{s['cpu_us_per_forwarded_packet']} us/pkt, {memory['uss']} KiB USS ({memory['anon']} anon) per call, "
            f"fps p50 {s['fps']['p50']} min {s['fps']['min']}, loss {s['packet_loss_pct']}% video "
            f"{s.get('audio_packet_loss_pct', '-')}% audio, first frame p50/p95 "
            f"{s['time_to_first_frame_ms']['p50']}/{s['time_to_first_frame_ms']['p95']} ms, latency p50/p99 "
            f"{s['added_latency_ms']['p50']}/{s['added_latency_ms']['p99']} ms{'' if s['clean'] else ' (not clean)'}; "
            f"cores by process: " + ", ".join(f"{role} {cores}" for role, cores in s["server_process_cores"].items()))


def janus_version() -> str | None:
    from .janus import janus_binary

    try:
        out = subprocess.run([janus_binary(), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired, click.ClickException):
        return None
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Janus version")), None)


def sweep(counts: list[int], reference: str | None, load: CallLoad, servers: Servers, rounds: int) -> dict[str, Any]:
    """Every count, ``rounds`` times, each target back to back (so that both meet the machine in
    the same mood): the runs and what they add up to. ``load`` is each run's, but for its
    ``calls``."""
    targets = [expertcall_target(w) for w in servers.sfu_workers] + ([NODE_TARGET] if servers.sfu_node else []) \
        + ([reference] if reference else [])
    if reference == "janus":
        from .janus import janus_library_dir, loopback_shim

        janus_library_dir()  # fail now, not after the first expertcall run
        loopback_shim()
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    for round_ in range(1, rounds + 1):
        for count in counts:
            for target in targets:
                runs.append(run_calls(target, servers, dataclasses.replace(load, calls=count), round_))
    result: dict[str, Any] = {
        "config": {"calls": counts, "rounds": rounds, "duration": load.duration, "join_rate": load.join_rate,
                   "settle": load.settle, "client_processes": load.workers, "client_nice": load.client_nice,
                   "server_cpus": servers.cpus or "all",
                   "media_port": media_label(servers.media_port, servers.media_per_connection),
                   "server_nice": servers.nice, "targets": targets, "sfu_workers": list(servers.sfu_workers),
                   "sfu_node": servers.sfu_node,
                   **({"janus_event_loops": servers.janus_event_loops or "one per handle"}
                      if reference == "janus" else {}),
                   "call": "2 participants, each VP8 640x480 30 fps ~500 kbps + Opus 20 ms, watching the other"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                    **({"janus": janus_version()} if reference == "janus" else {})},
        "runs": runs,
        "by_count": report.calls_table(runs),
        "clean_ceiling": {t: report.calls_per_core([r for r in runs if r["target"] == t]) for t in targets},
    }
    if reference:
        result["reference"] = report.call_ratios(runs, reference, base=targets[0])
    if servers.sfu_node:
        # the split (signalling node + SFU node) over the first target, round by round: the link's cost
        result["sfu_node_ratios"] = report.call_ratios(runs, NODE_TARGET, base=targets[0])
    if len(servers.sfu_workers) > 1:
        # each worker count's figures over the first's, round by round (CPU per call: the channel's cost)
        result["sfu_workers_ratios"] = {
            target: report.call_ratios(runs, target, base=targets[0])
            for target in targets[1:len(servers.sfu_workers)]}
    return result
