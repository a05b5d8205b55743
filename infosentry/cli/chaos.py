"""Fault drills: chaos openai|smtp|budget|db|worker|recover|status (infosentry.ops.drills)."""

from __future__ import annotations

import sys
from typing import Any

import click

from infosentry.cli.base import echo_json, json_option, main, progress, quiet, run, settings_of


@main.group("chaos")
def chaos_cmd() -> None:
    """Fault drills: inject a fault, watch what degrades and what keeps working; `recover` undoes it."""


def _drill(ctx: click.Context, drill: str, as_json: bool, **options: Any) -> None:
    from infosentry.ops import drills

    report = run(drills.run_drill(settings_of(ctx), drill, progress=quiet if as_json else progress, **options))
    if as_json:
        echo_json(report.as_dict())
    else:
        for line in report.lines():
            click.echo(line)
    sys.exit(0 if report.ok else 1)


_watch_option = click.option(
    "--watch",
    default=20.0,
    show_default=True,
    type=click.FloatRange(0, 3600),
    help="Seconds to observe the system after injecting the fault.",
)


@chaos_cmd.command("openai")
@_watch_option
@json_option
@click.pass_context
def chaos_openai(ctx: click.Context, watch: float, as_json: bool) -> None:
    """A worker (embed, agent) whose OpenAI endpoint refuses: boundary items FALLBACK to BATCH."""
    _drill(ctx, "openai", as_json, watch=watch)


@chaos_cmd.command("smtp")
@_watch_option
@json_option
@click.pass_context
def chaos_smtp(ctx: click.Context, watch: float, as_json: bool) -> None:
    """A worker (email) whose SMTP server refuses: the inbox keeps filling, emails wait and are retried."""
    _drill(ctx, "smtp", as_json, watch=watch)


@chaos_cmd.command("budget")
@_watch_option
@json_option
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
@json_option
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
@json_option
@click.pass_context
def chaos_worker(ctx: click.Context, seconds: float, fast: bool, timeout: float, as_json: bool) -> None:
    """SIGKILL a worker mid-job: the job is retried by another worker, exactly once."""
    _drill(ctx, "worker", as_json, seconds=seconds, fast=fast, timeout=timeout)


@chaos_cmd.command("recover")
@click.option("--timeout", default=60.0, show_default=True, type=float, help="Seconds to watch the backlog drain.")
@json_option
@click.pass_context
def chaos_recover(ctx: click.Context, timeout: float, as_json: bool) -> None:
    """Undo every injected fault, then watch the backlog drain."""
    _drill(ctx, "recover", as_json, timeout=timeout)


@chaos_cmd.command("status")
@json_option
@click.pass_context
def chaos_status(ctx: click.Context, as_json: bool) -> None:
    """Injected faults and a health summary."""
    from infosentry.ops import drills

    summary = run(drills.status(settings_of(ctx)))
    if as_json:
        echo_json(summary)
    else:
        for line in drills.status_lines(summary):
            click.echo(line)
