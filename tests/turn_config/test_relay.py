"""Against a real coturn: allocations with credentials from /api/ice-servers, refused credentials,
and the peer ranges the generated configuration refuses to relay to. All on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aioice import stun
from aioice.turn import TurnClientUdpProtocol, create_turn_endpoint

from signalling.app.factory import create_app
from signalling.auth.tokens import TOKENS, Role
from signalling.core.settings import Settings
from turn_config.credentials import password_for

from ..coturn_server import SECRET, Coturn, running_coturn

pytestmark = pytest.mark.integration


class Received(asyncio.DatagramProtocol):
    """Collects datagrams and send errors; ``closed`` resolves once the allocation is deleted."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.errors: asyncio.Queue[Exception] = asyncio.Queue()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data, addr))

    def error_received(self, exc: Exception) -> None:
        self.errors.put_nowait(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    async def next(self) -> tuple[bytes, tuple[str, int]]:
        return await asyncio.wait_for(self.queue.get(), 10)


class Echo(Received):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        super().datagram_received(data, addr)
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    with running_coturn(tmp_path / "coturn") as server:
        yield server


@pytest.fixture
def loopback_coturn(tmp_path: Path) -> Iterator[Coturn]:
    with running_coturn(tmp_path / "coturn-loopback", allow_loopback_peers=True) as server:
        yield server


@pytest.fixture
def ipv6_coturn(tmp_path: Path) -> Iterator[Coturn]:
    with running_coturn(tmp_path / "coturn-ipv6", host="::1") as server:
        yield server


@pytest.fixture
async def echo() -> AsyncIterator[tuple[Echo, tuple[str, int]]]:
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    yield protocol, transport.get_extra_info("sockname")
    transport.close()


async def allocate(server: Coturn, username: str, password: str) -> TurnClientUdpProtocol:
    """A TURN allocation made with aioice's client; the caller deletes it."""
    _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: TurnClientUdpProtocol(server.address, username, password, lifetime=600, channel_refresh_time=300),
        remote_addr=server.address,
    )
    try:
        await protocol.connect()
    except BaseException:
        protocol.transport.close()
        raise
    return protocol


async def create_permission(protocol: TurnClientUdpProtocol, peer: tuple[str, int]) -> None:
    request = stun.Message(message_method=stun.Method.CREATE_PERMISSION, message_class=stun.Class.REQUEST)
    request.attributes["XOR-PEER-ADDRESS"] = peer
    await protocol.request_with_retry(request)


def credential(user: str = "alice", expires_in: int = 600, secret: str = SECRET) -> tuple[str, str]:
    username = f"{int(time.time()) + expires_in}:{user}"
    return username, password_for(secret, username)


