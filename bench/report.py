"""Turning the workers' raw counters into the media bench's figures, its JSON and its plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

CLEAN_FPS = 29.0  # "30 fps" with a frame of slack for the window's edges
CLEAN_LOSS_PCT = 1.0


def _percentiles(values: list[float], *ps: int, scale: float = 1000.0) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in ps}
    arr = np.asarray(values) * scale
    return {f"p{p}": round(float(np.percentile(arr, p)), 3) for p in ps}


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"min": None, "p50": None, "mean": None, "max": None}
    arr = np.asarray(values)
    return {"min": round(float(arr.min()), 2), "p50": round(float(np.median(arr)), 2),
            "mean": round(float(arr.mean()), 2), "max": round(float(arr.max()), 2)}


def summarise(target: str, publishers: int, subscribers: list[dict[str, Any]], cpu_seconds: float,
              window: float, publisher_stats: list[dict[str, Any]], fps: int) -> dict[str, Any]:
    """One run's figures. ``cpu_seconds``: the server process's CPU time over the window."""
    per_subscriber = []
    forwarded = 0
    expected_total = received_total = 0
    audio_expected_total = audio_received_total = 0
    latencies: list[float] = []
    delivered: list[float] = []
    first_frames: list[float] = []
    answers: list[float] = []
    connects: list[float] = []
    for s in subscribers:
        b, a = s["before"], s["after"]
        span = a["at"] - b["at"] or window
        received = a["packets"] - b["packets"]
        expected = a["expected"] - b["expected"]
        forwarded += received + a["audio_packets"] - b["audio_packets"]
        expected_total += max(expected, 0)
        received_total += received
        loss = 100.0 * (1 - received / expected) if expected > 0 else (0.0 if s["ok"] else 100.0)
        extra: dict[str, float] = {}
        audio_expected = a.get("audio_expected", 0) - b.get("audio_expected", 0)
        if audio_expected > 0:
            audio_received = a["audio_packets"] - b["audio_packets"]
            audio_expected_total += audio_expected
            audio_received_total += audio_received
            extra["audio_loss_pct"] = round(max(100.0 * (1 - audio_received / audio_expected), 0.0), 3)
        if "source_frames_sent" in s:
            extra["sent_fps"] = round(s["source_frames_sent"] / span, 2)
            extra["source_frames_skipped"] = s["source_frames_skipped"]
        per_subscriber.append({
            "ok": s["ok"],
            "fps": round((a["frames"] - b["frames"]) / span, 2),
            "bitrate_kbps": round((a["bytes"] - b["bytes"]) * 8 / span / 1000, 1),
            "loss_pct": round(max(loss, 0.0), 3),
            **extra,
            "time_to_first_frame_ms": None if s["time_to_first_frame"] is None
            else round(s["time_to_first_frame"] * 1000, 1),
            **({"error": s["error"]} if s["error"] else {}),
        })
        latencies.extend(s["latencies"])
        delivered.extend(s.get("delivered_latencies", ()))
        if s["time_to_first_frame"] is not None:
            first_frames.append(s["time_to_first_frame"])
        if s.get("time_to_answer") is not None:
            answers.append(s["time_to_answer"])
        if s.get("time_to_connected") is not None:
            connects.append(s["time_to_connected"])
    count = len(subscribers)
    cpu_per_second = cpu_seconds / window
    loss_pct = 100.0 * (1 - received_total / expected_total) if expected_total else 100.0
    fps_values = [p["fps"] for p in per_subscriber]
    clean = bool(count) and all(p["ok"] for p in per_subscriber) \
        and min(fps_values) >= CLEAN_FPS * fps / 30 \
        and max(max(p["loss_pct"], p.get("audio_loss_pct", 0.0)) for p in per_subscriber) < CLEAN_LOSS_PCT
    return {
        "target": target,
        "publishers": publishers,
        "subscribers": count,
        "connected": sum(1 for p in per_subscriber if p["ok"]),
        "window_seconds": round(window, 3),
        "server_cpu_seconds_per_second": round(cpu_per_second, 4),
        "forwarded_packets_per_second": round(forwarded / window, 1),
        "cpu_us_per_forwarded_packet": round(cpu_seconds * 1e6 / forwarded, 2) if forwarded else None,
        "cpu_per_subscriber_stream": round(cpu_per_second / count, 6) if count else None,
        "fps": _spread(fps_values),
        "bitrate_kbps": _spread([p["bitrate_kbps"] for p in per_subscriber]),
        "packet_loss_pct": round(max(loss_pct, 0.0), 3),
        **({"audio_packet_loss_pct": round(max(100.0 * (1 - audio_received_total / audio_expected_total), 0.0), 3)}
           if audio_expected_total else {}),
        "time_to_first_frame_ms": {**_percentiles(first_frames, 50, 95), "missing": count - len(first_frames)},
        # Where the first frame's time goes: the WHEP answer, then ICE + DTLS, then the keyframe.
        "time_to_answer_ms": _percentiles(answers, 50, 95),
        "time_to_connected_ms": _percentiles(connects, 50, 95),
        # Publisher's send → the kernel's receive at the subscriber: what the SFU adds. The
        # delivered figure adds the client processes' own queueing on the shared cores.
        "added_latency_ms": {**_percentiles(latencies, 50, 99), "samples": len(latencies)},
        "delivered_latency_ms": _percentiles(delivered, 50, 99),
        "clean": clean,
        # The client processes fell behind and skipped over 1% of the frames they should have
        # sent in the window: on this run the machine, not only the server, set the fps.
        **({"clients_fell_behind": _fell_behind(per_subscriber, window, fps)}
           if any("sent_fps" in p for p in per_subscriber) else {}),
        "publisher_stats": publisher_stats,
        "per_subscriber": per_subscriber,
    }


def _fell_behind(per_subscriber: list[dict[str, Any]], window: float, fps: int) -> bool:
    skipped = sum(p.get("source_frames_skipped", 0) for p in per_subscriber)
    return skipped > 0.01 * fps * window * len(per_subscriber)


def _largest_clean(runs: list[dict[str, Any]], key: str) -> tuple[int, float] | None:
    """The largest ``key`` count whose every run (every round) was clean, and the median server
    CPU of those runs."""
    counts = {r[key] for r in runs}
    clean = [n for n in counts
             if all(r["clean"] and r["server_cpu_seconds_per_second"] > 0 for r in runs if r[key] == n)]
    if not clean:
        return None
    best = max(clean)
    return best, float(np.median([r["server_cpu_seconds_per_second"] for r in runs if r[key] == best]))


def streams_per_core(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """From a sweep: the largest subscriber count whose every run (every round) was clean, and
    the streams a whole core would feed at the median CPU of those runs."""
    found = _largest_clean(runs, "subscribers")
    if found is None:
        return None
    best, cpu = found
    return {
        "largest_clean_run": best,
        "server_cpu_at_largest": round(cpu, 4),
        "streams_per_core": round(best / cpu),
    }


# --- two-party calls (bench/calls.py) ---------------------------------------------------------

# What the per-count table and the ratios show of each calls run: name -> how to read it.
CALL_FIGURES = {
    "cpu_ms_per_call": lambda r: r["cpu_ms_per_call"],
    "server_cpu_cores": lambda r: r["server_cpu_seconds_per_second"],
    "cpu_us_per_forwarded_packet": lambda r: r["cpu_us_per_forwarded_packet"],
    "uss_kb_per_call": lambda r: r["memory_per_call_kb"]["uss"],
    "rss_kb_per_call": lambda r: r["memory_per_call_kb"]["rss"],
    "anon_kb_per_call": lambda r: r["memory_per_call_kb"]["anon"],
    "video_loss_pct": lambda r: r["packet_loss_pct"],
    "audio_loss_pct": lambda r: r.get("audio_packet_loss_pct"),
    "fps_min": lambda r: r["fps"]["min"],
    "first_frame_p95_ms": lambda r: r["time_to_first_frame_ms"]["p95"],
    "latency_p50_ms": lambda r: r["added_latency_ms"]["p50"],
    "latency_p99_ms": lambda r: r["added_latency_ms"]["p99"],
    "client_cpu_cores": lambda r: r["client_cpu_seconds_per_second"],
    "loadavg_1min": lambda r: r["loadavg_1min_after"],
}
RATIO_FIGURES = ("cpu_ms_per_call", "cpu_us_per_forwarded_packet", "uss_kb_per_call", "rss_kb_per_call",
                 "anon_kb_per_call")


def call_figures(calls: int, summary: dict[str, Any], idle: Any, loaded: Any, idle_cpu: float,
                 setup_ms: list[float]) -> dict[str, Any]:
    """What a calls run adds to ``summarise``'s figures: per call, and the server's memory over
    its idle self (``idle``/``loaded``: bench.procfs.Memory of the server's process tree)."""
    up = sum(1 for s in summary["per_subscriber"] if s["ok"]) // 2
    return {
        "calls": calls,
        "calls_up": up,
        # Milliseconds of server CPU per second of one call.
        "cpu_ms_per_call": round(summary["server_cpu_seconds_per_second"] * 1000 / calls, 3),
        "idle_server_cpu_seconds_per_second": round(idle_cpu, 4),
        "memory_kb": {name: {"uss": m.uss_kb, "pss": m.pss_kb, "rss": m.rss_kb, "anon": m.anon_kb}
                      for name, m in (("idle", idle), ("loaded", loaded))},
        # PSS, and USS a little, move when the bench's clients map the libraries the server maps
        # (bench.procfs.Memory): anon is the memory the calls cost
        "memory_per_call_kb": {"uss": round((loaded.uss_kb - idle.uss_kb) / calls, 1),
                               "rss": round((loaded.rss_kb - idle.rss_kb) / calls, 1),
                               "anon": round((loaded.anon_kb - idle.anon_kb) / calls, 1)},
        "call_setup_ms": _percentiles(setup_ms, 50, 95, scale=1.0),
    }


def _median_range(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": round(float(np.median(values)), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def calls_table(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per target and call count: each figure's median and range over the rounds, and how many
    rounds were clean."""
    table: dict[str, dict[str, Any]] = {}
    for target in sorted({r["target"] for r in runs}):
        table[target] = {}
        for count in sorted({r["calls"] for r in runs if r["target"] == target}):
            mine = [r for r in runs if r["target"] == target and r["calls"] == count]
            row: dict[str, Any] = {"rounds": len(mine), "clean_rounds": sum(r["clean"] for r in mine)}
            for name, read in CALL_FIGURES.items():
                row[name] = _median_range([v for v in map(read, mine) if v is not None])
            table[target][str(count)] = row
    return table


def calls_per_core(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The largest call count clean in every round, and the calls one core would carry at the
    median CPU those runs took (a projection: on one core the clients would not fit beside it)."""
    found = _largest_clean(runs, "calls")
    if found is None:
        return None
    best, cpu = found
    return {"largest_clean_calls": best, "server_cpu_at_largest": round(cpu, 4), "calls_per_core": round(best / cpu)}


def call_ratios(runs: list[dict[str, Any]], reference: str, base: str = "expertcall") -> dict[str, Any]:
    """``reference``'s figures over ``base``'s, each round against the same round, then the median
    (and range) over the rounds, per call count."""
    mine = {(r["round"], r["calls"]): r for r in runs if r["target"] == base}
    ratios: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        b = mine.get((r["round"], r["calls"]))
        if r["target"] != reference or b is None:
            continue
        for name in RATIO_FIGURES:
            ours, theirs = CALL_FIGURES[name](b), CALL_FIGURES[name](r)
            if ours and theirs:
                ratios.setdefault(str(r["calls"]), {}).setdefault(name, []).append(round(theirs / ours, 3))
    return {"meaning": f"{reference} / {base}: above 1, {base} needs less",
            "per_count": {count: {name: {**(_median_range(values) or {}), "rounds": values}
                                  for name, values in by_name.items()}
                          for count, by_name in ratios.items()}}


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def plot(path: Path, runs: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for target in sorted({r["target"] for r in runs}):
        points = sorted((r["subscribers"], r["server_cpu_seconds_per_second"], r["clean"])
                        for r in runs if r["target"] == target)
        xs, ys, clean = zip(*points)
        counts = sorted(set(xs))  # the line through the median of the rounds at each count
        medians = [float(np.median([y for x, y in zip(xs, ys) if x == n])) for n in counts]
        line, = ax.plot(counts, medians, label=target)
        # A run that missed 30 fps or lost 1 % is marked: its CPU is not the cost of the full load.
        ax.scatter([x for x, c in zip(xs, clean) if c], [y for y, c in zip(ys, clean) if c],
                   color=line.get_color(), marker="o")
        ax.scatter([x for x, c in zip(xs, clean) if not c], [y for y, c in zip(ys, clean) if not c],
                   color=line.get_color(), marker="x", s=60,
                   label=f"{target}: not clean (< 29 fps or >= 1 % loss)" if not all(clean) else None)
    ax.set_xlabel("subscribers (one 640x480 30 fps VP8 stream each)")
    ax.set_ylabel("server CPU (cores)")
    ax.set_title("expertcall media bench: server CPU against subscribers")
    ax.grid(True, alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_calls(path: Path, runs: list[dict[str, Any]]) -> None:
    """CPU per call, loss and the lowest fps against the number of calls, a line per server
    (through the median of the rounds), every run a point; a run that was not clean is a cross."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cpu_ax, loss_ax, fps_ax) = plt.subplots(1, 3, figsize=(15, 4.5))
    for target in sorted({r["target"] for r in runs}):
        mine = sorted((r for r in runs if r["target"] == target), key=lambda r: r["calls"])
        counts = sorted({r["calls"] for r in mine})
        for ax, read in ((cpu_ax, CALL_FIGURES["cpu_ms_per_call"]),
                         (loss_ax, lambda r: max(r["packet_loss_pct"], r.get("audio_packet_loss_pct") or 0.0)),
                         (fps_ax, CALL_FIGURES["fps_min"])):
            medians = [float(np.median([read(r) for r in mine if r["calls"] == n])) for n in counts]
            line, = ax.plot(counts, medians, label=target)
            for clean, marker in ((True, "o"), (False, "x")):
                points = [(r["calls"], read(r)) for r in mine if r["clean"] is clean]
                if points:
                    ax.scatter(*zip(*points), color=line.get_color(), marker=marker, s=25 if clean else 60,
                               label=f"{target}: not clean" if not clean else None)
    cpu_ax.set_ylabel("server CPU per call (ms per second)")
    loss_ax.set_ylabel("packet loss, worse of video and audio (%)")
    loss_ax.axhline(CLEAN_LOSS_PCT, color="grey", linestyle=":", linewidth=1)
    fps_ax.set_ylabel("lowest subscriber fps")
    fps_ax.axhline(CLEAN_FPS, color="grey", linestyle=":", linewidth=1)
    for ax in (cpu_ax, loss_ax, fps_ax):
        ax.set_xlabel("concurrent two-party calls")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("expertcall media bench: two-party calls (VP8 ~500 kbps + Opus, both ways)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def show_progress(text: str) -> None:
    click.echo(f"\r\033[K{text}", err=True, nl=False)
