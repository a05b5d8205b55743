"""The `infosentry` command line: every role and every operator command (click).

Each command runs one coroutine with asyncio.run. Errors print one line on stderr and exit non-zero
(a traceback only with --debug). Human tables by default, JSON with --json.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

from infosentry import auth, db, jobs, logs, migrate
from infosentry.api.http import dumps
from infosentry.errors import InfosentryError, Invalid
from infosentry.runtime import Runtime, open_runtime
from infosentry.settings import Settings, load_settings
from infosentry.store import accounts
from infosentry.store import config as config_store

T = TypeVar("T")


class Cli(click.Group):
    """Turns our errors into one clear line on stderr."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InfosentryError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc.detail}", err=True)
            sys.exit(2 if exc.status >= 500 else 1)
        except (OSError, ConnectionError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


def settings_of(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def with_rt(settings: Settings, fn: Callable[[Runtime], Awaitable[T]], **kw: Any) -> T:
    async with open_runtime(settings, live_config=False, pool_size=4, **kw) as rt:
        return await fn(rt)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(json.loads(dumps(data)), indent=2, ensure_ascii=False))


def echo_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """A plain aligned table, good enough for a terminal and for grep."""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


@click.group(cls=Cli)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """infosentry: watch sources, score items against your goals, push what matters."""
    settings = load_settings()
    logs.setup("DEBUG" if debug else settings.log_level, settings.log_format)
    ctx.obj = {"settings": settings, "debug": debug}


# --- roles -------------------------------------------------------------------------------------------------


@main.command()
@click.option("--role", type=click.Choice(["all", "api", "worker"]), default="all", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--concurrency", default=None, type=int, help="Jobs run at once (worker part).")
@click.pass_context
def serve(ctx: click.Context, role: str, host: str, port: int, concurrency: int | None) -> None:
    """Run the service: api + every queue + periodic tasks (all), or one role."""
    settings = settings_of(ctx)
    if role == "worker":
        run(_worker(settings, list(jobs.QUEUES), concurrency or settings.worker_concurrency))
        return
    from aiohttp import web

    from infosentry.api import create_app

    app = create_app(settings, role=role, concurrency=concurrency or settings.worker_concurrency)
    click.echo(f"infosentry {role} listening on http://{host}:{port}", err=True)
    web.run_app(app, host=host, port=port, print=None, shutdown_timeout=25, access_log=None)


@main.command()
@click.option("--queue", "queues", multiple=True, type=click.Choice(jobs.QUEUES), help="Queue to work (repeat).")
@click.option("--concurrency", default=None, type=int)
@click.pass_context
def worker(ctx: click.Context, queues: tuple[str, ...], concurrency: int | None) -> None:
    """Work queues only (all queues when none is given)."""
    settings = settings_of(ctx)
    run(_worker(settings, list(queues) or list(jobs.QUEUES), concurrency or settings.worker_concurrency))


async def _worker(settings: Settings, queues: list[str], concurrency: int) -> None:
    async with open_runtime(settings, role="worker") as rt:
        async with jobs.open_queue(rt.dsn) as qapp:
            beat = asyncio.create_task(jobs.heartbeat_loop(rt, queues))
            click.echo(f"infosentry worker on {', '.join(queues)} (concurrency {concurrency})", err=True)
            try:
                await jobs.run_worker(rt, qapp, queues, concurrency=concurrency, install_signal_handlers=True)
            finally:
                beat.cancel()
                from infosentry.store import ops as ops_store

                try:
                    await ops_store.remove_heartbeat(rt)
                except Exception as exc:  # the database may be the reason we stop
                    logging.getLogger(__name__).debug("heartbeat cleanup failed: %s", exc)


# --- migrations --------------------------------------------------------------------------------------------


@main.group(invoke_without_command=True)
@click.pass_context
def migrate_cmd(ctx: click.Context) -> None:
    """Schema migrations (no subcommand = upgrade to head)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(migrate_up, to=None)


main.add_command(migrate_cmd, name="migrate")


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
        mark = f"applied {_cell(applied[m.version])}" if m.version in applied else "pending"
        click.echo(f"{m.version:04d}  {m.name:<30} {mark}")


@migrate_cmd.command("status")
@click.pass_context
def migrate_status(ctx: click.Context) -> None:
    """Current revision; exit 1 when behind."""
    st = run(_plain(settings_of(ctx), migrate.status))
    click.echo(f"schema at {st.current:04d}, head {st.head:04d}" + (" (behind)" if st.pending else " (current)"))
    if st.pending:
        sys.exit(1)


# --- config ------------------------------------------------------------------------------------------------


@main.group()
def config() -> None:
    """Read and hot-update switches and tunables."""


@config.command("get")
@click.argument("key", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def config_get(ctx: click.Context, key: str | None, as_json: bool) -> None:
    """Show every key (or one): value and where it comes from."""
    from infosentry import hotconfig

    async def body(rt: Runtime) -> list[dict[str, Any]]:
        overrides = await config_store.rows(rt.pool)
        return [
            {"key": name, "value": rt.hot[name], "source": "table" if name in overrides else "default",
             "help": k.help}
            for name, k in hotconfig.KEYS.items()
            if key is None or name == key.upper()
        ]  # fmt: skip

    if key is not None and key.upper() not in hotconfig.KEYS:
        raise Invalid(f"unknown config key {key!r}")
    rows = run(with_rt(settings_of(ctx), body))
    if as_json:
        echo_json({r["key"]: r["value"] for r in rows} if key is None else rows[0])
    elif key is not None:
        click.echo(json.dumps(rows[0]["value"]))
    else:
        echo_table(rows, ["key", "value", "source", "help"])


@config.command("set")
@click.argument("key")
@click.argument("value")
@click.pass_context
def config_set(ctx: click.Context, key: str, value: str) -> None:
    """Change KEY to VALUE in every running process (within 2 s)."""
    who = f"cli:{os.environ.get('USER', 'unknown')}"
    parsed = run(with_rt(settings_of(ctx), lambda rt: config_store.set_values(rt.pool, {key.upper(): value}, who=who)))
    for name, v in parsed.items():
        click.echo(f"{name} = {json.dumps(v)}")


# --- accounts ----------------------------------------------------------------------------------------------


@main.group()
def user() -> None:
    """Accounts."""


@user.command("create")
@click.option("--email", required=True)
@click.option("--admin", is_flag=True, help="Give the user the admin role.")
@click.option("--name", "display_name", default="")
@click.pass_context
def user_create(ctx: click.Context, email: str, admin: bool, display_name: str) -> None:
    """Create a user."""
    if "@" not in email:
        raise Invalid(f"{email!r} is not an email address")
    row = run(with_rt(settings_of(ctx), lambda rt: accounts.create_user(rt.pool, email, is_admin=admin,
                                                                         display_name=display_name)))  # fmt: skip
    click.echo(f"user {row['id']} {row['email']}" + (" (admin)" if row["is_admin"] else ""))


@main.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option("--email", required=True)
@click.option("--scope", "scopes", multiple=True, help="goals, sources, notifications, agent, admin (+ :read/:write)")
@click.option("--name", default="cli")
@click.option("--expires-days", type=int, default=None)
@click.pass_context
def token_create(ctx: click.Context, email: str, scopes: tuple[str, ...], name: str, expires_days: int | None) -> None:
    """Print a new token (alone, once)."""

    async def body(rt: Runtime) -> str:
        u = await accounts.user_by_email(rt.pool, email)
        granted = auth.expand_scopes(list(scopes), is_admin=u["is_admin"])
        value = auth.new_token()
        expires = datetime.now(UTC) + timedelta(days=expires_days) if expires_days else None
        await accounts.insert_token(rt.pool, user_id=u["id"], token_hash=auth.hash_token(value), prefix=value[:10],
                                    scopes=granted, name=name, expires_at=expires)  # fmt: skip
        return value

    click.echo(run(with_rt(settings_of(ctx), body)))


@token.command("revoke")
@click.argument("token_id", type=int)
@click.pass_context
def token_revoke(ctx: click.Context, token_id: int) -> None:
    """Revoke a token by id."""
    if not run(with_rt(settings_of(ctx), lambda rt: accounts.revoke_token(rt.pool, token_id))):
        raise Invalid(f"no live token with id {token_id}")
    click.echo(f"token {token_id} revoked")


# --- database ----------------------------------------------------------------------------------------------


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
    # keep the embedded server alive while psql runs (this process holds a handle on it)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import subprocess

    sys.exit(subprocess.call([psql, dsn, *psql_args]))


# --- sources (ingest) -------------------------------------------------------------------------------------

# --- end sources ---

# --- goals, budget (embed and match) -----------------------------------------------------------------------

# --- end goals ---

# --- demo (decide and push) --------------------------------------------------------------------------------

# --- end demo ---

# --- status and admin parity (monitoring) ------------------------------------------------------------------

# --- end status ---

# --- backup, restore, chaos (operations) -------------------------------------------------------------------

# --- end operations ---


if __name__ == "__main__":  # pragma: no cover
    main()
