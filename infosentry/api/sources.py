"""Routes of /api/v1/sources: the caller's subscriptions, source settings and health, OPML in and out.

The JSON API never fetches: a new or changed source is due at once and the ingest job is nudged; a URL that
is a web page rather than a feed shows up in the source's health after that first fetch (feed discovery,
which needs the network, is in the CLI and the pages). Imports domain.sources, openapi, api.http.
"""

from __future__ import annotations

from aiohttp import web

from infosentry import openapi
from infosentry.api.http import ok, page, paged, path_id, principal, read_json, requires, rt
from infosentry.domain import sources
from infosentry.errors import BadRequest
from infosentry.fetch_errors import ERROR_KINDS
from infosentry.openapi import BOOL, INT, PAGE_PARAMS, STR, TIME, arr, enum, null, obj, page_of, qparam

# --- schemas ---

TYPE = enum("rss", "site", "hotlist")
SOURCE = obj(
    {
        "id": INT,
        "type": TYPE,
        "url": STR,
        "name": STR,
        "config": {"type": "object"},
        "enabled": {**BOOL, "description": "the caller's subscription"},
        "source_enabled": {**BOOL, "description": "the source itself (operators can switch a source off)"},
        "fetch_interval_sec": INT,
        "current_interval_sec": null(INT),
        "created_at": TIME,
        "updated_at": TIME,
        "subscribed_at": TIME,
        "last_fetch_at": null(TIME),
        "next_fetch_at": TIME,
        "last_success_at": null(TIME),
        "error_streak": INT,
        "last_error": null(STR),
        # a fetch error's kind, or a source's bad configuration, or our own failure
        "last_error_kind": null(enum(*sorted(ERROR_KINDS | {"config", "internal"}))),
    }
)
FETCH_LOG = obj(
    {
        "started_at": TIME,
        "duration_ms": INT,
        "status": enum("ok", "not_modified", "error"),
        "http_status": null(INT),
        "fetched": INT,
        "new": INT,
        "duplicate": INT,
        "error_kind": null(STR),
        "error": null(STR),
    }
)
SOURCE_DETAIL = {"allOf": [SOURCE, obj({"items_24h": INT, "recent_fetches": arr(FETCH_LOG)})]}
SOURCE_BODY = obj(
    {
        "type": {**TYPE, "default": "rss"},
        "url": {"type": "string", "format": "uri", "maxLength": 2048},
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "fetch_interval_sec": {
            "type": "integer",
            "minimum": 60,
            "maximum": 86400,
            "description": "default 900 (rss), 1800 (site, hotlist)",
        },
        "config": {
            "type": "object",
            "description": "site: {selectors: {item, title, link?, snippet?, time?}, "
            "headers?, timezone?}; hotlist: {base_url?, source_id}; rss: {headers?}",
        },
        "enabled": {**BOOL, "default": True},
    },
    ["url"],
    extra=False,
)
REPORT_ENTRY = obj(
    {"url": STR, "name": STR, "id": INT, "type": TYPE, "new_source": BOOL, "enabled": BOOL, "reason": STR}, ["url"]
)
REPORT = obj({"added": arr(REPORT_ENTRY), "skipped": arr(REPORT_ENTRY), "invalid": arr(REPORT_ENTRY)})


@openapi.doc(
    "The sources the caller follows, with their health",
    query=[*PAGE_PARAMS, qparam("type", TYPE, "only this type"), qparam("enabled", BOOL, "only (dis)abled ones")],
    response=page_of(SOURCE),
)
@requires("sources:read")
async def list_sources(request: web.Request) -> web.Response:
    pg = page(request)
    enabled_raw = request.query.get("enabled")
    if enabled_raw not in (None, "true", "false"):
        raise BadRequest("query parameter enabled must be true or false")
    if pg.after is not None and (len(pg.after) != 1 or not isinstance(pg.after[0], int)):
        raise BadRequest("cursor is not valid")
    rows = await sources.list_sources(
        rt(request),
        principal(request),
        type=request.query.get("type"),
        enabled=None if enabled_raw is None else enabled_raw == "true",
        limit=pg.limit + 1,
        after_id=pg.after[0] if pg.after else 0,
    )
    return ok(paged(rows, pg, lambda r: [r["id"]]))