async def test_allocation_with_credentials_from_the_api(aiohttp_client: Any, settings: Settings, coturn: Coturn) -> None:
    settings = dataclasses.replace(
        settings,
        turn_secret=SECRET,
        turn_urls=(f"turn:127.0.0.1:{coturn.port}?transport=udp", f"turn:127.0.0.1:{coturn.port}?transport=tcp"),
    )
    client = await aiohttp_client(create_app(settings))
    token = client.app[TOKENS].mint("expert-1", Role.EXPERT)
    response = await client.get("/api/ice-servers", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200
    (server,) = (await response.json())["iceServers"]

    for transport_kind in ("udp", "tcp"):
        transport, protocol = await create_turn_endpoint(
            Received, coturn.address, server["username"], server["credential"], transport=transport_kind
        )
        try:
            host, port = transport.get_extra_info("sockname")
            assert host == "127.0.0.1"
            assert coturn.config.min_port <= port <= coturn.config.max_port
        finally:
            transport.close()
            await protocol.closed


@pytest.mark.parametrize(
    "username, password",
    [
        pytest.param(*credential(expires_in=-60), id="expired"),
        pytest.param(credential()[0], credential()[1][:-4] + "AAA=", id="tampered-password"),
        pytest.param(f"{int(time.time()) + 10**6}:alice", credential()[1], id="tampered-expiry"),
        pytest.param(*credential(secret="another-secret-0123456789"), id="wrong-secret"),
    ],
)
async def test_refused_credentials_get_401(coturn: Coturn, username: str, password: str) -> None:
    with pytest.raises(stun.TransactionFailed) as info:
        await allocate(coturn, username, password)
    assert info.value.response.attributes["ERROR-CODE"][0] == 401


@pytest.mark.parametrize("peer", [("127.0.0.1", 9), ("10.0.0.1", 9), ("192.168.1.1", 9), ("169.254.169.254", 80)])
async def test_default_config_refuses_internal_peers(coturn: Coturn, peer: tuple[str, int]) -> None:
    # A refused permission is the proof: coturn relays nothing to a peer without one.
    protocol = await allocate(coturn, *credential())
    try:
        with pytest.raises(stun.TransactionFailed) as info:
            await create_permission(protocol, peer)
        assert info.value.response.attributes["ERROR-CODE"][0] == 403
    finally:
        await protocol.delete()


async def test_default_config_permits_public_peers(coturn: Coturn) -> None:
    # A relay that refuses everything would pass the tests above. CreatePermission sends nothing to
    # the peer, so this stays on the machine.
    protocol = await allocate(coturn, *credential())
    try:
        await create_permission(protocol, ("1.1.1.1", 9))
    finally:
        await protocol.delete()


@pytest.mark.parametrize(
    "peer, allowed",
    [
        ("2606:4700:4700::1111", True),
        ("::1", False),
        ("::", False),
        ("fd00::1", False),
        ("fe80::1", False),
        ("ff02::1", False),
        ("::ffff:10.0.0.1", False),
        ("64:ff9b::a00:1", False),
        ("2002:a00:1::1", False),
    ],
)
async def test_default_config_ipv6_peers(ipv6_coturn: Coturn, peer: str, allowed: bool) -> None:
    protocol = await allocate(ipv6_coturn, *credential())
    try:
        if allowed:
            await create_permission(protocol, (peer, 9))
        else:
            with pytest.raises(stun.TransactionFailed) as info:
                await create_permission(protocol, (peer, 9))
            assert info.value.response.attributes["ERROR-CODE"][0] == 403
    finally:
        await protocol.delete()


async def test_default_config_relays_nothing_to_a_local_service(
    coturn: Coturn, echo: tuple[Echo, tuple[str, int]]
) -> None:
    service, address = echo
    transport, received = await create_turn_endpoint(Received, coturn.address, *credential())
    try:
        transport.sendto(b"probe", address)  # aioice binds a channel to the peer first
        error = await asyncio.wait_for(received.errors.get(), 10)
        assert isinstance(error, stun.TransactionFailed)
        assert error.response.attributes["ERROR-CODE"][0] == 403
        assert service.queue.empty() and received.queue.empty()
    finally:
        transport.close()
        await received.closed


async def test_loopback_opt_in_relays_to_127_0_0_1(
    loopback_coturn: Coturn, echo: tuple[Echo, tuple[str, int]]
) -> None:
    service, address = echo
    transport, received = await create_turn_endpoint(Received, loopback_coturn.address, *credential())
    try:
        relayed = transport.get_extra_info("sockname")
        transport.sendto(b"through the relay", address)
        data, source = await service.next()
        assert (data, source) == (b"through the relay", relayed)  # sent from coturn's relay port
        data, source = await received.next()
        assert (data, source) == (b"through the relay", address)
        # Private ranges stay refused even with loopback allowed.
        protocol = await allocate(loopback_coturn, *credential())
        try:
            with pytest.raises(stun.TransactionFailed) as info:
                await create_permission(protocol, ("10.0.0.1", 9))
            assert info.value.response.attributes["ERROR-CODE"][0] == 403
        finally:
            await protocol.delete()
    finally:
        transport.close()
        await received.closed
