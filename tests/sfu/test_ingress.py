"""The shared socket's C receive path (sfu/_ingress.c) against the Python path it short-cuts:
the same datagrams, sent to a socket read in C and to one read by the event loop's transport,
must make the same handler calls, reach the same connections and count the same drops, on IPv4
and IPv6 (whose address tuples the Python path gets as the event loop gives them). What reaches
aioice's queue is read by aiortc's own RTCDtlsTransport._recv_next, the reference for SRTCP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pylibsrtp
import pytest
from aioice import stun
from aiortc.rtcdtlstransport import RTCDtlsTransport, State

from .test_fanout import OPUS, Recorder, _muxed_pair, _session

from sfu import aiortc_hooks, ingress, rtcp
from sfu import producer as producer_module
from sfu.consumer import Consumer
from sfu.forwarder import ExtensionLayout
from sfu.producer import Codec, Producer
from sfu.transport import Transport
from sfu.udp_mux import MuxSocket, bind_udp
from .test_rtcp import FakeScheduler, RecordingConsumer

pytestmark = pytest.mark.skipif(not ingress.NATIVE, reason="sfu/_ingress.c is not built")

KEY = bytes(range(30))
SSRC, OTHER_SSRC = 0x11223344, 0x55667788
CONSUMER_SSRC, OTHER_CONSUMER_SSRC = 0x0A0B0C0D, 0x0E0F1011  # streams the peer subscribes to
NOW_MS = 7_000
PASSWORD = "alice-password-0123456789"


def rtp(seq: int, ssrc: int = SSRC, pt: int = 96, extension: bool = False, csrcs: int = 0) -> bytes:
    header = bytes([0x80 | (0x10 if extension else 0) | csrcs, 0x80 | pt]) + seq.to_bytes(2, "big")
    header += (seq * 3000).to_bytes(4, "big") + ssrc.to_bytes(4, "big") + bytes(4 * csrcs)
    if extension:
        header += bytes([0xBE, 0xDE, 0, 1, 0x10, 0x2A, 0, 0])
    return header + bytes([seq & 0xFF]) * 50


def binding_request(ufrag: str, password: str) -> bytes:
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    message.attributes["USERNAME"] = f"{ufrag}:remote"
    message.add_message_integrity(password.encode())
    return bytes(message)


@dataclass
class Side:
    """One shared socket with one connection on it (a publisher's), as aiortc_hooks wires it."""

    mux: MuxSocket
    transport: Any
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    to_aioice: list[bytes] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)
    arrivals: list[int] = field(default_factory=list)
    rtcp: list[tuple[Any, ...]] = field(default_factory=list)  # what Transport._receive_rtcp did
    task: Any = None  # aiortc's DTLS receive loop

    @property
    def port(self) -> int:
        assert self.mux.transport is not None
        return int(self.mux.transport.get_extra_info("sockname")[1])


def aiortc_dtls(side: Side, queue: asyncio.Queue[bytes]) -> Any:
    """aiortc's DTLS transport after its handshake, reading aioice's queue: SRTP/SRTCP is
    unprotected with ``_rx_srtp`` (once set) and handed to the handlers intercept_packets sets."""
    dtls: Any = RTCDtlsTransport.__new__(RTCDtlsTransport)
    dtls._transport = SimpleNamespace(_recv=queue.get)
    dtls._RTCDtlsTransport__handshake_done = True
    dtls._RTCDtlsTransport__rx_bytes = dtls._RTCDtlsTransport__rx_packets = 0
    dtls._role = "client"
    dtls._rx_srtp = None
    dtls._state = State.CONNECTING

    async def on_rtp(data: bytes, arrival_time_ms: int) -> None:
        side.calls.append(("aiortc", data))

    dtls._handle_rtp_data = on_rtp
    dtls._handle_rtcp_data = side.transport._on_rtcp
    return dtls


async def read_forever(dtls: Any) -> None:
    while True:
        await dtls._recv_next()