@openapi.doc(
    "Follow a source: 201 when it is new, 200 when it already existed (the caller is subscribed to it)",
    description="No network access here: a URL that is a web page rather than a feed shows up as a parse error in "
    "the source's health after its first fetch (use `infosentry source add` for feed discovery).",
    body=SOURCE_BODY,
    response=SOURCE,
    status=201,
    responses={200: ("already existed; now followed", SOURCE, "application/json")},
)
@requires("sources:write")
async def create_source(request: web.Request) -> web.Response:
    followed = await sources.follow(rt(request), principal(request), await read_json(request))
    return ok(followed.source, status=201 if followed.created else 200)


@openapi.doc("One followed source: settings, health and its last 10 fetches", response=SOURCE_DETAIL)
@requires("sources:read")
async def get_source(request: web.Request) -> web.Response:
    return ok(await sources.get(rt(request), principal(request), path_id(request)))


@openapi.doc(
    "Change a source (url, name, interval, config: its creator, an admin, or its only subscriber) or the "
    "caller's subscription (enabled)",
    body=obj({k: v for k, v in SOURCE_BODY["properties"].items() if k != "type"}, [], extra=False),
    response=SOURCE,
)
@requires("sources:write")
async def update_source(request: web.Request) -> web.Response:
    body = await read_json(request)
    return ok(await sources.edit(rt(request), principal(request), path_id(request), body))


@openapi.doc("Unsubscribe (the source stays for its other followers)", status=204)
@requires("sources:write")
async def delete_source(request: web.Request) -> web.Response:
    await sources.unfollow(rt(request), principal(request), path_id(request))
    return web.Response(status=204)


@openapi.doc("Enable the caller's subscription", response=SOURCE)
@requires("sources:write")
async def enable_source(request: web.Request) -> web.Response:
    return ok(await sources.set_enabled(rt(request), principal(request), path_id(request), True))


@openapi.doc("Disable the caller's subscription (a source nobody follows enabled is not fetched)", response=SOURCE)
@requires("sources:write")
async def disable_source(request: web.Request) -> web.Response:
    return ok(await sources.set_enabled(rt(request), principal(request), path_id(request), False))


@openapi.doc(
    "Import an OPML document (nested folders are flattened; feeds already followed are skipped)",
    body={"type": "string"},
    body_type="text/x-opml",
    response=REPORT,
)
@requires("sources:write")
async def import_sources(request: web.Request) -> web.Response:
    report = await sources.import_opml(rt(request), principal(request), await request.read())
    return ok(report.as_dict())


@openapi.doc("The caller's sources as OPML 2.0", response={"type": "string"}, response_type="text/x-opml")
@requires("sources:read")
async def export_sources(request: web.Request) -> web.Response:
    return web.Response(
        text=await sources.export_opml(rt(request), principal(request)),
        content_type="text/x-opml",
        charset="utf-8",
        headers={"Content-Disposition": 'attachment; filename="infosentry-sources.opml"'},
    )


# the fixed paths first: /sources/import must not be read as /sources/{id}
ROUTES: list[web.RouteDef] = [
    web.post("/api/v1/sources/import", import_sources),
    web.get("/api/v1/sources/export", export_sources),
    web.get("/api/v1/sources", list_sources),
    web.post("/api/v1/sources", create_source),
    web.get("/api/v1/sources/{id}", get_source),
    web.put("/api/v1/sources/{id}", update_source),
    web.delete("/api/v1/sources/{id}", delete_source),
    web.post("/api/v1/sources/{id}/enable", enable_source),
    web.post("/api/v1/sources/{id}/disable", disable_source),
]
