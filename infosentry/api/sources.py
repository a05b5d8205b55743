"""Routes of /api/v1/sources: the caller's subscriptions, source settings and health, OPML in and out.

A source (type + URL) is shared and fetched once however many users follow it; each user has a subscription
that enable/disable toggle and DELETE removes. A source the caller does not follow is a 404. Handlers never
fetch: a new or changed source is due at once and the ingest job is nudged; problems with the URL show up in
the source's health after that first fetch (feed discovery, which needs the network, is in the CLI).
Imports ingest (validation, OPML), store.sources, jobs (nudge), api.http.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from aiohttp import web

from infosentry import ingest, jobs, openapi
from infosentry.api.http import QUEUE, Fields, ok, page, paged, path_id, principal, read_json, requires, rt
from infosentry.errors import BadRequest, Conflict, Invalid, NotFound
from infosentry.openapi import BOOL, INT, PAGE_PARAMS, STR, TIME, arr, enum, null, obj, page_of, qparam
from infosentry.sources import SOURCE_TYPES
from infosentry.store import sources as sources_store

log = logging.getLogger(__name__)

FIELDS = {"type", "url", "name", "fetch_interval_sec", "config", "enabled"}
MAX_OPML_BYTES = 1024 * 1024  # the app-wide body limit applies first; this is the documented figure


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
        "last_error_kind": null(
            enum(
                "dns",
                "tls",
                "timeout",
                "connection",
                "http_status",
                "too_large",
                "too_many_redirects",
                "blocked_address",
                "invalid_url",
                "parse",
                "config",
                "internal",
            )
        ),
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
REPORT_ENTRY = obj({"url": STR, "name": STR, "id": INT, "type": TYPE, "new_source": BOOL, "reason": STR}, ["url"])
REPORT = obj({"added": arr(REPORT_ENTRY), "skipped": arr(REPORT_ENTRY), "invalid": arr(REPORT_ENTRY)})


def public(row: asyncpg.Record | dict[str, Any], user_id: int) -> dict[str, Any]:
    """A source as its subscriber sees it. Header values in the config (they may carry credentials) are shown
    only to the user who created the source."""
    data = dict(row)
    config = dict(data.get("config") or {})
    if config.get("headers") and data.get("created_by") != user_id:
        config["headers"] = {name: "***" for name in config["headers"]}
    data["config"] = config
    data.pop("created_by", None)
    return data


async def _nudge_ingest(request: web.Request) -> None:
    """Ask for a fetch soon; the source is due already, so a lost nudge only costs the next tick (10 s)."""
    try:
        await jobs.nudge(request.app[QUEUE], "ingest_due")
    except Exception as exc:  # the queue is best effort here: the periodic tick picks the source up anyway
        log.warning("could not nudge ingest_due: %s", exc, extra={"action": "nudge_failed"})


async def _mine(request: web.Request, source_id: int) -> asyncpg.Record:
    row = await sources_store.user_source(rt(request).pool, principal(request).user_id, source_id)
    if row is None:
        raise NotFound("no such source")
    return row


@openapi.doc(
    "The sources the caller follows, with their health",
    query=[*PAGE_PARAMS, qparam("type", TYPE, "only this type"), qparam("enabled", BOOL, "only (dis)abled ones")],
    response=page_of(SOURCE),
)
@requires("sources:read")
async def list_sources(request: web.Request) -> web.Response:
    pg = page(request)
    kind = request.query.get("type")
    if kind is not None and kind not in SOURCE_TYPES:
        raise BadRequest(f"query parameter type must be one of {', '.join(SOURCE_TYPES)}")
    enabled_raw = request.query.get("enabled")
    if enabled_raw not in (None, "true", "false"):
        raise BadRequest("query parameter enabled must be true or false")
    after = 0
    if pg.after is not None:
        if len(pg.after) != 1 or not isinstance(pg.after[0], int):
            raise BadRequest("cursor is not valid")
        after = pg.after[0]
    user_id = principal(request).user_id
    rows = await sources_store.user_sources(
        rt(request).pool,
        user_id,
        limit=pg.limit + 1,
        after_id=after,
        type=kind,
        enabled=None if enabled_raw is None else enabled_raw == "true",
    )
    return ok(paged([public(r, user_id) for r in rows], pg, lambda r: [r["id"]]))


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
    body = await read_json(request)
    f = Fields(body, FIELDS)
    enabled = f.bool("enabled", default=True)
    f.done()  # unknown fields and a bad `enabled`; validate_source checks the rest
    spec = ingest.validate_source(
        type=body.get("type"),
        url=body.get("url"),
        name=body.get("name"),
        interval=body.get("fetch_interval_sec"),
        config=body.get("config"),
    )
    user_id = principal(request).user_id
    row, created, _ = await ingest.add_source(rt(request).pool, user_id, spec, enabled=enabled)
    if enabled:
        await _nudge_ingest(request)
    return ok(public(row, user_id), status=201 if created else 200)


@openapi.doc("One followed source: settings, health and its last 10 fetches", response=SOURCE_DETAIL)
@requires("sources:read")
async def get_source(request: web.Request) -> web.Response:
    source_id = path_id(request)
    row = await _mine(request, source_id)
    pool = rt(request).pool
    data = public(row, principal(request).user_id)
    data["items_24h"] = await sources_store.items_since(pool, source_id, 24)
    data["recent_fetches"] = [dict(r) for r in await sources_store.recent_logs(pool, source_id, 10)]
    return ok(data)


@openapi.doc(
    "Change a source (url, name, interval, config: its creator, an admin, or its only subscriber) or the "
    "caller's subscription (enabled)",
    body=obj({k: v for k, v in SOURCE_BODY["properties"].items() if k != "type"}, [], extra=False),
    response=SOURCE,
)
@requires("sources:write")
async def update_source(request: web.Request) -> web.Response:
    source_id = path_id(request)
    body = await read_json(request)
    f = Fields(body, FIELDS)
    enabled = f.bool("enabled")
    if "type" in body:
        f.check(False, "type", "cannot be changed; add a new source instead")
    f.done()
    p = principal(request)
    pool = rt(request).pool
    row = await _mine(request, source_id)
    shared_change = {k for k in ("url", "name", "fetch_interval_sec", "config") if k in body}
    if shared_change:
        shared = await sources_store.subscriber_count(pool, source_id) > 1
        if shared and not p.is_admin and {"url", "config"} & shared_change:
            # other followers chose this feed: repointing it would change what their goals receive
            raise Conflict(
                "this source is shared with other subscribers: add the new url as a new source (and "
                "unsubscribe from this one) instead of changing its url or config"
            )
        if shared and not (p.is_admin or row["created_by"] == p.user_id):
            raise Conflict(
                "this source is shared with other subscribers: only the user who added it (or an admin) "
                "can change its name or interval"
            )
        spec = ingest.validate_source(
            type=row["type"],
            url=body.get("url", row["url"]),
            name=body.get("name", row["name"]),
            interval=body.get("fetch_interval_sec", row["fetch_interval_sec"]),
            config=body["config"] if "config" in body else row["config"],
        )
        try:
            await sources_store.update_source(
                pool,
                source_id,
                name=spec.name if "name" in body else None,
                url=spec.url if spec.url != row["url"] else None,
                config=spec.config if "config" in body and spec.config != row["config"] else None,
                fetch_interval_sec=spec.fetch_interval_sec if "fetch_interval_sec" in body else None,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"another {row['type']} source already has this url; subscribe to it instead") from None
    if enabled is not None:
        await sources_store.set_subscription_enabled(pool, p.user_id, source_id, enabled)
    if shared_change or enabled:
        await _nudge_ingest(request)
    return ok(public(await _mine(request, source_id), p.user_id))


@openapi.doc("Unsubscribe (the source stays for its other followers)", status=204)
@requires("sources:write")
async def delete_source(request: web.Request) -> web.Response:
    if not await sources_store.unsubscribe(rt(request).pool, principal(request).user_id, path_id(request)):
        raise NotFound("no such source")
    return web.Response(status=204)


async def _toggle(request: web.Request, enabled: bool) -> web.Response:
    source_id = path_id(request)
    user_id = principal(request).user_id
    if not await sources_store.set_subscription_enabled(rt(request).pool, user_id, source_id, enabled):
        raise NotFound("no such source")
    if enabled:
        await _nudge_ingest(request)
    return ok(public(await _mine(request, source_id), user_id))


@openapi.doc("Enable the caller's subscription", response=SOURCE)
@requires("sources:write")
async def enable_source(request: web.Request) -> web.Response:
    return await _toggle(request, True)


@openapi.doc("Disable the caller's subscription (a source nobody follows enabled is not fetched)", response=SOURCE)
@requires("sources:write")
async def disable_source(request: web.Request) -> web.Response:
    return await _toggle(request, False)


@openapi.doc(
    "Import an OPML document (nested folders are flattened; feeds already followed are skipped)",
    body={"type": "string"},
    body_type="text/x-opml",
    response=REPORT,
)
@requires("sources:write")
async def import_sources(request: web.Request) -> web.Response:
    raw = await request.read()
    if not raw.strip():
        raise BadRequest("send an OPML document as the request body")
    if len(raw) > MAX_OPML_BYTES:
        raise Invalid(f"OPML document larger than {MAX_OPML_BYTES} bytes")
    report = await ingest.import_opml(rt(request).pool, principal(request).user_id, raw)
    if report["added"]:
        await _nudge_ingest(request)
    return ok(report)


@openapi.doc("The caller's sources as OPML 2.0", response={"type": "string"}, response_type="text/x-opml")
@requires("sources:read")
async def export_sources(request: web.Request) -> web.Response:
    text = await ingest.export_opml(rt(request).pool, principal(request).user_id)
    return web.Response(
        text=text,
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
