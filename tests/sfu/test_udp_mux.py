"""One UDP port per worker (sfu/udp_mux.py): calls through one socket, the demultiplexing of STUN,
DTLS and RTP by ICE ufrag and remote address, and what it does with datagrams nobody owns."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pylibsrtp
import pytest
from aioice import stun

from sfu import aiortc_hooks, fastsend, ingress
from sfu.api import CloseRoom, MediaError, OpenRoom
from sfu.options import MediaOptions
from sfu.transport import Transport
from sfu.udp_mux import MuxSocket
from sfu.worker import LocalMediaPlane
from signalling.app.factory import media_options
from signalling.core.settings import Settings, SettingsError
from tests.media_clients import EventHub, Publisher, Subscriber


def candidate_ports(sdp: str) -> set[int]:
    return {int(line.split()[5]) for line in sdp.splitlines() if line.startswith("a=candidate:")}


# --- a call through one port -----------------------------------------------------------------


@pytest.fixture
async def plane() -> AsyncIterator[LocalMediaPlane]:
    plane = LocalMediaPlane(MediaOptions(loopback=True))  # the default: a port the kernel picks
    plane.start()
    yield plane
    await plane.close()


@pytest.mark.integration
@pytest.mark.parametrize("helper", ["native", "python"])
async def test_aiortc_call_both_ways_through_one_port(
    plane: LocalMediaPlane, helper: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two participants, each publishing VP8 + Opus and watching the other: four connections,
    one server socket, and every picture decoded in order — with the C helpers, and with the
    Python fallback an install without a compiler gets."""
    if helper == "python":
        monkeypatch.setattr(ingress, "NATIVE", False)
        monkeypatch.setattr(fastsend, "native_protect_queue", None)
        monkeypatch.setattr(fastsend, "native_unprotect", None)
        monkeypatch.setattr(fastsend, "NativeBatch", None)
    else:
        assert fastsend.NATIVE and ingress.NATIVE
    # RTCP by aiortc's DTLS transport (_on_rtcp), or handed over by the C reader
    via_aiortc: list[bytes] = []
    via_c: list[bytes] = []
    receive_rtcp = Transport._receive_rtcp

    async def on_rtcp(self: Transport, data: bytes) -> None:
        via_aiortc.append(data)
        receive_rtcp(self, data)

    def receive(self: Transport, data: bytes) -> None:
        via_c.append(data)
        receive_rtcp(self, data)

    monkeypatch.setattr(Transport, "_on_rtcp", on_rtcp)
    monkeypatch.setattr(Transport, "_receive_rtcp", receive)
    assert plane.mux is not None
    hub = EventHub(plane)
    await plane.request(OpenRoom("call"))
    alice, bob = Publisher(plane, "call", "alice"), Publisher(plane, "call", "bob")
    alice_sees = Subscriber(plane, hub, "call", "alice")
    bob_sees = Subscriber(plane, hub, "call", "bob")
    try:
        for client in (alice, bob, alice_sees, bob_sees):
            await client.start()
        await alice_sees.wait_frames(30)
        await bob_sees.wait_frames(30)
        for viewer in (alice_sees, bob_sees):
            counters = viewer.counters()
            assert len(counters) >= 30 and counters == sorted(counters)
            assert viewer.audio_frames > 0
        server_ports = set()
        for client in (alice, bob):
            server_ports |= candidate_ports(client.pc.remoteDescription.sdp)
        for viewer in (alice_sees, bob_sees):
            assert viewer.pc is not None
            server_ports |= candidate_ports(viewer.pc.remoteDescription.sdp)
        (shared,) = plane.mux.sockets.values()
        assert shared.transport is not None
        assert server_ports == {shared.transport.get_extra_info("sockname")[1]}
        assert len(shared.by_ufrag) == 4
        # the media came in by the C reader when it is built, by the event loop's when not
        reader: Any = getattr(shared.transport, "reader", None)
        assert (reader.taken > 100) if helper == "native" else reader is None
        # the viewers' reports and the publishers' SRs: by the C reader when it is built
        for _ in range(50):
            if len(via_c) + len(via_aiortc) >= 4:
                break
            await asyncio.sleep(0.1)
        assert len(via_c if helper == "native" else via_aiortc) >= 4
        assert via_c == [] if helper == "python" else len(via_aiortc) <= 1
    finally:
        for client in (alice_sees, bob_sees, alice, bob):
            await client.close()
        await plane.request(CloseRoom("call"))


