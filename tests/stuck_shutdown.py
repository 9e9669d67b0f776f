"""``expertcall`` whose shutdown never ends, for the shutdown watchdog's test:
``python -m tests.stuck_shutdown serve ...``. Its meter, closing, first waits for a dependency that
never answers (as a frozen Redis or database would), in ``wait_for_a_frozen_dependency``."""

from __future__ import annotations

import asyncio

from signalling.app.cli import main
from signalling.billing.meter import Meter

close = Meter.close


async def wait_for_a_frozen_dependency(self: Meter) -> None:
    await asyncio.Event().wait()
    await close(self)


Meter.close = wait_for_a_frozen_dependency  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
