"""The in-app inbox, items, clicks, feedback and blocked sources, and the pause links of emails.

Routes: /api/v1/notifications (pushed items only, never ignored ones), /api/v1/items/{id} (+ feedback),
/api/v1/goals/{id}/blocked_sources, /r/{item_id} (click tracking: records, then 302 to the item's own URL;
no auth, never an open redirect) and /api/v1/{goals,users}/{id}/unsubscribe (GET shows a confirmation and
changes nothing; POST pauses: RFC 8058 one-click). Imports domain.inbox, api.http, api.auth_links (client IP).
"""

from __future__ import annotations

import html
import re
from typing import Any

from aiohttp import web

from infosentry import links, openapi
from infosentry.api.auth_links import client_ip
from infosentry.api.http import ok, page, paged, path_id, principal, query_int, read_json, requires, rt
from infosentry.domain import inbox
from infosentry.errors import BadRequest
from infosentry.openapi import BOOL, INT, NUM, PAGE_PARAMS, STR, TIME, arr, enum, null, obj, page_of, qparam

TIER = enum("IMMEDIATE", "BATCH", "DIGEST")
ITEM_BRIEF = obj(
    {
        "id": INT,
        "title": STR,
        "url": STR,
        "snippet": STR,
        "source_id": INT,
        "source_name": STR,
        "published_at": null(TIME),
    }
)
NOTIFICATION = obj(
    {
        "id": INT,
        "goal_id": INT,
        "goal_name": STR,
        "item": ITEM_BRIEF,
        "tier": TIER,
        "score": NUM,
        "reason": STR,
        "created_at": TIME,
        "read_at": null(TIME),
        "email_id": null(INT),
        "feedback": null(enum("like", "dislike")),
        "click_url": {**STR, "description": "tracked link to the item (channel=inbox)"},
    }
)
ITEM_GOAL = obj(
    {
        "goal_id": INT,
        "goal_name": STR,
        "score": null(NUM),
        "reasons": {},
        "tier": null(STR),
        "decision_status": null(enum("pending", "pushed", "skipped", "cancelled")),
        "reason": null(STR),
        "notification_id": null(INT),
        "feedback": null(enum("like", "dislike")),
        "source_blocked": BOOL,
    }
)
ITEM = obj(
    {
        "id": INT,
        "title": STR,
        "url": STR,
        "canonical_url": STR,
        "snippet": STR,
        "author": null(STR),
        "tags": arr(STR),
        "published_at": null(TIME),
        "ingested_at": TIME,
        "source_id": INT,
        "source_name": STR,
        "source_type": STR,
        "goals": arr(ITEM_GOAL),
    }
)
FEEDBACK_BODY = obj(
    {
        "goal_id": INT,
        "feedback": enum("like", "dislike"),
        "block_source": {**BOOL, "default": False, "description": "stop this item's source for the goal at once"},
    },
    ["goal_id"],
    extra=False,
)
FEEDBACK = obj(
    {
        "goal_id": INT,
        "item_id": INT,
        "feedback": null(enum("like", "dislike")),
        "blocked_source": null(obj({"source_id": INT, "source_name": STR})),
        "cancelled": {**INT, "description": "pending pushes of the blocked source cancelled for this goal"},
    }
)
BLOCKED = obj({"source_id": INT, "source_name": STR, "source_url": STR, "source_type": STR, "created_at": TIME})
HTML_PAGE = {"type": "string", "description": "an HTML page"}


def _cursor_id(after: list[Any] | None) -> int | None:
    if after is None:
        return None
    if len(after) != 1 or not isinstance(after[0], int):
        raise BadRequest("cursor is not valid")
    return after[0]


# --- inbox -------------------------------------------------------------------------------------------------


@openapi.doc(
    "The caller's inbox: every pushed item (IMMEDIATE, BATCH, DIGEST) with its reason, newest first",
    description="Ignored items never appear here. Filter by goal and by read state.",
    query=[
        *PAGE_PARAMS,
        qparam("goal_id", INT, "only this goal"),
        qparam("status", enum("unread", "read")),
        qparam("tier", TIER, "only this tier"),
    ],
    response=page_of(NOTIFICATION),
)
@requires("notifications:read")
async def list_notifications(request: web.Request) -> web.Response:
    pg = page(request)
    rows = await inbox.notifications(
        rt(request),
        principal(request),
        goal_id=query_int(request, "goal_id", None, low=1),
        status=request.query.get("status") or None,
        before_id=_cursor_id(pg.after),
        limit=pg.limit + 1,
        tier=request.query.get("tier") or None,
    )
    return ok(paged(rows, pg, lambda r: [r["id"]]))


