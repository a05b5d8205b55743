"""Goal pages: the list (status, pushes this week), create and edit (one terms field, suggestions), the detail
page (best matches with score, tier and reasons; like / dislike / block source), pause / resume, delete with
confirmation, and the preview and send-now of the next batch and digest email. Feedback buttons POST here
(a script sends them with Accept: application/json and updates the page in place; without a script the form
posts and the page reloads). Imports domain.goals, domain.inbox, domain.fields, web.session, web.render.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from infosentry.api.http import path_id
from infosentry.domain import goals, inbox
from infosentry.errors import Invalid
from infosentry.web.render import Ctx, render
from infosentry.web.session import form, page, redirect, safe_next, wants_json

MESSAGES = {"deleted": "goals.msg_deleted", "created": "goals.msg_created", "saved": "goals.msg_saved"}
# the form's field names for the domain's (errors are shown next to the field the user typed in)
FIELD_OF = {"priority_terms": "terms", "negative_terms": "terms", "batch_windows": "batch_windows"}
COMMON_ZONES = (
    "Asia/Shanghai",
    "Asia/Hong_Kong",
    "Asia/Tokyo",
    "Asia/Singapore",
    "Europe/London",
    "Europe/Berlin",
    "America/New_York",
    "America/Los_Angeles",
    "UTC",
)


def flash_from_query(ctx: Ctx, messages: dict[str, str]) -> None:
    key = messages.get(ctx.request.query.get("msg", ""))
    if key:
        ctx.flash.append(("ok", ctx.t(key)))


def body_from_form(data: dict[str, Any]) -> dict[str, Any]:
    """The goal form as a domain body. Checkboxes that are absent are off; empty optional fields are left out so
    the domain's defaults apply."""

    def one(name: str) -> str:
        value = data.get(name, "")
        return (value[-1] if isinstance(value, list) else str(value)).strip()

    def many(name: str) -> list[str]:
        value = data.get(name, [])
        return [str(v) for v in (value if isinstance(value, list) else [value])]

    terms_text = "\n".join([one("terms"), *many("add_term")])
    priority, negative = goals.split_terms(terms_text)
    body: dict[str, Any] = {
        "name": one("name"),
        "description": one("description"),
        "priority_terms": priority,
        "negative_terms": negative,
        "priority_mode": one("priority_mode") or "SOFT",
        "batch_enabled": one("batch_enabled") == "on",
        "digest_enabled": one("digest_enabled") == "on",
    }
    windows = [w.strip() for w in many("batch_windows") if w.strip()]
    if windows:
        body["batch_windows"] = windows
    for name in ("digest_time", "timezone"):
        if one(name):
            body[name] = one(name)
    body["language"] = one("language") or None
    return body


def _field_errors(exc: Invalid) -> dict[str, str]:
    errors: dict[str, str] = {}
    for e in exc.errors or [{"field": "description", "message": exc.detail}]:
        name = FIELD_OF.get(e.get("field", ""), e.get("field", ""))
        errors.setdefault(name, e.get("message", ""))
    return errors


def _values_for(goal: dict[str, Any]) -> dict[str, Any]:
    """What the form shows for a stored goal (or the defaults of a new one)."""
    return {
        "name": goal.get("name", ""),
        "description": goal.get("description", ""),
        "terms": goals.join_terms(goal.get("priority_terms") or [], goal.get("negative_terms") or []),
        "priority_mode": goal.get("priority_mode", "SOFT"),
        "batch_enabled": goal.get("batch_enabled", True),
        "batch_windows": list(goal.get("batch_windows") or []),
        "digest_enabled": goal.get("digest_enabled", True),
        "digest_time": goal.get("digest_time", ""),
        "timezone": goal.get("timezone", ""),
        "language": "" if goal.get("language_is_default", True) else goal.get("language", ""),
    }


def _values_from(data: dict[str, Any]) -> dict[str, Any]:
    body = body_from_form(data)
    return {
        **body,
        "terms": goals.join_terms(body["priority_terms"], body["negative_terms"]),
        "batch_windows": body.get("batch_windows", []),
        "digest_time": body.get("digest_time", ""),
        "timezone": body.get("timezone", ""),
        "language": body.get("language") or "",
    }


