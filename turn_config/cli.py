"""``expertcall turn-config``: print (or write) a turnserver.conf for coturn next to expertcall."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import click

from .coturn import CoturnConfig, ConfigError
from .ice_servers import standard_turn_urls

SECRET_ENV = "EXPERTCALL_TURN_SECRET"


def read_secret(secret_file: Path | None) -> str:
    """The shared secret from ``secret_file``, else from the environment; never from argv, where
    ``ps`` and shell history would show it."""
    if secret_file is not None:
        try:
            mode = secret_file.stat().st_mode
            secret = secret_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise click.ClickException(f"turn_secret_unreadable: cannot read {secret_file}: {exc}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise click.ClickException(
                f"turn_secret_unsafe: {secret_file} is open to other users (mode {stat.S_IMODE(mode):o}): chmod 600 it"
            )
        return secret
    secret = os.environ.get(SECRET_ENV, "").strip()
    if not secret:
        raise click.UsageError(f"no TURN secret: pass --secret-file FILE or set {SECRET_ENV}")
    return secret


def _refuse_secret_argument(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        raise click.UsageError(
            "the TURN secret must not be given on the command line (ps and shell history show it): "
            f"use --secret-file FILE or {SECRET_ENV}"
        )


@click.command("turn-config")
@click.option("--realm", required=True, help="coturn realm, usually your domain.")
@click.option("--external-ip", "external_ips", multiple=True, required=True,
              help="Public IP clients reach the relay on ('public/private' behind 1:1 NAT; repeatable).")
@click.option("--secret-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help=f"File holding the shared secret (else {SECRET_ENV}).")
@click.option("--previous-secret-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The secret being rotated out: credentials made with it keep working until they expire.")
@click.option("--secret", hidden=True, expose_value=False, callback=_refuse_secret_argument)
@click.option("--listening-ip", "listening_ips", multiple=True, help="Address to listen on (repeatable; default all).")
@click.option("--relay-ip", "relay_ips", multiple=True, help="Address to relay from (repeatable).")
@click.option("--port", "listening_port", type=int, default=3478, show_default=True, help="turn: port, UDP and TCP.")
@click.option("--tls-port", "tls_listening_port", type=int, default=443, show_default=True, help="turns: port.")
@click.option("--min-port", type=int, default=49152, show_default=True, help="Lowest relay port.")
@click.option("--max-port", type=int, default=65535, show_default=True, help="Highest relay port.")
@click.option("--user-quota", type=int, default=24, show_default=True, help="Allocations per credential.")
@click.option("--total-quota", type=int, default=2000, show_default=True, help="Allocations in all.")
@click.option("--max-bps", type=int, default=1_250_000, show_default=True, help="Bytes/s per session, each way.")
@click.option("--bps-capacity", type=int, default=0, show_default=True, help="Bytes/s for the server (0: unlimited).")
@click.option("--cert", type=click.Path(path_type=Path), default=None, help="TLS certificate chain (PEM) for turns:.")
@click.option("--pkey", type=click.Path(path_type=Path), default=None, help="TLS private key (PEM).")
@click.option("--deny-peer", "extra_denied_peer_ranges", multiple=True, help="Another CIDR to deny (repeatable).")
@click.option("--allow-peer", "allowed_peer_ips", multiple=True, help="A peer IP to allow despite the denied ranges.")
@click.option("--allow-loopback-peers", is_flag=True, help="Relay to 127.0.0.1 and ::1. For local testing only.")
@click.option("--log-file", type=click.Path(path_type=Path), default=None, help="Log file (default syslog).")
@click.option("--quiet", "verbose", flag_value=False, default=True,
              help="Log refusals only, not a line per allocation (with its traffic counters).")
@click.option("--db", "userdb", type=click.Path(dir_okay=False, path_type=Path), default=Path("/var/lib/turn/turndb"),
              show_default=True, help="coturn's own SQLite database (opened even with use-auth-secret).")
@click.option("--pidfile", type=click.Path(path_type=Path), default=None, help="PID file.")
@click.option("--public-host", default=None, help="Name clients use for the server (the TLS certificate's); default the external IP.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here (mode 600) instead of printing.")
def turn_config(
    secret_file: Path | None,
    previous_secret_file: Path | None,
    public_host: str | None,
    output: Path | None,
    **options: object,
) -> None:
    """Print a coturn turnserver.conf matching the credentials expertcall hands out."""
    secrets = [read_secret(secret_file)]
    if previous_secret_file is not None:
        secrets.append(read_secret(previous_secret_file))
    for name in ("external_ips", "listening_ips", "relay_ips", "extra_denied_peer_ranges", "allowed_peer_ips"):
        options[name] = tuple(options[name])  # type: ignore[arg-type]
    try:
        config = CoturnConfig(secrets=tuple(secrets), **options)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None
    text = config.render()
    if output is None:
        click.echo(text, nl=False)
    else:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(output, 0o600)
        click.echo(f"wrote {output}", err=True)
    host = public_host or config.external_ips[0].split("/")[0]
    urls = standard_turn_urls(host, config.listening_port, config.tls_listening_port)
    if not config.tls:
        urls = urls[:2]
    click.echo(f"expertcall: EXPERTCALL_TURN_URLS={','.join(urls)}", err=True)