def make_side(mux: MuxSocket) -> Side:
    side = Side(mux, Transport.__new__(Transport))
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def data_received(data: bytes, component: int) -> None:
        side.to_aioice.append(data)
        if 127 < data[0] < 192:  # SRTP/SRTCP: aiortc's DTLS transport (DTLS itself is not here)
            queue.put_nowait(data)

    def handler(data: bytes, b0: int, b1: int, seq: int, ts: int, offset: int, ms: int) -> None:
        side.calls.append((data, b0, b1, seq, ts, offset))
        side.arrivals.append(ms)

    def learnt(data: bytes, b0: int, b1: int, seq: int, ts: int, offset: int, ms: int) -> None:
        side.calls.append(("learnt", data, seq))

    producer = SimpleNamespace(codec=SimpleNamespace(rtx_payload_type=97), ssrc=SSRC,
                               last_arrival_ms=0, receive=learnt, rtx_ssrc=None, audio_level_id=None,
                               attach_source=lambda *args: None, receive_rtx=None)
    transport = side.transport
    transport.kind = "publish"
    transport._rtp = {SSRC: handler}
    transport._mid_ext_id = 0
    transport.producers = {"0": SimpleNamespace(
        ssrc=SSRC, handle_sender_report=lambda ntp, ts: side.rtcp.append(("sr", ntp, ts)))}
    transport._rtcp_consumers = {ssrc: RecordingConsumer(side.rtcp, ssrc)
                                 for ssrc in (CONSUMER_SSRC, OTHER_CONSUMER_SSRC)}
    transport.router = SimpleNamespace(now_ms=lambda: NOW_MS)
    transport._pts = {100: producer}  # an SSRC on payload type 100 is learnt as the publisher's new one
    transport._rtx_pts = {}
    transport._raw = SimpleNamespace(send_rtcp=lambda data: True)
    transport.last_packet_ms = 0
    connection = SimpleNamespace(
        local_username="aaaa", local_password=PASSWORD,
        data_received=data_received,
        request_received=lambda message, addr, *rest: side.requests.append(addr),
        protocol_lost=lambda protocol: None)
    protocol = aiortc_hooks.MuxedProtocol(connection, mux)
    protocol.local_candidate = SimpleNamespace(component=1)  # type: ignore[assignment]
    mux.register(protocol)
    dtls = aiortc_dtls(side, queue)
    side.task = asyncio.ensure_future(read_forever(dtls))
    setattr(connection, aiortc_hooks._SINK,
            aiortc_hooks._Sink(dtls, transport._receive_rtp, transport._receive_rtcp))
    return side


def sink_of(side: Side) -> Any:
    protocol: Any = side.mux.by_ufrag["aaaa"]
    return getattr(protocol.receiver, aiortc_hooks._SINK)


def connect(side: Side) -> None:
    sink = sink_of(side)
    sink.dtls._state = State.CONNECTED
    sink.dtls._rx_srtp = pylibsrtp.Session(
        pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))


@pytest.fixture(params=["127.0.0.1", "::1"])
async def sides(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Side, Side]]:
    loop = asyncio.get_running_loop()
    _, native = ingress.endpoint_on(bind_udp(request.param, 0), MuxSocket)
    _, python = await loop.create_datagram_endpoint(MuxSocket, local_addr=(request.param, 0))
    pair = make_side(native), make_side(python)
    yield pair
    for side in pair:
        side.task.cancel()
        assert side.mux.transport is not None
        side.mux.transport.close()
    await asyncio.sleep(0)


class Client:
    """A client address: sends each datagram to both sides."""

    def __init__(self, sides: tuple[Side, ...]) -> None:
        self.sides = sides
        assert sides[0].mux.transport is not None
        self.host = sides[0].mux.transport.get_extra_info("sockname")[0]
        self.sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET,
                                  socket.SOCK_DGRAM)
        self.sock.bind((self.host, 0))
        self.sent = 0

    def send(self, *datagrams: bytes) -> None:
        for data in datagrams:
            for side in self.sides:
                self.sock.sendto(data, (self.host, side.port))
            self.sent += 1

    def close(self) -> None:
        self.sock.close()


def seen(side: Side) -> int:
    return len(side.calls) + len(side.to_aioice) + len(side.requests) + side.mux.dropped


async def settle(sides: tuple[Side, ...], expected: Callable[[Side], bool]) -> None:
    for _ in range(200):
        if all(expected(side) for side in sides):
            return
        await asyncio.sleep(0.01)


def reader_of(side: Side) -> Any:
    return side.mux.transport.reader  # type: ignore[union-attr]


@contextlib.asynccontextmanager
async def connected_client(
        sides: tuple[Side, ...]) -> AsyncIterator[tuple[Client, pylibsrtp.Session]]:
    """A client whose address every side authenticated (STUN) and whose connection there is
    DTLS-connected, with the SRTP session that protects its media; closed at the end."""
    sender = pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    client = Client(sides)
    try:
        client.send(binding_request("aaaa", PASSWORD))
        await settle(sides, lambda side: len(side.requests) == 1)
        for side in sides:
            connect(side)
        yield client, sender
    finally:
        client.close()


def record_addresses(sides: tuple[Side, ...]) -> tuple[list[Any], ...]:
    """Each side's list of the address tuples its Python path (mux.datagram_received) gets."""
    got: tuple[list[Any], ...] = tuple([] for _ in sides)
    for side, addrs in zip(sides, got):
        def recording(data: bytes, addr: Any, original: Any = side.mux.datagram_received,
                      addrs: list[Any] = addrs) -> None:
            addrs.append(addr)
            original(data, addr)

        side.mux.datagram_received = recording  # type: ignore[method-assign]
    return got