@openapi.doc(
    "Mark every unread inbox entry read (of one goal and/or one tier when given)",
    query=[qparam("goal_id", INT, "only this goal"), qparam("tier", TIER, "only this tier")],
    response=obj({"marked": {**INT, "description": "entries marked read"}}),
)
@requires("notifications:write")
async def read_all(request: web.Request) -> web.Response:
    marked = await inbox.mark_all_read(
        rt(request),
        principal(request),
        goal_id=query_int(request, "goal_id", None, low=1),
        tier=request.query.get("tier") or None,
    )
    return ok({"marked": marked})


@openapi.doc("Mark one inbox entry read (idempotent)", response=NOTIFICATION)
@requires("notifications:write")
async def read_notification(request: web.Request) -> web.Response:
    return ok(await inbox.mark_read(rt(request), principal(request), path_id(request)))


# --- items and feedback ------------------------------------------------------------------------------------


@openapi.doc(
    "One item, if it reached one of the caller's goals or comes from a source the caller follows; with its "
    "score, decision and feedback per goal",
    response=ITEM,
)
@requires("notifications:read")
async def get_item(request: web.Request) -> web.Response:
    return ok(await inbox.item(rt(request), principal(request), path_id(request)))


@openapi.doc(
    "Feedback on an item for one goal: like/dislike (changes later scores of similar items), and/or block the "
    "item's source for that goal (stops its pushes at once, including pending ones)",
    body=FEEDBACK_BODY,
    response=FEEDBACK,
)
@requires("notifications:write")
async def post_feedback(request: web.Request) -> web.Response:
    body = await read_json(request)
    result = await inbox.give_feedback(rt(request), principal(request), path_id(request), body)
    return ok(
        {
            "goal_id": result.goal_id,
            "item_id": result.item_id,
            "feedback": result.feedback,
            "blocked_source": result.blocked_source,
            "cancelled": result.cancelled,
        }
    )


@openapi.doc(
    "Undo the like/dislike of an item for a goal (204; 404 when there was none)",
    query=[qparam("goal_id", INT, "the goal", required=True)],
    status=204,
)
@requires("notifications:write")
async def delete_feedback(request: web.Request) -> web.Response:
    goal_id = query_int(request, "goal_id", None, low=1)
    if goal_id is None:
        raise BadRequest("query parameter goal_id is required")
    await inbox.undo_feedback(rt(request), principal(request), path_id(request), goal_id)
    return web.Response(status=204)


@openapi.doc("Sources blocked for a goal", query=PAGE_PARAMS, response=page_of(BLOCKED))
@requires("goals:read")
async def list_blocked(request: web.Request) -> web.Response:
    pg = page(request)
    rows = await inbox.blocked_sources(
        rt(request), principal(request), path_id(request), after_source_id=_cursor_id(pg.after), limit=pg.limit + 1
    )
    return ok(paged(rows, pg, lambda r: [r["source_id"]]))


@openapi.doc(
    "Unblock a source for a goal (204); its new items can be pushed again (cancelled ones stay cancelled)",
    status=204,
)
@requires("goals:write")
async def unblock(request: web.Request) -> web.Response:
    await inbox.unblock(rt(request), principal(request), path_id(request), path_id(request, "source_id"))
    return web.Response(status=204)


# --- clicks ------------------------------------------------------------------------------------------------


