"""The ``expertcall`` command line (click)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from bench.cli import bench
from turn_config.cli import turn_config

from ..auth.tokens import Role, TokenIssuer
from ..billing.cli import billing
from ..core.event_loop import install_event_loop
from ..core.settings import Settings, SettingsError

if TYPE_CHECKING:
    from aiohttp import web


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
@click.option("--secret-file", default=None, help="File (mode 600) holding the token signing secret. [EXPERTCALL_SECRET_FILE]")
@click.option("--secret", default=None, help="The secret itself: loopback development only (ps shows it). [EXPERTCALL_SECRET]")
@click.option("--redis", "redis_url", default=None, help="redis:// URL to scale out. [EXPERTCALL_REDIS_URL]")
@click.option("--database", "database_url", default=None,
              help="postgresql:// URL of the database every node shares (default: SQLite in the data dir). [EXPERTCALL_DATABASE_URL]")
@click.option("--billing-unit-seconds", type=int, default=None, help="Billing unit (default 60). [EXPERTCALL_BILLING_UNIT_SECONDS]")
@click.option("--media-loopback/--no-media-loopback", default=None, help="Gather and announce 127.0.0.1 only. [EXPERTCALL_MEDIA_LOOPBACK]")
@click.option("--announced-ip", "media_announced_ip", default=None, help="Public IP announced in ICE candidates. [EXPERTCALL_MEDIA_ANNOUNCED_IP]")
@click.option("--metrics-host", default=None, help="Loopback address of the token-less /metrics listener (default 127.0.0.1). [EXPERTCALL_METRICS_HOST]")
@click.option("--metrics-port", type=int, default=None, help="Serve /metrics without a token on this loopback port. [EXPERTCALL_METRICS_PORT]")
@click.option("--sfu-workers", type=int, default=None,
              help="SFU worker processes (default: the CPUs this process may use; 1 runs the SFU in the server's process). [EXPERTCALL_SFU_WORKERS]")
@click.option("--role", type=click.Choice(["all", "signalling", "sfu"]), default=None,
              help="all (default): signalling and the SFU; signalling: rooms on the SFU nodes in Redis; sfu: an SFU node. [EXPERTCALL_ROLE]")
@click.option("--sfu-node-host", default=None, help="An SFU node's internal endpoint: address to listen on (default 127.0.0.1). [EXPERTCALL_SFU_NODE_HOST]")
@click.option("--sfu-node-port", type=int, default=None, help="Its port (default 0: any free port, announced in Redis). [EXPERTCALL_SFU_NODE_PORT]")
@click.option("--sfu-node-advertise", default=None, help="The address signalling nodes dial (default: --sfu-node-host). [EXPERTCALL_SFU_NODE_ADVERTISE]")
@click.option("--sfu-drain-seconds", type=float, default=None,
              help="An SFU node on SIGTERM takes no new rooms and gives its rooms this long to end before they move (default 60). [EXPERTCALL_SFU_DRAIN_SECONDS]")
@click.option("--media-port", type=click.IntRange(1024, 65535), default=None,
              help="All media of SFU worker i on UDP port this + i (default: one port per worker, picked by the kernel). [EXPERTCALL_MEDIA_PORT]")
@click.option("--media-per-connection", flag_value=True, default=None,
              help="A UDP socket per connection instead of one per worker (slower; ports from EXPERTCALL_MEDIA_PORT_MIN-_MAX). [EXPERTCALL_MEDIA_PER_CONNECTION]")
@click.option("--no-demo", "demo", flag_value=False, default=None, help="Do not serve the web demo.")
def serve(**options: Any) -> None:
    """Run signalling, the SFU (in worker processes, one per CPU) and the web demo; or, with
    --role, signalling only or an SFU node only (docs/deployment.md)."""
    from aiohttp import web

    from sfu.api import MediaError

    from .access_log import RedactedAccessLogger
    from . import shutdown_watchdog
    from .factory import create_app
    from .sfu_node import create_sfu_node_app

    if options.get("sfu_workers") is None and "EXPERTCALL_SFU_WORKERS" not in os.environ:
        # one SFU worker per CPU this process may run on (taskset and cgroups included)
        options["sfu_workers"] = len(os.sched_getaffinity(0))
    try:
        settings = Settings.from_env(**options)
        _check_secret_flag(options.get("secret"), settings)
        app = create_sfu_node_app(settings) if settings.role == "sfu" else create_app(settings)
        settings.sfu_link_secret()  # refuse to start without one, rather than at the first link
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    _check_media_ports(settings)
    drain = settings.sfu_drain_seconds if settings.role == "sfu" else 0.0
    shutdown_watchdog.install(app, settings.shutdown_dump_seconds and settings.shutdown_dump_seconds + drain)
    install_event_loop()

    def started() -> None:
        click.echo(f"expertcall ({settings.role}) listening on http://{settings.host}:{settings.port}/", err=True)

    try:
        _run_app(web.AppRunner(app, handle_signals=True, access_log_class=RedactedAccessLogger, shutdown_timeout=15,
                               keepalive_timeout=75),
                 settings.host, settings.port, started)
    except MediaError as exc:  # the media plane did not start (its port is taken): all closed again
        raise click.ClickException(f"the media plane did not start: {exc.message}") from None


def _run_app(runner: web.AppRunner, host: str, port: int, started: Callable[[], None]) -> None:
    """``web.run_app``, except that a start that fails closes what it had opened, in reverse
    order, before its error shows: aiohttp's leaves a failed start's cleanup contexts to the
    loop's end, which closes them all at once (billing's heartbeat then writes to a database
    already closed). ``started()`` runs once every start-up step succeeded and the site
    listens, never for a start that failed."""
    from aiohttp import web

    async def run() -> None:
        try:
            await runner.setup()
            try:
                await web.TCPSite(runner, host, port).start()
            except OSError as exc:  # the port is taken, or the address is not this host's
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise click.ClickException(f"cannot listen on {host}:{port}: {reason}") from None
            started()
            await asyncio.Event().wait()  # until SIGINT or SIGTERM (GracefulExit)
        finally:
            await runner.cleanup()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(run())
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):  # the shutdown: run's cleanup, as run_app does it
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(main)
    finally:
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _check_media_ports(settings: Settings) -> None:
    """Warn when fixed media ports lie in the kernel's ephemeral range: any outgoing connection
    of this host may take one first, and the SFU then fails to start."""
    from sfu.udp_mux import ephemeral_overlap

    if settings.role == "signalling" or not settings.media_port:
        return
    last = settings.media_port + max(settings.sfu_workers, 1) - 1
    ephemeral = ephemeral_overlap(settings.media_port, last)
    if ephemeral is not None:
        click.echo(f"warning: media ports {settings.media_port}-{last} overlap the kernel's ephemeral ports "
                   f"{ephemeral[0]}-{ephemeral[1]}, which any outgoing connection may take: pick ports "
                   f"outside it or reserve them (sysctl net.ipv4.ip_local_reserved_ports)", err=True)


def _check_secret_flag(flag: str | None, settings: Settings) -> None:
    """``--secret`` shows the secret to every user of the machine (ps, /proc, shell history):
    tolerated for loopback development, with a warning, and refused on any other bind."""
    if flag is None:
        return
    if not settings.is_loopback:
        raise SettingsError(
            "--secret puts the signing secret where every user of this machine can read it (ps): "
            "on a non-loopback bind pass --secret-file FILE (mode 600) or set EXPERTCALL_SECRET"
        )
    click.echo("warning: --secret is visible to other users (ps, shell history); "
               "use --secret-file FILE or EXPERTCALL_SECRET", err=True)


@main.group(invoke_without_command=True)
@click.option("--user", default=None, help="User id (the token's sub).")
@click.option("--role", type=click.Choice([r.value for r in Role]), default=None)
@click.option("--ttl", type=int, default=3600, show_default=True, help="Lifetime in seconds (at most token_max_ttl).")
@click.option("--name", default=None, help="Display name.")
@click.option("--secret-file", default=None, help="File (mode 600) holding the signing secret. [EXPERTCALL_SECRET_FILE]")
@click.option("--secret", default=None, help="The secret itself: loopback development only (ps shows it). [EXPERTCALL_SECRET]")
@click.option("--data-dir", default=None, help="Data dir holding a generated dev secret.")
@click.pass_context
def token(ctx: click.Context, user: str | None, role: str | None, ttl: int, name: str | None,
          secret_file: str | None, secret: str | None, data_dir: str | None) -> None:
    """Mint a bearer token (its jti goes to stderr); `expertcall token revoke` refuses one."""
    ctx.obj = {"secret": secret, "secret_file": secret_file, "data_dir": data_dir}
    if secret is not None:
        click.echo("warning: --secret is visible to other users (ps, shell history); "
                   "use --secret-file FILE or EXPERTCALL_SECRET", err=True)
    if ctx.invoked_subcommand is not None:
        return
    if not user or not role:
        raise click.UsageError("minting a token needs --user and --role")
    try:
        issuer = _issuer(ctx.obj)
        minted = issuer.mint(user, role, ttl=ttl, name=name)
    except (SettingsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(minted)
    click.echo(f"jti: {issuer.claims(minted)['jti']}", err=True)


@token.command()
@click.argument("token_or_jti")
@click.option("--url", default=None, help="The running server (default: http://127.0.0.1:PORT from the settings).")
@click.pass_obj
def revoke(obj: dict[str, Any], token_or_jti: str, url: str | None) -> None:
    """Revoke a token (the token itself, or the jti printed when it was minted) on a running server.

    Every node refuses it from then on and closes the sockets it opened (4001 token_revoked)."""
    try:
        settings = Settings.from_env(**obj)
        issuer = _issuer(obj)
    except (SettingsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    admin = issuer.mint("expertcall-cli", Role.ADMIN, ttl=60, name="expertcall token revoke")
    body = {"token": token_or_jti} if token_or_jti.count(".") == 2 else {"jti": token_or_jti}
    base = url or f"http://{_local_host(settings.host)}:{settings.port}"
    request = urllib.request.Request(
        base.rstrip("/") + "/api/tokens/revocations",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            reply = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise click.ClickException(f"{base} refused: {exc.code} {exc.read().decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(f"cannot reach the server at {base}: {exc}") from None
    click.echo(f"revoked {reply['jti']} (kept until {reply['expires_at']})")


def _issuer(options: dict[str, Any]) -> TokenIssuer:
    settings = Settings.from_env(**options)
    return TokenIssuer(settings.resolve_secret(), settings.token_max_ttl)


def _local_host(host: str) -> str:
    """Where a command on this machine reaches a server bound to ``host``."""
    if host in ("0.0.0.0", "", "localhost"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


main.add_command(turn_config)
main.add_command(billing)
main.add_command(bench)

if __name__ == "__main__":
    sys.exit(main())