@pytest.mark.integration
async def test_garbage_at_the_shared_port_leaves_a_live_call_alone(plane: LocalMediaPlane) -> None:
    """Random bytes, STUN for unknown and known ufrags without the password, fake DTLS and RTP,
    from addresses no connection owns: all dropped and counted, and the call decodes on."""
    assert plane.mux is not None
    hub = EventHub(plane)
    await plane.request(OpenRoom("room"))
    publisher = Publisher(plane, "room", "alice", audio=False)
    viewer = Subscriber(plane, hub, "room", "bob")
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        await publisher.start()
        await viewer.start()
        await viewer.wait_frames(10)
        (shared,) = plane.mux.sockets.values()
        known = next(iter(shared.by_ufrag))
        assert shared.transport is not None
        server = shared.transport.get_extra_info("sockname")
        garbage = [os.urandom(n) for n in (1, 20, 200, 1400)] + [
            binding_request("nobody", "some-password-0123456789"),
            binding_request(known, "not-the-password-01234567"),
            binding_request(known, None),
            DTLS, RTP, b"",
        ]
        before, dropped = len(viewer.frames), shared.dropped
        for _ in range(20):
            for data in garbage:
                attacker.sendto(data, server)
            await asyncio.sleep(0.02)
        await viewer.wait_frames(before + 20)
        assert len(viewer.frames) >= before + 20
        counters = viewer.counters()
        assert counters == sorted(counters)
        assert shared.dropped - dropped >= 20 * len(garbage)
        assert plane.mux.dropped == shared.dropped
        assert len(shared.by_ufrag) == 2
    finally:
        attacker.close()
        await viewer.close()
        await publisher.close()


@pytest.mark.integration
async def test_publisher_ice_restart_through_the_shared_port(plane: LocalMediaPlane) -> None:
    """A resume (a fresh connection from a new client address, new ufrag) on one port: the
    new ufrag takes the new address, the old connection leaves the socket, the stream runs on."""
    assert plane.mux is not None
    hub = EventHub(plane)
    await plane.request(OpenRoom("room"))
    first = Publisher(plane, "room", "alice", audio=False)
    watcher = Subscriber(plane, hub, "room", "bob", decode=False, record_sequence=True)
    viewer = Subscriber(plane, hub, "room", "carol")
    second = Publisher(plane, "room", "alice", audio=False)
    try:
        await first.start()
        await watcher.start()
        await viewer.start()
        await viewer.wait_frames(20)
        (shared,) = plane.mux.sockets.values()
        old_ufrags = set(shared.by_ufrag)
        await first.close()
        await asyncio.sleep(0.3)
        before = len(viewer.frames)
        await second.start()
        deadline = time.monotonic() + 10
        while len(viewer.frames) < before + 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(viewer.frames) >= before + 20, "no video after the publisher reconnected"
        # the two viewers' connections stay; the publisher's old one left, its new one came
        assert len(shared.by_ufrag) == 3 and len(old_ufrags & set(shared.by_ufrag)) == 2
        (sequence,) = watcher.sequences.values()
        assert {(b - a) & 0xFFFF for a, b in itertools.pairwise(sequence)} == {1}
    finally:
        for client in (viewer, watcher, second):
            await client.close()


@pytest.mark.unit
def test_each_worker_of_a_pool_takes_base_plus_index(tmp_path: Path) -> None:
    options = MediaOptions(loopback=True, media_port=40000)
    assert [options.for_worker(i).media_port for i in range(3)] == [40000, 40001, 40002]
    assert MediaOptions(loopback=True).for_worker(5).media_port == 0
    with pytest.raises(MediaError):
        MediaOptions(media_port=40000, per_connection_sockets=True)
    with pytest.raises(MediaError):  # a port range is the per-connection path's
        MediaOptions(port_min=41000, port_max=41010)
    with pytest.raises(SettingsError):
        Settings(data_dir=tmp_path, media_port=65535, sfu_workers=2)
    with pytest.raises(SettingsError):
        Settings(data_dir=tmp_path, media_port=40000, media_per_connection=True)
    with pytest.raises(SettingsError):
        Settings(data_dir=tmp_path, media_port_min=41000, media_port_max=41010)
    assert media_options(Settings(data_dir=tmp_path, media_port=40000, sfu_workers=4)).media_port == 40000


