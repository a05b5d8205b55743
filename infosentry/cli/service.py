"""Running and operating the service: serve, worker, migrate, db, backup, restore, demo."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from infosentry import db, jobs, migrate
from infosentry.cli.base import cell, echo_json, echo_table, main, progress, quiet, run, settings_of
from infosentry.errors import Invalid
from infosentry.queue import QUEUES
from infosentry.runtime import open_runtime
from infosentry.settings import Settings
from infosentry.tuning import tune_process

T = TypeVar("T")


@main.command()
@click.option("--role", type=click.Choice(["all", "api", "worker"]), default="all", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--concurrency", default=None, type=int, help="Jobs run at once (worker part).")
@click.pass_context
def serve(ctx: click.Context, role: str, host: str, port: int, concurrency: int | None) -> None:
    """Run the service: api + every queue + periodic tasks (all), or one role."""
    settings = settings_of(ctx)
    tune_process()
    if role == "worker":
        run(_worker(settings, list(QUEUES), concurrency or settings.worker_concurrency))
        return
    from aiohttp import web

    from infosentry.api import create_app

    app = create_app(settings, role=role, concurrency=concurrency or settings.worker_concurrency)
    click.echo(f"infosentry {role} listening on http://{host}:{port}", err=True)
    web.run_app(app, host=host, port=port, print=None, shutdown_timeout=25, access_log=None)


@main.command()
@click.option("--queue", "queues", multiple=True, type=click.Choice(QUEUES), help="Queue to work (repeat).")
@click.option("--concurrency", default=None, type=int)
@click.pass_context
def worker(ctx: click.Context, queues: tuple[str, ...], concurrency: int | None) -> None:
    """Work queues only (all queues when none is given)."""
    settings = settings_of(ctx)
    tune_process()
    run(_worker(settings, list(queues) or list(QUEUES), concurrency or settings.worker_concurrency))


async def _worker(settings: Settings, queues: list[str], concurrency: int) -> None:
    async with open_runtime(settings, role="worker") as rt:
        qapp = await rt.queue(max_size=10)
        beat = asyncio.create_task(jobs.heartbeat_loop(rt, queues))
        click.echo(f"infosentry worker on {', '.join(queues)} (concurrency {concurrency})", err=True)
        try:
            await jobs.run_worker(rt, qapp, queues, concurrency=concurrency, install_signal_handlers=True)
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)


@main.group("migrate", invoke_without_command=True)
@click.pass_context
def migrate_cmd(ctx: click.Context) -> None:
    """Schema migrations (no subcommand = upgrade to head)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(migrate_up, to=None)


