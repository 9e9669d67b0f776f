"""Which UDP sockets carry media: by default one per worker and address (sfu/udp_mux.py) on a port
the kernel picks, ``media_port`` to fix it, ``per_connection_sockets`` for the old path; and the
shared sockets' dropped datagrams in /metrics."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest

from sfu import udp_mux
from sfu.api import MediaError, OpenRoom
from sfu.options import MediaOptions
from sfu.pool import WorkerPool, WorkerState
from sfu.udp_mux import UdpMux
from sfu.worker import LocalMediaPlane

from signalling.app.factory import media_options
from signalling.app.media_metrics import PlaneMetrics, WorkerMetrics
from signalling.core import keys
from signalling.core.settings import Settings
from tests.media_clients import Publisher
from tests.served import free_port, run_cli

GARBAGE = b"\x80" + bytes(20)  # RTP-like, from an address no connection owns


def server_ports(publisher: Publisher) -> set[int]:
    sdp = publisher.pc.remoteDescription.sdp
    return {int(line.split()[5]) for line in sdp.splitlines() if line.startswith("a=candidate:")}


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


def scrape(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


@pytest.mark.unit
async def test_each_mux_gets_its_own_port_from_the_kernel() -> None:
    """Port 0: servers and workers side by side never collide, and each keeps its one port."""
    first, second = UdpMux(), UdpMux()
    try:
        a, b = await first.socket("127.0.0.1"), await second.socket("127.0.0.1")
        assert a.transport is not None and b.transport is not None
        port_a, port_b = a.transport.get_extra_info("sockname")[1], b.transport.get_extra_info("sockname")[1]
        assert port_a and port_b and port_a != port_b
        assert await first.socket("127.0.0.1") is a
    finally:
        first.close()
        second.close()
    with pytest.raises(ValueError):
        UdpMux(80)


@pytest.mark.unit
async def test_the_dropped_count_outlives_a_lost_socket() -> None:
    mux = UdpMux()
    try:
        lost = await mux.socket("127.0.0.1")
        lost.datagram_received(GARBAGE, ("127.0.0.1", 9))
        assert lost.transport is not None
        lost.transport.close()
        await asyncio.sleep(0)
        again = await mux.socket("127.0.0.1")
        assert again is not lost
        again.datagram_received(GARBAGE, ("127.0.0.1", 9))
        assert mux.dropped == 2
    finally:
        mux.close()
    assert mux.dropped == 2


@pytest.mark.integration
@pytest.mark.parametrize("per_connection", [False, True])
async def test_connections_share_the_planes_port_unless_opted_out(per_connection: bool) -> None:
    plane = LocalMediaPlane(MediaOptions(loopback=True, per_connection_sockets=per_connection))
    plane.start()
    publishers = [Publisher(plane, "room", name, audio=False) for name in ("alice", "bob")]
    try:
        await plane.request(OpenRoom("room"))
        for publisher in publishers:
            await publisher.start()
        alice, bob = (server_ports(p) for p in publishers)
        assert len(alice) == len(bob) == 1
        if per_connection:
            assert plane.mux is None and alice != bob
        else:
            assert plane.mux is not None
            (shared,) = plane.mux.sockets.values()
            assert shared.transport is not None
            assert alice == bob == {shared.transport.get_extra_info("sockname")[1]}
    finally:
        for publisher in publishers:
            await publisher.close()
        await plane.close()


@pytest.mark.unit
def test_the_settings_choose_the_path(tmp_path: Path) -> None:
    default = media_options(Settings(data_dir=tmp_path))
    assert default.media_port == 0 and not default.per_connection_sockets
    assert media_options(Settings(data_dir=tmp_path, media_port=42000)).media_port == 42000
    opted_out = media_options(Settings.from_env({"EXPERTCALL_MEDIA_PER_CONNECTION": "1",
                                                 "EXPERTCALL_MEDIA_PORT_MIN": "42100",
                                                 "EXPERTCALL_MEDIA_PORT_MAX": "42199"}, data_dir=tmp_path))
    assert opted_out.per_connection_sockets and (opted_out.port_min, opted_out.port_max) == (42100, 42199)


@pytest.mark.unit
def test_serve_takes_media_per_connection_and_refuses_a_low_media_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiohttp import web

    from signalling.app.cli import main

    served: list[web.Application] = []
    monkeypatch.setattr("signalling.app.cli._run_app", lambda runner, *_: served.append(runner.app))
    monkeypatch.setattr("signalling.app.cli.install_event_loop", lambda: None)
    common = ["serve", "--data-dir", str(tmp_path), "--sfu-workers", "1", "--no-demo"]
    result = CliRunner().invoke(main, [*common, "--media-per-connection"], env={"EXPERTCALL_MEDIA_PORT": None})
    assert result.exit_code == 0, result.output
    assert served[0][keys.SETTINGS].media_per_connection
    result = CliRunner().invoke(main, [*common, "--media-port", "80"])
    assert result.exit_code != 0 and "--media-port" in result.output


@pytest.mark.integration
async def test_the_in_process_planes_dropped_datagrams_reach_metrics() -> None:
    plane = LocalMediaPlane(MediaOptions(loopback=True))
    registry = CollectorRegistry()
    PlaneMetrics(plane, registry)
    try:
        assert 'expertcall_sfu_worker_dropped_datagrams_total{worker="0"} 0.0' in scrape(registry)
        assert plane.mux is not None
        shared = await plane.mux.socket("127.0.0.1")
        assert shared.transport is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            for _ in range(3):
                stranger.sendto(GARBAGE, shared.transport.get_extra_info("sockname"))
        await until(lambda: shared.dropped == 3)
        assert 'expertcall_sfu_worker_dropped_datagrams_total{worker="0"} 3.0' in scrape(registry)
    finally:
        await plane.close()
    registry = CollectorRegistry()
    PlaneMetrics(LocalMediaPlane(MediaOptions(loopback=True, per_connection_sockets=True)), registry)
    assert "dropped_datagrams_total{" not in scrape(registry)


@pytest.mark.integration
async def test_a_pool_workers_dropped_datagrams_reach_metrics() -> None:
    """Datagrams from a stranger at the port a worker announced: counted in that worker, reported
    with its load, shown per worker."""
    pool = WorkerPool(MediaOptions(loopback=True), 1)
    await pool.start()
    registry = CollectorRegistry()
    WorkerMetrics(pool.health, registry)
    publisher = Publisher(pool, "room", "alice", audio=False)  # type: ignore[arg-type]
    try:
        await pool.request(OpenRoom("room"))
        await publisher.start()
        (port,) = server_ports(publisher)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            for _ in range(5):
                stranger.sendto(GARBAGE, ("127.0.0.1", port))
        await until(lambda: pool.health()[0].dropped >= 5)
        assert 'expertcall_sfu_worker_dropped_datagrams_total{worker="0"} 5.0' in scrape(registry)
    finally:
        await publisher.close()
        await pool.close()


@pytest.mark.unit
def test_nodes_show_their_dropped_datagrams() -> None:
    registry = CollectorRegistry()
    node = WorkerState(0, dropped=7)
    WorkerMetrics(lambda: [node], registry, "node", lambda _: "sfu-a")
    assert 'expertcall_sfu_node_dropped_datagrams_total{node="sfu-a"} 7.0' in scrape(registry)


# --- a fixed media port is bound at start ------------------------------------------------------


def held_udp_port() -> socket.socket:
    """A UDP socket on 127.0.0.1 holding a port: someone else's, as far as the SFU knows."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.unit
