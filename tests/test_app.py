from __future__ import annotations

import pytest

from signalling.app import create_app
from signalling.settings import Settings, SettingsError


async def test_health_and_metrics(client) -> None:  # type: ignore[no-untyped-def]
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"
    resp = await client.get("/readyz")
    assert resp.status == 200 and (await resp.json())["status"] == "ready"
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert "expertcall_ws_connections" in await resp.text()


def test_public_bind_without_secret_refuses(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SettingsError, match="without an explicit secret"):
        create_app(Settings(host="0.0.0.0", data_dir=tmp_path))


def test_loopback_generates_a_persistent_dev_secret(tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = Settings(data_dir=tmp_path).resolve_secret()
    assert len(first) == 64
    assert Settings(data_dir=tmp_path).resolve_secret() == first
    assert (tmp_path / "secret").stat().st_mode & 0o077 == 0


def test_env_overrides(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = Settings.from_env({"EXPERTCALL_PORT": "9000", "EXPERTCALL_MEDIA_LOOPBACK": "yes"}, data_dir=tmp_path)
    assert s.port == 9000 and s.media_loopback is True
    with pytest.raises(SettingsError, match="EXPERTCALL_PORT"):
        Settings.from_env({"EXPERTCALL_PORT": "x"})


async def test_not_ready_while_shutting_down(client) -> None:  # type: ignore[no-untyped-def]
    from signalling import keys

    client.app[keys.SIGNALLING].closing = True
    resp = await client.get("/readyz")
    assert resp.status == 503 and (await resp.json())["status"] == "not_ready"
