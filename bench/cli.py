"""``expertcall bench``: the benchmark commands, each printing JSON figures."""

from __future__ import annotations

import click

from .media import media
from .metering import metering
from .signalling import signalling
from .soak import soak


@click.group()
def bench() -> None:
    """Benchmarks (media, metering) that print JSON figures."""


bench.add_command(media)
bench.add_command(metering)
bench.add_command(signalling)
bench.add_command(soak)
