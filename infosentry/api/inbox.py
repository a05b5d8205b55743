"""The in-app inbox, items, clicks, feedback and blocked sources, and the unsubscribe (pause) links of emails.

Routes: /api/v1/notifications (pushed items only, never ignored ones), /api/v1/items/{id} (+ feedback),
/api/v1/goals/{id}/blocked_sources, /r/{item_id} (click tracking: records, then 302 to the item's own URL;
no auth, never an open redirect) and /api/v1/{goals,users}/{id}/unsubscribe (GET shows a confirmation and
changes nothing; POST pauses: RFC 8058 one-click). Imports push (link tokens), store.push, api.http.
"""

from __future__ import annotations

import html
import ipaddress
import re
from typing import Any

import asyncpg
from aiohttp import web

from infosentry import mail, openapi, push
from infosentry.api.auth_links import client_ip
from infosentry.api.http import Fields, ok, page, paged, path_id, principal, query_int, read_json, requires, rt
from infosentry.errors import BadRequest, NotFound
from infosentry.openapi import BOOL, INT, NUM, PAGE_PARAMS, STR, TIME, arr, enum, null, obj, page_of, qparam
from infosentry.store import push as store
from infosentry.urls import is_http_url

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

# Link scanners of mail providers and security gateways open every link of a message; their hits are kept but
# flagged, so click counts stay honest. HEAD requests are scanners too.
_SCANNER = re.compile(
    r"bot\b|bot/|crawl|spider|preview|scanner|barracuda|proofpoint|mimecast|urldefense|safelinks|symantec|"
    r"trendmicro|fortiguard|sophos|forcepoint|messagelabs|microsoft office|ms-office|outlook-ios|"
    r"facebookexternalhit|slack|whatsapp|telegram|discord|skypeuripreview|headless|python-|curl/|wget|"
    r"go-http-client|okhttp|java/|libwww|httpclient|axios|node-fetch",
    re.IGNORECASE,
)
CHANNELS = ("email", "inbox", "api", "other")


def is_scanner(method: str, user_agent: str) -> bool:
    return method == "HEAD" or not user_agent.strip() or bool(_SCANNER.search(user_agent))


def _notification(rt_public_url: str, row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "goal_id": row["goal_id"],
        "goal_name": row["goal_name"],
        "item": {k: row[k] for k in ("title", "url", "snippet", "source_id", "source_name", "published_at")}
        | {"id": row["item_id"]},
        "tier": row["tier"],
        "score": row["score"],
        "reason": row["reason"],
        "created_at": row["created_at"],
        "read_at": row["read_at"],
        "email_id": row["email_id"],
        "feedback": row["feedback"],
        "click_url": mail.tracked_link(rt_public_url, row["item_id"], row["goal_id"], "inbox"),
    }


def _cursor_id(after: list[Any] | None) -> int | None:
    if after is None:
        return None
    if len(after) != 1 or not isinstance(after[0], int):
        raise BadRequest("cursor is not valid")
    return after[0]


async def _my_goal(request: web.Request, goal_id: int) -> asyncpg.Record:
    row = await store.goal_owned(rt(request).pool, user_id=principal(request).user_id, goal_id=goal_id)
    if row is None:
        raise NotFound("no such goal")
    return row


# --- inbox -------------------------------------------------------------------------------------------------


@openapi.doc(
    "The caller's inbox: every pushed item (IMMEDIATE, BATCH, DIGEST) with its reason, newest first",
    description="Ignored items never appear here. Filter by goal and by read state.",
    query=[*PAGE_PARAMS, qparam("goal_id", INT, "only this goal"), qparam("status", enum("unread", "read"))],
    response=page_of(NOTIFICATION),
)
@requires("notifications:read")
async def list_notifications(request: web.Request) -> web.Response:
    pg = page(request)
    goal_id = query_int(request, "goal_id", None, low=1)
    status = request.query.get("status") or None
    if status not in (None, "unread", "read"):
        raise BadRequest("query parameter status must be unread or read")
    runtime = rt(request)
    rows = await store.list_notifications(
        runtime.pool,
        user_id=principal(request).user_id,
        goal_id=goal_id,
        status=status,
        before_id=_cursor_id(pg.after),
        limit=pg.limit + 1,
    )
    items = [_notification(runtime.settings.public_url, r) for r in rows]
    return ok(paged(items, pg, lambda r: [r["id"]]))


