"""A shutdown that hangs names its cause: ``expertcall serve`` still running some seconds after
SIGTERM writes every thread's stack and every pending task's await chain to its log, once."""

from __future__ import annotations

import asyncio
import signal
import time

from signalling.app.shutdown_watchdog import format_tasks

from ...served import serve

DUMPED = "shutdown still running after"


def test_a_stuck_shutdown_writes_the_stacks_once_naming_the_stuck_frame(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"EXPERTCALL_SHUTDOWN_DUMP_SECONDS": "1"}
    with serve(tmp_path, "--media-loopback", "--sfu-workers", "1", env=env,
               module="tests.stuck_shutdown") as server:
        time.sleep(1.5)
        assert DUMPED not in server.log()  # armed by the shutdown, not by serving
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while "pending asyncio tasks" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.5)  # time for a second dump, if there were one
        assert server.process.poll() is None  # stuck, as the child intends
        server.process.kill()
        server.process.wait()
        log = server.log()
    assert log.count(DUMPED) == 1, log[-5000:]
    threads = log.split(DUMPED, 1)[1]
    assert "Current thread" in threads or "Thread 0x" in threads  # faulthandler's dump
    tasks = log.split("pending asyncio tasks", 1)[1]
    # the stuck frame, at the end of the await chain that leads to it from the shutdown
    assert 'in wait_for_a_frozen_dependency' in tasks
    assert tasks.index("in billing_ctx") < tasks.index("in wait_for_a_frozen_dependency")
    assert "Timeout (0:" not in log  # faulthandler's fallback was cancelled


async def test_format_tasks_follows_each_await_chain_to_its_innermost_frame() -> None:
    stuck = asyncio.Event()

    async def inner() -> None:
        await stuck.wait()

    async def outer() -> None:
        await inner()

    task = asyncio.create_task(outer(), name="the-outer-task")
    await asyncio.sleep(0)
    dump = format_tasks(asyncio.get_running_loop())
    task.cancel()
    block = dump[dump.index("the-outer-task"):]
    assert block.index("in outer") < block.index("in inner") < block.index("in wait")
