"""Admin pages (admins only; everyone else gets 403): the hot switches and thresholds with their help text,
their change history, and the live state: budget (with reset), component health with the active alerts,
queues and workers. Imports domain.admin, web.session, web.render.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from infosentry.domain import admin
from infosentry.errors import Invalid
from infosentry.web.render import Ctx, render
from infosentry.web.session import form, page, redirect


def _one(data: dict[str, Any], name: str) -> str:
    value = data.get(name, "")
    return (value[-1] if isinstance(value, list) else str(value)).strip()


async def _config_page(ctx: Ctx, *, status: int = 200, error: tuple[str, str] | None = None) -> web.Response:
    if ctx.request.query.get("msg") == "saved":
        ctx.flash.append(("ok", ctx.t("admin.msg_saved")))
    entries = await admin.config_entries(ctx.rt)
    switches = [e for e in entries if e["type"] == "boolean"]
    tunables = [e for e in entries if e["type"] != "boolean"]
    audit = await admin.config_audit(ctx.rt, limit=30)
    return render(
        ctx, "admin.html", status=status, switches=switches, tunables=tunables, audit=audit, error=error or ("", "")
    )


@page(admin=True)
async def config_page(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return await _config_page(ctx)


@page(admin=True)
async def set_config(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    data = await form(request)
    key = _one(data, "key")
    if _one(data, "action") == "reset":
        try:
            await admin.reset_config(ctx.rt, [key], who=ctx.actor.email)
        except Invalid as exc:
            return await _config_page(ctx, status=422, error=(key, exc.detail))
        return redirect("/admin?msg=saved")
    try:
        # the domain parses the text the admin typed ("true", "0.7", "12:30,18:30") like the CLI's values
        await admin.set_config(ctx.rt, {key: _one(data, "value")}, who=ctx.actor.email)
    except Invalid as exc:
        message = "; ".join(e.get("message", "") for e in exc.errors) or exc.detail
        return await _config_page(ctx, status=422, error=(key, message))
    return redirect("/admin?msg=saved")


@page(admin=True)
async def status_page(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    if ctx.request.query.get("msg") == "reset":
        ctx.flash.append(("ok", ctx.t("admin.msg_budget_reset")))
    report = await admin.health_report(ctx.rt)
    return render(ctx, "admin_status.html", report=report, components=report.get("components", {}))


@page(admin=True)
async def reset_budget(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    await admin.reset_budget(ctx.rt, who=ctx.actor.email)
    return redirect("/admin/status?msg=reset")


ROUTES = [
    web.get("/admin", config_page),
    web.post("/admin/config", set_config),
    web.get("/admin/status", status_page),
    web.post("/admin/budget/reset", reset_budget),
]
