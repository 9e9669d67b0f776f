"""Shared helpers for the billing tests: a manual clock and a meter wired to record its callbacks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from signalling.billing.meter import Meter
from signalling.billing.store_sqlite import SqliteBillingStore
from signalling.core.database import Database

T0 = 1_800_000_000.0


class ManualClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Recorder:
    units: list[Any] = field(default_factory=list)
    warnings: list[Any] = field(default_factory=list)
    reached: list[Any] = field(default_factory=list)


def make_meter(path: Path, clock: ManualClock, recorder: Recorder | None = None, **kwargs: Any) -> Meter:
    recorder = recorder or Recorder()
    return Meter(
        SqliteBillingStore(Database.in_dir(path)),
        clock=clock,
        on_unit=recorder.units.append,
        on_budget_warning=recorder.warnings.append,
        on_budget_reached=recorder.reached.append,
        **kwargs,
    )


async def advance(meter: Meter, clock: ManualClock, to: float) -> int:
    clock.t = to
    return await meter.fire_due()