@openapi.doc("Mark one inbox entry read (idempotent)", response=NOTIFICATION)
@requires("notifications:write")
async def read_notification(request: web.Request) -> web.Response:
    runtime = rt(request)
    row = await store.mark_read(runtime.pool, user_id=principal(request).user_id, notification_id=path_id(request))
    if row is None:
        raise NotFound("no such notification")
    return ok(_notification(runtime.settings.public_url, row))


# --- items and feedback ------------------------------------------------------------------------------------


@openapi.doc(
    "One item, if it reached one of the caller's goals or comes from a source the caller follows; with its "
    "score, decision and feedback per goal",
    response=ITEM,
)
@requires("notifications:read")
async def get_item(request: web.Request) -> web.Response:
    item_id = path_id(request)
    user_id = principal(request).user_id
    pool = rt(request).pool
    row = await store.item_for_user(pool, user_id=user_id, item_id=item_id)
    if row is None:
        raise NotFound("no such item")
    data = dict(row)
    data["tags"] = list(data["tags"] or [])
    data["goals"] = [dict(r) for r in await store.item_goals(pool, user_id=user_id, item_id=item_id)]
    return ok(data)


@openapi.doc(
    "Feedback on an item for one goal: like/dislike (changes later scores of similar items), and/or block the "
    "item's source for that goal (stops its pushes at once, including pending ones)",
    body=FEEDBACK_BODY,
    response=FEEDBACK,
)
@requires("notifications:write")
async def post_feedback(request: web.Request) -> web.Response:
    item_id = path_id(request)
    f = Fields(await read_json(request), {"goal_id", "feedback", "block_source"})
    goal_id = f.int("goal_id", required=True, low=1, high=2**62)
    feedback = f.str("feedback", choices=("like", "dislike"))
    block = f.bool("block_source", default=False)
    f.check(
        feedback is not None or block or f.has("feedback"),
        "feedback",
        "give feedback (like or dislike), block_source: true, or both",
    )
    f.done()
    user_id = principal(request).user_id
    await _my_goal(request, goal_id)
    pool = rt(request).pool
    item = await store.item_for_user(pool, user_id=user_id, item_id=item_id)
    if item is None or not await store.item_reached_goal(pool, goal_id=goal_id, item_id=item_id):
        raise NotFound("no such item for this goal")
    cancelled = 0
    async with pool.acquire() as conn, conn.transaction():
        if feedback is not None:
            await store.set_feedback(conn, goal_id=goal_id, item_id=item_id, user_id=user_id, feedback=feedback)
        if block:
            await store.block_source(conn, goal_id=goal_id, source_id=item["source_id"], user_id=user_id)
            # at once: what waits in a coalescing window or for a batch window is cancelled in this transaction
            cancelled = await store.cancel_blocked(conn, goal_id)
    return ok(
        {
            "goal_id": goal_id,
            "item_id": item_id,
            "feedback": feedback,
            "blocked_source": {"source_id": item["source_id"], "source_name": item["source_name"]} if block else None,
            "cancelled": cancelled,
        }
    )


@openapi.doc(
    "Undo the like/dislike of an item for a goal (204; 404 when there was none)",
    query=[qparam("goal_id", INT, "the goal", required=True)],
    status=204,
)
@requires("notifications:write")
async def delete_feedback(request: web.Request) -> web.Response:
    item_id = path_id(request)
    goal_id = query_int(request, "goal_id", None, low=1)
    if goal_id is None:
        raise BadRequest("query parameter goal_id is required")
    await _my_goal(request, goal_id)
    if not await store.delete_feedback(rt(request).pool, goal_id=goal_id, item_id=item_id):
        raise NotFound("no feedback on this item for this goal")
    return web.Response(status=204)


