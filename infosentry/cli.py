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
            {"key": name, "value": rt.hot[name], "source": "table" if name in overrides else "default", "help": k.help}
            for name, k in hotconfig.KEYS.items()
            if key is None or name == key.upper()
        ]

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
    row = run(
        with_rt(
            settings_of(ctx), lambda rt: accounts.create_user(rt.pool, email, is_admin=admin, display_name=display_name)
        )
    )
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
        await accounts.insert_token(
            rt.pool,
            user_id=u["id"],
            token_hash=auth.hash_token(value),
            prefix=value[:10],
            scopes=granted,
            name=name,
            expires_at=expires,
        )
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


@main.group()
def source() -> None:
    """Sources: add (with feed discovery), list, OPML, refresh, hot-list catalog."""


async def _subscriber(rt: Runtime, email: str | None) -> int:
    """The user a command acts for: --email, else the first admin."""
    from infosentry.store import sources as sources_store

    if email:
        return int((await accounts.user_by_email(rt.pool, email))["id"])
    admin_id = await sources_store.first_admin_id(rt.pool)
    if admin_id is None:
        raise Invalid("no admin user yet: create one with `infosentry user create --email E --admin` or pass --email")
    return int(admin_id)


def _echo_report(report: dict[str, list[dict[str, Any]]], as_json: bool) -> None:
    if as_json:
        echo_json(report)
        return
    click.echo(f"added {len(report['added'])}, skipped {len(report['skipped'])}, invalid {len(report['invalid'])}")
    for entry in report["invalid"]:
        click.echo(f"  invalid: {entry.get('url') or '-'}: {entry['reason']}")


@source.command("add")
@click.argument("url")
@click.option(
    "--type",
    "kind",
    type=click.Choice(["rss", "site", "hotlist"]),
    default=None,
    help="Default: rss, with feed discovery when URL is a web page.",
)
@click.option("--interval", type=click.IntRange(60, 86400), default=None, help="Seconds between fetches.")
@click.option("--name", default=None)
@click.option("--config", "config_json", default=None, help="JSON object: site selectors, hot-list params, headers.")
@click.option("--email", default=None, help="Subscriber (default: the first admin).")
@click.option("--no-discover", is_flag=True, help="Take URL as the feed URL without looking at it.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def source_add(
    ctx: click.Context,
    url: str,
    kind: str | None,
    interval: int | None,
    name: str | None,
    config_json: str | None,
    email: str | None,
    no_discover: bool,
    as_json: bool,
) -> None:
    """Add a source and subscribe to it; a web page URL is replaced by the feed it advertises."""
    from infosentry import ingest
    from infosentry.fetch import FetchError

    try:
        config = json.loads(config_json) if config_json else None
    except ValueError as exc:
        raise Invalid(f"--config is not valid JSON: {exc}") from None

    async def body(rt: Runtime) -> tuple[dict[str, Any], bool]:
        user_id = await _subscriber(rt, email)
        feed_url, feed_type = url, kind
        if kind in (None, "rss") and not no_discover:
            ingest.validate_source(type="rss", url=url)  # a clear error before any network I/O
            try:
                feed_type, feed_url = await ingest.discover(rt, url)
                if feed_url != url:
                    click.echo(f"discovered feed {feed_url}", err=True)
            except FetchError as exc:
                if exc.kind == "parse":
                    raise Invalid(str(exc)) from None
                click.echo(f"warning: could not look at {url} now ({exc}); adding it as an RSS feed", err=True)
                feed_type = "rss"
        spec = ingest.validate_source(type=feed_type, url=feed_url, name=name, interval=interval, config=config)
        row, created, subscribed = await ingest.add_source(rt.pool, user_id, spec)
        return dict(row), created or subscribed

    row, added = run(with_rt(settings_of(ctx), body))
    if as_json:
        echo_json(row)
        return
    what = "added" if added else "already subscribed"
    click.echo(f"source {row['id']} {what}: {row['type']} {row['url']} ({row['name']})")