async def test_a_fixed_media_port_is_held_from_the_start_and_serves_the_first_room() -> None:
    with held_udp_port() as probe:
        port = probe.getsockname()[1]
    plane = LocalMediaPlane(MediaOptions(loopback=True, media_port=port))
    plane.start()
    try:
        assert not port_is_free(port)  # before any room: nobody can take it from under the SFU
        assert plane.mux is not None
        mux = await plane.mux.socket("127.0.0.1")
        assert mux.transport is not None and mux.transport.get_extra_info("sockname")[1] == port
    finally:
        await plane.close()
    await until(lambda: port_is_free(port))  # the transport closes its socket on the next turn


@pytest.mark.unit
def test_a_taken_media_port_fails_the_start_naming_it() -> None:
    with held_udp_port() as taken:
        port = taken.getsockname()[1]
        plane = LocalMediaPlane(MediaOptions(loopback=True, media_port=port))
        with pytest.raises(MediaError) as refused:
            plane.start()
    assert refused.value.code == "media_unavailable"
    assert f"127.0.0.1:{port}" in refused.value.message
    assert not plane.collector._installed  # nothing of the plane took effect


@pytest.mark.unit
def test_a_port_left_to_the_kernel_is_still_bound_by_the_first_room() -> None:
    plane = LocalMediaPlane(MediaOptions(loopback=True))
    plane.start()
    assert plane.mux is not None and not plane.mux.sockets and not plane.mux._bound