GOLDEN = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1


def direct_mapped_slot(sockname: Any) -> int:
    """The slot of the 256 that sfu/_ingress.c's address() kept a peer's tuple in, one peer a
    slot, until 2-way sets and a multiplicative hash: for IPv4 peers on one host a function of
    the port's low byte alone."""
    host, port = sockname[:2]
    packed = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    if len(packed) == 4:
        k = (int.from_bytes(packed, "big") << 16 | port) + 1
        return (k ^ (k >> 16) ^ (k >> 32)) % 256
    hi, lo = struct.unpack("<QQ", packed)  # as memcpy reads them on x86-64
    wire_port = struct.unpack("<H", port.to_bytes(2, "big"))[0]
    return (((hi ^ lo ^ wire_port) * GOLDEN & MASK64) >> 32) % 256  # flowinfo, scope_id: 0


def cache_set(sockname: Any) -> int:
    """The set of the cache that sfu/_ingress.c's address() keeps a peer's tuple in."""
    host, port = sockname[:2]
    packed = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    if len(packed) == 4:
        return (((int.from_bytes(packed, "big") << 16 | port) + 1) * GOLDEN & MASK64) >> 56
    hi, lo = struct.unpack("<QQ", packed)
    wire_port = struct.unpack("<H", port.to_bytes(2, "big"))[0]
    return ((hi ^ lo ^ wire_port) * GOLDEN & MASK64) >> 56


def clients_sharing_a_slot(sides: tuple[Side, ...], count: int,
                           slot: Callable[[Any], int]) -> list[Client]:
    """``count`` clients (bound by the kernel, as peers are) that ``slot`` puts in one slot of
    the cache; the others made on the way there are closed."""
    by_slot: dict[int, list[Client]] = {}
    made: list[Client] = []
    while True:
        client = Client(sides)
        made.append(client)
        group = by_slot.setdefault(slot(client.sock.getsockname()), [])
        group.append(client)
        if len(group) == count:
            for other in made:
                if other not in group:
                    other.close()
            return group


async def addresses_given(sides: tuple[Side, Side], order: list[Client]) -> list[Any]:
    """The address tuples the C reader gives the Python path for a datagram nobody owns from
    each client in turn, checked equal to the event loop's and each the client's own."""
    got = record_addresses(sides)
    dtls = bytes([22, 254, 253]) + bytes(20)  # dropped, by the Python path
    for sent, client in enumerate(order, 1):
        client.send(dtls)
        await settle(sides, lambda side: side.mux.dropped == sent)
    native_addrs, python_addrs = got
    assert native_addrs == python_addrs
    assert [addr[1] for addr in native_addrs] == [client.sock.getsockname()[1] for client in order]
    return native_addrs


@pytest.mark.integration
async def test_the_c_path_makes_the_calls_and_drops_of_the_python_path(
        sides: tuple[Side, Side]) -> None:
    native, python = sides
    sender = pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    alice, mallory = Client(sides), Client(sides)
    try:
        alice.send(binding_request("aaaa", PASSWORD))  # authenticates alice's address
        await settle(sides, lambda side: len(side.requests) == 1)
        early = sender.protect(rtp(1))
        alice.send(early)  # DTLS not yet connected: aioice's queue, as before
        await settle(sides, lambda side: len(side.to_aioice) == 1)
        for side in sides:
            connect(side)
        good = [sender.protect(rtp(seq)) for seq in range(2, 40)]
        forged = bytearray(sender.protect(rtp(40)))
        forged[-1] ^= 1
        garbage = [bytes([n % 256]) + os.urandom(n) for n in (0, 1, 12, 13, 200, 300)] + [
            bytes([0x80, 96]) + bytes(11),  # RTP-looking, 13 bytes: fails authentication
            bytes([0x80, 200]) + bytes(30),  # SRTCP-looking: fails authentication
            bytes([0x90, 96]) + bytes(30),  # an extension past the end
        ]
        alice.send(*good[:20], good[5], bytes(forged), *garbage, *good[20:], good[-1])
        alice.send(sender.protect(rtp(41, extension=True, csrcs=2)))
        alice.send(sender.protect(rtp(42, ssrc=OTHER_SSRC, pt=96)))  # unknown SSRC, no learning
        alice.send(sender.protect(rtp(43, ssrc=OTHER_SSRC, pt=100)))  # the publisher's new SSRC
        alice.send(sender.protect(rtp(44, ssrc=OTHER_SSRC, pt=100)))  # now known: the C path
        mallory.send(sender.protect(rtp(45)), *garbage)  # an address nobody authenticated
        await settle(sides, lambda side: seen(side) >= seen(python) and seen(side) > 40)
        await asyncio.sleep(0.1)
        assert native.calls == python.calls
        # the C path also took the SRTCP-looking datagram, which aiortc drops
        assert native.to_aioice == [data for data in python.to_aioice if not is_srtcp(data)]
        assert native.rtcp == python.rtcp == []
        assert native.mux.dropped == python.mux.dropped >= 1 + len(garbage)  # all of mallory's
        assert len(native.calls) == len(good) + 3
        assert native.calls[-2][0] == "learnt" and native.calls[-1][0] == "learnt"
        assert native.calls[-1][2] == 44
        # the media took the C path, STUN and the early packet did not
        assert reader_of(native).taken >= len(good) + 3
        assert native.transport.last_packet_ms == max(native.arrivals)
        assert abs(native.arrivals[-1] - python.arrivals[-1]) < 1000
    finally:
        alice.close()
        mallory.close()


