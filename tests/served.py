"""``expertcall serve`` in a subprocess on a free 127.0.0.1 port: what an operator runs, with its logs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None, ready: str = "/healthz",
          module: str = "signalling.app.cli") -> Iterator[Served]:
    """Run ``expertcall serve --port P ARGS`` (``module`` is the command line's module); yields once
    ``ready`` answers 200 (a port may be given in ARGS)."""
    port = free_port()
    log_path = tmp_path / f"serve-{port}.log"
    command = [sys.executable, "-m", module, "serve", "--port", str(port), *args]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=tmp_path)
    served = Served(f"http://127.0.0.1:{port}", port, process, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"expertcall serve exited {process.returncode}:\n{served.log()[-3000:]}")
            try:
                with urllib.request.urlopen(served.url + ready, timeout=1) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"expertcall serve did not answer within 60 s:\n{served.log()[-3000:]}")
            time.sleep(0.1)
        yield served
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``expertcall ARGS``, its output captured."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "signalling.app.cli", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=60
    )
