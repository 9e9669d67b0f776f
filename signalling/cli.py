"""The ``expertcall`` command line (click)."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import click

from turn_config.cli import turn_config

from .auth import Role, TokenIssuer
from .settings import Settings, SettingsError


def install_event_loop() -> None:
    """uvloop when it is installed: the SFU's per-packet path runs on this loop."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def main(verbose: bool) -> None:
    """expertcall: live, paid video help sessions."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@main.command()
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1). [EXPERTCALL_HOST]")
@click.option("--port", type=int, default=None, help="Port (default 8080). [EXPERTCALL_PORT]")
@click.option("--data-dir", default=None, help="Where state is kept (default ./var). [EXPERTCALL_DATA_DIR]")
@click.option("--secret", default=None, help="Token signing secret. [EXPERTCALL_SECRET]")
@click.option("--redis", "redis_url", default=None, help="redis:// URL to scale out. [EXPERTCALL_REDIS_URL]")
@click.option("--database", "database_url", default=None,
              help="postgresql:// URL of the database every node shares (default: SQLite in the data dir). [EXPERTCALL_DATABASE_URL]")
@click.option("--billing-unit-seconds", type=int, default=None, help="Billing unit (default 60). [EXPERTCALL_BILLING_UNIT_SECONDS]")
@click.option("--media-loopback/--no-media-loopback", default=None, help="Gather and announce 127.0.0.1 only. [EXPERTCALL_MEDIA_LOOPBACK]")
@click.option("--announced-ip", "media_announced_ip", default=None, help="Public IP announced in ICE candidates. [EXPERTCALL_MEDIA_ANNOUNCED_IP]")
@click.option("--no-demo", "demo", flag_value=False, default=None, help="Do not serve the web demo.")
def serve(**options: Any) -> None:
    """Run signalling, the SFU and the web demo in one process."""
    from aiohttp import web

    from .app import create_app

    try:
        settings = Settings.from_env(**options)
        app = create_app(settings)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    install_event_loop()
    click.echo(f"expertcall listening on http://{settings.host}:{settings.port}/", err=True)
    web.run_app(app, host=settings.host, port=settings.port, print=None, shutdown_timeout=15)


@main.command()
@click.option("--user", required=True, help="User id (the token's sub).")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.option("--ttl", type=int, default=3600, show_default=True, help="Lifetime in seconds.")
@click.option("--name", default=None, help="Display name.")
@click.option("--secret", default=None, help="Signing secret. [EXPERTCALL_SECRET]")
@click.option("--data-dir", default=None, help="Data dir holding a generated dev secret.")
def token(user: str, role: str, ttl: int, name: str | None, secret: str | None, data_dir: str | None) -> None:
    """Mint a bearer token."""
    try:
        settings = Settings.from_env(secret=secret, data_dir=data_dir)
        issuer = TokenIssuer(settings.resolve_secret())
        click.echo(issuer.mint(user, role, ttl=ttl, name=name))
    except (SettingsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


main.add_command(turn_config)

from bench.cli import bench  # noqa: E402  (subcommand groups attach after main is defined)
from .billing.cli import billing  # noqa: E402

main.add_command(billing)
main.add_command(bench)

if __name__ == "__main__":
    sys.exit(main())
