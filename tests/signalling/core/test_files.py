"""Secrets and files: where the signing secret may come from, and who may read what the server writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from signalling.app.factory import create_app
from signalling.core.database import Database
from signalling.core.settings import Settings, SettingsError

from ...served import run_cli, serve

pytestmark = pytest.mark.integration

SECRET = "file-secret-0123456789abcdef-0123456789"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def secret_file(tmp_path: Path, file_mode: int) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text(SECRET + "\n")
    path.chmod(file_mode)
    return path


@pytest.mark.parametrize("file_mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_a_secret_file_others_may_read_or_write_is_refused(tmp_path: Path, file_mode: int) -> None:
    settings = Settings(host="0.0.0.0", data_dir=tmp_path / "var", secret_file=secret_file(tmp_path, file_mode))
    with pytest.raises(SettingsError, match="open to other users.*chmod 600"):
        settings.resolve_secret()


def test_the_secret_from_a_private_file_or_the_environment(tmp_path: Path) -> None:
    path = secret_file(tmp_path, 0o600)
    from_file = Settings.from_env({"EXPERTCALL_SECRET_FILE": str(path)}, host="0.0.0.0", data_dir=tmp_path)
    assert from_file.resolve_secret() == SECRET
    assert from_file.resolve_secret() == SECRET  # asked again by the resume tokens
    from_env = Settings.from_env({"EXPERTCALL_SECRET": SECRET}, host="0.0.0.0", data_dir=tmp_path)
    assert from_env.resolve_secret() == SECRET
    both = Settings.from_env({"EXPERTCALL_SECRET": SECRET}, secret_file=path, host="0.0.0.0", data_dir=tmp_path)
    with pytest.raises(SettingsError, match="not both"):
        both.resolve_secret()
    # Nothing that prints the settings shows a secret.
    assert SECRET not in repr(from_file) and SECRET not in repr(from_env)


def test_a_loosened_dev_secret_is_refused(tmp_path: Path) -> None:
    Settings(data_dir=tmp_path).resolve_secret()
    (tmp_path / "secret").chmod(0o644)
    with pytest.raises(SettingsError, match="open to other users"):
        Settings(data_dir=tmp_path).resolve_secret()


async def test_the_data_dir_is_0700_and_the_database_0600(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "fresh" / "var"
    client = await aiohttp_client(create_app(Settings(data_dir=data_dir, media_loopback=True)))
    assert (await client.get("/healthz")).status == 200
    assert mode(data_dir) == 0o700
    files = sorted(p.name for p in data_dir.iterdir())
    assert "expertcall.sqlite3" in files and "expertcall.sqlite3-wal" in files, files
    for name in files:
        assert mode(data_dir / name) == 0o600, (name, oct(mode(data_dir / name)))


def test_a_database_an_older_version_left_readable_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    Database(path).close()
    assert mode(path) == 0o600


def test_the_secret_flag_is_for_loopback_development_only(tmp_path: Path) -> None:
    refused = run_cli("serve", "--host", "0.0.0.0", "--secret", SECRET, "--data-dir", str(tmp_path / "var"))
    assert refused.returncode != 0 and "--secret-file" in refused.stderr and "ps" in refused.stderr
    loose = run_cli("serve", "--host", "0.0.0.0", "--secret-file", str(secret_file(tmp_path, 0o644)),
                    "--data-dir", str(tmp_path / "var"))
    assert loose.returncode != 0 and "chmod 600" in loose.stderr
    with serve(tmp_path, "--secret", SECRET) as server:
        pass
    assert "warning: --secret is visible to other users" in server.log()
