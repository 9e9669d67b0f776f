"""``expertcall bench ...``: benches that print JSON."""

from __future__ import annotations

import click


@click.group()
def bench() -> None:
    """Benchmarks; each prints (and optionally writes) a JSON report."""


@bench.command()
@click.option("--sessions", type=int, default=1000, show_default=True, help="Concurrent metered sessions.")
@click.option("--duration", type=float, default=10.0, show_default=True, help="Seconds to run once every session is open.")
@click.option("--ramp-seconds", type=float, default=None, help="Seconds over which sessions open (default: max(unit, sessions/1000)).")
@click.option("--unit-seconds", type=int, default=1, show_default=True, help="Billing unit.")
@click.option("--redis", "redis_url", default="redis://127.0.0.1:6379/0", show_default=True, help="Redis for the stream; '' to skip it.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write the report here.")
def metering(
    sessions: int, duration: float, ramp_seconds: float | None, unit_seconds: int, redis_url: str, json_path: str | None
) -> None:
    """N metered sessions through the meter, ledger, outbox, Redis stream and consumer."""
    import asyncio
    import json

    from signalling.cli import install_event_loop

    from .metering import run

    install_event_loop()
    report = asyncio.run(run(
        sessions=sessions, duration=duration, unit_seconds=unit_seconds, redis_url=redis_url, ramp_seconds=ramp_seconds,
    ))
    text = json.dumps(report, indent=1)
    click.echo(text)
    if json_path:
        with open(json_path, "w") as f:
            f.write(text + "\n")
