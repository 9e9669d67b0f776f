"""`expertcall turn-config`: the secret comes from a file or the environment, never from argv."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from signalling.app.cli import main

pytestmark = pytest.mark.integration

SECRET = "north-sea-shared-secret"
BASE = ["turn-config", "--realm", "example.com", "--external-ip", "203.0.113.5"]


def secret_file(tmp_path: Path, secret: str = SECRET) -> Path:
    path = tmp_path / "turn-secret"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


def test_secret_on_the_command_line_is_refused() -> None:
    result = CliRunner().invoke(main, [*BASE, "--secret", SECRET], env={"EXPERTCALL_TURN_SECRET": SECRET})
    assert result.exit_code == 2
    assert "must not be given on the command line" in result.output
    assert "static-auth-secret" not in result.output


def test_without_any_secret_it_says_where_to_put_one() -> None:
    result = CliRunner().invoke(main, BASE, env={"EXPERTCALL_TURN_SECRET": ""})
    assert result.exit_code == 2
    assert "--secret-file" in result.output and "EXPERTCALL_TURN_SECRET" in result.output


def test_secret_from_a_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [*BASE, "--secret-file", str(secret_file(tmp_path))], env={"EXPERTCALL_TURN_SECRET": ""})
    assert result.exit_code == 0, result.output
    assert f"static-auth-secret={SECRET}\n" in result.stdout
    assert "realm=example.com\n" in result.stdout
    assert "EXPERTCALL_TURN_URLS=turn:203.0.113.5:3478?transport=udp,turn:203.0.113.5:3478?transport=tcp" in result.stderr
    assert "warning" not in result.stderr


def test_secret_from_the_environment() -> None:
    result = CliRunner().invoke(main, BASE, env={"EXPERTCALL_TURN_SECRET": SECRET})
    assert result.exit_code == 0, result.output
    assert f"static-auth-secret={SECRET}\n" in result.stdout


def test_a_secret_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = secret_file(tmp_path)
    for mode in (0o644, 0o640, 0o604, 0o620):
        path.chmod(mode)
        result = CliRunner().invoke(main, [*BASE, "--secret-file", str(path)])
        assert result.exit_code != 0 and "turn_secret_unsafe" in result.output and "chmod 600" in result.output
        assert "static-auth-secret" not in result.output


def test_logging_and_the_database_are_explicit(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, BASE, env={"EXPERTCALL_TURN_SECRET": SECRET})
    assert "\nverbose\n" in result.stdout and "\nuserdb=/var/lib/turn/turndb\n" in result.stdout
    result = CliRunner().invoke(main, [*BASE, "--quiet", "--db", str(tmp_path / "turndb")],
                                env={"EXPERTCALL_TURN_SECRET": SECRET})
    assert "verbose" not in result.stdout and f"\nuserdb={tmp_path / 'turndb'}\n" in result.stdout


def test_output_file_is_private_and_rotation_keeps_the_old_secret(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.write_text("the-previous-secret-xyz")
    old.chmod(0o600)
    out = tmp_path / "turnserver.conf"
    result = CliRunner().invoke(
        main,
        [*BASE, "--secret-file", str(secret_file(tmp_path)), "--previous-secret-file", str(old), "-o", str(out),
         "--cert", "/etc/ssl/t.pem", "--pkey", "/etc/ssl/t.key", "--public-host", "turn.example.com",
         "--allow-loopback-peers"],
    )
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = out.read_text()
    assert "static-auth-secret=the-previous-secret-xyz\n" in text and "allow-loopback-peers\n" in text
    assert "turns:turn.example.com:443?transport=tcp" in result.stderr


def test_bad_values_give_a_coded_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [*BASE, "--secret-file", str(secret_file(tmp_path, "short"))])
    assert result.exit_code == 1
    assert "turn_secret_too_short" in result.output


def test_an_unreadable_secret_file_is_a_coded_error(tmp_path: Path) -> None:
    path = tmp_path / "binary"
    path.write_bytes(b"\xff\xfe\x00")
    result = CliRunner().invoke(main, [*BASE, "--secret-file", str(path)])
    assert result.exit_code == 1
    assert "turn_secret_unreadable" in result.output
