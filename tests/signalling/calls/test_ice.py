"""GET /api/ice-servers and the settings it is built from."""

from __future__ import annotations

import dataclasses
from typing import Any
from unittest.mock import ANY

import pytest
from aiohttp import web

from signalling.app.factory import create_app
from signalling.auth.tokens import TOKENS, Role
from signalling.calls.ice import add_link_headers, ice_servers_for
from signalling.core.settings import Settings, SettingsError
from turn_config.credentials import password_for

TURN_SECRET = "north-sea-shared-secret"
TURN_URLS = ("turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings, turn_secret=TURN_SECRET, turn_urls=TURN_URLS, stun_urls=("stun:127.0.0.1:3478",), turn_ttl=600, turn_max_ttl=3600
    )


def bearer(client, user: str = "alice") -> dict[str, str]:  # type: ignore[no-untyped-def]
    token = client.app[TOKENS].mint(user, Role.CLIENT)
    return {"Authorization": f"Bearer {token}"}


async def test_requires_a_token(client) -> None:  # type: ignore[no-untyped-def]
    response = await client.get("/api/ice-servers")
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "auth_required"


async def test_returns_standard_ice_servers_for_the_caller(client) -> None:  # type: ignore[no-untyped-def]
    response = await client.get("/api/ice-servers", headers=bearer(client, "expert-7"))
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert body["ttl"] == 600
    stun, turn = body["iceServers"]
    assert stun == {"urls": ["stun:127.0.0.1:3478"]}
    assert turn["urls"] == list(TURN_URLS)
    assert turn["username"] == f"{body['expiresAt']}:expert-7"
    assert turn["credential"] == password_for(TURN_SECRET, turn["username"])


async def test_ttl_may_be_shortened_but_not_lengthened(client) -> None:  # type: ignore[no-untyped-def]
    short = await (await client.get("/api/ice-servers?ttl=120", headers=bearer(client))).json()
    long = await (await client.get("/api/ice-servers?ttl=999999", headers=bearer(client))).json()
    assert short["ttl"] == 120 and long["ttl"] == 3600


@pytest.mark.parametrize("ttl", ["abc", "0", "-5", "59"])
async def test_bad_ttl_is_a_coded_400(client, ttl: str) -> None:  # type: ignore[no-untyped-def]
    response = await client.get(f"/api/ice-servers?ttl={ttl}", headers=bearer(client))
    assert response.status == 400
    # The same body as every HTTP error (it lacked "field").
    assert await response.json() == {"error": {"code": "bad_ttl", "message": ANY, "field": None}}


async def test_websocket_layer_helper(client) -> None:  # type: ignore[no-untyped-def]
    ice = ice_servers_for(client.app, "bob")
    assert ice.to_json()["iceServers"][1]["username"].endswith(":bob")
    refresh_at, expires_at = ice.refresh_at(), ice.expires_at
    assert refresh_at is not None and expires_at is not None and refresh_at < expires_at


def test_without_turn_settings_only_stun_is_served(settings: Settings) -> None:
    app = create_app(dataclasses.replace(settings, turn_secret="", turn_urls=()))
    assert ice_servers_for(app, "alice").to_json()["iceServers"] == [{"urls": ["stun:127.0.0.1:3478"]}]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"turn_secret": ""}, "turn_secret is not"),
        ({"turn_secret": "short"}, "at least 16"),
        ({"turn_urls": ("http://turn.example",)}, "not a stun:"),
        ({"turn_ttl": 7200, "turn_max_ttl": 3600}, "must not exceed"),
    ],
)
def test_bad_turn_settings_stop_start_up(settings: Settings, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        create_app(dataclasses.replace(settings, **overrides))


def test_settings_from_environment(settings: Settings) -> None:
    env = {
        "EXPERTCALL_TURN_SECRET": TURN_SECRET,
        "EXPERTCALL_TURN_URLS": "turn:a.example:3478?transport=udp,turn:b.example:3478?transport=udp",
        "EXPERTCALL_TURN_TTL": "900",
    }
    app = create_app(Settings.from_env(env, data_dir=settings.data_dir, secret=settings.secret))
    servers = ice_servers_for(app, "alice").to_json()["iceServers"]
    assert [s["urls"] for s in servers] == [["turn:a.example:3478?transport=udp"], ["turn:b.example:3478?transport=udp"]]


async def test_whip_whep_link_headers(client) -> None:  # type: ignore[no-untyped-def]
    ice = ice_servers_for(client.app, "publisher")
    response = web.Response(status=201)
    add_link_headers(response, ice)
    links = response.headers.getall("Link")
    assert links[0] == '<stun:127.0.0.1:3478>; rel="ice-server"'
    username = ice.to_json()["iceServers"][1]["username"]
    assert links[1] == (
        f'<{TURN_URLS[0]}>; rel="ice-server"; username="{username}"; '
        f'credential="{password_for(TURN_SECRET, username)}"; credential-type="password"'
    )
    assert len(links) == 3
