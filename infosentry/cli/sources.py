"""Sources: add (with feed discovery), list, OPML in and out, refresh, the hot-list catalog."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import click

from infosentry.cli.base import cell, echo_json, echo_table, json_option, main, run, settings_of, with_rt
from infosentry.domain import accounts, admin, sources
from infosentry.domain.sources import ImportReport
from infosentry.errors import Invalid
from infosentry.runtime import Runtime

MAX_OPML_FILE = 10 * 1024 * 1024
email_option = click.option("--email", default=None, help="Whose subscriptions (default: the first admin).")


@main.group()
def source() -> None:
    """Sources: add (with feed discovery), list, OPML, refresh, hot-list catalog."""


def _echo_report(report: ImportReport, as_json: bool) -> None:
    if as_json:
        echo_json(report.as_dict())
        return
    click.echo(f"added {len(report.added)}, skipped {len(report.skipped)}, invalid {len(report.invalid)}")
    for entry in report.invalid:
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
@email_option
@click.option("--no-discover", is_flag=True, help="Take URL as the feed URL without looking at it.")
@json_option
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
    try:
        config = json.loads(config_json) if config_json else None
    except ValueError as exc:
        raise Invalid(f"--config is not valid JSON: {exc}") from None
    body = {"url": url, "type": kind, "name": name, "fetch_interval_sec": interval, "config": config}

    async def act(rt: Runtime) -> sources.Followed:
        actor = await accounts.actor_for(rt, email)
        given = {k: v for k, v in body.items() if v is not None}
        return await sources.follow(rt, actor, given, discover_feed=not no_discover)

    followed = run(with_rt(settings_of(ctx), act))
    row = followed.source
    if followed.note:
        click.echo(followed.note, err=True)
    if as_json:
        echo_json(row)
        return
    what = "added" if followed.created or followed.subscribed else "already subscribed"
    click.echo(f"source {row['id']} {what}: {row['type']} {row['url']} ({row['name']})")


@source.command("list")
@click.option("--email", default=None, help="Only the sources this user follows.")
@json_option
@click.pass_context
def source_list(ctx: click.Context, email: str | None, as_json: bool) -> None:
    """Every source with its health (infosentry_source_health)."""
    rows = run(with_rt(settings_of(ctx), lambda rt: admin.source_health(rt, email=email)))
    if as_json:
        echo_json(rows)
        return
    columns = ["id", "type", "enabled", "subscribers", "name", "url", "last_success_at", "next_fetch_at"]
    echo_table(rows, [*columns, "error_streak", "last_error_kind", "items_24h"])


@source.command("import-opml")
@click.argument("file", type=click.File("rb"))
@email_option
@json_option
@click.pass_context
def source_import_opml(ctx: click.Context, file: Any, email: str | None, as_json: bool) -> None:
    """Subscribe to every feed of an OPML file (nested folders are flattened; duplicates are skipped)."""
    data = file.read(MAX_OPML_FILE + 1)
    if len(data) > MAX_OPML_FILE:
        raise Invalid("OPML file larger than 10 MiB")

    async def act(rt: Runtime) -> ImportReport:
        return await sources.import_opml(rt, await accounts.actor_for(rt, email), data)

    _echo_report(run(with_rt(settings_of(ctx), act)), as_json)


@source.command("export-opml")
@email_option
@click.pass_context
def source_export_opml(ctx: click.Context, email: str | None) -> None:
    """Print the subscriptions as OPML."""

    async def act(rt: Runtime) -> str:
        return await sources.export_opml(rt, await accounts.actor_for(rt, email))

    click.echo(run(with_rt(settings_of(ctx), act)), nl=False)


@source.command("refresh")
@click.argument("source_id", type=int)
@json_option
@click.pass_context
def source_refresh(ctx: click.Context, source_id: int, as_json: bool) -> None:
    """Fetch one source now and print the result (exit 1 when the fetch failed)."""
    result = run(with_rt(settings_of(ctx), lambda rt: admin.refresh_source(rt, source_id)))
    if as_json:
        echo_json(dataclasses.asdict(result) | {"status": result.status})
    elif not result.ok:
        click.echo(f"source {source_id}: error ({result.error_kind}): {result.error}")
    else:
        click.echo(
            f"source {source_id}: {result.status} (HTTP {result.http_status}), "
            f"{result.fetched} fetched, {result.new} new, {result.duplicate} duplicate, "
            f"{result.duration_ms} ms; next fetch {cell(result.next_fetch_at)} UTC"
        )
    if not result.ok:
        sys.exit(1)


@source.command("catalog")
@json_option
def source_catalog(as_json: bool) -> None:
    """The bundled catalog of public hot lists (newsnow ids)."""
    rows = sources.catalog()
    if as_json:
        echo_json(rows)
    else:
        echo_table(rows, ["id", "name", "title", "interval", "home"])


@source.command("import-catalog")
@click.option("--base-url", required=True, help="A newsnow-style server, e.g. https://newsnow.busiyi.world")
@email_option
@click.option("--enable", is_flag=True, help="Enable the subscriptions (default: added disabled).")
@json_option
@click.pass_context
def source_import_catalog(ctx: click.Context, base_url: str, email: str | None, enable: bool, as_json: bool) -> None:
    """Add every catalog hot list on BASE_URL; disabled unless --enable (they need the internet)."""

    async def act(rt: Runtime) -> ImportReport:
        return await sources.import_catalog(rt, await accounts.actor_for(rt, email), base_url, enabled=enable)

    _echo_report(run(with_rt(settings_of(ctx), act)), as_json)