@pytest.mark.integration
async def test_the_c_path_reads_and_stamps_the_transports_attributes_as_python_sets_them(
        sides: tuple[Side, Side]) -> None:
    native, python = sides
    async with connected_client(sides) as (alice, sender):
        alice.send(sender.protect(rtp(2)))
        await settle(sides, lambda side: len(side.calls) == 1)
        for side in sides:
            assert side.transport.last_packet_ms == side.arrivals[-1] > 0
            # the table replaced whole and the stamp set, by Python, between two packets
            side.transport._rtp = {SSRC: lambda data, *rest, side=side: side.calls.append(("new", rest[2]))}
            side.transport.last_packet_ms = 7
        alice.send(sender.protect(rtp(3)))
        await settle(sides, lambda side: len(side.calls) == 2)
        assert native.calls[1] == python.calls[1] == ("new", 3)
        assert reader_of(native).taken == 2
        for side in sides:
            assert 7 < side.transport.last_packet_ms
            assert abs(side.transport.last_packet_ms - side.arrivals[-1]) < 1000


@pytest.mark.integration
async def test_the_c_path_sees_each_change_of_the_ssrc_table_in_place(
        sides: tuple[Side, Side]) -> None:
    """The reader keeps the handlers of the SSRCs it looked up while the transport's table is
    unchanged: a handler replaced, an SSRC added or removed in place between two packets (the
    same dict), each is what the next packet finds."""
    native, python = sides
    async with connected_client(sides) as (alice, sender):
        alice.send(sender.protect(rtp(2)))
        alice.send(sender.protect(rtp(3, ssrc=OTHER_SSRC, pt=100)))  # learnt: now in the table
        await settle(sides, lambda side: len(side.calls) == 2)
        for side in sides:
            assert side.calls[1][0] == "learnt" and OTHER_SSRC in side.transport._rtp
            side.transport._rtp[SSRC] = lambda data, *rest, side=side: side.calls.append(
                ("replaced", rest[2]))
            side.transport._rtp[OTHER_SSRC] = lambda data, *rest, side=side: side.calls.append(
                ("other", rest[2]))
        alice.send(sender.protect(rtp(4)))
        alice.send(sender.protect(rtp(5, ssrc=OTHER_SSRC)))
        await settle(sides, lambda side: len(side.calls) == 4)
        for side in sides:
            del side.transport._rtp[SSRC]
        alice.send(sender.protect(rtp(6)))  # no handler, not learnt (payload type 96): dropped
        alice.send(sender.protect(rtp(7, ssrc=OTHER_SSRC)))
        await settle(sides, lambda side: len(side.calls) == 5)
        assert native.calls[2:] == python.calls[2:] == [("replaced", 4), ("other", 5), ("other", 7)]


def is_srtcp(data: bytes) -> bool:
    return len(data) > 1 and 127 < data[0] < 192 and 191 < data[1] < 209