@source.command("list")
@click.option("--email", default=None, help="Only the sources this user follows.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def source_list(ctx: click.Context, email: str | None, as_json: bool) -> None:
    """Every source with its health (infosentry_source_health)."""
    from infosentry.store import sources as sources_store

    async def body(rt: Runtime) -> list[dict[str, Any]]:
        user_id = int((await accounts.user_by_email(rt.pool, email))["id"]) if email else None
        return [dict(r) for r in await sources_store.health(rt.pool, user_id=user_id)]

    rows = run(with_rt(settings_of(ctx), body))
    if as_json:
        echo_json(rows)
        return
    echo_table(
        rows,
        [
            "id",
            "type",
            "enabled",
            "subscribers",
            "name",
            "url",
            "last_success_at",
            "next_fetch_at",
            "error_streak",
            "last_error_kind",
            "items_24h",
        ],
    )


@source.command("import-opml")
@click.argument("file", type=click.File("rb"))
@click.option("--email", default=None, help="Subscriber (default: the first admin).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def source_import_opml(ctx: click.Context, file: Any, email: str | None, as_json: bool) -> None:
    """Subscribe to every feed of an OPML file (nested folders are flattened; duplicates are skipped)."""
    from infosentry import ingest

    data = file.read(10 * 1024 * 1024 + 1)
    if len(data) > 10 * 1024 * 1024:
        raise Invalid("OPML file larger than 10 MiB")

    async def body(rt: Runtime) -> dict[str, list[dict[str, Any]]]:
        return await ingest.import_opml(rt.pool, await _subscriber(rt, email), data)

    _echo_report(run(with_rt(settings_of(ctx), body)), as_json)


@source.command("export-opml")
@click.option("--email", default=None, help="Whose subscriptions (default: the first admin).")
@click.pass_context
def source_export_opml(ctx: click.Context, email: str | None) -> None:
    """Print the subscriptions as OPML."""
    from infosentry import ingest

    async def body(rt: Runtime) -> str:
        return await ingest.export_opml(rt.pool, await _subscriber(rt, email))

    click.echo(run(with_rt(settings_of(ctx), body)), nl=False)


@source.command("refresh")
@click.argument("source_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def source_refresh(ctx: click.Context, source_id: int, as_json: bool) -> None:
    """Fetch one source now and print the result (exit 1 when the fetch failed)."""
    from infosentry import ingest

    result = run(with_rt(settings_of(ctx), lambda rt: ingest.refresh_source(rt, source_id)))
    if as_json:
        echo_json(result)
    elif result["status"] == "error":
        click.echo(f"source {source_id}: error ({result.get('error_kind')}): {result.get('error')}")
    else:
        click.echo(
            f"source {source_id}: {result['status']} (HTTP {result.get('http_status')}), "
            f"{result['fetched']} fetched, {result['new']} new, {result['duplicate']} duplicate, "
            f"{result['duration_ms']} ms; next fetch {_cell(result.get('next_fetch_at'))} UTC"
        )
    if result["status"] == "error":
        sys.exit(1)


@source.command("catalog")
@click.option("--json", "as_json", is_flag=True)
def source_catalog(as_json: bool) -> None:
    """The bundled catalog of public hot lists (newsnow ids)."""
    from infosentry import ingest

    rows = ingest.catalog()
    if as_json:
        echo_json(rows)
    else:
        echo_table(rows, ["id", "name", "title", "interval", "home"])


@source.command("import-catalog")
@click.option("--base-url", required=True, help="A newsnow-style server, e.g. https://newsnow.busiyi.world")
@click.option("--email", default=None, help="Subscriber (default: the first admin).")
@click.option("--enable", is_flag=True, help="Enable the subscriptions (default: added disabled).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def source_import_catalog(ctx: click.Context, base_url: str, email: str | None, enable: bool, as_json: bool) -> None:
    """Add every catalog hot list on BASE_URL; disabled unless --enable (they need the internet)."""
    from infosentry import ingest

    async def body(rt: Runtime) -> dict[str, list[dict[str, Any]]]:
        return await ingest.import_catalog(rt.pool, await _subscriber(rt, email), base_url, enabled=enable)

    _echo_report(run(with_rt(settings_of(ctx), body)), as_json)


# --- end sources ---

# --- goals, budget (embed and match) -----------------------------------------------------------------------


@main.group()
def goal() -> None:
    """Goals: add, list."""


@goal.command("add")
@click.option("--email", default=None, help="Owner (default: the first admin).")
@click.option("--name", required=True)
@click.option("--description", required=True, help="What you want to hear about, in your own words.")
@click.option("--term", "terms", multiple=True, help="Priority term (repeat).")
@click.option("--negative", "negatives", multiple=True, help="Negative term: a hit is never pushed (repeat).")
@click.option(
    "--mode",
    type=click.Choice(["soft", "strict"], case_sensitive=False),
    default="soft",
    show_default=True,
    help="strict: without a priority-term hit an item is never an instant alert.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def goal_add(
    ctx: click.Context,
    email: str | None,
    name: str,
    description: str,
    terms: tuple[str, ...],
    negatives: tuple[str, ...],
    mode: str,
    as_json: bool,
) -> None:
    """Add a goal; it is embedded and scored against the last 72 h of items by the embed job."""
    from infosentry.api import goals as goals_api

    fields = goals_api.validate(
        {
            "name": name,
            "description": description,
            "priority_terms": list(terms),
            "negative_terms": list(negatives),
            "priority_mode": mode.upper(),
        },
        creating=True,
    )

    async def body(rt: Runtime) -> dict[str, Any]:
        user_id = await _subscriber(rt, email)
        user_row = await rt.pool.fetchrow("SELECT timezone FROM users WHERE id = $1", user_id)
        row = await goals_api.create(rt, user_id, user_row["timezone"], fields)
        async with jobs.open_queue(rt.dsn, max_size=2) as qapp:
            await jobs.nudge(qapp, "embed_pending")
        return dict(row)

    row = run(with_rt(settings_of(ctx), body))
    if as_json:
        echo_json(row)
        return
    click.echo(f"goal {row['id']} added: {row['name']} ({row['priority_mode']}, {row['email']})")


@goal.command("list")
@click.option("--email", default=None, help="Only this user's goals (default: every user's).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def goal_list(ctx: click.Context, email: str | None, as_json: bool) -> None:
    """Goals with their state (embedded, backfilled) and counts of matches and pushes."""
    from infosentry.store import goals as goals_store

    async def body(rt: Runtime) -> list[dict[str, Any]]:
        if email:
            users = [int((await accounts.user_by_email(rt.pool, email))["id"])]
        else:
            users = [r["id"] for r in await rt.pool.fetch("SELECT id FROM users ORDER BY id")]
        rows: list[dict[str, Any]] = []
        for user_id in users:
            rows += [dict(r) for r in await goals_store.list_goals(rt.pool, user_id, limit=1000)]
        return rows

    rows = run(with_rt(settings_of(ctx), body))
    if as_json:
        echo_json(rows)
        return
    echo_table(
        rows,
        [
            "id",
            "email",
            "status",
            "priority_mode",
            "name",
            "priority_terms",
            "embedded",
            "backfilled",
            "match_count",
            "pushed_count",
        ],
    )


@main.command("budget")
@click.option("--reset", "do_reset", is_flag=True, help="Close today's breaker (caps count from now on).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def budget_cmd(ctx: click.Context, do_reset: bool, as_json: bool) -> None:
    """Today's embedding and LLM spend, caps and breaker state (live)."""
    from infosentry import budget

    async def body(rt: Runtime) -> dict[str, Any]:
        if do_reset:
            await budget.reset(rt, f"cli:{os.environ.get('USER', 'unknown')}")
        return await budget.status(rt)

    st = run(with_rt(settings_of(ctx), body))
    if as_json:
        echo_json(st)
        return
    state = f"OPEN ({st['reason']})" if st["breaker_open"] else "closed"
    click.echo(f"budget day   {st['day']} ({st['tz']})")
    click.echo(f"spent        ${st['usd_total']:.6f} of ${st['cap']:.2f} (remaining ${st['remaining_usd']:.6f})")
    click.echo(
        f"embeddings   {st['embed_requests']} requests, {st['embed_tokens']} tokens, ${st['embed_usd']:.6f}"
        f"{'' if st['embedding_enabled'] else '  [EMBEDDING_ENABLED=false]'}"
    )
    click.echo(
        f"LLM judge    {st['llm_calls']} of {st['judge_cap']} calls, {st['llm_prompt_tokens']} + "
        f"{st['llm_completion_tokens']} tokens, ${st['llm_usd']:.6f}"
        f"{'' if st['llm_enabled'] else '  [LLM_ENABLED=false]'}"
    )
    click.echo(f"breaker      {state}")


# --- end goals ---

# --- demo (decide and push) --------------------------------------------------------------------------------


@main.command("demo")
@click.option("--no-fast-forward", is_flag=True, help="Do not fire the next batch window and digest early.")
@click.option("--timeout", default=50.0, show_default=True, help="Seconds to wait for the pipeline to settle.")
@click.pass_context
def demo_cmd(ctx: click.Context, no_fast_forward: bool, timeout: float) -> None:
    """The whole pipeline offline on bundled sample feeds: embedded Postgres, local embedder, emails as .eml
    files in <data dir>/demo-mail/. Prints what was pushed, in which tier and why. Safe to run again."""
    from infosentry import demo

    if not ctx.obj.get("debug"):
        logging.getLogger().setLevel(logging.WARNING)  # the demo's own lines, not the workers' log
    result = run(demo.run(settings_of(ctx), say=click.echo, fast_forward=not no_fast_forward, timeout=timeout))
    demo.render(result, click.echo)


# --- end demo ---

# --- status and admin parity (monitoring) ------------------------------------------------------------------


def _summary(name: str, comp: dict[str, Any]) -> str:
    """One line per component for `infosentry status`."""
    if name == "database":
        return f"latency {comp['latency_ms']} ms" if "latency_ms" in comp else f"unreachable: {comp.get('error')}"
    if name == "queues":
        return "; ".join(
            f"{q['queue']} todo {q['todo']} doing {q['doing']} failed {q['failed']}"
            + (f" stalled {q['stalled']}" if q["stalled"] else "")
            + (f" oldest {q['oldest_todo_age_s']}s" if q["todo"] else "")
            for q in comp["queues"]
        )
    if name == "workers":
        missing = comp["queues_without_worker"]
        return f"{comp['live']} live, {comp['stale']} stale" + (
            f"; no worker for {', '.join(missing)}" if missing else ""
        )
    if name == "budget":
        state = "breaker OPEN" if comp.get("breaker_open") else "breaker closed"
        return (
            f"{comp.get('day')}: ${comp.get('usd_total')} of ${comp.get('cap')}, "
            f"{comp.get('llm_calls')}/{comp.get('judge_cap')} judge calls, {state}"
        )
    if name == "sources":
        return f"{comp['failing_count']} failing"
    if name == "smtp":
        return f"{comp['consecutive_failures']} consecutive failures; outbox pending {comp['outbox']['pending']}"
    if name == "llm":
        return f"last hour: {comp['calls']} calls, {comp['rate_limited']} 429, {comp['server_errors']} 5xx"
    return ""


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Health of every component and the active alerts; exit 0 ok, 1 warning, 2 critical."""
    from infosentry import health

    try:
        report = run(with_rt(settings_of(ctx), health.report))
    except (OSError, InfosentryError) as exc:  # no database at all: that is the critical answer
        report = {
            "status": "critical",
            "checked_at": datetime.now(UTC),
            "alerts": [],
            "components": {"database": {"status": "critical", "error": str(exc)}},
        }
    if as_json:
        echo_json(report)
    else:
        click.echo(f"status: {report['status']}")
        rows = [
            {"component": n, "status": c["status"], "detail": _summary(n, c)} for n, c in report["components"].items()
        ]
        _echo_wide(rows, ["component", "status", "detail"])
        if report["alerts"]:
            click.echo("")
            _echo_wide(report["alerts"], ["severity", "alert", "subject", "since", "detail"])
    sys.exit(health.exit_code(report))


def _echo_wide(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """echo_table without truncating the last column (details are the point)."""
    cells = [[_cell(r.get(c)) if c != columns[-1] else str(r.get(c) or "-") for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


@main.command("alerts")
@click.option("--history", is_flag=True, help="Recent alert episodes (open and closed) instead of active alerts.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def alerts_cmd(ctx: click.Context, history: bool, limit: int, as_json: bool) -> None:
    """Active alerts (CONTRACT §7), most severe first."""
    from infosentry import alerts as alerts_mod
    from infosentry.store import monitoring

    async def body(rt: Runtime) -> list[dict[str, Any]]:
        if history:
            return await monitoring.episodes(rt.pool, limit=limit)
        return await alerts_mod.active(rt)

    rows = run(with_rt(settings_of(ctx), body))
    if as_json:
        echo_json(rows)
    elif history:
        echo_table(rows, ["id", "severity", "alert", "subject", "started_at", "ended_at", "notified_at", "detail"])
    elif not rows:
        click.echo("no active alerts")
    else:
        _echo_wide(rows, ["severity", "alert", "subject", "since", "detail"])


@main.command("workers")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def workers_cmd(ctx: click.Context, as_json: bool) -> None:
    """Every process's heartbeat (role, queues, last seen); stale after 60 s."""
    from infosentry.store import monitoring

    rows = run(with_rt(settings_of(ctx), lambda rt: monitoring.workers(rt.pool)))
    if as_json:
        echo_json(rows)
    else:
        echo_table(rows, ["id", "role", "queues", "started_at", "last_seen_at", "age_s", "stale", "jobs_done"])


@main.command("queues")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def queues_cmd(ctx: click.Context, as_json: bool) -> None:
    """Jobs per queue: ready, scheduled, running, failed, stalled, oldest ready job."""
    from infosentry.store import monitoring

    rows = run(with_rt(settings_of(ctx), lambda rt: monitoring.queue_depth(rt.pool)))
    if as_json:
        echo_json(rows)
    else:
        echo_table(
            rows, ["queue", "todo", "scheduled", "doing", "failed", "failed_last_hour", "stalled", "oldest_todo_age_s"]
        )


@config.command("audit")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def config_audit_cmd(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Who changed which key, when, old -> new (newest first)."""
    from infosentry.store import monitoring

    rows = run(with_rt(settings_of(ctx), lambda rt: monitoring.config_audit(rt.pool, limit=limit)))
    if as_json:
        echo_json(rows)
    else:
        for r in rows:
            r["old_value"], r["new_value"] = json.dumps(r["old_value"]), json.dumps(r["new_value"])
        echo_table(rows, ["id", "changed_at", "changed_by", "key", "old_value", "new_value"])


@user.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def user_list(ctx: click.Context, as_json: bool) -> None:
    """Every user with role, goals and live tokens."""
    from infosentry.store import monitoring

    rows = run(with_rt(settings_of(ctx), lambda rt: monitoring.users(rt.pool)))
    if as_json:
        echo_json(rows)
    else:
        echo_table(rows, ["id", "email", "is_admin", "goals", "live_tokens", "created_at", "last_login_at"])


@token.command("list")
@click.option("--email", required=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def token_list(ctx: click.Context, email: str, as_json: bool) -> None:
    """A user's tokens (never the secret: the prefix only)."""

    async def body(rt: Runtime) -> list[dict[str, Any]]:
        u = await accounts.user_by_email(rt.pool, email)
        return [dict(r) for r in await accounts.list_tokens(rt.pool, u["id"])]

    rows = run(with_rt(settings_of(ctx), body))
    if as_json:
        echo_json(rows)
    else:
        echo_table(rows, ["id", "kind", "name", "prefix", "scopes", "created_at", "expires_at", "revoked_at"])


# --- end status ---

# --- backup, restore, chaos (operations) -------------------------------------------------------------------


def _progress(line: str) -> None:
    click.echo(line, err=True)


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
    from pathlib import Path

    from infosentry import backup

    target = Path(out_dir) if out_dir else None
    result = run(
        backup.backup(settings_of(ctx), target, keep_days=keep_days, progress=_quiet if as_json else _progress)
    )
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
    from pathlib import Path

    from infosentry import backup

    result = run(backup.restore(settings_of(ctx), Path(file), yes=yes, progress=_quiet if as_json else _progress))
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


def _quiet(_: str) -> None:
    pass


@main.group("chaos")
def chaos_cmd() -> None:
    """Fault drills: inject a fault, watch what degrades and what keeps working; `recover` undoes it."""


def _drill(ctx: click.Context, drill: str, as_json: bool, **options: Any) -> None:
    from infosentry import chaos

    report = run(chaos.run_drill(settings_of(ctx), drill, progress=_quiet if as_json else _progress, **options))
    if as_json:
        echo_json(report.as_dict())
    else:
        for line in report.lines():
            click.echo(line)
    sys.exit(0 if report.ok else 1)


_json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
_watch_option = click.option(
    "--watch",
    default=20.0,
    show_default=True,
    type=click.FloatRange(0, 3600),
    help="Seconds to observe the system after injecting the fault.",
)


@chaos_cmd.command("openai")
@_watch_option
@_json_option
@click.pass_context
def chaos_openai(ctx: click.Context, watch: float, as_json: bool) -> None:
    """A worker (embed, agent) whose OpenAI endpoint refuses: boundary items FALLBACK to BATCH."""
    _drill(ctx, "openai", as_json, watch=watch)


@chaos_cmd.command("smtp")
@_watch_option
@_json_option
@click.pass_context
def chaos_smtp(ctx: click.Context, watch: float, as_json: bool) -> None:
    """A worker (email) whose SMTP server refuses: the inbox keeps filling, emails wait and are retried."""
    _drill(ctx, "smtp", as_json, watch=watch)


@chaos_cmd.command("budget")
@_watch_option
@_json_option
@click.pass_context
def chaos_budget(ctx: click.Context, watch: float, as_json: bool) -> None:
    """Force the budget breaker open: no paid call, LLM decisions FALLBACK, embeddings pause."""
    _drill(ctx, "budget", as_json, watch=watch)


@chaos_cmd.command("db")
@click.option("--timeout", default=60.0, show_default=True, type=float, help="Seconds to wait for reconnects.")
@click.option(
    "--restart-command",
    default=None,
    help="Shell command restarting an external server ('sudo systemctl restart postgresql').",
)
@click.option("--api-url", default=None, help="Health URL to watch (default PUBLIC_URL/health).")
@_json_option
@click.pass_context
def chaos_db(
    ctx: click.Context, timeout: float, restart_command: str | None, api_url: str | None, as_json: bool
) -> None:
    """Restart the database (embedded: pg_ctl restart; external: cut connections or --restart-command)."""
    _drill(ctx, "db", as_json, timeout=timeout, restart_command=restart_command, api_url=api_url)


@chaos_cmd.command("worker")
@click.option("--seconds", default=10.0, show_default=True, type=click.FloatRange(1, 600), help="Job length.")
@click.option("--fast", is_flag=True, help="Declare the killed worker dead and run maintenance at once.")
@click.option("--timeout", default=150.0, show_default=True, type=float, help="Seconds to wait for the retry.")
@_json_option
@click.pass_context
def chaos_worker(ctx: click.Context, seconds: float, fast: bool, timeout: float, as_json: bool) -> None:
    """SIGKILL a worker mid-job: the job is retried by another worker, exactly once."""
    _drill(ctx, "worker", as_json, seconds=seconds, fast=fast, timeout=timeout)


@chaos_cmd.command("recover")
@click.option("--timeout", default=60.0, show_default=True, type=float, help="Seconds to watch the backlog drain.")
@_json_option
@click.pass_context
def chaos_recover(ctx: click.Context, timeout: float, as_json: bool) -> None:
    """Undo every injected fault, then watch the backlog drain."""
    _drill(ctx, "recover", as_json, timeout=timeout)


@chaos_cmd.command("status")
@_json_option
@click.pass_context
def chaos_status(ctx: click.Context, as_json: bool) -> None:
    """Injected faults and a health summary."""
    from infosentry import chaos

    summary = run(chaos.status(settings_of(ctx)))
    if as_json:
        echo_json(summary)
    else:
        for line in chaos.status_lines(summary):
            click.echo(line)


# --- end operations ---


if __name__ == "__main__":  # pragma: no cover
    main()
