"""How long the control plane's Redis clients wait for the server: a frozen Redis (paused, or
partitioned without a reset) fails a command within these seconds, instead of holding a request,
or the shutdown, forever (redis-py before 8.0 waits forever unless told).

Blocking reads stay within them: the metering feed's XREADGROUP blocks ``block_ms`` (1 s), below
``socket_timeout``; a subscription's ``listen()`` is read without the socket timeout (redis-py
8.1 and later), so a quiet channel is not a timeout.
"""

from __future__ import annotations

from typing import Any

CONNECT_SECONDS = 5.0
COMMAND_SECONDS = 5.0
TIMEOUTS: dict[str, Any] = {"socket_connect_timeout": CONNECT_SECONDS, "socket_timeout": COMMAND_SECONDS}
