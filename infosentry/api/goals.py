"""Routes of /api/v1/goals: the caller's goals (CRUD, pause/resume) and each goal's scored items.

Handlers translate HTTP to the domain (infosentry.domain.goals) and back. Imports domain.goals, openapi,
api.http.
"""

from __future__ import annotations

from aiohttp import web

from infosentry import openapi
from infosentry.api.http import ok, page, paged, path_id, principal, query_float, read_json, requires, rt
from infosentry.domain import goals
from infosentry.errors import BadRequest
from infosentry.openapi import BOOL, INT, NUM, PAGE_PARAMS, STR, TIME, arr, enum, null, obj, page_of, qparam

# --- schemas ---

GOAL = obj(
    {
        "id": INT,
        "name": STR,
        "description": STR,
        "priority_terms": arr(STR),
        "negative_terms": arr(STR),
        "priority_mode": enum("SOFT", "STRICT"),
        "status": enum("active", "paused", "archived"),
        "batch_windows": arr(STR),
        "batch_enabled": {**BOOL, "description": "false: no batch emails (BATCH items wait for the digest)"},
        "digest_time": STR,
        "digest_enabled": {**BOOL, "description": "false: no daily digest for this goal"},
        "timezone": STR,
        "email": {**STR, "description": "where pushes go (the owner's address unless set)"},
        "email_is_default": BOOL,
        "language": enum("en", "zh"),
        "language_is_default": BOOL,
        "version": {**INT, "description": "bumped when the scored text (name, description, terms, mode) changes"},
        "embedded": {**BOOL, "description": "the goal vector of the current version exists"},
        "backfilled": {**BOOL, "description": "the last 72 h of items were scored for this version"},
        "match_count": INT,
        "pushed_count": INT,
        "pushed_week": {**INT, "description": "items pushed in the last 7 days"},
        "created_at": TIME,
        "updated_at": TIME,
    }
)
TERMS = arr({"type": "string", "minLength": 1, "maxLength": 100}, maxItems=50)
GOAL_BODY = obj(
    {
        "name": {"type": "string", "maxLength": 100, "description": "derived from the description when empty"},
        "description": {"type": "string", "minLength": 1, "maxLength": 2000},
        "priority_terms": {**TERMS, "description": "CJK terms match as substrings, others on word boundaries"},
        "negative_terms": {**TERMS, "description": "a hit means the item is never pushed for this goal"},
        "priority_mode": {
            **enum("SOFT", "STRICT"),
            "default": "SOFT",
            "description": "STRICT: without a priority-term hit an item is never IMMEDIATE",
        },
        "batch_windows": arr(
            {"type": "string", "pattern": "^\\d{1,2}:\\d{2}$"},
            minItems=1,
            maxItems=3,
            description="local HH:MM times, default DEFAULT_BATCH_WINDOWS",
        ),
        "digest_time": {"type": "string", "description": "local HH:MM, default DEFAULT_DIGEST_TIME"},
        "batch_enabled": {**BOOL, "default": True, "description": "false: the batch windows send nothing"},
        "digest_enabled": {**BOOL, "default": True, "description": "false: no daily digest"},
        "timezone": {"type": "string", "description": "IANA name, default the user's"},
        "email": null({"type": "string", "format": "email"}),
        "language": null(enum("en", "zh")),
        "status": enum("active", "paused", "archived"),
    },
    ["description"],
    extra=False,
)
MATCH = obj(
    {
        "item": obj(
            {
                "id": INT,
                "title": STR,
                "url": STR,
                "snippet": STR,
                "published_at": null(TIME),
                "ingested_at": TIME,
                "embedding_status": enum("pending", "done", "failed"),
                "source": obj({"id": INT, "name": STR}),
            }
        ),
        "score": NUM,
        "components": {"type": "object", "description": "every scoring component (see README)"},
        "reasons": arr(STR),
        "gate": null(enum("negative_term", "blocked_source", "strict_no_hit")),
        "lexical_only": BOOL,
        "is_backfill": BOOL,
        "computed_at": TIME,
        "feedback": null(enum("like", "dislike")),
        "source_blocked": BOOL,
        "decision": null(
            obj(
                {
                    "tier": enum("IMMEDIATE", "BATCH", "DIGEST", "IGNORE"),
                    "status": STR,
                    "reason": STR,
                    "decided_at": TIME,
                    "pushed_at": null(TIME),
                }
            )
        ),
    }
)


@openapi.doc(
    "The caller's goals",
    tags=("goals",),
    response=page_of(GOAL),
    query=[*PAGE_PARAMS, qparam("status", enum("active", "paused", "archived"), "only this status")],
)
@requires("goals:read")
async def list_goals(request: web.Request) -> web.Response:
    pg = page(request)
    if pg.after is not None and (len(pg.after) != 1 or not isinstance(pg.after[0], int)):
        raise BadRequest("cursor is not valid")
    rows = await goals.list_goals(
        rt(request),
        principal(request),
        status=request.query.get("status") or None,
        limit=pg.limit + 1,
        after_id=pg.after[0] if pg.after else 0,
    )
    return ok(paged(rows, pg, lambda r: [r["id"]]))


@openapi.doc(
    "Create a goal (only the description is required: the name is derived from it when missing); it is "
    "embedded and scored against the last 72 h of items in the background",
    tags=("goals",),
    body=GOAL_BODY,
    response=GOAL,
    status=201,
)
@requires("goals:write")
async def create_goal(request: web.Request) -> web.Response:
    return ok(await goals.create(rt(request), principal(request), await read_json(request)), status=201)


