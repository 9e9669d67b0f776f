"""The Origin check: a web page elsewhere may neither open /ws nor call the REST API."""

from __future__ import annotations

import aiohttp
import pytest

from signalling.app.factory import create_app
from signalling.auth.tokens import TOKENS
from signalling.core.origins import normalise
from signalling.core.settings import Settings, SettingsError


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("https://App.Example.com", "https://app.example.com"),
        ("https://app.example.com:443", "https://app.example.com"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("null", None),
        ("https://app.example.com/", None),
        ("https://app.example.com/page", None),
        ("ftp://app.example.com", None),
        ("https://user@app.example.com", None),
        ("*", None),
    ],
)
def test_normalise(origin: str, expected: str | None) -> None:
    assert normalise(origin) == expected


def test_allowed_origins_must_be_origins(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert Settings(data_dir=tmp_path, allowed_origins=("https://App.example.com:443",)).allowed_origins == (
        "https://app.example.com",
    )
    with pytest.raises(SettingsError, match="allowed_origins"):
        Settings(data_dir=tmp_path, allowed_origins=("*",))


async def test_ws_refuses_a_page_from_another_origin(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(create_app(Settings(
        data_dir=settings.data_dir, secret=settings.secret, allowed_origins=("https://partner.example",))))
    own = f"http://127.0.0.1:{client.server.port}"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws", headers={"Origin": "https://attacker.example"})
    assert refused.value.status == 403
    for origin in (own, "https://partner.example", None):
        ws = await client.ws_connect("/ws", headers={"Origin": origin} if origin else {})
        await ws.close()


async def test_rest_refuses_a_page_from_another_origin(client) -> None:  # type: ignore[no-untyped-def]
    token = client.app[TOKENS].mint("alice", "client")
    auth = {"Authorization": f"Bearer {token}"}
    resp = await client.get("/api/experts", headers={**auth, "Origin": "https://attacker.example"})
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "origin_forbidden"
    resp = await client.put("/api/experts/alice", json={"display_name": "A"},
                            headers={**auth, "Origin": f"http://localhost:{client.server.port}"})
    assert resp.status == 403  # localhost is not 127.0.0.1: another origin
    resp = await client.get("/api/experts", headers={**auth, "Origin": f"http://127.0.0.1:{client.server.port}"})
    assert resp.status == 200
