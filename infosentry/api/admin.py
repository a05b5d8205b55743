"""Operator routes: /api/v1/admin/* (config, audit, budget, health, alerts; admin scope, and admin is a role:
a demoted admin's tokens lose it), GET /api/v1/openapi.json (public) and GET /metrics.

/metrics answers an admin token, or no token at all only when the request comes from loopback AND carries
no X-Forwarded-For: behind our nginx every request arrives from 127.0.0.1, and nginx adds that header, so
"loopback" alone would publish the metrics to the internet; a local Prometheus scraping 127.0.0.1:8000
directly sends no such header.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from aiohttp import web

from infosentry import auth, hotconfig, metrics, openapi
from infosentry.api.http import ok, page, paged, principal, read_json, requires, rt
from infosentry.domain import accounts, admin
from infosentry.domain.admin import TYPE_NAMES
from infosentry.errors import BadRequest, Forbidden, Unauthorized
from infosentry.openapi import ANY, INT, NUM, PAGE_PARAMS, STR, TIME, arr, enum, null, obj, page_of

_HHMM = r"([01]?[0-9]|2[0-3]):[0-5][0-9]"
_PATTERNS = {"DEFAULT_DIGEST_TIME": f"^{_HHMM}$", "DEFAULT_BATCH_WINDOWS": rf"^ *{_HHMM}( *, *{_HHMM}){{0,2}} *$"}

CONFIG_ENTRY = obj(
    {
        "key": STR,
        "value": ANY,
        "default": ANY,
        "builtin_default": ANY,
        "source": enum("table", "env", "default"),
        "type": enum("boolean", "integer", "number", "string"),
        "min": null(NUM),
        "max": null(NUM),
        "help": STR,
        "updated_at": null(TIME),
        "updated_by": null(STR),
    }
)
AUDIT_ENTRY = obj(
    {"id": INT, "key": STR, "old_value": ANY, "new_value": ANY, "changed_by": null(STR), "changed_at": TIME}
)
ALERT = obj(
    {
        "alert": STR,
        "severity": enum("critical", "warning", "notice"),
        "subject": STR,
        "detail": STR,
        "value": null(NUM),
        "threshold": null(NUM),
        "since": null(TIME),
        "episode_id": null(INT),
    }
)
BUDGET = {"type": "object", "description": "budget.status(): today's spend, caps and breaker state"}
HEALTH = obj(
    {
        "status": enum("ok", "degraded", "critical"),
        "checked_at": TIME,
        "components": {"type": "object", "additionalProperties": obj({"status": enum("ok", "degraded", "critical")})},
        "alerts": arr({"type": "object"}),
    }
)


@openapi.doc(
    "Switches and tunables: live value, default, source and help", tags=("admin",), response=page_of(CONFIG_ENTRY)
)
@requires("admin:read")
async def get_config(request: web.Request) -> web.Response:
    return ok({"items": await admin.config_entries(rt(request)), "next_cursor": None})


@openapi.doc(
    "Change switches and tunables in every process (within 2 s); the whole request is rejected on any error",
    description="Body: a JSON object of KEY: value. Unknown keys, bad values or a broken threshold order "
    "(DIGEST_MIN_SCORE <= BATCH_THRESHOLD <= BOUNDARY_LOW <= IMMEDIATE_THRESHOLD) answer 422 and change "
    "nothing. Every change is audited with the admin's email.",
    tags=("admin",),
    body={
        "type": "object",
        "minProperties": 1,
        "additionalProperties": False,
        "properties": {
            name: {"type": TYPE_NAMES[k.kind], "description": k.help}
            | ({"minimum": k.low, "maximum": k.high} if k.low is not None else {})
            | ({"pattern": _PATTERNS[name]} if name in _PATTERNS else {})
            for name, k in hotconfig.KEYS.items()
        },
    },
    response=obj({"changed": arr(obj({"key": STR, "old": ANY, "new": ANY})), "items": arr(CONFIG_ENTRY)}),
)
@requires("admin:write")
async def post_config(request: web.Request) -> web.Response:
    runtime = rt(request)
    changed = await admin.set_config(runtime, await read_json(request), who=principal(request).email)
    return ok({"changed": changed, "items": await admin.config_entries(runtime)})


@openapi.doc(
    "Audit trail of config changes, newest first", tags=("admin",), query=PAGE_PARAMS, response=page_of(AUDIT_ENTRY)
)
@requires("admin:read")
async def config_audit(request: web.Request) -> web.Response:
    pg = page(request)
    before = _cursor_id(pg.after)
    rows = await admin.config_audit(rt(request), limit=pg.limit + 1, before_id=before)
    return ok(paged(rows, pg, lambda r: [r["id"]]))


def _cursor_id(after: list[Any] | None) -> int | None:
    if after is None:
        return None
    if len(after) != 1 or not isinstance(after[0], int) or isinstance(after[0], bool):
        raise BadRequest("cursor is not valid")
    return after[0]


@openapi.doc("Live budget: today's spend, caps and breaker state", tags=("admin",), response=BUDGET)
@requires("admin:read")
async def get_budget(request: web.Request) -> web.Response:
    return ok(await admin.budget_status(rt(request)))


@openapi.doc(
    "Close today's budget breaker: the caps count the spend from now on (logged with the admin's email)",
    tags=("admin",),
    response=BUDGET,
)
@requires("admin:write")
async def reset_budget(request: web.Request) -> web.Response:
    return ok(await admin.reset_budget(rt(request), who=principal(request).email))


@openapi.doc(
    "Every component (database, queues, workers, budget, sources, SMTP, LLM) and the active alerts",
    description="status: ok (no alert above notice), degraded (a warning), critical (a critical alert).",
    tags=("admin",),
    response=HEALTH,
)
@requires("admin:read")
async def get_health(request: web.Request) -> web.Response:
    return ok(await admin.health_report(rt(request)))


@openapi.doc("Active alerts (CONTRACT §7), most severe first", tags=("admin",), response=page_of(ALERT))
@requires("admin:read")
async def get_alerts(request: web.Request) -> web.Response:
    return ok({"items": await admin.active_alerts(rt(request)), "next_cursor": None})


@openapi.doc("This API's OpenAPI 3.1 description", tags=("meta",), response={"type": "object"})
@requires(None)
async def get_openapi(request: web.Request) -> web.Response:
    # the web pages share the application but are not part of the API
    api_routes = [r for r in request.app.router.routes() if not r.handler.__module__.startswith("infosentry.web")]
    return ok(openapi.build(api_routes))


def _is_trusted_local(request: web.Request) -> bool:
    if "X-Forwarded-For" in request.headers or "Forwarded" in request.headers or "X-Real-IP" in request.headers:
        return False
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False  # a unix socket or an unknown peer is not trusted


@openapi.doc(
    "Prometheus metrics (text format)",
    description="Needs an admin token, except for a request from loopback without proxy headers.",
    tags=("meta",),
    response=STR,
    response_type="text/plain",
    public=True,
    errors=(401, 403),
)
async def get_metrics(request: web.Request) -> web.Response:
    header = request.headers.get("Authorization", "")
    if header:
        kind, _, token = header.partition(" ")
        actor = await accounts.actor_for_token(rt(request), token.strip())
        if kind.lower() != "bearer" or actor is None:
            raise Unauthorized("token is unknown, expired or revoked")
        if not auth.has_scope(actor.scopes, "admin:read"):
            raise Forbidden("/metrics needs the admin:read scope")
    elif not _is_trusted_local(request):
        raise Unauthorized("send an admin token; only local requests without proxy headers may omit it")
    report = await admin.health_report(rt(request))
    return web.Response(body=metrics.render(report), headers={"Content-Type": metrics.CONTENT_TYPE})


ROUTES = [
    web.get("/api/v1/admin/config", get_config),
    web.post("/api/v1/admin/config", post_config),
    web.get("/api/v1/admin/config/audit", config_audit),
    web.get("/api/v1/admin/budget", get_budget),
    web.post("/api/v1/admin/budget/reset", reset_budget),
    web.get("/api/v1/admin/health", get_health),
    web.get("/api/v1/admin/alerts", get_alerts),
    web.get("/api/v1/openapi.json", get_openapi),
    web.get("/metrics", get_metrics),
]