# --- the demultiplexer on its own ------------------------------------------------------------


class Endpoint:
    def __init__(self, ufrag: str, password: str) -> None:
        self.local_ufrag = ufrag
        self.local_password = password.encode()
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.lost = False

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append((data, addr))

    def socket_lost(self) -> None:
        self.lost = True


def binding_request_sent(endpoint: Endpoint) -> bytes:
    """The one datagram ``endpoint`` got: its own authenticated request."""
    (data, _), = endpoint.received
    return data


def binding_request(ufrag: str, password: str | None) -> bytes:
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    message.attributes["USERNAME"] = f"{ufrag}:remote"
    if password is not None:
        message.add_message_integrity(password.encode())
    return bytes(message)


RTP = bytes([0x80, 96, 0, 1]) + bytes(8) + b"payload"
DTLS = bytes([22, 0xFE, 0xFD]) + bytes(10)
ALICE, BOB, MALLORY = ("127.0.0.1", 5001), ("127.0.0.1", 5002), ("127.0.0.1", 5003)


@pytest.fixture
def mux() -> MuxSocket:
    mux = MuxSocket()
    mux.register(Endpoint("aaaa", "alice-password-0123456789"))  # type: ignore[arg-type]
    mux.register(Endpoint("bbbb", "bob-password-0123456789ab"))  # type: ignore[arg-type]
    return mux


def endpoint(mux: MuxSocket, ufrag: str) -> Endpoint:
    found = mux.by_ufrag[ufrag]
    assert isinstance(found, Endpoint)
    return found


@pytest.mark.unit
def test_stun_goes_by_ufrag_then_dtls_and_rtp_by_address(mux: MuxSocket) -> None:
    alice, bob = endpoint(mux, "aaaa"), endpoint(mux, "bbbb")
    request_a = binding_request("aaaa", "alice-password-0123456789")
    request_b = binding_request("bbbb", "bob-password-0123456789ab")
    mux.datagram_received(request_a, ALICE)
    mux.datagram_received(request_b, BOB)
    mux.datagram_received(DTLS, ALICE)
    mux.datagram_received(RTP, BOB)
    mux.datagram_received(RTP, ALICE)
    assert alice.received == [(request_a, ALICE), (DTLS, ALICE), (RTP, ALICE)]
    assert bob.received == [(request_b, BOB), (RTP, BOB)]
    assert mux.dropped == 0


@pytest.mark.unit
def test_unknown_forged_and_broken_datagrams_are_dropped_without_harm(mux: MuxSocket) -> None:
    alice, bob = endpoint(mux, "aaaa"), endpoint(mux, "bbbb")
    mux.datagram_received(binding_request("aaaa", "alice-password-0123456789"), ALICE)
    garbage = [
        (binding_request("zzzz", "whatever-password-0123456"), MALLORY),  # unknown ufrag
        (binding_request("aaaa", "wrong-password-0123456789"), MALLORY),  # forged: bad integrity
        (binding_request("aaaa", None), MALLORY),  # no integrity at all
        (bytes([0, 1, 0, 4]) + b"not stun", MALLORY),  # broken STUN
        (RTP, MALLORY),  # media from an address nobody authenticated
        (DTLS, MALLORY),
        (b"", MALLORY),
    ]
    for data, addr in garbage:
        mux.datagram_received(data, addr)
    assert mux.dropped == len(garbage)
    # a forgery from bob's address for alice's ufrag moves nothing; one from alice's own address
    # reaches her connection, which answers 401 as aioice does
    mux.datagram_received(binding_request("bbbb", "bob-password-0123456789ab"), BOB)
    mux.datagram_received(binding_request("aaaa", "wrong-password-0123456789"), BOB)
    assert mux.by_addr == {ALICE: alice, BOB: bob} and mux.dropped == len(garbage) + 1
    mux.datagram_received(RTP, ALICE)
    assert alice.received[-1] == (RTP, ALICE)
    assert [data for data, _ in bob.received] == [binding_request_sent(bob)]