@pytest.mark.integration
async def test_srtcp_takes_the_c_path_to_the_rtcp_handler_calls_of_aiortcs_path(
        sides: tuple[Side, Side]) -> None:
    native, python = sides
    sender = pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    alice, mallory = Client(sides), Client(sides)
    try:
        alice.send(binding_request("aaaa", PASSWORD))
        await settle(sides, lambda side: len(side.requests) == 1)
        # DTLS not yet connected: aioice's queue, and aiortc has no key yet
        alice.send(sender.protect_rtcp(rtcp.pli(9, CONSUMER_SSRC)))
        await settle(sides, lambda side: len(side.to_aioice) == 1)
        for side in sides:
            connect(side)
        reports = [
            rtcp.sender_report(SSRC, ntp=0x1234567890ABCDEF, rtp_ts=90_000, packets=10, octets=999),
            rtcp.receiver_report(9, CONSUMER_SSRC, fraction_lost=12, packets_lost=3,
                                 highest_sequence=100, jitter=5, lsr=0x1234, dlsr=0x10),
            rtcp.nack(9, CONSUMER_SSRC, [100, 101, 105]),
            rtcp.nack(9, 0xDEAD, [7]),  # a stream this peer does not get: ignored
            rtcp.pli(9, OTHER_CONSUMER_SSRC),
            rtcp.remb(9, 800_000, [CONSUMER_SSRC, OTHER_CONSUMER_SSRC]),
            # compound, as browsers send them
            rtcp.receiver_report(9, OTHER_CONSUMER_SSRC, 0, 0, 5, 1, 0, 0)
            + rtcp.remb(9, 300_000, [OTHER_CONSUMER_SSRC]) + rtcp.pli(9, CONSUMER_SSRC),
        ]
        protected = [sender.protect_rtcp(report) for report in reports]
        forged = bytearray(sender.protect_rtcp(rtcp.pli(9, CONSUMER_SSRC)))
        forged[-1] ^= 1
        short = [bytes([0x80, 200]), bytes([0x81, 201]) + bytes(6), bytes([0x80, 206]) + bytes(14)]
        last = sender.protect_rtcp(rtcp.pli(9, OTHER_CONSUMER_SSRC))
        alice.send(*protected, protected[2], bytes(forged), *short, last)  # protected[2] replayed
        mallory.send(sender.protect_rtcp(rtcp.pli(9, CONSUMER_SSRC)))  # nobody authenticated it
        await settle(sides, lambda side: len(side.rtcp) >= 11 and side.mux.dropped == 1)
        await asyncio.sleep(0.1)
        assert native.rtcp == python.rtcp == [
            ("sr", 0x1234567890ABCDEF, 90_000),
            ("report", CONSUMER_SSRC, 12, 3, 5, 0x1234, 0x10),
            ("nack", CONSUMER_SSRC, [100, 101, 105]),
            ("keyframe", OTHER_CONSUMER_SSRC),
            ("remb", CONSUMER_SSRC, 400_000), ("remb", OTHER_CONSUMER_SSRC, 400_000),
            ("report", OTHER_CONSUMER_SSRC, 0, 0, 1, 0, 0),
            ("remb", OTHER_CONSUMER_SSRC, 300_000),
            ("keyframe", CONSUMER_SSRC),
            ("keyframe", OTHER_CONSUMER_SSRC),
        ]
        assert native.mux.dropped == python.mux.dropped == 1
        assert native.transport.last_packet_ms == python.transport.last_packet_ms == NOW_MS
        # all of alice's SRTCP once connected took the C path; aiortc's path got it all
        assert len(native.to_aioice) == 1
        assert len(python.to_aioice) == 1 + len(protected) + 2 + len(short) + 1
        assert reader_of(native).taken == len(protected) + 2 + len(short) + 1
    finally:
        alice.close()
        mallory.close()


