"""Bearer tokens on the wire: where they may travel, that logs never show them, and revocation."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest
from aiohttp import WSMsgType

from signalling.app.factory import create_app
from signalling.auth.tokens import TOKENS

from ...served import run_cli, serve
from ...utils import Peer

pytestmark = pytest.mark.integration


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_rest_takes_the_token_from_the_authorization_header_only(client) -> None:  # type: ignore[no-untyped-def]
    token = client.app[TOKENS].mint("alice", "client")
    assert (await client.get("/api/experts", headers=bearer(token))).status == 200
    resp = await client.get("/api/experts", params={"token": token})
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "auth_required"
    resp = await client.get("/api/ice-servers", params={"token": token})
    assert resp.status == 401


async def test_a_header_that_is_not_utf8_is_401_not_500(client) -> None:  # type: ignore[no-untyped-def]
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(b"GET /api/experts HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ey\xff\xfe.e30.x\r\n"
                 b"Connection: close\r\n\r\n")
    await writer.drain()
    response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 401"), response[:200]
    assert b'"token_invalid"' in response


async def test_hello_with_a_token_that_is_not_text_fails_with_4001(client) -> None:  # type: ignore[no-untyped-def]
    ws = await client.ws_connect("/ws")
    # Legal JSON, but the string holds a lone surrogate: no UTF-8 encoding, so no JWT.
    await ws.send_str('{"v": 1, "type": "hello", "id": 1, "token": "\\ud800x"}')
    reply = json.loads((await ws.receive(timeout=5)).data)
    assert reply["type"] == "error" and reply["code"] == "token_invalid" and reply["ref"] == 1
    frame = await ws.receive(timeout=5)
    assert frame.type is WSMsgType.CLOSE and frame.data == 4001


async def revoke(client, body: dict[str, str], as_user: str = "root", role: str = "admin") -> tuple[int, dict]:  # type: ignore[no-untyped-def,type-arg]
    admin = client.app[TOKENS].mint(as_user, role)
    resp = await client.post("/api/tokens/revocations", json=body, headers=bearer(admin))
    return resp.status, await resp.json()


async def test_a_revoked_token_is_refused_everywhere_and_its_socket_closes(client) -> None:  # type: ignore[no-untyped-def]
    tokens = client.app[TOKENS]
    token, other = tokens.mint("alice", "client"), tokens.mint("alice", "client")
    jti = tokens.verify(token).token_id
    peer = Peer(await client.ws_connect("/ws"))
    assert (await peer.request("hello", token=token))["type"] == "welcome"

    assert (await revoke(client, {"token": token}, "mallory", "client"))[0] == 403
    status, body = await revoke(client, {"token": token})
    assert status == 201 and body["jti"] == jti
    assert await peer.closed() == 4001
    assert peer.backlog[-1]["code"] == "token_revoked"
    resp = await client.get("/api/experts", headers=bearer(token))
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "token_revoked"
    again = Peer(await client.ws_connect("/ws"))
    assert (await again.request("hello", token=token))["code"] == "token_revoked"
    # The same user's other tokens are not touched; revoking twice is harmless.
    assert (await client.get("/api/experts", headers=bearer(other))).status == 200
    assert (await revoke(client, {"token": token}))[0] == 200
    # By id alone (what `expertcall token` printed when minting).
    status, body = await revoke(client, {"jti": tokens.verify(other).token_id})
    assert status == 201 and (await client.get("/api/experts", headers=bearer(other))).status == 401
    # Only our own tokens can be named by value.
    status, body = await revoke(client, {"token": "forged.token.value"})
    assert status == 400 and body["error"]["code"] == "token_invalid" and body["error"]["field"] == "token"


async def test_revocations_survive_a_restart(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    first = await aiohttp_client(create_app(settings))
    token = first.app[TOKENS].mint("alice", "client")
    assert (await revoke(first, {"token": token}))[0] == 201
    await first.close()
    second = await aiohttp_client(create_app(settings))
    resp = await second.get("/api/experts", headers=bearer(token))
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "token_revoked"


async def test_a_token_revoked_on_one_node_is_refused_on_the_other(two_nodes) -> None:  # type: ignore[no-untyped-def]
    a, b, _, _ = two_nodes
    token = a.app[TOKENS].mint("alice", "client")
    on_b = Peer(await b.ws_connect("/ws"))
    assert (await on_b.request("hello", token=token))["type"] == "welcome"
    assert (await revoke(a, {"token": token}))[0] == 201
    assert await on_b.closed() == 4001
    assert on_b.backlog[-1]["code"] == "token_revoked"
    assert (await b.get("/api/experts", headers=bearer(token))).status == 401


def test_the_cli_revokes_on_a_running_server_and_the_log_never_shows_a_token(tmp_path: Path) -> None:
    with serve(tmp_path) as server:
        minted = run_cli("token", "--user", "alice", "--role", "client", cwd=tmp_path)
        assert minted.returncode == 0, minted.stderr
        token = minted.stdout.strip()
        assert "jti: " in minted.stderr
        # A browser's WebSocket may carry the token in the upgrade URL; REST clients may try to.
        for path in (f"/ws?token={token}", f"/api/experts?token={token}&limit=1"):
            try:
                urllib.request.urlopen(server.url + path, timeout=5)
            except urllib.error.HTTPError:
                pass
        request = urllib.request.Request(server.url + "/api/experts", headers=bearer(token))
        assert urllib.request.urlopen(request, timeout=5).status == 200

        revoked = run_cli("token", "revoke", token, "--url", server.url, cwd=tmp_path)
        assert revoked.returncode == 0, revoked.stderr
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 401 and json.loads(refused.value.read())["error"]["code"] == "token_revoked"
        log = server.log()
    assert '"GET /api/experts?… HTTP/1.1" 401' in log and '"GET /ws?… HTTP/1.1"' in log
    signature = token.rsplit(".", 1)[1]
    assert token not in log and signature not in log