@openapi.doc("One goal", tags=("goals",), response=GOAL)
@requires("goals:read")
async def get_goal(request: web.Request) -> web.Response:
    return ok(await goals.get(rt(request), principal(request), path_id(request)))


@openapi.doc(
    "Change a goal (only the fields given); changing the scored text (name, description, terms, mode) bumps "
    "its version, re-embeds it and re-scores the last 72 h of items",
    tags=("goals",),
    body=obj(GOAL_BODY["properties"], [], extra=False),
    response=GOAL,
)
@requires("goals:write")
async def put_goal(request: web.Request) -> web.Response:
    body = await read_json(request)
    return ok(await goals.update(rt(request), principal(request), path_id(request), body))


@openapi.doc("Delete a goal with its matches, decisions and inbox entries", tags=("goals",), status=204)
@requires("goals:write")
async def delete_goal(request: web.Request) -> web.Response:
    await goals.delete(rt(request), principal(request), path_id(request))
    return web.Response(status=204)


@openapi.doc(
    "Pause a goal: nothing is scored or pushed for it until it is resumed (pending pushes are cancelled)",
    tags=("goals",),
    response=GOAL,
)
@requires("goals:write")
async def pause_goal(request: web.Request) -> web.Response:
    return ok(await goals.pause(rt(request), principal(request).user_id, path_id(request)))


@openapi.doc(
    "Resume a goal; the items of the last 72 h are scored for it (never as instant alerts)",
    tags=("goals",),
    response=GOAL,
)
@requires("goals:write")
async def resume_goal(request: web.Request) -> web.Response:
    return ok(await goals.resume(rt(request), principal(request).user_id, path_id(request)))


@openapi.doc(
    "The goal's scored items, best first, with score components, reasons and the decision when there is one",
    tags=("goals",),
    response=page_of(MATCH),
    query=[
        *PAGE_PARAMS,
        qparam(
            "min_score",
            {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
            "only items scoring at least this",
        ),
    ],
)
@requires("goals:read")
async def goal_matches(request: web.Request) -> web.Response:
    pg = page(request)
    after = None
    if pg.after is not None:
        if len(pg.after) != 2 or not isinstance(pg.after[0], (int, float)) or not isinstance(pg.after[1], int):
            raise BadRequest("cursor is not valid")
        after = (float(pg.after[0]), int(pg.after[1]))
    rows = await goals.matches(
        rt(request),
        principal(request),
        path_id(request),
        min_score=query_float(request, "min_score", 0.0) or 0.0,
        limit=pg.limit + 1,
        after=after,
    )
    return ok(paged(rows, pg, lambda m: [m["score"], m["item"]["id"]]))


@openapi.doc(
    "Suggest priority terms for a goal being written",
    description="From the LLM when it is on and within budget, otherwise the words that recur in the items that "
    "match the description best (the goal's own scored items when `goal_id` is given). Terms already written are "
    "never suggested.",
    tags=("goals",),
    body=obj(
        {
            "name": STR,
            "description": {"type": "string", "maxLength": 2000},
            "terms": arr(STR, description="terms already written (a leading '-' marks a negative one)"),
            "goal_id": INT,
        },
        [],
        extra=False,
    ),
    response=obj({"terms": arr(STR), "source": enum("llm", "items", "none"), "note": STR}),
)
@requires("goals:read")
async def suggest_terms(request: web.Request) -> web.Response:
    return ok(await goals.suggest_terms(rt(request), principal(request), await read_json(request)))


NEXT_EMAIL = obj(
    {
        "kind": enum("batch", "digest"),
        "items": {**INT, "description": "items in the email (0: nothing would go out now)"},
        "email_id": null(INT),
        "subject": STR,
        "html": STR,
        "text": STR,
    },
    ["kind", "items", "email_id"],
)


@openapi.doc(
    "Preview the goal's next batch or digest email as it would go out now (changes nothing)",
    tags=("goals",),
    query=[qparam("kind", enum("batch", "digest"), "which email", required=True)],
    response=NEXT_EMAIL,
)
@requires("goals:read")
async def preview_email(request: web.Request) -> web.Response:
    kind = request.query.get("kind", "")
    return ok(await goals.next_email(rt(request), principal(request), path_id(request), kind))


@openapi.doc(
    "Send the goal's next batch or digest email now: its items are pushed like at a window",
    tags=("goals",),
    body=obj({"kind": enum("batch", "digest")}, ["kind"], extra=False),
    response=NEXT_EMAIL,
)
@requires("goals:write")
async def send_email_now(request: web.Request) -> web.Response:
    body = await read_json(request)
    kind = body.get("kind") if isinstance(body.get("kind"), str) else ""
    return ok(await goals.next_email(rt(request), principal(request), path_id(request), kind, send=True))


ROUTES = [
    web.post("/api/v1/goals/suggest_terms", suggest_terms),
    web.get("/api/v1/goals", list_goals),
    web.post("/api/v1/goals", create_goal),
    web.get("/api/v1/goals/{id}", get_goal),
    web.put("/api/v1/goals/{id}", put_goal),
    web.delete("/api/v1/goals/{id}", delete_goal),
    web.post("/api/v1/goals/{id}/pause", pause_goal),
    web.post("/api/v1/goals/{id}/resume", resume_goal),
    web.get("/api/v1/goals/{id}/matches", goal_matches),
    web.get("/api/v1/goals/{id}/next_email", preview_email),
    web.post("/api/v1/goals/{id}/send_now", send_email_now),
]