@openapi.doc(
    "Record a click, then 302 to the item's own URL (no auth, but the link is signed: an unsigned or altered "
    "link answers 404; the target is never taken from the request)",
    query=[
        qparam("goal_id", INT, "the goal the link was sent for", required=True),
        qparam("channel", enum(*links.CHANNELS), required=True),
        qparam("sig", STR, "the link's signature", required=True),
    ],
    status=302,
    responses={302: ("redirect to the item's URL", None, "text/plain")},
)
@requires(None)
async def click(request: web.Request) -> web.Response:
    raw_goal = request.query.get("goal_id", "")
    url = await inbox.click(
        rt(request),
        path_id(request, "item_id"),
        goal_id=int(raw_goal) if re.fullmatch(r"\d{1,18}", raw_goal) else None,
        channel=request.query.get("channel", ""),
        sig=request.query.get("sig", ""),
        method=request.method,
        user_agent=request.headers.get("User-Agent", ""),
        ip=client_ip(request),
    )
    return web.Response(
        status=302,
        headers={"Location": url, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


# --- unsubscribe (pause) links -----------------------------------------------------------------------------


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = (
        '<!doctype html><html><head><meta charset="utf-8"><meta name="robots" content="noindex">'
        f'<meta name="viewport" content="width=device-width"><title>{html.escape(title)}</title></head>'
        '<body style="font-family:sans-serif;max-width:36em;margin:3em auto;padding:0 1em">'
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(status=status, text=text, content_type="text/html", headers={"Cache-Control": "no-store"})


def _form(request: web.Request, label: str) -> str:
    action = html.escape(request.path_qs, quote=True)
    return (
        f'<form method="post" action="{action}"><button type="submit" style="font-size:1.1em">'
        f"{html.escape(label)}</button></form>"
    )


@openapi.doc(
    "Confirmation page of an email's pause link (changes nothing; the button POSTs)",
    query=[qparam("token", STR, "the link's token", required=True)],
    response=HTML_PAGE,
    response_type="text/html",
)
@requires(None)
async def goal_unsubscribe_page(request: web.Request) -> web.Response:
    goal = await inbox.link_target(rt(request), "goal", path_id(request), request.query.get("token", ""))
    assert goal is not None
    name = html.escape(goal["name"])
    if goal["status"] != "active":
        return _page(
            "Goal already paused", f"<p>The goal “{name}” is {html.escape(goal['status'])}: it sends no emails.</p>"
        )
    return _page(
        "Pause this goal?",
        f"<p>Pausing “{name}” stops its emails and inbox pushes until you resume "
        "it.</p>" + _form(request, "Pause the goal"),
    )


@openapi.doc(
    "Pause the goal of an email's pause link (RFC 8058 one-click unsubscribe: POST, no login)",
    query=[qparam("token", STR, "the link's token", required=True)],
    response=HTML_PAGE,
    response_type="text/html",
)
@requires(None)
async def goal_unsubscribe(request: web.Request) -> web.Response:
    goal_id = path_id(request)
    paused = await inbox.pause_by_link(rt(request), "goal", goal_id, request.query.get("token", ""))
    return _page(
        "Goal paused",
        f"<p>The goal “{html.escape(paused[0]['name'])}” is paused: no more emails. "
        f"Resume it with <code>POST /api/v1/goals/{goal_id}/resume</code>.</p>",
    )


@openapi.doc(
    "Confirmation page of a combined digest's pause link (changes nothing; the button POSTs)",
    query=[qparam("token", STR, "the link's token", required=True)],
    response=HTML_PAGE,
    response_type="text/html",
)
@requires(None)
async def user_unsubscribe_page(request: web.Request) -> web.Response:
    await inbox.link_target(rt(request), "user", path_id(request), request.query.get("token", ""))
    return _page(
        "Pause these emails?",
        "<p>This pauses every active goal of your account: no more emails or "
        "inbox pushes until you resume them.</p>" + _form(request, "Pause all my goals"),
    )


@openapi.doc(
    "Pause every active goal of the user of a combined digest's pause link (RFC 8058 one-click, no login)",
    query=[qparam("token", STR, "the link's token", required=True)],
    response=HTML_PAGE,
    response_type="text/html",
)
@requires(None)
async def user_unsubscribe(request: web.Request) -> web.Response:
    paused = await inbox.pause_by_link(rt(request), "user", path_id(request), request.query.get("token", ""))
    names = ", ".join(f"“{html.escape(r['name'])}”" for r in paused) or "none were active"
    return _page("Goals paused", f"<p>Paused: {names}.</p>")


ROUTES: list[web.RouteDef] = [
    web.get("/api/v1/notifications", list_notifications),
    web.post("/api/v1/notifications/read_all", read_all),
    web.post("/api/v1/notifications/{id}/read", read_notification),
    web.get("/api/v1/items/{id}", get_item),
    web.post("/api/v1/items/{id}/feedback", post_feedback),
    web.delete("/api/v1/items/{id}/feedback", delete_feedback),
    web.get("/api/v1/goals/{id}/blocked_sources", list_blocked),
    web.delete("/api/v1/goals/{id}/blocked_sources/{source_id}", unblock),
    web.get("/api/v1/goals/{id}/unsubscribe", goal_unsubscribe_page),
    web.post("/api/v1/goals/{id}/unsubscribe", goal_unsubscribe),
    web.get("/api/v1/users/{id}/unsubscribe", user_unsubscribe_page),
    web.post("/api/v1/users/{id}/unsubscribe", user_unsubscribe),
    web.get("/r/{item_id}", click),
]