@openapi.doc("Sources blocked for a goal", query=PAGE_PARAMS, response=page_of(BLOCKED))
@requires("goals:read")
async def list_blocked(request: web.Request) -> web.Response:
    goal_id = path_id(request)
    await _my_goal(request, goal_id)
    pg = page(request)
    after = _cursor_id(pg.after)
    rows = await store.blocked_sources(
        rt(request).pool, goal_id=goal_id, before=(None, after) if after else None, limit=pg.limit + 1
    )
    return ok(paged([dict(r) for r in rows], pg, lambda r: [r["source_id"]]))


@openapi.doc(
    "Unblock a source for a goal (204); its new items can be pushed again (cancelled ones stay cancelled)",
    status=204,
)
@requires("goals:write")
async def unblock(request: web.Request) -> web.Response:
    goal_id = path_id(request)
    source_id = path_id(request, "source_id")
    await _my_goal(request, goal_id)
    if not await store.unblock_source(rt(request).pool, goal_id=goal_id, source_id=source_id):
        raise NotFound("this source is not blocked for this goal")
    return web.Response(status=204)


# --- clicks ------------------------------------------------------------------------------------------------


@openapi.doc(
    "Record a click, then 302 to the item's own URL (no auth; the target is never taken from the request)",
    query=[qparam("goal_id", INT, "the goal the link was sent for"), qparam("channel", enum(*CHANNELS))],
    status=302,
    responses={302: ("redirect to the item's URL", None, "text/plain")},
)
@requires(None)
async def click(request: web.Request) -> web.Response:
    item_id = path_id(request, "item_id")
    raw_goal = request.query.get("goal_id", "")
    goal_id = int(raw_goal) if re.fullmatch(r"\d{1,18}", raw_goal) else None
    channel = request.query.get("channel", "other")
    channel = channel if channel in CHANNELS else "other"
    agent = request.headers.get("User-Agent", "")[:500]
    ip = client_ip(request)
    try:
        ip = str(ipaddress.ip_address(ip)) if ip else None
    except ValueError:
        ip = None
    scanner = is_scanner(request.method, agent)
    url = await store.record_click(
        rt(request).pool,
        item_id=item_id,
        goal_id=goal_id,
        channel=channel,
        user_agent=agent or None,
        ip=ip,
        is_scanner=scanner,
    )
    if url is None:
        raise NotFound("no such item")
    if not is_http_url(url):
        raise NotFound("this item has no web address")
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


async def _checked(request: web.Request, kind: str) -> int:
    owner_id = path_id(request)
    token = request.query.get("token", "")
    if not await push.check_link_token(rt(request), kind, owner_id, token):
        raise NotFound("this link is not valid")
    return owner_id


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
    goal_id = await _checked(request, "goal")
    goal = await store.goal_name(rt(request).pool, goal_id)
    if goal is None:
        raise NotFound("no such goal")
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
    goal_id = await _checked(request, "goal")
    goal = await store.pause_goal(rt(request).pool, goal_id)
    if goal is None:
        raise NotFound("no such goal")
    await store.cancel_inactive(rt(request).pool)
    return _page(
        "Goal paused",
        f"<p>The goal “{html.escape(goal['name'])}” is paused: no more emails. "
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
    await _checked(request, "user")
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
    user_id = await _checked(request, "user")
    paused = await store.pause_user_goals(rt(request).pool, user_id)
    await store.cancel_inactive(rt(request).pool)
    names = ", ".join(f"“{html.escape(r['name'])}”" for r in paused) or "none were active"
    return _page("Goals paused", f"<p>Paused: {names}.</p>")


ROUTES: list[web.RouteDef] = [
    web.get("/api/v1/notifications", list_notifications),
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
