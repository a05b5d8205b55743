"""What every command shares: the `infosentry` group, one error line instead of a traceback, the settings, one
runtime per command, and one table printer.

Commands translate options to domain calls and results to lines; they hold no rules.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from infosentry import logs
from infosentry.api.http import dumps
from infosentry.errors import InfosentryError
from infosentry.runtime import Runtime, open_runtime
from infosentry.settings import Settings, load_settings

T = TypeVar("T")
log = logging.getLogger("infosentry.cli")


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


@click.group(cls=Cli)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """infosentry: watch sources, score items against your goals, push what matters."""
    settings = load_settings()
    logs.setup("DEBUG" if debug else settings.log_level, settings.log_format)
    ctx.obj = {"settings": settings, "debug": debug}


def settings_of(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def with_rt(settings: Settings, fn: Callable[[Runtime], Awaitable[T]], **kw: Any) -> T:
    async with open_runtime(settings, live_config=False, pool_size=4, **kw) as rt:
        return await fn(rt)


def operator() -> str:
    """Who an operator's change is audited as."""
    return f"cli:{os.environ.get('USER', 'unknown')}"


def echo_json(data: Any) -> None:
    click.echo(json.dumps(json.loads(dumps(data)), indent=2, ensure_ascii=False))


def echo_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, wide: bool = False) -> None:
    """A plain aligned table, good enough for a terminal and for grep; `wide` never cuts the last column (when
    details are the point)."""
    cells = [[cell(r.get(c), cut=not (wide and c == columns[-1])) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def cell(value: Any, *, cut: bool = True) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    text = str(value)
    return text if not cut or len(text) <= 60 else text[:57] + "..."


def progress(line: str) -> None:
    click.echo(line, err=True)


def quiet(_: str) -> None:
    pass


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
