"""The figures of a metering run: unit lateness as percentiles and per second, and the events
the reference consumer committed."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any


def consumed(path: Path, prefix: str = "") -> int:
    """Events the consumer process has committed so far (read from its own SQLite); with
    ``prefix``, only those whose id starts with it (one run's sessions)."""
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as conn:
            return int(conn.execute(
                "SELECT count(*) FROM consumed_events WHERE substr(id, 1, length(?1)) = ?1", (prefix,)).fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "p50_ms": _ms(percentile(values, 50)),
        "p99_ms": _ms(percentile(values, 99)),
        "max_ms": _ms(max(values) if values else None),
    }


def by_second(charged: list[tuple[float, float]], started: float) -> list[float]:
    """The worst lateness of the units due in each second of the run: where a p99 comes from."""
    worst: dict[int, float] = {}
    for due, late in charged:
        second = int(due - started)
        worst[second] = max(worst.get(second, 0.0), late)
    return [round(worst.get(s, 0.0) * 1000, 1) for s in range(max(worst, default=-1) + 1)]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)
