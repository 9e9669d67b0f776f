"""``expertcall bench``: the benchmark commands, each printing JSON figures."""

from __future__ import annotations

import click

from .media import media


@click.group()
def bench() -> None:
    """Benchmarks (media, ...) that print JSON figures."""


bench.add_command(media)
