"""``python -m bench.split_nodes --port P --data-dir D``: expertcall split in two processes, a
signalling node (``--role signalling``) on port P and an SFU node (``--role sfu``) beside it, for
``expertcall bench media --calls N --sfu-node``.

Both are children of this process, so the bench's process-tree CPU and memory count them
together, as they count an ``--role all`` server with its workers; this process only waits. They
find each other in Redis (``EXPERTCALL_REDIS_URL``, default redis://127.0.0.1:6379/0) under a key
prefix of their own, deleted at exit. The signalling node starts once the SFU node is
registered, so the first call finds it; SIGTERM (or SIGINT) stops both, and either exiting stops
the other.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import click
import redis

from .server import free_port

REDIS_URL = "redis://127.0.0.1:6379/0"
START_SECONDS = 60.0


@click.command()
@click.option("--port", type=int, required=True, help="The signalling node's port (the one clients reach).")
@click.option("--data-dir", type=click.Path(path_type=Path), required=True)
def main(port: int, data_dir: Path) -> None:
    url = os.environ.get("EXPERTCALL_REDIS_URL", REDIS_URL)
    prefix = f"bench-{uuid.uuid4().hex}"
    env = {**os.environ, "EXPERTCALL_REDIS_URL": url, "EXPERTCALL_REDIS_PREFIX": prefix,
           "EXPERTCALL_SFU_WORKERS": "1"}
    serve = [sys.executable, "-m", "signalling.app.cli", "serve", "--media-loopback", "--no-demo"]
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda sig, _: stopping.append(sig))
    signal.signal(signal.SIGINT, lambda sig, _: stopping.append(sig))
    client = redis.Redis.from_url(url)
    children: list[subprocess.Popen[bytes]] = []
    try:
        children.append(subprocess.Popen(
            [*serve, "--role", "sfu", "--port", str(free_port()), "--data-dir", str(data_dir / "sfu")],
            env={**env, "EXPERTCALL_NODE_ID": "bench-sfu"}))
        deadline = time.monotonic() + START_SECONDS
        while not client.zrange(f"{prefix}:sfu_nodes", 0, -1):
            if stopping or children[0].poll() is not None or time.monotonic() > deadline:
                raise click.ClickException("the SFU node did not register")
            time.sleep(0.1)
        children.append(subprocess.Popen(
            [*serve, "--role", "signalling", "--port", str(port), "--data-dir", str(data_dir / "signalling")],
            env={**env, "EXPERTCALL_NODE_ID": "bench-signalling"}))
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.2)
    finally:
        for child in reversed(children):  # the signalling node first: it finishes its billing
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(15)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
        if keys:
            client.delete(*keys)
        client.close()
    if not stopping:
        sys.exit("a node exited by itself")


if __name__ == "__main__":
    main()
