"""Accounts: user create/list, token create/list/revoke."""

from __future__ import annotations

from typing import Any

import click

from infosentry.cli.base import echo_json, echo_table, json_option, main, run, settings_of, with_rt
from infosentry.domain import accounts, admin
from infosentry.runtime import Runtime


@main.group()
def user() -> None:
    """Accounts."""


@user.command("create")
@click.option("--email", required=True)
@click.option("--admin", "is_admin", is_flag=True, help="Give the user the admin role.")
@click.pass_context
def user_create(ctx: click.Context, email: str, is_admin: bool) -> None:
    """Create a user."""
    row = run(with_rt(settings_of(ctx), lambda rt: accounts.create_user(rt, email, is_admin=is_admin)))
    click.echo(f"user {row['id']} {row['email']}" + (" (admin)" if row["is_admin"] else ""))


@user.command("list")
@json_option
@click.pass_context
def user_list(ctx: click.Context, as_json: bool) -> None:
    """Every user with role, goals and live tokens."""
    rows = run(with_rt(settings_of(ctx), admin.users))
    if as_json:
        echo_json(rows)
    else:
        echo_table(rows, ["id", "email", "is_admin", "goals", "live_tokens", "created_at", "last_login_at"])


@main.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option("--email", required=True)
@click.option("--scope", "scopes", multiple=True, help="goals, sources, notifications, agent, admin (+ :read/:write)")
@click.pass_context
def token_create(ctx: click.Context, email: str, scopes: tuple[str, ...]) -> None:
    """Print a new token (alone, once); without --scope it has every scope the user may have."""
    new = run(with_rt(settings_of(ctx), lambda rt: accounts.create_token_for(rt, email, list(scopes))))
    click.echo(new.token)


@token.command("list")
@click.option("--email", required=True)
@json_option
@click.pass_context
def token_list(ctx: click.Context, email: str, as_json: bool) -> None:
    """A user's tokens (never the secret: the prefix only)."""

    async def body(rt: Runtime) -> list[dict[str, Any]]:
        return await accounts.tokens(rt, await accounts.actor_for(rt, email))

    rows = run(with_rt(settings_of(ctx), body))
    if as_json:
        echo_json(rows)
    else:
        echo_table(rows, ["id", "kind", "name", "prefix", "scopes", "created_at", "expires_at", "revoked_at"])


@token.command("revoke")
@click.argument("token_id", type=int)
@click.pass_context
def token_revoke(ctx: click.Context, token_id: int) -> None:
    """Revoke a token by id."""
    run(with_rt(settings_of(ctx), lambda rt: accounts.revoke_any_token(rt, token_id)))
    click.echo(f"token {token_id} revoked")
