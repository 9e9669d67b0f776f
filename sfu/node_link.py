"""The link between a signalling node and an SFU node: a TCP stream of sfu/channel.py frames,
opened by a handshake in which each end proves it holds the shared link key.

The key is ``link_key(secret)``: HMAC-SHA256 of a fixed label under the deployment's SFU secret,
so it is never the secret that signs client tokens, and no client token (a JWT over HTTP) can
stand for it. The handshake (frames of at most ``HANDSHAKE_FRAME`` bytes, within
``HANDSHAKE_SECONDS``)::

    node -> signalling   challenge {node: sfu node id, nonce: 32 random bytes}
    signalling -> node   auth {node: signalling node id, nonce: 32 random bytes,
                               mac: HMAC(key, "client" | node nonce | signalling nonce | signalling node id)}
    node -> signalling   welcome {mac: HMAC(key, "server" | signalling nonce | node nonce | sfu node id)}
                      or refused {reason}, and the node hangs up

Both MACs are compared in constant time; fresh nonces on both sides mean a recorded handshake
replays to nothing. After it the link carries the worker channel's frames (``request``,
``reply``, ``error``, ``event``, ``load``) unencrypted: between machines it belongs on a private
network or a tunnel (WireGuard, IPsec), as docs/deployment.md says.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os

from sfu.channel import Channel, ChannelClosed, ChannelError

HANDSHAKE_FRAME = 1024
HANDSHAKE_SECONDS = 5.0
NONCE_BYTES = 32
_LABEL = b"expertcall sfu-node link v1"


class LinkRefused(Exception):
    """The other end does not hold the link key (or broke the handshake)."""


def link_key(secret: str) -> bytes:
    """The link key every node of a deployment derives from its SFU secret."""
    if not secret:
        raise ValueError("an SFU node link needs a secret")
    return hmac.new(secret.encode(), _LABEL, hashlib.sha256).digest()


def _mac(key: bytes, role: bytes, first: bytes, second: bytes, node: str) -> bytes:
    return hmac.new(key, role + b"\0" + first + second + node.encode(), hashlib.sha256).digest()


async def accept(channel: Channel, key: bytes, node_id: str) -> str:
    """The SFU node's side: returns the authenticated signalling node's id, or raises
    ``LinkRefused`` after telling the peer it was refused."""
    nonce = os.urandom(NONCE_BYTES)
    try:
        async with asyncio.timeout(HANDSHAKE_SECONDS):
            channel.send({"t": "challenge", "node": node_id, "nonce": nonce})
            await channel.drain()
            auth = await channel.receive(HANDSHAKE_FRAME)
    except (TimeoutError, ChannelClosed, ChannelError) as exc:
        raise LinkRefused(f"no valid auth frame: {exc!r}") from None
    peer_ok = (auth["t"] == "auth" and len(auth["nonce"]) == NONCE_BYTES
               and hmac.compare_digest(auth["mac"], _mac(key, b"client", nonce, auth["nonce"], auth["node"])))
    if not peer_ok or not auth["node"]:
        try:
            channel.send({"t": "refused", "reason": "bad credentials"})
            await channel.drain()
        except ChannelClosed:
            pass
        raise LinkRefused(f"bad credentials from a peer calling itself {auth.get('node')!r}")
    channel.send({"t": "welcome", "mac": _mac(key, b"server", auth["nonce"], nonce, node_id)})
    await channel.drain()
    return str(auth["node"])


async def connect(host: str, port: int, key: bytes, node_id: str, expected: str | None = None) -> tuple[Channel, str]:
    """The signalling node's side: a link to the SFU node at ``host:port`` (whose id must be
    ``expected`` when given), and that node's id; raises ``LinkRefused`` or ``OSError``."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), HANDSHAKE_SECONDS)
    channel = Channel(reader, writer)
    try:
        async with asyncio.timeout(HANDSHAKE_SECONDS):
            challenge = await channel.receive(HANDSHAKE_FRAME)
            if challenge["t"] != "challenge" or len(challenge["nonce"]) != NONCE_BYTES:
                raise LinkRefused(f"expected a challenge, got {challenge['t']!r}")
            if expected is not None and challenge["node"] != expected:
                raise LinkRefused(f"{host}:{port} is SFU node {challenge['node']!r}, not {expected!r}")
            nonce = os.urandom(NONCE_BYTES)
            channel.send({"t": "auth", "node": node_id, "nonce": nonce,
                          "mac": _mac(key, b"client", challenge["nonce"], nonce, node_id)})
            await channel.drain()
            reply = await channel.receive(HANDSHAKE_FRAME)
    except (TimeoutError, ChannelClosed, ChannelError) as exc:
        channel.abort()
        raise LinkRefused(f"handshake with {host}:{port} failed: {exc!r}") from None
    except BaseException:  # refused, or cancelled (the plane is closing)
        channel.abort()
        raise
    if reply["t"] != "welcome" or not hmac.compare_digest(
            reply["mac"], _mac(key, b"server", nonce, challenge["nonce"], challenge["node"])):
        channel.close()
        reason = reply.get("reason") if reply["t"] == "refused" else "the node does not hold the link key"
        raise LinkRefused(f"{host}:{port} refused the link: {reason}")
    return channel, str(challenge["node"])