@pytest.mark.unit
def test_an_authenticated_request_from_a_new_address_takes_over(mux: MuxSocket) -> None:
    """A client whose address changed (or whose fresh connection reuses an address) proves it
    with MESSAGE-INTEGRITY; its media then follows it."""
    alice, bob = endpoint(mux, "aaaa"), endpoint(mux, "bbbb")
    mux.datagram_received(binding_request("aaaa", "alice-password-0123456789"), ALICE)
    moved = ("127.0.0.1", 6001)
    mux.datagram_received(binding_request("aaaa", "alice-password-0123456789"), moved)
    mux.datagram_received(RTP, moved)
    assert alice.received[-1] == (RTP, moved)
    # bob's connection now authenticates from alice's old address: it is bob's from then on
    mux.datagram_received(binding_request("bbbb", "bob-password-0123456789ab"), ALICE)
    mux.datagram_received(RTP, ALICE)
    assert bob.received[-1] == (RTP, ALICE)


@pytest.mark.unit
def test_our_checks_claim_an_address_until_someone_authenticates_it(mux: MuxSocket) -> None:
    alice, bob = endpoint(mux, "aaaa"), endpoint(mux, "bbbb")
    mux.claim(MALLORY, alice)  # type: ignore[arg-type]
    response = bytes(stun.Message(message_method=stun.Method.BINDING,
                                  message_class=stun.Class.RESPONSE))
    mux.datagram_received(response, MALLORY)
    assert alice.received == [(response, MALLORY)]
    mux.datagram_received(binding_request("bbbb", "bob-password-0123456789ab"), BOB)
    mux.claim(BOB, alice)  # type: ignore[arg-type]
    assert mux.by_addr[BOB] is bob


@pytest.mark.unit
def test_a_connection_leaving_frees_its_ufrag_and_addresses(mux: MuxSocket) -> None:
    alice, bob = endpoint(mux, "aaaa"), endpoint(mux, "bbbb")
    mux.datagram_received(binding_request("aaaa", "alice-password-0123456789"), ALICE)
    mux.datagram_received(binding_request("bbbb", "bob-password-0123456789ab"), BOB)
    mux.release(alice)  # type: ignore[arg-type]
    assert set(mux.by_ufrag) == {"bbbb"} and mux.by_addr == {BOB: bob}
    mux.datagram_received(RTP, ALICE)
    assert mux.dropped == 1
    with pytest.raises(ValueError):
        mux.register(Endpoint("bbbb", "x" * 24))  # type: ignore[arg-type]
    mux.connection_lost(None)
    assert bob.lost and not mux.by_ufrag


@pytest.mark.integration
async def test_batched_sends_leave_in_order_on_the_shared_socket() -> None:
    loop = asyncio.get_running_loop()
    _, mux = await loop.create_datagram_endpoint(MuxSocket, local_addr=("127.0.0.1", 0))
    receivers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for sock in receivers:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(2)
        policy = pylibsrtp.Policy(key=bytes(30), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        queue = aiortc_hooks.batch_protector(pylibsrtp.Session(policy))
        seq = 0
        for n in range(5):
            for sock in receivers:
                seq += 1
                # (SRTP leaves the RTP header in the clear: its last byte is n)
                queue(struct.pack("!BBHII", 0x80, 96, seq, 0, n) + os.urandom(4),
                      sock.getsockname(), mux.batch)
        mux.schedule_flush()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(mux.batch) == 0
        for sock in receivers:
            got = [sock.recv(100)[11] for _ in range(5)]
            assert got == [0, 1, 2, 3, 4]
    finally:
        for sock in receivers:
            sock.close()
        assert mux.transport is not None
        mux.transport.close()


async def test_the_shared_socket_buffers_a_stall_of_the_worker_not_a_connections_worth() -> None:
    from sfu.udp_mux import RECEIVE_BUFFER

    loop = asyncio.get_running_loop()
    _, mux = await loop.create_datagram_endpoint(MuxSocket, local_addr=("127.0.0.1", 0))
    try:
        assert mux.transport is not None
        sock = mux.transport.get_extra_info("socket")
        with open("/proc/sys/net/core/rmem_max") as f:
            ceiling = int(f.read())
        # Linux reports twice what was asked (its bookkeeping), capped by rmem_max
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 2 * min(RECEIVE_BUFFER, ceiling)
    finally:
        assert mux.transport is not None
        mux.transport.close()
