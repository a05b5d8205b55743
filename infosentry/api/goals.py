"""Routes of /api/v1/goals: the caller's goals (CRUD, pause/resume) and each goal's scored items.

Another user's goal is a 404. Handlers never embed: a new or edited goal is stored and the embed job is
nudged (goal vector, then a backfill over the last 72 h of items). Imports store.goals, hotconfig, jobs,
openapi, api.http.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg
from aiohttp import web

from infosentry import hotconfig, jobs, openapi
from infosentry.api.account import valid_timezone
from infosentry.api.http import (
    QUEUE,
    Fields,
    Principal,
    ok,
    page,
    paged,
    path_id,
    principal,
    query_float,
    read_json,
    requires,
    rt,
)
from infosentry.errors import BadRequest, Conflict, Invalid, NotFound
from infosentry.openapi import BOOL, INT, NUM, PAGE_PARAMS, STR, TIME, arr, enum, null, obj, page_of, qparam
from infosentry.runtime import Runtime
from infosentry.store import goals as store

MAX_GOALS_PER_USER = 100
FIELDS = {
    "name",
    "description",
    "priority_terms",
    "negative_terms",
    "priority_mode",
    "batch_windows",
    "digest_time",
    "timezone",
    "email",
    "language",
    "status",
}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

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
        "digest_time": STR,
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
        "created_at": TIME,
        "updated_at": TIME,
    }
)
TERMS = arr({"type": "string", "minLength": 1, "maxLength": 100}, maxItems=50)
GOAL_BODY = obj(
    {
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
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
        "timezone": {"type": "string", "description": "IANA name, default the user's"},
        "email": null({"type": "string", "format": "email"}),
        "language": null(enum("en", "zh")),
        "status": enum("active", "paused", "archived"),
    },
    ["name", "description"],
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


def _goal(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    out.pop("user_id", None)
    out.pop("embedding_model", None)
    return out


def validate(body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    """The changes a body asks for, validated and normalised (every error reported at once, as one 422)."""
    f = Fields(body, FIELDS)
    out: dict[str, Any] = {}
    values = {
        "name": f.str("name", required=creating, max_len=100, min_len=1),
        "description": f.str("description", required=creating, max_len=2000, min_len=1),
        "priority_terms": f.str_list("priority_terms", max_items=50, max_len=100),
        "negative_terms": f.str_list("negative_terms", max_items=50, max_len=100),
        "priority_mode": f.str("priority_mode", choices=("SOFT", "STRICT")),
        "timezone": f.str("timezone", max_len=64, min_len=1),
        "email": f.str("email", max_len=254, nullable=True),
        "language": f.str("language", choices=("en", "zh"), nullable=True),
        "status": f.str("status", choices=("active", "paused", "archived")),
        "digest_time": f.str("digest_time", max_len=5),
    }
    windows = f.str_list("batch_windows", max_items=3, max_len=5)
    if windows is not None:
        try:
            values["batch_windows"] = hotconfig.parse_hhmm_list(",".join(windows))
        except Invalid as exc:
            f.check(False, "batch_windows", exc.detail)
    if values["digest_time"] is not None:
        try:
            values["digest_time"] = hotconfig.normalise_hhmm(values["digest_time"])
        except Invalid as exc:
            f.check(False, "digest_time", exc.detail)
    if values["timezone"] is not None:
        f.check(valid_timezone(values["timezone"]), "timezone", "must be an IANA time zone such as Asia/Shanghai")
    if values["email"]:
        values["email"] = values["email"].lower()
        f.check(bool(_EMAIL.match(values["email"])), "email", "must be an email address")
    f.done()
    for key, value in values.items():
        if f.has(key):
            out[key] = value or None if key in ("email", "language") else value
    return out


def _check_recipient(fields: dict[str, Any], p: Principal) -> None:
    """Pushes go to the owner's own (proven) address: otherwise anyone could make the service mail a third party.
    An admin may direct a goal elsewhere (a team list, for instance)."""
    email = fields.get("email")
    if email and not p.is_admin and email != p.email.lower():
        raise Invalid(
            "email: must be your own address (only an admin can send a goal's pushes elsewhere)",
            errors=[{"field": "email", "message": "must be your own address"}],
        )


def _nudge(request: web.Request) -> Any:
    return jobs.nudge(request.app[QUEUE], "embed_pending")


@openapi.doc(
    "The caller's goals",
    tags=("goals",),
    response=page_of(GOAL),
    query=[*PAGE_PARAMS, qparam("status", enum("active", "paused", "archived"), "only this status")],
)
@requires("goals:read")
async def list_goals(request: web.Request) -> web.Response:
    pg = page(request)
    status = request.query.get("status") or None
    if status is not None and status not in ("active", "paused", "archived"):
        raise BadRequest("status must be active, paused or archived")
    if pg.after is not None and (len(pg.after) != 1 or not isinstance(pg.after[0], int)):
        raise BadRequest("cursor is not valid")
    after = pg.after[0] if pg.after else 0
    rows = await store.list_goals(
        rt(request).pool, principal(request).user_id, limit=pg.limit + 1, after_id=after, status=status
    )
    return ok(paged([_goal(r) for r in rows], pg, lambda r: [r["id"]]))


@openapi.doc(
    "Create a goal; it is embedded and scored against the last 72 h of items in the background",
    tags=("goals",),
    body=GOAL_BODY,
    response=GOAL,
    status=201,
)
@requires("goals:write")
async def create_goal(request: web.Request) -> web.Response:
    p = principal(request)
    fields = validate(await read_json(request), creating=True)
    _check_recipient(fields, p)
    row = await create(rt(request), p.user_id, p.timezone, fields)
    await _nudge(request)
    return ok(_goal(row), status=201)


async def create(runtime: Runtime, user_id: int, user_timezone: str, fields: dict[str, Any]) -> asyncpg.Record:
    """Store a validated goal with the defaults (the user's time zone, DEFAULT_BATCH_WINDOWS and
    DEFAULT_DIGEST_TIME), at most MAX_GOALS_PER_USER per user (also used by `infosentry goal add`)."""
    fields = dict(fields)
    fields.setdefault("timezone", user_timezone)
    fields.setdefault("batch_windows", hotconfig.parse_hhmm_list(runtime.hot["DEFAULT_BATCH_WINDOWS"]))
    fields.setdefault("digest_time", runtime.hot["DEFAULT_DIGEST_TIME"])
    async with runtime.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('goals'), $1::int)", user_id % 2**31)
        if await store.count(conn, user_id) >= MAX_GOALS_PER_USER:
            raise Conflict(f"at most {MAX_GOALS_PER_USER} goals per user; archive or delete one first")
        return await store.create(conn, user_id, fields)


@openapi.doc("One goal", tags=("goals",), response=GOAL)
@requires("goals:read")
async def get_goal(request: web.Request) -> web.Response:
    row = await store.get(rt(request).pool, principal(request).user_id, path_id(request))
    if row is None:
        raise NotFound("no such goal")
    return ok(_goal(row))


@openapi.doc(
    "Change a goal (only the fields given); changing the scored text (name, description, terms, mode) bumps "
    "its version, re-embeds it and re-scores the last 72 h of items",
    tags=("goals",),
    body=obj(GOAL_BODY["properties"], [], extra=False),
    response=GOAL,
)
@requires("goals:write")
async def put_goal(request: web.Request) -> web.Response:
    changes = validate(await read_json(request), creating=False)
    _check_recipient(changes, principal(request))
    return await _update(request, changes)


async def _update(request: web.Request, changes: dict[str, Any]) -> web.Response:
    runtime = rt(request)
    async with runtime.pool.acquire() as conn:
        row = await store.update(conn, principal(request).user_id, path_id(request), changes)
    if row is None:
        raise NotFound("no such goal")
    if not row["embedded"] or not row["backfilled"]:
        await _nudge(request)
    return ok(_goal(row))


@openapi.doc("Delete a goal with its matches, decisions and inbox entries", tags=("goals",), status=204)
@requires("goals:write")
async def delete_goal(request: web.Request) -> web.Response:
    if not await store.delete(rt(request).pool, principal(request).user_id, path_id(request)):
        raise NotFound("no such goal")
    return web.Response(status=204)


@openapi.doc("Pause a goal: nothing is scored or pushed for it until it is resumed", tags=("goals",), response=GOAL)
@requires("goals:write")
async def pause_goal(request: web.Request) -> web.Response:
    return await _update(request, {"status": "paused"})


@openapi.doc(
    "Resume a goal; the items of the last 72 h are scored for it (never as instant alerts)",
    tags=("goals",),
    response=GOAL,
)
@requires("goals:write")
async def resume_goal(request: web.Request) -> web.Response:
    return await _update(request, {"status": "active"})


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
    runtime = rt(request)
    goal_id = path_id(request)
    if await store.get(runtime.pool, principal(request).user_id, goal_id) is None:
        raise NotFound("no such goal")
    min_score = query_float(request, "min_score", 0.0)
    pg = page(request)
    after = None
    if pg.after is not None:
        if len(pg.after) != 2 or not isinstance(pg.after[0], (int, float)) or not isinstance(pg.after[1], int):
            raise BadRequest("cursor is not valid")
        after = (float(pg.after[0]), int(pg.after[1]))
    rows = await store.goal_matches(runtime.pool, goal_id, min_score=min_score or 0.0, limit=pg.limit + 1, after=after)
    items = [_match(r) for r in rows]
    return ok(paged(items, pg, lambda m: [m["score"], m["item"]["id"]]))


def _match(r: asyncpg.Record) -> dict[str, Any]:
    decision = None
    if r["tier"] is not None:
        decision = {
            "tier": r["tier"],
            "status": r["decision_status"],
            "reason": r["decision_reason"],
            "decided_at": r["decided_at"],
            "pushed_at": r["pushed_at"],
        }
    return {
        "item": {
            "id": r["item_id"],
            "title": r["title"],
            "url": r["url"],
            "snippet": r["snippet"],
            "published_at": r["published_at"],
            "ingested_at": r["ingested_at"],
            "embedding_status": r["embedding_status"],
            "source": {"id": r["source_id"], "name": r["source_name"]},
        },
        "score": r["score"],
        "components": r["components"],
        "reasons": r["reasons"],
        "gate": r["gate"],
        "lexical_only": r["lexical_only"],
        "is_backfill": r["is_backfill"],
        "computed_at": r["computed_at"],
        "decision": decision,
    }


ROUTES = [
    web.get("/api/v1/goals", list_goals),
    web.post("/api/v1/goals", create_goal),
    web.get("/api/v1/goals/{id}", get_goal),
    web.put("/api/v1/goals/{id}", put_goal),
    web.delete("/api/v1/goals/{id}", delete_goal),
    web.post("/api/v1/goals/{id}/pause", pause_goal),
    web.post("/api/v1/goals/{id}/resume", resume_goal),
    web.get("/api/v1/goals/{id}/matches", goal_matches),
]
