"""The inbox page: pushed items newest first, filtered by goal, tier and read state, 50 a page; mark read (one
or all) and the same feedback buttons as the goal page. Item links are the tracked /r/ links the domain gives.
Imports domain.inbox, domain.goals, web.session, web.render.
"""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from infosentry.api.http import path_id
from infosentry.domain import goals, inbox
from infosentry.web.render import Ctx, render
from infosentry.web.session import form, page, redirect, safe_next, wants_json

PAGE_SIZE = 50


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() and len(value) < 19 else None


@page()
async def inbox_page(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    q = request.query
    tier = q.get("tier", "").upper()
    filters = {
        "goal": _int(q.get("goal")),
        "tier": tier if tier in inbox.TIERS else None,
        "status": q.get("status") if q.get("status") in ("unread", "read") else None,
        "before": _int(q.get("before")),
    }
    my_goals = await goals.list_goals(ctx.rt, ctx.actor)
    goal = next((g for g in my_goals if g["id"] == filters["goal"]), None)
    if filters["goal"] is not None and goal is None:
        filters["goal"] = None  # not one of mine (or deleted): show everything rather than an error
    rows = await inbox.notifications(
        ctx.rt,
        ctx.actor,
        goal_id=filters["goal"],
        status=filters["status"],
        tier=filters["tier"],
        before_id=filters["before"],
        limit=PAGE_SIZE + 1,
    )
    base = {k: v for k, v in filters.items() if v and k != "before"}
    older_url = None
    if len(rows) > PAGE_SIZE:
        rows = rows[:PAGE_SIZE]
        older_url = "/inbox?" + urlencode({**base, "before": rows[-1]["id"]})
    newest_url = "/inbox" + ("?" + urlencode(base) if base else "")
    return render(
        ctx,
        "inbox.html",
        entries=rows,
        goals=my_goals,
        goal=goal,
        filters=filters,
        older_url=older_url,
        newest_url=newest_url,
    )


@page()
async def read_one(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    await inbox.mark_read(ctx.rt, ctx.actor, path_id(request))
    if wants_json(request):
        return web.json_response({"read": True, "message": ctx.t("inbox.marked_one")})
    return redirect(safe_next(str((await form(request)).get("next", "")), "/inbox"))


@page()
async def read_all(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    data = await form(request)
    tier = str(data.get("tier", "")).upper() or None
    marked = await inbox.mark_all_read(
        ctx.rt, ctx.actor, goal_id=_int(str(data.get("goal", ""))), tier=tier if tier in inbox.TIERS else None
    )
    if wants_json(request):
        return web.json_response({"marked": marked})
    return redirect(safe_next(str(data.get("next", "")), "/inbox"))


ROUTES = [
    web.get("/inbox", inbox_page),
    web.post("/inbox/read_all", read_all),
    web.post("/inbox/{id}/read", read_one),
]
