"""``expertcall bench``: the benchmark commands, each printing JSON figures."""

from __future__ import annotations

import click

from .metering import metering


@click.group()
def bench() -> None:
    """Benchmarks (media, metering) that print JSON figures."""


bench.add_command(metering)
