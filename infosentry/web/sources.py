"""Source pages: the sources I follow with their health (last fetch, error streak, the last error in words),
add by URL (a web page's feed is discovered; CSS selectors for a `site`; a hot list picked from the bundled
catalog), enable / disable, unsubscribe with confirmation, OPML import (a per-line report) and export.
Imports domain.sources, web.session, web.render.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from infosentry.api.http import path_id
from infosentry.domain import sources
from infosentry.errors import BadRequest, Invalid
from infosentry.web.render import Ctx, render
from infosentry.web.session import form, page, posted, redirect

MESSAGES = {
    "added": "sources.msg_added",
    "exists": "sources.msg_exists",
    "removed": "sources.msg_removed",
    "enabled": "sources.msg_enabled",
    "disabled": "sources.msg_disabled",
}
HOTLIST_BASE = "https://newsnow.busiyi.world"  # the catalog's public server; any newsnow-style server works


def _one(data: dict[str, Any], name: str) -> str:
    value = data.get(name, "")
    return (value[-1] if isinstance(value, list) else str(value)).strip()


def body_from_form(data: dict[str, Any]) -> dict[str, Any]:
    """The add form as a domain body: an RSS (or page) URL, CSS selectors for a site, or a catalog hot list."""
    kind = _one(data, "type") or "rss"
    body: dict[str, Any] = {"type": kind, "url": _one(data, "url")}
    if _one(data, "name"):
        body["name"] = _one(data, "name")
    if kind == "site":
        selectors = {k: _one(data, f"sel_{k}") for k in ("item", "title", "link", "snippet", "time")}
        config: dict[str, Any] = {"selectors": {k: v for k, v in selectors.items() if v}}
        if _one(data, "site_timezone"):
            config["timezone"] = _one(data, "site_timezone")
        body["config"] = config
    elif kind == "hotlist":
        base = _one(data, "base_url") or HOTLIST_BASE
        body["url"] = base
        body["config"] = {"base_url": base, "source_id": _one(data, "source_id")}
    return body


def _errors(exc: Invalid) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in exc.errors or [{"field": "url", "message": exc.detail}]:
        out.setdefault(e.get("field", "url"), e.get("message", ""))
    return out


async def _list(ctx: Ctx, *, status: int = 200, **extra: Any) -> web.Response:
    assert ctx.actor is not None
    for key in ("added", "removed", "enabled", "disabled", "exists"):
        if ctx.request.query.get("msg") == key:
            ctx.flash.append(("ok", ctx.t(MESSAGES[key])))
    rows = await sources.list_sources(ctx.rt, ctx.actor)
    values = extra.pop("values", {"type": "rss", "url": "", "name": "", "base_url": HOTLIST_BASE})
    return render(
        ctx,
        "sources.html",
        status=status,
        sources=rows,
        catalog=sources.catalog(),
        values=values,
        errors=extra.pop("errors", {}),
        **extra,
    )


@page()
async def list_page(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return await _list(ctx)


@page()
async def add(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    data = await form(request)
    body = body_from_form(data)
    try:
        followed = await sources.follow(ctx.rt, ctx.actor, body, discover_feed=body["type"] == "rss")
    except Invalid as exc:
        values = {k: _one(data, k) for k in data if k != "csrf"} | {"base_url": _one(data, "base_url") or HOTLIST_BASE}
        return await _list(ctx, status=422, values=values, errors=_errors(exc))
    if followed.note:
        ctx.flash.append(("ok", followed.note))
    if not followed.subscribed:
        return redirect("/sources?msg=exists")
    if followed.note:
        # the discovery note is worth reading: show it on the list rather than losing it in a redirect
        ctx.flash.insert(0, ("ok", ctx.t("sources.msg_added")))
        return await _list(ctx)
    return redirect("/sources?msg=added")


@page()
async def toggle(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    enable = request.match_info["action"] == "enable"
    await sources.set_enabled(ctx.rt, ctx.actor, path_id(request), enable)
    return redirect(f"/sources?msg={'enabled' if enable else 'disabled'}")


@page()
async def remove_page(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    source = await sources.get(ctx.rt, ctx.actor, path_id(request))
    return render(ctx, "source_delete.html", source=source)


@page()
async def remove(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    await sources.unfollow(ctx.rt, ctx.actor, path_id(request))
    return redirect("/sources?msg=removed")


@page()
async def import_page(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return render(ctx, "sources_import.html", report=None, error="")


@page()
async def import_post(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    data = await posted(request)
    upload = data.get("opml")
    raw: bytes | str = ""
    if upload is not None and hasattr(upload, "file"):
        raw = upload.file.read(sources.MAX_OPML_BYTES + 1)
    elif isinstance(upload, str):
        raw = upload
    if not raw and isinstance(data.get("opml_text"), str):
        raw = str(data.get("opml_text"))
    try:
        report = await sources.import_opml(ctx.rt, ctx.actor, raw)
    except (Invalid, BadRequest) as exc:
        return render(ctx, "sources_import.html", status=422, report=None, error=exc.detail)
    return render(ctx, "sources_import.html", report=report.as_dict(), error="")


@page()
async def export(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    body = await sources.export_opml(ctx.rt, ctx.actor)
    return web.Response(
        text=body,
        content_type="text/x-opml",
        charset="utf-8",
        headers={"Content-Disposition": 'attachment; filename="infosentry-sources.opml"'},
    )


ROUTES = [
    web.get("/sources", list_page),
    web.post("/sources", add),
    web.get("/sources/import", import_page),
    web.post("/sources/import", import_post),
    web.get("/sources/export", export),
    web.post("/sources/{id}/{action:enable|disable}", toggle),
    web.get("/sources/{id}/delete", remove_page),
    web.post("/sources/{id}/delete", remove),
]
