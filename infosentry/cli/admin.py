"""Operator views and switches: config get/set/unset/audit, budget, status, alerts, workers, queues."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from infosentry import hotconfig
from infosentry.cli.base import echo_json, echo_table, json_option, main, operator, run, settings_of, with_rt
from infosentry.domain import admin
from infosentry.errors import InfosentryError, Invalid
from infosentry.runtime import Runtime


@main.group()
def config() -> None:
    """Read and hot-update switches and tunables."""


@config.command("get")
@click.argument("key", required=False)
@json_option
@click.pass_context
def config_get(ctx: click.Context, key: str | None, as_json: bool) -> None:
    """Show every key (or one): value and where it comes from (table, env or default)."""
    if key is not None and key.upper() not in hotconfig.KEYS:
        raise Invalid(f"unknown config key {key!r}")
    rows = [r for r in run(with_rt(settings_of(ctx), admin.config_entries)) if key is None or r["key"] == key.upper()]
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
    changed = run(with_rt(settings_of(ctx), lambda rt: admin.set_config(rt, {key: value}, who=operator())))
    for change in changed:
        click.echo(f"{change['key']} = {json.dumps(change['new'])}")


@config.command("unset")
@click.argument("keys", nargs=-1, required=True)
@click.pass_context
def config_unset(ctx: click.Context, keys: tuple[str, ...]) -> None:
    """Remove the table's value of KEYS: the environment's (or the built-in) default applies again."""
    names = [k.upper() for k in keys]
    removed = run(with_rt(settings_of(ctx), lambda rt: admin.reset_config(rt, names, who=operator())))
    for name in names:
        click.echo(f"{name}: {'back to its default' if name in removed else 'had no table value'}")


@config.command("audit")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@json_option
@click.pass_context
def config_audit(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Who changed which key, when, old -> new (newest first)."""
    rows = run(with_rt(settings_of(ctx), lambda rt: admin.config_audit(rt, limit=limit)))
    if as_json:
        echo_json(rows)
    else:
        for r in rows:
            r["old_value"], r["new_value"] = json.dumps(r["old_value"]), json.dumps(r["new_value"])
        echo_table(rows, ["id", "changed_at", "changed_by", "key", "old_value", "new_value"])


@main.command("budget")
@click.option("--reset", "do_reset", is_flag=True, help="Close today's breaker (caps count from now on).")
@json_option
@click.pass_context
def budget_cmd(ctx: click.Context, do_reset: bool, as_json: bool) -> None:
    """Today's embedding and LLM spend, caps and breaker state (live)."""

    async def act(rt: Runtime) -> dict[str, Any]:
        return await (admin.reset_budget(rt, who=operator()) if do_reset else admin.budget_status(rt))

    st = run(with_rt(settings_of(ctx), act))
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
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Health of every component and the active alerts; exit 0 ok, 1 warning, 2 critical."""
    try:
        report = run(with_rt(settings_of(ctx), admin.health_report))
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
        echo_table(rows, ["component", "status", "detail"], wide=True)
        if report["alerts"]:
            click.echo("")
            echo_table(report["alerts"], ["severity", "alert", "subject", "since", "detail"], wide=True)
    sys.exit(admin.exit_code(report))


@main.command("alerts")
@click.option("--history", is_flag=True, help="Recent alert episodes (open and closed) instead of active alerts.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@json_option
@click.pass_context
def alerts_cmd(ctx: click.Context, history: bool, limit: int, as_json: bool) -> None:
    """Active alerts (CONTRACT §7), most severe first."""

    async def act(rt: Runtime) -> list[dict[str, Any]]:
        return await (admin.alert_history(rt, limit=limit) if history else admin.active_alerts(rt))

    rows = run(with_rt(settings_of(ctx), act))
    if as_json:
        echo_json(rows)
    elif history:
        echo_table(rows, ["id", "severity", "alert", "subject", "started_at", "ended_at", "notified_at", "detail"])
    elif not rows:
        click.echo("no active alerts")
    else:
        echo_table(rows, ["severity", "alert", "subject", "since", "detail"], wide=True)


@main.command("workers")
@json_option
@click.pass_context
def workers_cmd(ctx: click.Context, as_json: bool) -> None:
    """Every process's heartbeat (role, queues, last seen); stale after 60 s."""
    rows = run(with_rt(settings_of(ctx), admin.workers))
    if as_json:
        echo_json(rows)
    else:
        echo_table(rows, ["id", "role", "queues", "started_at", "last_seen_at", "age_s", "stale", "jobs_done"])


@main.command("queues")
@json_option
@click.pass_context
def queues_cmd(ctx: click.Context, as_json: bool) -> None:
    """Jobs per queue: ready, scheduled, running, failed, stalled, oldest ready job."""
    rows = run(with_rt(settings_of(ctx), admin.queues))
    if as_json:
        echo_json(rows)
    else:
        columns = ["queue", "todo", "scheduled", "doing", "failed", "failed_last_hour", "stalled"]
        echo_table(rows, [*columns, "oldest_todo_age_s"])
