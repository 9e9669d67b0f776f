from __future__ import annotations

import socket

import aiohttp
import pytest

from signalling.app.factory import create_app
from signalling.auth.tokens import TOKENS
from signalling.calls.node import SIGNALLING
from signalling.core.settings import Settings, SettingsError

from ...served import free_port, run_cli, serve


async def test_health_and_metrics(client) -> None:  # type: ignore[no-untyped-def]
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"
    resp = await client.get("/readyz")
    assert resp.status == 200 and (await resp.json())["status"] == "ready"
    admin = client.app[TOKENS].mint("ops", "admin")
    resp = await client.get("/metrics", headers={"Authorization": f"Bearer {admin}"})
    assert resp.status == 200
    assert "expertcall_ws_connections" in await resp.text()


async def test_metrics_answer_an_admin_or_the_scrape_token_only(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.metrics_token = "scrape-" + "s" * 32
    client = await aiohttp_client(create_app(settings))
    resp = await client.get("/metrics")
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "auth_required"
    user = client.app[TOKENS].mint("alice", "client")
    resp = await client.get("/metrics", headers={"Authorization": f"Bearer {user}"})
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "forbidden"
    resp = await client.get("/metrics", headers={"Authorization": "Bearer scrape-" + "s" * 31 + "x"})
    assert resp.status == 401
    resp = await client.get("/metrics", headers={"Authorization": f"Bearer {settings.metrics_token}"})
    assert resp.status == 200 and "expertcall_ws_connections" in await resp.text()


async def test_a_loopback_metrics_listener_needs_no_token(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.metrics_port = free_port()
    client = await aiohttp_client(create_app(settings))
    assert (await client.get("/metrics")).status == 401
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{settings.metrics_port}/metrics") as resp:
            assert resp.status == 200 and "expertcall_sessions" in await resp.text()
        async with http.get(f"http://127.0.0.1:{settings.metrics_port}/api/experts") as resp:
            assert resp.status == 404  # nothing else on that port
    with pytest.raises(SettingsError, match="loopback only"):
        Settings(data_dir=settings.data_dir, metrics_host="0.0.0.0", metrics_port=9100)


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


def test_sfu_workers_setting(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert Settings(data_dir=tmp_path).sfu_workers == 1  # the SFU in this process unless asked
    assert Settings.from_env({"EXPERTCALL_SFU_WORKERS": "4"}, data_dir=tmp_path).sfu_workers == 4
    for bad in (0, -1, 1025):
        with pytest.raises(SettingsError, match="sfu_workers"):
            Settings(data_dir=tmp_path, sfu_workers=bad)


def test_role_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert Settings(data_dir=tmp_path).role == "all"  # signalling and the SFU, as before roles
    redis = "redis://127.0.0.1:6379/0"
    assert Settings.from_env({"EXPERTCALL_ROLE": "sfu", "EXPERTCALL_REDIS_URL": redis}, data_dir=tmp_path).role == "sfu"
    with pytest.raises(SettingsError, match="role must be one of"):
        Settings(data_dir=tmp_path, role="media", redis_url=redis)
    for role in ("signalling", "sfu"):  # they find each other in Redis
        with pytest.raises(SettingsError, match="needs --redis"):
            Settings(data_dir=tmp_path, role=role)
    with pytest.raises(SettingsError, match="sfu_secret must be at least 32"):
        Settings(data_dir=tmp_path, sfu_secret="short")
    with pytest.raises(SettingsError, match="sfu_node_advertise"):
        Settings(data_dir=tmp_path, role="sfu", redis_url=redis, sfu_node_host="0.0.0.0")
    # The link key comes from the SFU secret when there is one, never printed.
    token_secret, sfu_secret = "t" * 40, "s" * 40
    assert Settings(data_dir=tmp_path, secret=token_secret).sfu_link_secret() == token_secret
    split = Settings(data_dir=tmp_path, secret=token_secret, sfu_secret=sfu_secret)
    assert split.sfu_link_secret() == sfu_secret and sfu_secret not in repr(split)


def test_serve_refuses_a_role_without_redis_or_a_long_enough_sfu_secret(tmp_path) -> None:  # type: ignore[no-untyped-def]
    refused = run_cli("serve", "--role", "sfu", "--data-dir", str(tmp_path), cwd=tmp_path)
    assert refused.returncode != 0 and "role sfu needs --redis" in refused.stderr, refused.stderr
    refused = run_cli("serve", "--role", "signalling", "--redis", "redis://127.0.0.1:6379/0", "--data-dir", str(tmp_path),
                      env={"EXPERTCALL_SFU_SECRET": "short"}, cwd=tmp_path)
    assert refused.returncode != 0 and "sfu_secret must be at least 32" in refused.stderr, refused.stderr


@pytest.mark.integration
def test_serve_says_it_listens_only_once_it_does(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A start that fails (its port taken) exits 1 saying why, and never said it was listening; a
    start that succeeds says so."""
    common = ["--data-dir", str(tmp_path / "var"), "--media-loopback", "--sfu-workers", "1", "--no-demo"]
    secret = {"EXPERTCALL_SECRET": "s" * 32}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = run_cli("serve", "--port", str(port), *common, env=secret, cwd=tmp_path)
    assert refused.returncode == 1, refused.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in refused.stderr
    assert "listening on" not in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    with serve(tmp_path, *common, env=secret) as served:
        assert f"listening on http://127.0.0.1:{served.port}/" in served.log()


async def test_not_ready_while_shutting_down(client) -> None:  # type: ignore[no-untyped-def]
    client.app[SIGNALLING].closing = True
    resp = await client.get("/readyz")
    assert resp.status == 503 and (await resp.json())["status"] == "not_ready"


async def test_not_ready_names_the_failure_but_never_the_backends_details(client, caplog) -> None:  # type: ignore[no-untyped-def]
    backend = client.app[SIGNALLING].backend

    async def unreachable(node_id: str) -> bool:
        raise ConnectionError("redis://:hunter2@10.1.2.3:6379/0 refused")

    backend.node_alive = unreachable
    resp = await client.get("/readyz")
    body = await resp.text()
    assert resp.status == 503 and "ConnectionError" in body
    assert "hunter2" not in body and "10.1.2.3" not in body
    assert "hunter2" in caplog.text  # the operator still learns what happened
