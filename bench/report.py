"""Turning the workers' raw counters into the media bench's figures, its JSON and its plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
        per_subscriber.append({
            "ok": s["ok"],
            "fps": round((a["frames"] - b["frames"]) / span, 2),
            "bitrate_kbps": round((a["bytes"] - b["bytes"]) * 8 / span / 1000, 1),
            "loss_pct": round(max(loss, 0.0), 3),
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
        and min(fps_values) >= CLEAN_FPS * fps / 30 and max(p["loss_pct"] for p in per_subscriber) < CLEAN_LOSS_PCT
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
        "time_to_first_frame_ms": {**_percentiles(first_frames, 50, 95), "missing": count - len(first_frames)},
        # Where the first frame's time goes: the WHEP answer, then ICE + DTLS, then the keyframe.
        "time_to_answer_ms": _percentiles(answers, 50, 95),
        "time_to_connected_ms": _percentiles(connects, 50, 95),
        # Publisher's send → the kernel's receive at the subscriber: what the SFU adds. The
        # delivered figure adds the client processes' own queueing on the shared cores.
        "added_latency_ms": {**_percentiles(latencies, 50, 99), "samples": len(latencies)},
        "delivered_latency_ms": _percentiles(delivered, 50, 99),
        "clean": clean,
        "publisher_stats": publisher_stats,
        "per_subscriber": per_subscriber,
    }


def streams_per_core(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """From a sweep: the largest subscriber count whose every run (every round) was clean, and
    the streams a whole core would feed at the median CPU of those runs."""
    counts = {r["subscribers"] for r in runs}
    clean = [n for n in counts
             if all(r["clean"] and r["server_cpu_seconds_per_second"] > 0
                    for r in runs if r["subscribers"] == n)]
    if not clean:
        return None
    best = max(clean)
    cpu = float(np.median([r["server_cpu_seconds_per_second"] for r in runs if r["subscribers"] == best]))
    return {
        "largest_clean_run": best,
        "server_cpu_at_largest": round(cpu, 4),
        "streams_per_core": round(best / cpu),
    }


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
