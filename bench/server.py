"""The server under test: expertcall (or the MediaRelay reference) started on a free loopback
port with a fresh secret, its output kept for a post-mortem, and stopped again."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Server:
    name: str
    url: str
    token: str
    pid: int
    process: subprocess.Popen[bytes] | None = None
    secret: str = ""  # what its tokens are signed with, when the bench started it

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()



def pid_listening_on(port: int) -> int:
    """The pid of the process with a TCP socket listening on 127.0.0.1/0.0.0.0:``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(parts[9])
        except FileNotFoundError:
            continue
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return int(pid)
        except OSError:
            continue
    raise click.ClickException(f"no process of ours listens on port {port}; pass --server-pid")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def admin_token(secret: str) -> str:
    from signalling.auth.tokens import Role, TokenIssuer

    return TokenIssuer(secret).mint("bench", Role.ADMIN, ttl=6 * 3600, name="media bench")


def start_server(name: str, data_dir: Path, log_path: Path, nice: int = 0, cpus: str = "",
                 env: dict[str, str] | None = None) -> Server:
    """Start a server on a free port; its output goes to ``log_path`` (kept for a post-mortem).
    ``nice`` below 0 (root only) keeps a busy shared machine from starving the server of the
    core whose capacity is being measured; ``cpus`` (a taskset list) pins it and its children."""
    port, secret = free_port(), secrets.token_hex(24)
    if name in ("sfu", "expertcall"):
        command = [sys.executable, "-m", "signalling.app.cli", "serve", "--port", str(port),
                   "--media-loopback", "--data-dir", str(data_dir / name), "--no-demo"]
    elif name == "expertcall-node":  # a signalling node and an SFU node, children of one launcher
        command = [sys.executable, "-m", "bench.split_nodes", "--port", str(port), "--data-dir", str(data_dir / name)]
    else:
        command = [sys.executable, "-m", "bench.mediarelay", "--port", str(port), "--secret", secret,
                   "--data-dir", str(data_dir / name)]
    if cpus:
        command = ["taskset", "--cpu-list", cpus, *command]
    # The secret in the environment, not in argv, where every user's ps shows it.
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT), "EXPERTCALL_SECRET": secret}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if nice:
        # Right after exec, long before the server starts a thread: every thread inherits it.
        os.setpriority(os.PRIO_PROCESS, process.pid, nice)
    server = Server(name, f"http://127.0.0.1:{port}", admin_token(secret), process.pid, process, secret)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(f"the {name} server exited: see {log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise click.ClickException(f"the {name} server did not listen within 30 s")
