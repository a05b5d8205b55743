"""Settings: display name, time zone, language (pages and emails), combined digest; API tokens (created with
scopes and shown once, revoked) and the signed-in sessions (revoke one, or sign out everywhere else).
Imports domain.accounts, auth (scope names), web.session, web.render.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from infosentry import auth
from infosentry.api.http import path_id
from infosentry.domain import accounts
from infosentry.errors import Invalid
from infosentry.web.goals import COMMON_ZONES
from infosentry.web.render import LANGS, Ctx, render
from infosentry.web.session import clear_session_cookie, form, page, redirect, safe_next

MESSAGES = {"saved": "settings.msg_saved", "revoked": "settings.msg_revoked", "ended": "settings.msg_ended"}


def _one(data: dict[str, Any], name: str) -> str:
    value = data.get(name, "")
    return (value[-1] if isinstance(value, list) else str(value)).strip()


async def _page(
    ctx: Ctx, *, status: int = 200, errors: dict[str, str] | None = None, new_token: Any = None
) -> web.Response:
    assert ctx.actor is not None
    key = MESSAGES.get(ctx.request.query.get("msg", ""))
    if key:
        ctx.flash.append(("ok", ctx.t(key)))
    profile = await accounts.profile(ctx.rt, ctx.actor)
    tokens = [t for t in await accounts.tokens(ctx.rt, ctx.actor) if t["kind"] == "api" and t["revoked_at"] is None]
    sessions = await accounts.sessions(ctx.rt, ctx.actor)
    resources = [r for r in auth.RESOURCES if r != "admin" or ctx.actor.is_admin]
    return render(
        ctx,
        "settings.html",
        status=status,
        profile=profile,
        tokens=tokens,
        sessions=sessions,
        resources=resources,
        zones=COMMON_ZONES,
        errors=errors or {},
        new_token=new_token,
    )


@page()
async def settings_page(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return await _page(ctx)


@page()
async def save_profile(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    data = await form(request)
    body = {
        "display_name": _one(data, "display_name"),
        "timezone": _one(data, "timezone") or ctx.actor.timezone,
        "language": _one(data, "language") or ctx.actor.language,
        "combined_digest": _one(data, "combined_digest") == "on",
    }
    try:
        await accounts.update_profile(ctx.rt, ctx.actor, body)
    except Invalid as exc:
        errors = {e["field"]: e["message"] for e in exc.errors}
        return await _page(ctx, status=422, errors=errors)
    return redirect("/settings?msg=saved")


@page()
async def set_language(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    """The header's language switch: the account's language (pages and emails)."""
    assert ctx.actor is not None
    data = await form(request)
    language = _one(data, "language")
    if language in LANGS:
        await accounts.update_profile(ctx.rt, ctx.actor, {"language": language})
    return redirect(safe_next(_one(data, "next"), "/goals"))


@page()
async def create_token(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    data = await form(request)
    scopes = data.get("scopes", [])
    body: dict[str, Any] = {
        "name": _one(data, "token_name"),
        "scopes": [str(s) for s in (scopes if isinstance(scopes, list) else [scopes])],
    }
    days = _one(data, "expires_in_days")
    if days:
        body["expires_in_days"] = int(days) if days.isdigit() and len(days) < 6 else -1
    if not body["scopes"]:
        return await _page(ctx, status=422, errors={"scopes": ctx.t("tokens.pick_scope")})
    try:
        new = await accounts.create_token(ctx.rt, ctx.actor, body)
    except Invalid as exc:
        errors = {e["field"]: e["message"] for e in exc.errors} or {"scopes": exc.detail}
        return await _page(ctx, status=422, errors=errors)
    # shown once: this response is the only place the token ever appears (no-store keeps it out of caches)
    return await _page(ctx, new_token=new)


@page()
async def revoke_token(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    await accounts.revoke_token(ctx.rt, ctx.actor, path_id(request))
    return redirect("/settings?msg=revoked#tokens")


@page()
async def revoke_session(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    session_id = path_id(request)
    await accounts.revoke_session(ctx.rt, ctx.actor, session_id)
    if session_id == ctx.actor.token_id:
        response = redirect("/login")
        clear_session_cookie(response)
        return response
    return redirect("/settings?msg=ended#sessions")


ROUTES = [
    web.get("/settings", settings_page),
    web.post("/settings", save_profile),
    web.post("/settings/language", set_language),
    web.post("/settings/tokens", create_token),
    web.post("/settings/tokens/{id}/revoke", revoke_token),
    web.post("/settings/sessions/{id}/revoke", revoke_session),
]