@pytest.mark.integration
async def test_media_follows_an_address_change_and_a_new_srtp_session(
        sides: tuple[Side, Side]) -> None:
    native, python = sides
    sender = pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    before, after = Client(sides), Client(sides)
    try:
        before.send(binding_request("aaaa", PASSWORD))
        await settle(sides, lambda side: len(side.requests) == 1)
        for side in sides:
            connect(side)
        before.send(*(sender.protect(rtp(seq)) for seq in range(1, 6)))
        await settle(sides, lambda side: len(side.calls) == 5)
        after.send(sender.protect(rtp(6)))  # not yet authenticated: dropped
        after.send(binding_request("aaaa", PASSWORD))  # the client's new address
        await settle(sides, lambda side: len(side.requests) == 2)
        after.send(*(sender.protect(rtp(seq)) for seq in range(7, 12)))
        await settle(sides, lambda side: len(side.calls) == 10)
        # DTLS keyed again (a new handshake): the new session is adopted
        new_key = bytes(range(1, 31))
        for side in sides:
            sink_of(side).dtls._rx_srtp = pylibsrtp.Session(
                pylibsrtp.Policy(key=new_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
        sender = pylibsrtp.Session(
            pylibsrtp.Policy(key=new_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
        after.send(*(sender.protect(rtp(seq)) for seq in range(12, 17)))
        await settle(sides, lambda side: len(side.calls) == 15)
        assert native.calls == python.calls
        assert [call[3] for call in native.calls] == [*range(1, 6), *range(7, 17)]
        assert native.mux.dropped == python.mux.dropped == 1
        assert reader_of(native).taken == 15
    finally:
        before.close()
        after.close()


async def test_the_c_path_sees_every_change_of_what_it_keeps_per_address(
        sides: tuple[Side, Side]) -> None:
    """The C path keeps what it found for an address (the connection's receiver, _Sink, DTLS
    transport and SRTP session) while the dicts it read them from are unchanged: a change of any
    of them (by attribute stores the interpreter has specialised, in a loop) reaches the next
    datagram, as the Python path sees it."""
    native, python = sides
    new_key = bytes(range(1, 31))

    def recording(side: Side, tag: str) -> Callable[[bytes, int], None]:
        def deliver(data: bytes, arrival_ms: int) -> None:
            side.calls.append((tag, data))
        return deliver

    replaced: list[Any] = []  # kept alive: what the C path found must not be mistaken for them
    async with connected_client(sides) as (client, sender):
        for n in range(1, 81):
            for side in sides:
                sink = sink_of(side)
                protocol: Any = side.mux.by_ufrag["aaaa"]
                replaced += [sink, sink.dtls, protocol.receiver]
                if n % 9 in (4, 5):  # (stored only when it changes: in between, all is kept)
                    sink.dtls._state = State.CLOSED if n % 9 == 4 else State.CONNECTED
                if n % 13 == 6:  # another _Sink on the connection, with a handler of its own
                    sink = aiortc_hooks._Sink(sink.dtls, recording(side, "sink"),
                                              side.transport._receive_rtcp)
                    setattr(protocol.receiver, aiortc_hooks._SINK, sink)
                if n % 11 == 8:  # its handler replaced (as filter_rtp_input does)
                    sink.deliver = recording(side, "deliver")
                if n % 17 == 10:  # another connection object behind the same endpoint
                    protocol.receiver = SimpleNamespace(**vars(protocol.receiver))
                if n == 50:  # DTLS keyed again
                    sink.dtls._rx_srtp = pylibsrtp.Session(
                        pylibsrtp.Policy(key=new_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
                if n == 65:  # another DTLS transport behind the sink
                    dtls = aiortc_dtls(side, asyncio.Queue())
                    dtls._state = State.CONNECTED
                    dtls._rx_srtp = pylibsrtp.Session(
                        pylibsrtp.Policy(key=new_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
                    sink.dtls = dtls
            if n == 50:
                sender = pylibsrtp.Session(
                    pylibsrtp.Policy(key=new_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
            before = [len(side.calls) for side in sides]
            client.send(sender.protect(rtp(n)))
            await settle(sides, lambda side: len(side.calls) > before[sides.index(side)])
        assert native.calls == python.calls
        assert len(native.calls) == 80
        assert {call[0] for call in native.calls if isinstance(call[0], str)} == {
            "aiortc", "sink", "deliver"}
        assert reader_of(native).taken == sum(
            1 for call in native.calls if call[0] != "aiortc")


@pytest.mark.integration
async def test_a_connection_leaving_the_socket_gets_no_more_media(sides: tuple[Side, Side]) -> None:
    """An ICE restart's old connection releases its address: its media is dropped, not
    delivered through a table the C path would have kept."""
    native, python = sides
    async with connected_client(sides) as (client, sender):
        client.send(sender.protect(rtp(1)))
        await settle(sides, lambda side: len(side.calls) == 1)
        for side in sides:
            side.mux.release(side.mux.by_ufrag["aaaa"])
        client.send(sender.protect(rtp(2)))
        await settle(sides, lambda side: side.mux.dropped == 1)
        assert native.calls == python.calls and len(native.calls) == 1
        assert native.mux.dropped == python.mux.dropped == 1


@pytest.mark.integration
async def test_a_failing_handler_is_reported_and_the_batch_goes_on(
        sides: tuple[Side, Side]) -> None:
    native, _ = sides
    loop = asyncio.get_running_loop()
    reported: list[BaseException] = []
    loop.set_exception_handler(lambda _, context: reported.append(context["exception"]))
    calls: list[int] = []

    def handler(data: bytes, b0: int, b1: int, seq: int, ts: int, offset: int, ms: int) -> None:
        calls.append(seq)
        if seq == 2:
            raise RuntimeError("boom")

    native.transport._rtp[SSRC] = handler
    try:
        async with connected_client((native,)) as (client, sender):
            client.send(*(sender.protect(rtp(seq)) for seq in range(1, 5)))
            await settle((native,), lambda side: len(calls) == 4)
            assert calls == [1, 2, 3, 4]
            assert [str(exc) for exc in reported] == ["boom"]
            # with where it was raised, for the loop's handler to log (sfu/_report.h)
            assert reported[0].__traceback__ is not None
    finally:
        loop.set_exception_handler(None)


@pytest.mark.integration
async def test_a_producers_plain_packets_go_to_its_c_receive_without_its_python(
        sides: tuple[Side, Side]) -> None:
    """A handler that is a producer's receive: the C reader runs the C receive itself, and
    Producer.receive's Python only for what that declines (the first packet, a gap); what the
    producer forwards and counts is the same as on the Python path."""
    sender = pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    client = Client(sides)
    pythons = [0, 0]  # Producer.receive's Python ran, on the native side, on the Python one
    saved = producer_module._receive
    assert saved is not None, "sfu/_fastsend.c is not built"
    producers, recorders = [], []
    for side in sides:
        producer: Producer[Recorder] = Producer("a", "alice", "audio", Codec("audio/opus", 48000, 96),
                                                max_bitrate=0, keyframe_interval=1.0)
        recorder = Recorder()
        producer.add_consumer(recorder)
        side.transport._rtp[SSRC] = producer.receive
        producers.append(producer)
        recorders.append(recorder)

    def receive(producer: Any, *args: Any) -> bool:
        pythons[producers.index(producer)] += 1
        assert saved is not None
        return saved(producer, *args)

    producer_module._receive = receive
    try:
        client.send(binding_request("aaaa", PASSWORD))
        await settle(sides, lambda side: len(side.requests) == 1)
        for side in sides:
            connect(side)
        client.send(*(sender.protect(rtp(seq)) for seq in range(1, 31) if seq != 15))
        await settle(sides, lambda side: len(recorders[sides.index(side)].forwarded) == 29)
    finally:
        producer_module._receive = saved
        client.close()
    native, python = recorders
    assert native.forwarded == python.forwarded == [(seq, False) for seq in range(1, 31) if seq != 15]
    assert [(p.packets, p.bytes, p._max_seq, p.packets_lost) for p in producers] == \
        [(29, 29 * 62, 30, 1)] * 2
    assert pythons == [2, 29]


@pytest.mark.integration
@pytest.mark.parametrize("sides", ["::1"], indirect=True)
async def test_an_ipv6_peers_address_tuple_is_made_once_and_still_sorts_its_datagrams(
        sides: tuple[Side, Side]) -> None:
    """As for IPv4, the C reader makes an IPv6 peer's (host, port, flowinfo, scope_id) and its
    (host, port) key once, not per datagram: the Python path gets the same object each time,
    equal to what the event loop gives, and each peer's datagrams still go where they belong."""
    native, python = sides
    got = record_addresses(sides)
    sender = pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    alice, mallory = Client(sides), Client(sides)
    dtls = bytes([22, 254, 253]) + bytes(20)  # nobody's: dropped
    try:
        for client in (alice, mallory, alice, mallory, alice):
            client.send(dtls)
        await settle(sides, lambda side: side.mux.dropped == 5)
        native_addrs, python_addrs = got
        assert native_addrs == python_addrs
        ports = [alice.sock.getsockname()[1], mallory.sock.getsockname()[1]] * 3
        assert [addr[:2] for addr in native_addrs] == [("::1", port) for port in ports[:5]]
        assert all(addr is native_addrs[0] for addr in native_addrs[0::2])
        assert all(addr is native_addrs[1] for addr in native_addrs[1::2])
        alice.send(binding_request("aaaa", PASSWORD))
        await settle(sides, lambda side: len(side.requests) == 1)
        assert native_addrs[5] is native_addrs[0]
        for side in sides:
            connect(side)
        alice.send(*(sender.protect(rtp(seq)) for seq in range(1, 4)))  # the C path, by the key
        mallory.send(sender.protect(rtp(4)))
        await settle(sides, lambda side: len(side.calls) == 3 and side.mux.dropped == 6)
        assert native.calls == python.calls and [call[3] for call in native.calls] == [1, 2, 3]
        assert native.mux.dropped == python.mux.dropped == 6
        assert reader_of(native).taken == 3
    finally:
        alice.close()
        mallory.close()


@pytest.mark.integration
async def test_peers_whose_tuples_shared_a_cache_slot_each_keep_their_own(
        sides: tuple[Side, Side]) -> None:
    """Two peers on one host whose ports share a low byte (likely among some 20: a birthday)
    took one slot of the C reader's direct-mapped address cache and evicted each other, so each
    of their datagrams made its tuple again. Each keeps its own now: the Python path gets the
    very same object for a peer every time, equal to the event loop's. A peer at a new port of
    the same host and slot gets its own tuple, and the others still theirs."""
    clients = alice, bob, carol = clients_sharing_a_slot(sides, 3, direct_mapped_slot)
    try:
        addrs = await addresses_given(sides, [alice, bob] * 4 + [carol, alice, carol, bob])
        assert all(addr is addrs[0] for addr in addrs[0:8:2])
        assert all(addr is addrs[1] for addr in addrs[1:8:2])
    finally:
        for client in clients:
            client.close()


@pytest.mark.integration
async def test_a_third_peer_in_a_cache_set_makes_way_and_every_tuple_stays_right(
        sides: tuple[Side, Side]) -> None:
    """Three peers in one set of two: the least recently used makes way for each new one, and
    every datagram still gets its own address, equal to the event loop's; two that then
    alternate keep their tuples again."""
    clients = alice, bob, carol = clients_sharing_a_slot(sides, 3, cache_set)
    try:
        addrs = await addresses_given(
            sides, [alice, bob, carol] * 3 + [carol, bob, alice, bob, alice, bob])
        assert addrs[3] is not addrs[0]  # made again: cache_set is the C's set
        assert addrs[-1] is addrs[-3] is addrs[-5]
        assert addrs[-2] is addrs[-4]
    finally:
        for client in clients:
            client.close()


@pytest.mark.integration
async def test_what_a_reader_call_forwards_leaves_by_its_end_with_no_flush_scheduled() -> None:
    """The reader sends its socket's batch at the end of its call: the C fan-out and RawSender's
    Python queue into it and schedule no flush meanwhile. A send outside a reader call (a timer's
    RTCP) still schedules one."""
    _, mux = ingress.endpoint_on(bind_udp("127.0.0.1", 0), MuxSocket)
    side = make_side(mux)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2)
    scheduled = 0
    schedule = mux.schedule_flush

    def counting() -> object:
        nonlocal scheduled
        scheduled += 1
        return schedule()

    mux.schedule_flush = counting
    producer: Producer[Consumer] = Producer("a", "alice", "audio", OPUS, max_bitrate=0,
                                            keyframe_interval=1.0, scheduler=FakeScheduler())
    for index, fast in enumerate((True, False)):  # the C fan-out's path, RawSender.send_rtp's
        dtls = SimpleNamespace(_state=State.CONNECTED, _tx_srtp=_session(1), transport=SimpleNamespace(
            _connection=SimpleNamespace(_nominated={1: _muxed_pair(mux, receiver.getsockname()[1])})))
        raw = aiortc_hooks.RawSender(dtls)  # type: ignore[arg-type]
        consumer = Consumer(str(index), producer, "bob", ssrc=0x1000 + index, rtx_ssrc=0x2000 + index,
                            send_rtp=raw.send_rtp, send_rtcp=raw.send_rtcp)
        if fast:
            consumer.fast_sender = raw
        consumer.configure(111, None, ExtensionLayout())
        producer.add_consumer(consumer)
        consumer.resume()
    side.transport._rtp[SSRC] = producer.receive
    try:
        async with connected_client((side,)) as (client, sender):
            scheduled = 0
            client.send(*(sender.protect(rtp(seq, pt=111)) for seq in range(1, 6)))
            reader_of(side)()  # the loop's call, now: loopback has queued the datagrams
            assert reader_of(side).taken == 5
            assert (scheduled, len(mux.batch), mux.batch.held) == (0, 0, False)
            receiver.setblocking(False)
            got = [receiver.recv(2000) for _ in range(10)]  # all there, or BlockingIOError
            ssrcs = sorted(struct.unpack_from("!I", data, 8)[0] for data in got)
            assert ssrcs == [0x1000] * 5 + [0x1001] * 5
            receiver.settimeout(2)
            assert raw.send_rtcp(rtcp.pli(0x1001, SSRC))  # outside a reader call
            assert scheduled == 1 and len(mux.batch) == 1
            await asyncio.sleep(0)
            assert receiver.recv(2000)[1] == 206
            assert len(mux.batch) == 0
    finally:
        receiver.close()
        side.task.cancel()
        mux.transport.close()  # type: ignore[union-attr]
        await asyncio.sleep(0)


class FullSocket:
    """A socket whose send buffer is full until ``full`` is cleared."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.full = True
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: Any) -> int:
        if self.full:
            raise BlockingIOError
        self.sent.append(data)
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


@pytest.mark.integration
async def test_the_socket_transport_queues_at_a_full_buffer_and_pauses_the_writers() -> None:
    """As asyncio's datagram transport: a full socket buffer queues (STUN, DTLS and RTCP are
    not dropped), past 64 KiB the protocol's writing pauses, and resumes once drained."""
    loop = asyncio.get_running_loop()
    sock = FullSocket()
    mux = MuxSocket()
    transport = ingress.SocketTransport(loop, sock, mux, lambda protocol, transport: lambda: None)  # type: ignore[arg-type]
    try:
        for n in range(50):
            transport.sendto(bytes([n]) * 1200, ("127.0.0.1", 9))
        assert mux.writable and transport.get_write_buffer_size() == 50 * 1200
        for n in range(50, 70):
            transport.sendto(bytes([n]) * 1200, ("127.0.0.1", 9))
        assert not mux.writable
        await asyncio.sleep(0.01)
        assert not sock.sent
        sock.full = False
        await asyncio.sleep(0.01)
        assert [data[0] for data in sock.sent] == list(range(70))
        assert mux.writable and transport.get_write_buffer_size() == 0
    finally:
        transport.close()
        await asyncio.sleep(0)
    assert sock.sock.fileno() == -1
