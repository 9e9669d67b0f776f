"""The internal endpoint of an SFU node (sfu/node_link.py, sfu/node_server.py), over real TCP on
127.0.0.1: a signalling node holding the link key is served (its rooms close with its link);
anyone else is refused before a
single request reaches the media plane — no key, a wrong key, a replayed handshake, a client's
bearer token, an HTTP request — and a signalling node refuses a node that does not hold the key."""

from __future__ import annotations

import asyncio
import os
from typing import Any, AsyncIterator

import pytest

from sfu import node_link
from sfu.api import OpenRoom
from sfu.channel import Channel
from sfu.node_link import LinkRefused, link_key
from sfu.node_server import NodeServer, load_of
from sfu.options import MediaOptions
from sfu.worker import LocalMediaPlane
from signalling.auth.tokens import TokenIssuer

SECRET = "link-secret-0123456789abcdef-0123456789"
KEY = link_key(SECRET)


@pytest.fixture
async def node() -> AsyncIterator[tuple[NodeServer, LocalMediaPlane, int]]:
    plane = LocalMediaPlane(MediaOptions(loopback=True))
    server = NodeServer(plane, load_of(plane), KEY, "sfu-a")
    _, port = await server.start("127.0.0.1", 0)
    yield server, plane, port
    await server.close()
    await plane.close()


async def reply(channel: Channel) -> dict[str, Any]:
    """The next frame that is not a load report."""
    async with asyncio.timeout(10):
        while True:
            frame = await channel.receive()
            if frame["t"] != "load":
                return frame


async def raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Channel, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    channel = Channel(reader, writer)
    challenge = await channel.receive()
    assert challenge["t"] == "challenge" and challenge["node"] == "sfu-a"
    return reader, writer, channel, challenge


async def hung_up(reader: asyncio.StreamReader) -> bytes:
    """Everything the node still sends until it closes the connection."""
    async with asyncio.timeout(10):
        return await reader.read()


async def test_a_signalling_node_holding_the_key_is_served(node: tuple[NodeServer, LocalMediaPlane, int]) -> None:
    server, plane, port = node
    channel, name = await node_link.connect("127.0.0.1", port, KEY, "signalling-1", expected="sfu-a")
    try:
        assert name == "sfu-a"
        channel.send({"t": "request", "id": 7, "message": OpenRoom("room-1").to_dict()})
        await channel.drain()
        assert await reply(channel) == {"t": "reply", "id": 7, "message": {"kind": "ok"}}
        assert set(plane.rooms) == {"room-1"} and list(server.owners) == ["room-1"]
        load = await channel.receive()  # every second, to every link: placement and heartbeat
        assert load["t"] == "load" and load["rooms"] == 1
    finally:
        channel.close()
    # The signalling node re-places a lost link's rooms elsewhere: here they close.
    async with asyncio.timeout(10):
        while plane.rooms or server.owners or server.links:
            await asyncio.sleep(0.01)


async def test_a_wrong_key_is_refused(node: tuple[NodeServer, LocalMediaPlane, int]) -> None:
    server, plane, port = node
    with pytest.raises(LinkRefused, match="bad credentials"):
        await node_link.connect("127.0.0.1", port, link_key("another-secret-0123456789abcdef-01234"), "intruder")
    assert server.links == {} and plane.rooms == {}


async def test_a_request_without_the_handshake_is_refused_and_never_served(
        node: tuple[NodeServer, LocalMediaPlane, int]) -> None:
    server, plane, port = node
    reader, writer, channel, _ = await raw(port)
    channel.send({"t": "request", "id": 1, "message": OpenRoom("stolen").to_dict()})
    await channel.drain()
    assert (await channel.receive()) == {"t": "refused", "reason": "bad credentials"}
    assert await hung_up(reader) == b""
    writer.close()
    assert plane.rooms == {} and server.links == {}


async def test_a_replayed_handshake_is_refused(node: tuple[NodeServer, LocalMediaPlane, int]) -> None:
    server, plane, port = node
    # A genuine handshake, as someone listening on the wire would record it...
    reader, writer, channel, challenge = await raw(port)
    nonce = os.urandom(node_link.NONCE_BYTES)
    auth = {"t": "auth", "node": "signalling-1", "nonce": nonce,
            "mac": node_link._mac(KEY, b"client", challenge["nonce"], nonce, "signalling-1")}
    channel.send(auth)
    assert (await channel.receive())["t"] == "welcome"
    writer.close()
    # ... played back: the node's challenge is new, so the recorded MAC answers nothing.
    reader, writer, channel, _ = await raw(port)
    channel.send(auth)
    assert (await channel.receive()) == {"t": "refused", "reason": "bad credentials"}
    assert await hung_up(reader) == b""
    writer.close()
    assert plane.rooms == {}


async def test_a_client_token_opens_nothing(node: tuple[NodeServer, LocalMediaPlane, int]) -> None:
    """Client tokens are signed with the secret the link key is derived from; they still are not it."""
    server, plane, port = node
    admin = TokenIssuer(SECRET).mint("mallory", "admin")
    # As the MAC of an auth frame...
    reader, writer, channel, _ = await raw(port)
    channel.send({"t": "auth", "node": "mallory", "nonce": os.urandom(node_link.NONCE_BYTES), "mac": admin.encode()})
    assert (await channel.receive()) == {"t": "refused", "reason": "bad credentials"}
    assert await hung_up(reader) == b""
    writer.close()
    # ... or as an HTTP bearer token: the endpoint speaks no HTTP, and hangs up.
    reader, writer, channel, _ = await raw(port)
    writer.write(f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Length: 0\r\n\r\n".encode())
    assert b"HTTP" not in await hung_up(reader)
    writer.close()
    assert plane.rooms == {} and server.links == {}


async def test_a_signalling_node_refuses_a_node_without_the_key() -> None:
    """The handshake is mutual: something listening where an SFU node was announced, that does
    not hold the key, gets no request."""
    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel = Channel(reader, writer)
        channel.send({"t": "challenge", "node": "sfu-a", "nonce": os.urandom(node_link.NONCE_BYTES)})
        await channel.receive()
        channel.send({"t": "welcome", "mac": os.urandom(32)})
        await channel.drain()
        seen.append(await reader.read())

    seen: list[bytes] = []
    fake = await asyncio.start_server(impostor, "127.0.0.1", 0)
    port = fake.sockets[0].getsockname()[1]
    try:
        with pytest.raises(LinkRefused, match="does not hold the link key"):
            await node_link.connect("127.0.0.1", port, KEY, "signalling-1")
        async with asyncio.timeout(10):
            while not seen:
                await asyncio.sleep(0.01)
        assert seen == [b""]  # hung up without a request
    finally:
        fake.close()
