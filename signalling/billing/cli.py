"""``expertcall billing ...``: the reference consumer, exports, statements and refunds."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from pathlib import Path
from typing import Awaitable, Callable, TextIO, TypeVar

import click

from ..core.database import Database
from ..core.settings import Settings, SettingsError
from .ledger import Ledger, to_csv, to_json
from .storage import open_store
from .store import BillingStore
from .times import END_OF_TIME, parse_date_or_time

T = TypeVar("T")


def _settings(data_dir: str | None, database_url: str | None = None) -> Settings:
    try:
        return Settings.from_env(data_dir=data_dir, database_url=database_url)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _instant(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_date_or_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group()
def billing() -> None:
    """Metering and billing: consume the feed, export the ledger, statements, refunds."""


@billing.command()
@click.option("--group", required=True, help="Consumer group name.")
@click.option("--redis", "redis_url", default=None, help="redis:// URL. [EXPERTCALL_REDIS_URL]")
@click.option("--db", "db_path", default=None, help="The consumer's own SQLite (default DATA_DIR/metering-consumer-GROUP.sqlite3).")
@click.option("--stream", default=None, help="Stream key (default expertcall:metering). [EXPERTCALL_METERING_STREAM]")
@click.option("--name", default=None, help="Consumer name within the group (default: the host name); keep it stable across restarts.")
@click.option("--claim-idle-ms", type=int, default=30_000, show_default=True, help="Claim other consumers' entries pending this long.")
@click.option("--batch", type=int, default=200, show_default=True)
@click.option("--idle-exit", type=float, default=0.0, help="Exit after this many seconds without events (0: run until signalled).")
@click.option("--data-dir", default=None)
def consume(group: str, redis_url: str | None, db_path: str | None, stream: str | None, name: str | None,
            claim_idle_ms: int, batch: int, idle_exit: float, data_dir: str | None) -> None:
    """Read the metering stream with a consumer group; count every event exactly once."""
    from redis.asyncio import Redis

    from ..core.redis_timeouts import TIMEOUTS
    from .feed_reader import FeedReaderStore, MeteringFeedReader

    settings = _settings(data_dir)
    url = redis_url or settings.redis_url
    if not url:
        raise click.ClickException("no Redis configured: pass --redis or set EXPERTCALL_REDIS_URL")
    path = Path(db_path) if db_path else settings.data_dir / f"metering-consumer-{group}.sqlite3"

    async def run() -> None:
        redis = Redis.from_url(url, **TIMEOUTS)
        store = FeedReaderStore(path)
        consumer = MeteringFeedReader(
            redis, store, stream=stream or settings.metering_stream, group=group,
            name=name or socket.gethostname(), batch=batch, claim_idle_ms=claim_idle_ms,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await consumer.run(stop, idle_exit=idle_exit)
            total = store.count()
        finally:
            await redis.aclose()
            store.close()
        click.echo(json.dumps({"received": consumer.received, "counted": consumer.counted, "total_events": total}))

    asyncio.run(run())


def _run_with_store(settings: Settings, work: Callable[[BillingStore], Awaitable[T]]) -> T:
    """Open the billing store the settings choose (the node's SQLite, or the shared PostgreSQL
    with --database), run ``work`` on it and close it."""

    async def run() -> T:
        db = Database.in_dir(settings.data_dir)
        try:
            store, close = await open_store(settings, db)
            try:
                return await work(store)
            finally:
                await close()
        finally:
            db.close()

    return asyncio.run(run())


_DATABASE = click.option(
    "--database", "database_url", default=None,
    help="postgresql:// URL of the shared database (default: the SQLite file in the data dir). [EXPERTCALL_DATABASE_URL]",
)


@billing.command()
@click.option("--from", "start", required=True, callback=_instant, help="ISO 8601 date/time or Unix seconds (inclusive).")
@click.option("--to", "end", required=True, callback=_instant, help="ISO 8601 date/time or Unix seconds (exclusive).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--output", "-o", type=click.File("w"), default="-", help="File to write (default stdout).")
@click.option("--data-dir", default=None)
@_DATABASE
def export(start: float, end: float, fmt: str, output: TextIO, data_dir: str | None, database_url: str | None) -> None:
    """Export the ledger entries posted between two instants."""
    rows = _run_with_store(_settings(data_dir, database_url), lambda store: Ledger(store).export(start, end))
    output.write(to_csv(rows) if fmt == "csv" else to_json(rows) + "\n")


@billing.command()
@click.option("--expert", required=True, help="Expert id.")
@click.option("--from", "start", default=None, callback=_instant, help="Start (default: the beginning).")
@click.option("--to", "end", default=None, callback=_instant, help="End, exclusive (default: no end).")
@click.option("--data-dir", default=None)
@_DATABASE
def statement(expert: str, start: float | None, end: float | None, data_dir: str | None, database_url: str | None) -> None:
    """An expert's earnings statement as JSON: one line per session, totals per currency."""
    result = _run_with_store(
        _settings(data_dir, database_url), lambda store: Ledger(store).statement(expert, start or 0.0, end or END_OF_TIME)
    )
    click.echo(json.dumps(result, indent=1))


@billing.command()
@click.argument("session_id")
@click.option("--by", default="admin", show_default=True, help="Who refunds (recorded in the ledger).")
@click.option("--reason", default="", help="Why (recorded in the ledger and the event).")
@click.option("--data-dir", default=None)
@_DATABASE
def refund(session_id: str, by: str, reason: str, data_dir: str | None, database_url: str | None) -> None:
    """Refund an ended session within the refund window (reversing entries + a refunded event)."""
    from .meter import BillingError, Meter, Refund

    settings = _settings(data_dir, database_url)

    async def work(store: BillingStore) -> Refund:
        return await Meter(store, refund_window_seconds=settings.refund_window_seconds).refund(
            session_id, by=by, reason=reason
        )

    try:
        result = _run_with_store(settings, work)
    except BillingError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None
    p = result.posting
    click.echo(json.dumps({"created": result.created, "posting_id": p.id, "amount": p.gross.format()}))


@billing.command()
@click.option("--group", required=True, help="The consumer group whose counts to check.")
@click.option("--db", "db_path", default=None, help="The consumer's SQLite (default DATA_DIR/metering-consumer-GROUP.sqlite3).")
@click.option("--data-dir", default=None)
@_DATABASE
def reconcile(group: str, db_path: str | None, data_dir: str | None, database_url: str | None) -> None:
    """Compare the ledger with what the reference consumer counted; print any difference (exit 1)."""
    from .feed_reader import FeedReaderStore
    from .reconcile import reconcile as compare

    settings = _settings(data_dir, database_url)
    path = Path(db_path) if db_path else settings.data_dir / f"metering-consumer-{group}.sqlite3"
    if not path.exists():
        raise click.ClickException(f"no consumer store at {path}")
    consumer = FeedReaderStore(path)
    try:
        report = _run_with_store(settings, lambda store: compare(store, consumer))
    finally:
        consumer.close()
    click.echo(json.dumps(report, indent=1))
    if not report["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(billing())