@pytest.mark.integration
async def test_a_pool_whose_worker_finds_its_port_taken_does_not_start() -> None:
    """Worker 1's port (P + 1) is taken: the pool's start fails naming it, and worker 0, which
    bound P, is stopped and lets P go."""
    while True:
        taken = held_udp_port()
        base = taken.getsockname()[1] - 1
        if port_is_free(base):
            break
        taken.close()
    with taken:
        pool = WorkerPool(MediaOptions(loopback=True, media_port=base), 2)
        with pytest.raises(MediaError) as refused:
            await pool.start()
    assert refused.value.code == "media_unavailable"
    assert "sfu worker 1" in refused.value.message and f"127.0.0.1:{base + 1}" in refused.value.message
    assert all(w.process is None or w.process.poll() is not None for w in pool.workers)
    assert port_is_free(base)


@pytest.mark.integration
def test_serve_with_a_taken_media_port_exits_saying_so(tmp_path: Path) -> None:
    """The operator's view: a non-zero exit naming the port, not a server whose every call fails
    with media_unavailable. The port the test holds came from the kernel's ephemeral range, so
    the start warns about that too."""
    with held_udp_port() as taken:
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "var"),
                         "--media-loopback", "--sfu-workers", "1", "--media-port", str(port), "--no-demo",
                         env={"EXPERTCALL_SECRET": "s" * 32}, cwd=tmp_path)
    assert result.returncode == 1
    assert f"the media plane did not start: cannot bind udp 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr and "listening on" not in result.stderr
    assert f"media ports {port}-{port} overlap the kernel's ephemeral ports" in result.stderr


@pytest.mark.unit
def test_media_ports_in_the_ephemeral_range_are_found_unless_reserved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ephemeral, reserved = tmp_path / "ip_local_port_range", tmp_path / "ip_local_reserved_ports"
    ephemeral.write_text("32768\t60999\n")
    reserved.write_text("\n")
    monkeypatch.setattr(udp_mux, "EPHEMERAL_RANGE", ephemeral)
    monkeypatch.setattr(udp_mux, "RESERVED_PORTS", reserved)
    assert udp_mux.ephemeral_overlap(24000, 24003) is None
    assert udp_mux.ephemeral_overlap(32760, 32770) == (32768, 60999)
    assert udp_mux.ephemeral_overlap(60999, 61002) == (32768, 60999)
    reserved.write_text("8080,40000-40003\n")
    assert udp_mux.ephemeral_overlap(40000, 40003) is None
    assert udp_mux.ephemeral_overlap(40000, 40004) == (32768, 60999)
    ephemeral.unlink()
    assert udp_mux.ephemeral_overlap(40000, 40004) is None  # /proc does not say: no warning
