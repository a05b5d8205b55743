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

from infosentry import alerts, auth, budget, health, hotconfig, metrics, openapi
from infosentry.api.http import ok, page, paged, principal, read_json, requires, rt
from infosentry.errors import BadRequest, Forbidden, Invalid, Unauthorized
from infosentry.openapi import ANY, INT, NUM, PAGE_PARAMS, STR, TIME, arr, enum, null, obj, page_of
from infosentry.runtime import Runtime
from infosentry.store import accounts, monitoring
from infosentry.store import config as config_store

_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string"}
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


def config_entries(runtime: Runtime, table: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every key: the live value of this process, its default (env or built in), where it comes from."""
    live, defaults = runtime.hot.snapshot(), runtime.hot.defaults
    entries = []
    for name, key in hotconfig.KEYS.items():
        row = table.get(name)
        source = "table" if row else ("env" if name in runtime.settings.hot_defaults else "default")
        entries.append(
            {
                "key": name,
                "value": live[name],
                "default": defaults[name],
                "builtin_default": key.default,
                "source": source,
                "type": _TYPE_NAMES[key.kind],
                "min": key.low,
                "max": key.high,
                "help": key.help,
                "updated_at": row["updated_at"] if row else None,
                "updated_by": row["updated_by"] if row else None,
            }
        )
    return entries


@openapi.doc(
    "Switches and tunables: live value, default, source and help", tags=("admin",), response=page_of(CONFIG_ENTRY)
)
@requires("admin:read")
async def get_config(request: web.Request) -> web.Response:
    runtime = rt(request)
    return ok({"items": config_entries(runtime, await monitoring.config_rows(runtime.pool)), "next_cursor": None})


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
            name: {"type": _TYPE_NAMES[k.kind], "description": k.help}
            | ({"minimum": k.low, "maximum": k.high} if k.low is not None else {})
            | ({"pattern": _PATTERNS[name]} if name in _PATTERNS else {})
            for name, k in hotconfig.KEYS.items()
        },
    },
    response=obj({"changed": arr(obj({"key": STR, "old": ANY, "new": ANY})), "items": arr(CONFIG_ENTRY)}),
)
@requires("admin:write")
async def post_config(request: web.Request) -> web.Response:
    runtime, who = rt(request), principal(request).email
    body = await read_json(request)
    if not body:
        raise Invalid("send a JSON object of KEY: value pairs", errors=[{"field": "(body)", "message": "is empty"}])
    changes, errors = {}, []
    for raw_name, value in body.items():
        name = raw_name.strip().upper()
        try:
            changes[name] = hotconfig.parse_value(name, value)
        except Invalid as exc:
            errors.extend({**e, "field": raw_name} for e in exc.errors or [{"message": exc.detail}])
    if errors:
        raise Invalid("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)
    before = runtime.hot.snapshot()
    written = await config_store.set_values(runtime.pool, changes, who=who)
    await runtime.hot.reload()  # this process answers with the new values at once; others follow within 2 s
    changed = [{"key": k, "old": before[k], "new": v} for k, v in written.items()]
    entries = config_entries(runtime, await monitoring.config_rows(runtime.pool))
    return ok({"changed": changed, "items": entries})


@openapi.doc(
    "Audit trail of config changes, newest first", tags=("admin",), query=PAGE_PARAMS, response=page_of(AUDIT_ENTRY)
)
@requires("admin:read")
async def config_audit(request: web.Request) -> web.Response:
    pg = page(request)
    before = _cursor_id(pg.after)
    rows = await monitoring.config_audit(rt(request).pool, limit=pg.limit + 1, before_id=before)
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
    return ok(await budget.status(rt(request)))


@openapi.doc(
    "Close today's budget breaker: the caps count the spend from now on (logged with the admin's email)",
    tags=("admin",),
    response=BUDGET,
)
@requires("admin:write")
async def reset_budget(request: web.Request) -> web.Response:
    runtime = rt(request)
    await budget.reset(runtime, principal(request).email)
    return ok(await budget.status(runtime))


@openapi.doc(
    "Every component (database, queues, workers, budget, sources, SMTP, LLM) and the active alerts",
    description="status: ok (no alert above notice), degraded (a warning), critical (a critical alert).",
    tags=("admin",),
    response=HEALTH,
)
@requires("admin:read")
async def get_health(request: web.Request) -> web.Response:
    return ok(await health.report(rt(request)))


@openapi.doc("Active alerts (CONTRACT §7), most severe first", tags=("admin",), response=page_of(ALERT))
@requires("admin:read")
async def get_alerts(request: web.Request) -> web.Response:
    return ok({"items": await alerts.active(rt(request)), "next_cursor": None})


@openapi.doc("This API's OpenAPI 3.1 description", tags=("meta",), response={"type": "object"})
@requires(None)
async def get_openapi(request: web.Request) -> web.Response:
    return ok(openapi.build(request.app.router.routes()))


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
        row = await accounts.token_owner(rt(request).pool, auth.hash_token(token.strip())) if token.strip() else None
        if kind.lower() != "bearer" or row is None:
            raise Unauthorized("token is unknown, expired or revoked")
        if not (row["is_admin"] and auth.has_scope(list(row["scopes"]), "admin:read")):
            raise Forbidden("/metrics needs the admin:read scope")
    elif not _is_trusted_local(request):
        raise Unauthorized("send an admin token; only local requests without proxy headers may omit it")
    report = await health.report(rt(request))
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
