"""A real coturn for tests: ``turnserver -c <generated conf>`` on 127.0.0.1 with free ports.

Started from the same ``CoturnConfig`` operators get from ``expertcall turn-config``, with only the
addresses, ports, log and pid files pointed at the test's temporary directory.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aioice import stun

from turn_config.coturn import CoturnConfig

from .externals import require

SECRET = "coturn-test-secret-0123456789"
REALM = "expertcall.test"
RELAY_PORTS = 200


@dataclass
class Coturn:
    config: CoturnConfig
    process: subprocess.Popen[bytes]
    log_file: Path

    @property
    def port(self) -> int:
        return self.config.listening_port

    @property
    def host(self) -> str:
        return self.config.listening_ips[0]

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.config.listening_port)

    @property
    def tls_address(self) -> tuple[str, int]:
        return (self.host, self.config.tls_listening_port)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def free_udp_and_tcp_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` (coturn listens on both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port for coturn")


def _stun_answers(address: tuple[str, int]) -> bool:
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    with socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.sendto(bytes(request), address)
        try:
            data, _ = sock.recvfrom(2048)
        except OSError:
            return False
    return stun.parse_message(data).transaction_id == request.transaction_id


@contextmanager
def running_coturn(
    tmp_path: Path, allow_loopback_peers: bool = False, tls: tuple[Path, Path] | None = None, host: str = "127.0.0.1"
) -> Iterator[Coturn]:
    """coturn as ``expertcall turn-config`` would configure it; ``tls`` is (certificate, key);
    ``host`` "::1" makes an IPv6 relay."""
    require(shutil.which("turnserver") is not None, "coturn")
    if ":" in host:
        require(has_ipv6_loopback(), "IPv6 on the loopback interface (::1)")
    # Relay ports below Linux's ephemeral range, so that they do not collide with other tests' sockets.
    first = random.randrange(20000, 32000 - RELAY_PORTS)
    log_file = tmp_path / "turnserver.log"
    config = dataclasses.replace(
        CoturnConfig(realm=REALM, external_ips=(host,), secrets=(SECRET,)),
        listening_ips=(host,),
        relay_ips=(host,),
        listening_port=free_udp_and_tcp_port(host),
        min_port=first,
        max_port=first + RELAY_PORTS - 1,
        allow_loopback_peers=allow_loopback_peers,
        cert=tls[0] if tls else None,
        pkey=tls[1] if tls else None,
        tls_listening_port=free_udp_and_tcp_port(host) if tls else 443,
        log_file=log_file,
        pidfile=tmp_path / "turnserver.pid",
        userdb=tmp_path / "turndb",
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    conf = tmp_path / "turnserver.conf"
    conf.write_text(config.render())
    # The documented command, `turnserver -c FILE`: the file names its own database and turns on
    # the per-session log lines tests read. For an IPv6 relay coturn must follow the client's
    # address family (it allocates IPv4 otherwise, and aioice cannot ask for IPv6).
    command = ["turnserver", "-c", str(conf)]
    if ":" in host:
        command.append("--allocation-default-address-family=keep")
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = Coturn(config=config, process=process, log_file=log_file)
    try:
        deadline = time.monotonic() + 20
        while not _stun_answers(server.address):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"coturn did not start (exit {process.poll()}):\n{server.log()[-3000:]}")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
