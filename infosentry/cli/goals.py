"""Goals and what they found: goal add/list/edit/pause/resume/delete/matches, the inbox, and feedback."""

from __future__ import annotations

from typing import Any

import click

from infosentry.cli.base import echo_json, echo_table, json_option, main, run, settings_of, with_rt
from infosentry.domain import accounts, admin, goals, inbox
from infosentry.runtime import Runtime

email_option = click.option("--email", default=None, help="The owner (default: the first admin).")
GOAL_COLUMNS = ["id", "email", "status", "priority_mode", "name", "priority_terms", "embedded", "backfilled"]


@main.group()
def goal() -> None:
    """Goals: add, list, edit, pause, resume, delete, matches."""


def _goal_body(
    name: str | None,
    description: str | None,
    terms: tuple[str, ...],
    negatives: tuple[str, ...],
    mode: str | None,
    windows: tuple[str, ...],
    digest_time: str | None,
    timezone: str | None,
) -> dict[str, Any]:
    """Only what was given: an edit changes nothing else."""
    body: dict[str, Any] = {
        "name": name,
        "description": description,
        "priority_mode": mode.upper() if mode else None,
        "digest_time": digest_time,
        "timezone": timezone,
    }
    body = {k: v for k, v in body.items() if v is not None}
    if terms:
        body["priority_terms"] = [t for t in terms if t != "-"]  # `--term -` clears the list
    if negatives:
        body["negative_terms"] = [t for t in negatives if t != "-"]
    if windows:
        body["batch_windows"] = list(windows)
    return body


def _goal_options(create: bool) -> Any:
    def wrap(fn: Any) -> Any:
        for option in reversed(
            [
                click.option("--name", default=None, help="Default: derived from the description." if create else ""),
                click.option(
                    "--description",
                    required=create,
                    default=None,
                    help="What you want to hear about, in your own words.",
                ),
                click.option("--term", "terms", multiple=True, help="Priority term (repeat; `-` clears)."),
                click.option("--negative", "negatives", multiple=True, help="Never push an item with it (repeat)."),
                click.option(
                    "--mode",
                    type=click.Choice(["soft", "strict"], case_sensitive=False),
                    default=None,
                    help="strict: without a priority-term hit an item is never an instant alert.",
                ),
                click.option("--window", "windows", multiple=True, help="Batch window HH:MM (repeat, at most 3)."),
                click.option("--digest-time", default=None, help="Daily digest HH:MM."),
                click.option("--timezone", default=None, help="IANA time zone of the windows."),
            ]
        ):
            fn = option(fn)
        return fn

    return wrap


def _echo_goal(row: dict[str, Any], as_json: bool, verb: str) -> None:
    if as_json:
        echo_json(row)
    else:
        click.echo(f"goal {row['id']} {verb}: {row['name']} ({row['status']}, {row['priority_mode']}, {row['email']})")


@goal.command("add")
@email_option
@_goal_options(create=True)
@json_option
@click.pass_context
def goal_add(ctx: click.Context, email: str | None, as_json: bool, **options: Any) -> None:
    """Add a goal; it is embedded and scored against the last 72 h of items by the embed job."""
    body = _goal_body(**options)

    async def act(rt: Runtime) -> dict[str, Any]:
        return await goals.create(rt, await accounts.actor_for(rt, email), body)

    _echo_goal(run(with_rt(settings_of(ctx), act)), as_json, "added")


@goal.command("edit")
@click.argument("goal_id", type=int)
@email_option
@_goal_options(create=False)
@json_option
@click.pass_context
def goal_edit(ctx: click.Context, goal_id: int, email: str | None, as_json: bool, **options: Any) -> None:
    """Change a goal (only the options given); a new text re-embeds it and re-scores the last 72 h."""
    body = _goal_body(**options)

    async def act(rt: Runtime) -> dict[str, Any]:
        return await goals.update(rt, await accounts.actor_for(rt, email), goal_id, body)

    _echo_goal(run(with_rt(settings_of(ctx), act)), as_json, "changed")


@goal.command("pause")
@click.argument("goal_id", type=int)
@email_option
@json_option
@click.pass_context
def goal_pause(ctx: click.Context, goal_id: int, email: str | None, as_json: bool) -> None:
    """Stop scoring and pushing for a goal (pending pushes are cancelled)."""

    async def act(rt: Runtime) -> dict[str, Any]:
        return await goals.pause(rt, (await accounts.actor_for(rt, email)).user_id, goal_id)

    _echo_goal(run(with_rt(settings_of(ctx), act)), as_json, "paused")


@goal.command("resume")
@click.argument("goal_id", type=int)
@email_option
@json_option
@click.pass_context
def goal_resume(ctx: click.Context, goal_id: int, email: str | None, as_json: bool) -> None:
    """Start again; the last 72 h are scored for the goal (never as instant alerts)."""

    async def act(rt: Runtime) -> dict[str, Any]:
        return await goals.resume(rt, (await accounts.actor_for(rt, email)).user_id, goal_id)

    _echo_goal(run(with_rt(settings_of(ctx), act)), as_json, "resumed")