def _form_page(
    ctx: Ctx,
    *,
    goal: dict[str, Any] | None,
    values: dict[str, Any],
    errors: dict[str, str] | None = None,
    suggestions: dict[str, Any] | None = None,
    status: int = 200,
) -> web.Response:
    windows = list(values.get("batch_windows") or [])
    windows += [""] * (3 - len(windows))
    return render(
        ctx,
        "goal_form.html",
        status=status,
        goal=goal,
        values={**values, "batch_windows": windows[:3]},
        errors=errors or {},
        suggestions=suggestions,
        zones=COMMON_ZONES,
        defaults={
            "windows": ctx.rt.hot["DEFAULT_BATCH_WINDOWS"],
            "digest": ctx.rt.hot["DEFAULT_DIGEST_TIME"],
            "timezone": ctx.actor.timezone if ctx.actor else "",
        },
    )


@page()
async def list_page(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    flash_from_query(ctx, MESSAGES)
    rows = await goals.list_goals(ctx.rt, ctx.actor)
    unread = await inbox.unread_counts(ctx.rt, ctx.actor)
    return render(ctx, "goals.html", goals=rows, unread=unread)


@page()
async def new_page(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return _form_page(ctx, goal=None, values=_values_for({}))


async def _suggest(ctx: Ctx, body: dict[str, Any], goal_id: int | None) -> dict[str, Any]:
    assert ctx.actor is not None
    known = [*body["priority_terms"], *(f"-{t}" for t in body["negative_terms"])]
    ask = {"name": body["name"], "description": body["description"], "terms": known}
    if goal_id is not None:
        ask["goal_id"] = goal_id
    return await goals.suggest_terms(ctx.rt, ctx.actor, ask)


@page()
async def create(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    data = await form(request)
    if data.get("action") == "suggest":  # the no-script way to ask for suggestions: the form comes back
        return _form_page(
            ctx, goal=None, values=_values_from(data), suggestions=await _suggest(ctx, body_from_form(data), None)
        )
    try:
        goal = await goals.create(ctx.rt, ctx.actor, body_from_form(data))
    except Invalid as exc:
        return _form_page(ctx, goal=None, values=_values_from(data), errors=_field_errors(exc), status=422)
    return redirect(f"/goals/{goal['id']}?msg=created")


@page()
async def edit_page(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    goal = await goals.get(ctx.rt, ctx.actor, path_id(request))
    return _form_page(ctx, goal=goal, values=_values_for(goal))


@page()
async def update(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    goal = await goals.get(ctx.rt, ctx.actor, path_id(request))
    data = await form(request)
    if data.get("action") == "suggest":
        suggestions = await _suggest(ctx, body_from_form(data), goal["id"])
        return _form_page(ctx, goal=goal, values=_values_from(data), suggestions=suggestions)
    body = body_from_form(data)
    if not body["name"]:
        body.pop("name")  # an emptied name keeps the stored one rather than failing
    try:
        await goals.update(ctx.rt, ctx.actor, goal["id"], body)
    except Invalid as exc:
        return _form_page(ctx, goal=goal, values=_values_from(data), errors=_field_errors(exc), status=422)
    return redirect(f"/goals/{goal['id']}?msg=saved")


@page()
async def suggest(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    """The goal form's script asks here while the user writes (JSON in, JSON out)."""
    data = await form(request)
    goal_id = str(data.get("goal_id", ""))
    return web.json_response(await _suggest(ctx, body_from_form(data), int(goal_id) if goal_id.isdigit() else None))


DETAIL_MESSAGES = {
    **MESSAGES,
    "sent": "goals.msg_sent",
    "nothing": "goals.msg_nothing",
    "paused": "goals.msg_paused",
    "resumed": "goals.msg_resumed",
}


@page()
async def detail(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    flash_from_query(ctx, DETAIL_MESSAGES)
    goal = await goals.get(ctx.rt, ctx.actor, path_id(request))
    matches = await goals.matches(ctx.rt, ctx.actor, goal["id"], limit=30)
    await inbox.add_click_urls(ctx.rt, goal["id"], matches)
    blocked = await inbox.blocked_sources(ctx.rt, ctx.actor, goal["id"])
    return render(ctx, "goal.html", goal=goal, matches=matches, blocked=blocked)


@page()
async def pause(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    goal = await goals.get(ctx.rt, ctx.actor, path_id(request))
    await goals.pause(ctx.rt, ctx.actor.user_id, goal["id"])
    nxt = safe_next(str((await form(request)).get("next", "")), f"/goals/{goal['id']}?msg=paused")
    return redirect(nxt)


@page()
async def resume(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    goal = await goals.get(ctx.rt, ctx.actor, path_id(request))
    await goals.resume(ctx.rt, ctx.actor.user_id, goal["id"])
    nxt = safe_next(str((await form(request)).get("next", "")), f"/goals/{goal['id']}?msg=resumed")
    return redirect(nxt)


@page()
async def delete_page(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    goal = await goals.get(ctx.rt, ctx.actor, path_id(request))
    return render(ctx, "goal_delete.html", goal=goal)


@page()
async def delete(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    await goals.delete(ctx.rt, ctx.actor, path_id(request))
    return redirect("/goals?msg=deleted")


def _kind(request: web.Request) -> str:
    kind = request.match_info["kind"]
    if kind not in ("batch", "digest"):
        raise web.HTTPNotFound()
    return kind


@page()
async def preview_page(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    goal = await goals.get(ctx.rt, ctx.actor, path_id(request))
    kind = _kind(request)
    preview = await goals.next_email(ctx.rt, ctx.actor, goal["id"], kind)
    return render(ctx, "goal_preview.html", goal=goal, kind=kind, preview=preview)


@page()
async def preview_email(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    """The email's own HTML, shown in a sandboxed frame of the preview page (its inline styles need their own
    policy; it runs no script and loads nothing)."""
    assert ctx.actor is not None
    preview = await goals.next_email(ctx.rt, ctx.actor, path_id(request), _kind(request))
    html = preview.get("html") or "<!doctype html><p></p>"
    return web.Response(
        text=html,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
            "frame-ancestors 'self'; sandbox",
            "X-Frame-Options": "SAMEORIGIN",
        },
    )


@page()
async def send_now(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None
    goal_id = path_id(request)
    result = await goals.next_email(ctx.rt, ctx.actor, goal_id, _kind(request), send=True)
    return redirect(f"/goals/{goal_id}?msg={'sent' if result['items'] else 'nothing'}")


@page()
async def feedback(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    """like / dislike / block source / undo for an item and a goal; JSON for the script, a redirect otherwise."""
    assert ctx.actor is not None
    data = await form(request)
    goal_id, item_id, action = str(data.get("goal_id", "")), str(data.get("item_id", "")), data.get("action")
    if not goal_id.isdigit() or not item_id.isdigit() or action not in ("like", "dislike", "block", "undo"):
        raise Invalid("goal_id, item_id and action (like, dislike, block, undo) are required")
    if action == "undo":
        await inbox.undo_feedback(ctx.rt, ctx.actor, int(item_id), int(goal_id))
        state: dict[str, Any] = {"feedback": None, "blocked": False}
    else:
        body: dict[str, Any] = {"goal_id": int(goal_id)}
        if action == "block":
            body["block_source"] = True
        else:
            body["feedback"] = action
        result = await inbox.give_feedback(ctx.rt, ctx.actor, int(item_id), body)
        state = {"feedback": result.feedback, "blocked": result.blocked_source is not None}
    if wants_json(request):
        message = ctx.t(f"feedback.done_{action}")
        return web.json_response({**state, "action": action, "message": message})
    return redirect(safe_next(str(data.get("next", "")), f"/goals/{goal_id}"))


ROUTES = [
    web.get("/goals", list_page),
    web.get("/goals/new", new_page),
    web.post("/goals", create),
    web.post("/goals/suggest", suggest),
    web.post("/feedback", feedback),
    web.get("/goals/{id}", detail),
    web.post("/goals/{id}", update),
    web.get("/goals/{id}/edit", edit_page),
    web.post("/goals/{id}/pause", pause),
    web.post("/goals/{id}/resume", resume),
    web.get("/goals/{id}/delete", delete_page),
    web.post("/goals/{id}/delete", delete),
    web.get("/goals/{id}/preview/{kind}", preview_page),
    web.get("/goals/{id}/preview/{kind}/email", preview_email),
    web.post("/goals/{id}/send/{kind}", send_now),
]