async def _plain(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    dsn = db.resolve_dsn(settings)
    async with db.plain_connection(dsn) as conn:
        return await fn(conn)


@migrate_cmd.command("up")
@click.option("--to", type=int, default=None, help="Target revision (default head).")
@click.pass_context
def migrate_up(ctx: click.Context, to: int | None) -> None:
    """Upgrade the schema."""
    done = run(_plain(settings_of(ctx), lambda conn: migrate.upgrade(conn, to)))
    for m in done:
        click.echo(f"applied {m.version:04d}_{m.name}")
    st = run(_plain(settings_of(ctx), migrate.status))
    click.echo(f"schema at {st.current:04d} (head {st.head:04d})")


@migrate_cmd.command("down")
@click.option("--to", type=int, required=True, help="Revision to go back to (0 = empty).")
@click.pass_context
def migrate_down(ctx: click.Context, to: int) -> None:
    """Revert migrations above REV."""
    done = run(_plain(settings_of(ctx), lambda conn: migrate.downgrade(conn, to)))
    for m in done:
        click.echo(f"reverted {m.version:04d}_{m.name}")
    click.echo(f"schema at {to:04d}")


@migrate_cmd.command("history")
@click.pass_context
def migrate_history(ctx: click.Context) -> None:
    """Every migration and whether it is applied."""
    st = run(_plain(settings_of(ctx), migrate.status))
    applied = {v: at for v, _, at in st.applied}
    for m in migrate.load_migrations():
        mark = f"applied {cell(applied[m.version])}" if m.version in applied else "pending"
        click.echo(f"{m.version:04d}  {m.name:<30} {mark}")


@migrate_cmd.command("status")
@click.pass_context
def migrate_status(ctx: click.Context) -> None:
    """Current revision; exit 1 when behind."""
    st = run(_plain(settings_of(ctx), migrate.status))
    click.echo(f"schema at {st.current:04d}, head {st.head:04d}" + (" (behind)" if st.pending else " (current)"))
    if st.pending:
        sys.exit(1)


@main.group("db")
def db_cmd() -> None:
    """Database access for operators."""


@db_cmd.command("uri")
@click.pass_context
def db_uri(ctx: click.Context) -> None:
    """Print the database URI (embedded or external)."""
    click.echo(db.resolve_dsn(settings_of(ctx)))


@db_cmd.command("psql", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def db_psql(ctx: click.Context, psql_args: tuple[str, ...]) -> None:
    """Open psql on the database (the embedded server's psql when there is no system one)."""
    dsn = db.resolve_dsn(settings_of(ctx))
    psql = shutil.which("psql")
    bundled = db.embedded_bin_dir()
    if bundled and (bundled / "psql").exists() and (not psql or not settings_of(ctx).database_url):
        psql = str(bundled / "psql")
    if not psql:
        raise Invalid("psql not found; install the PostgreSQL client")
    # the password travels in the environment, never in argv (visible to every user in ps)
    uri, env = db.libpq_env(dsn)
    # keep the embedded server alive while psql runs (this process holds a handle on it)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(subprocess.call([psql, uri, *psql_args], env=env))


@main.command("backup")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory for the backup (default <data dir>/backups).",
)
@click.option(
    "--keep-days",
    type=click.IntRange(min=0),
    default=7,
    show_default=True,
    help="Delete backups in that directory older than this; 0 keeps all.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def backup_cmd(ctx: click.Context, out_dir: str | None, keep_days: int, as_json: bool) -> None:
    """Consistent pg_dump of the whole database (custom format, compressed) plus a manifest."""
    from infosentry.ops import backup

    target = Path(out_dir) if out_dir else None
    result = run(backup.backup(settings_of(ctx), target, keep_days=keep_days, progress=quiet if as_json else progress))
    if as_json:
        echo_json(result.as_dict())
        return
    click.echo(
        f"{result.path}  {backup._human(result.size)}  {sum(result.tables.values())} rows in "
        f"{len(result.tables)} tables, schema {result.migration:04d}, {result.seconds:.1f} s"
    )
    for path in result.removed:
        click.echo(f"removed {path} (older than {keep_days} days)")


@main.command("restore")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--yes", is_flag=True, help="Replace the contents of a database that is not empty.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def restore_cmd(ctx: click.Context, file: str, yes: bool, as_json: bool) -> None:
    """Restore a backup (all or nothing), then print row counts per table and the schema version."""
    from infosentry.ops import backup

    result = run(backup.restore(settings_of(ctx), Path(file), yes=yes, progress=quiet if as_json else progress))
    if as_json:
        echo_json(result.as_dict())
    else:
        expected = result.expected or {}
        rows = [
            {
                "table": t,
                "rows": n,
                "expected": expected.get(t, "-") if result.expected else "-",
                "check": "" if result.expected is None else ("ok" if expected.get(t) == n else "MISMATCH"),
            }
            for t, n in sorted(result.tables.items())
        ]
        echo_table(rows, ["table", "rows", "expected", "check"])
        state = (
            "current"
            if result.migration == result.head
            else ("behind: run 'infosentry migrate'" if result.migration < result.head else "newer than this code")
        )
        click.echo(
            f"restored {result.path.name} in {result.seconds:.1f} s: {sum(result.tables.values())} rows, "
            f"schema at {result.migration:04d} (head {result.head:04d}, {state})"
        )
    if result.mismatches:
        click.echo(f"error: row counts differ from the backup's manifest: {sorted(result.mismatches)}", err=True)
        sys.exit(1)


@main.command("demo")
@click.option("--no-fast-forward", is_flag=True, help="Do not fire the next batch window and digest early.")
@click.option("--timeout", default=50.0, show_default=True, help="Seconds to wait for the pipeline to settle.")
@click.option("--serve", is_flag=True, help="Then serve the web app on the result until Ctrl-C.")
@click.option("--host", default="127.0.0.1", show_default=True, help="With --serve.")
@click.option("--port", default=8000, show_default=True, type=int, help="With --serve.")
@click.pass_context
def demo_cmd(ctx: click.Context, no_fast_forward: bool, timeout: float, serve: bool, host: str, port: int) -> None:
    """The whole pipeline offline on bundled sample feeds: embedded Postgres, local embedder, emails as .eml
    files in <data dir>/demo-mail/. Prints what was pushed, in which tier and why. Safe to run again. With
    --serve, then serves the web app and ends by printing the URL of the demo's inbox."""
    from dataclasses import replace

    from infosentry import demo

    if not ctx.obj.get("debug"):
        logging.getLogger().setLevel(logging.WARNING)  # the demo's own lines, not the workers' log
    settings = settings_of(ctx)
    tune_process()
    if serve:  # the emails' links open the app being served
        settings = replace(settings, public_url=f"http://{host}:{port}")
    result = run(demo.run(settings, say=click.echo, fast_forward=not no_fast_forward, timeout=timeout))
    demo.render(result, click.echo)
    if serve:
        try:
            run(demo.serve(settings, host=host, port=port, say=click.echo))
        except KeyboardInterrupt:
            click.echo("stopped", err=True)