@goal.command("delete")
@click.argument("goal_id", type=int)
@email_option
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.pass_context
def goal_delete(ctx: click.Context, goal_id: int, email: str | None, yes: bool) -> None:
    """Delete a goal with its matches, decisions and inbox entries."""
    if not yes:
        click.confirm(f"Delete goal {goal_id} with its matches, decisions and inbox entries?", abort=True)

    async def act(rt: Runtime) -> None:
        await goals.delete(rt, await accounts.actor_for(rt, email), goal_id)

    run(with_rt(settings_of(ctx), act))
    click.echo(f"goal {goal_id} deleted")


@goal.command("list")
@click.option("--email", default=None, help="Only this user's goals (default: every user's).")
@json_option
@click.pass_context
def goal_list(ctx: click.Context, email: str | None, as_json: bool) -> None:
    """Goals with their state (embedded, backfilled) and counts of matches and pushes."""

    async def act(rt: Runtime) -> list[dict[str, Any]]:
        owners = [email] if email else [u["email"] for u in await admin.users(rt)]
        rows: list[dict[str, Any]] = []
        for owner in owners:
            rows += await goals.list_goals(rt, await accounts.actor_for(rt, owner), limit=1000)
        return rows

    rows = run(with_rt(settings_of(ctx), act))
    if as_json:
        echo_json(rows)
    else:
        echo_table(rows, [*GOAL_COLUMNS, "match_count", "pushed_count"])


@goal.command("matches")
@click.argument("goal_id", type=int)
@email_option
@click.option("--min-score", default=0.0, type=click.FloatRange(0, 1), show_default=True)
@click.option("--limit", default=20, type=click.IntRange(1, 1000), show_default=True)
@json_option
@click.pass_context
def goal_matches(
    ctx: click.Context, goal_id: int, email: str | None, min_score: float, limit: int, as_json: bool
) -> None:
    """The goal's scored items, best first, with the decision and the reasons."""

    async def act(rt: Runtime) -> list[dict[str, Any]]:
        actor = await accounts.actor_for(rt, email)
        return await goals.matches(rt, actor, goal_id, min_score=min_score, limit=limit)

    rows = run(with_rt(settings_of(ctx), act))
    if as_json:
        echo_json(rows)
        return
    flat = [
        {
            "item": m["item"]["id"],
            "score": round(m["score"], 3),
            "tier": (m["decision"] or {}).get("tier"),
            "title": m["item"]["title"],
            "reasons": "; ".join(m["reasons"]),
        }
        for m in rows
    ]
    echo_table(flat, ["item", "score", "tier", "title", "reasons"], wide=True)


@main.command("inbox")
@email_option
@click.option("--goal", "goal_id", type=int, default=None, help="Only this goal.")
@click.option("--unread", is_flag=True, help="Only unread items.")
@click.option("--limit", default=20, type=click.IntRange(1, 200), show_default=True)
@click.option("--read", "mark_read", type=int, multiple=True, help="Mark this inbox entry read (repeat).")
@json_option
@click.pass_context
def inbox_cmd(
    ctx: click.Context,
    email: str | None,
    goal_id: int | None,
    unread: bool,
    limit: int,
    mark_read: tuple[int, ...],
    as_json: bool,
) -> None:
    """Pushed items, newest first (the in-app inbox); --read ID marks entries read first."""

    async def act(rt: Runtime) -> list[dict[str, Any]]:
        actor = await accounts.actor_for(rt, email)
        for notification_id in mark_read:
            await inbox.mark_read(rt, actor, notification_id)
        status = "unread" if unread else None
        return await inbox.notifications(rt, actor, goal_id=goal_id, status=status, limit=limit)

    rows = run(with_rt(settings_of(ctx), act))
    if as_json:
        echo_json(rows)
        return
    flat = [
        {
            "id": n["id"],
            "goal": n["goal_name"],
            "tier": n["tier"],
            "read": n["read_at"] is not None,
            "item": n["item"]["id"],
            "title": n["item"]["title"],
        }
        for n in rows
    ]
    echo_table(flat, ["id", "goal", "tier", "read", "item", "title"], wide=True)


@main.command("feedback")
@click.argument("item_id", type=int)
@click.option("--goal", "goal_id", type=int, required=True)
@click.argument("verdict", type=click.Choice(["like", "dislike", "undo"]), required=False)
@click.option("--block-source", is_flag=True, help="Stop the item's source for this goal at once.")
@email_option
@json_option
@click.pass_context
def feedback_cmd(
    ctx: click.Context,
    item_id: int,
    goal_id: int,
    verdict: str | None,
    block_source: bool,
    email: str | None,
    as_json: bool,
) -> None:
    """Like or dislike ITEM_ID for a goal (later scores of similar items change), undo it, or block its source."""

    async def act(rt: Runtime) -> dict[str, Any]:
        actor = await accounts.actor_for(rt, email)
        if verdict == "undo":
            await inbox.undo_feedback(rt, actor, item_id, goal_id)
            return {"goal_id": goal_id, "item_id": item_id, "feedback": None}
        body: dict[str, Any] = {"goal_id": goal_id, "block_source": block_source}
        if verdict:
            body["feedback"] = verdict
        result = await inbox.give_feedback(rt, actor, item_id, body)
        return dict(result.__dict__)

    result = run(with_rt(settings_of(ctx), act))
    if as_json:
        echo_json(result)
        return
    said = result["feedback"] or "no verdict"
    blocked = f"; source {result['blocked_source']['source_name']} blocked" if result.get("blocked_source") else ""
    click.echo(f"item {item_id}, goal {goal_id}: {said}{blocked}")
