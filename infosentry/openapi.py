"""OpenAPI 3.1 generated from the real route table, so the description cannot drift from the routes.

Each handler documents itself with `@openapi.doc(...)` (summary, query parameters, request and response
schemas); routes whose modules do not use the decorator are described with `describe(method, path, ...)`
in the registry at the bottom of this file. Path parameters and the required scope are read from the
route itself. `build(routes)` returns the document; `undocumented(routes)` and `stale(routes)` are what
tests/test_openapi.py checks. Leaf module: imports nothing of ours.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Schema = dict[str, Any]

# --- schema helpers ---------------------------------------------------------------------------------------

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = {"type": "string", "format": "date-time"}
ANY: Schema = {}


def null(schema: Schema) -> Schema:
    """`schema` or null."""
    if "type" in schema and isinstance(schema["type"], str) and set(schema) <= {"type", "format", "enum"}:
        out = {**schema, "type": [schema["type"], "null"]}
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        return out
    return {"anyOf": [schema, {"type": "null"}]}


def enum(*values: str) -> Schema:
    return {"type": "string", "enum": list(values)}


def arr(items: Schema, **kw: Any) -> Schema:
    return {"type": "array", "items": items, **kw}


def obj(props: dict[str, Schema], required: Iterable[str] | None = None, *, extra: bool = True) -> Schema:
    """An object; `required` defaults to every property listed."""
    schema: Schema = {"type": "object", "properties": props, "required": list(props if required is None else required)}
    if not extra:
        schema["additionalProperties"] = False
    return schema


def page_of(item: Schema) -> Schema:
    return obj({"items": arr(item), "next_cursor": null(STR)})


def qparam(name: str, schema: Schema, description: str = "", *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


PAGE_PARAMS = [
    qparam("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}, "page size"),
    qparam("cursor", STR, "opaque cursor from the previous page's next_cursor"),
]

PROBLEM: Schema = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": STR,
        "title": STR,
        "status": INT,
        "detail": STR,
        "errors": arr(obj({"field": STR, "message": STR})),
    },
}

_ERROR_TEXT = {
    400: "bad input (malformed JSON, bad query parameter, invalid link)",
    401: "missing, unknown, expired or revoked token",
    403: "the token lacks the required scope",
    404: "not found, or not yours",
    405: "method not allowed",
    409: "conflict",
    413: "request body too large",
    422: "semantically invalid input; `errors` lists the bad fields",
    429: "rate limited",
    503: "a dependency (the database) is unavailable",
}


# --- operations -------------------------------------------------------------------------------------------


@dataclass
class Operation:
    summary: str
    description: str = ""
    tags: tuple[str, ...] = ()
    query: list[dict[str, Any]] = field(default_factory=list)
    body: Schema | None = None
    body_type: str = "application/json"
    body_required: bool = True
    response: Schema | None = None
    status: int = 200
    response_type: str = "application/json"
    responses: dict[int, tuple[str, Schema | None, str]] = field(default_factory=dict)  # status: (text, schema, type)
    public: bool | None = None  # None: from the handler's scope
    errors: tuple[int, ...] = ()  # problem statuses beyond the standard ones


def doc(summary: str, **kw: Any) -> Callable[[Any], Any]:
    """Attach an Operation to a handler: @openapi.doc("List goals", query=PAGE_PARAMS, response=page_of(GOAL))."""
    op = Operation(summary, **kw)

    def mark(handler: Any) -> Any:
        handler.openapi = op
        return handler

    return mark


REGISTRY: dict[tuple[str, str], Operation] = {}


def describe(method: str, path: str, summary: str, **kw: Any) -> None:
    """Document a route whose handler has no @doc (routes of modules that do not import this one)."""
    REGISTRY[(method.upper(), path)] = Operation(summary, **kw)


# --- the document -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Any


def routes_of(table: Iterable[Any]) -> list[Route]:
    """Normalise aiohttp RouteDefs (method/path/handler) or router routes (method/resource/handler); no HEAD."""
    out = []
    for r in table:
        path = r.path if hasattr(r, "path") else r.resource.canonical
        if r.method in ("HEAD", "*"):
            continue
        out.append(Route(r.method.upper(), path, r.handler))
    return out


def operation_of(route: Route) -> Operation | None:
    return getattr(route.handler, "openapi", None) or REGISTRY.get((route.method, route.path))


def undocumented(table: Iterable[Any]) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in routes_of(table) if operation_of(r) is None]


def stale(table: Iterable[Any]) -> list[tuple[str, str]]:
    """Registry entries that name no existing route."""
    existing = {(r.method, r.path) for r in routes_of(table)}
    return sorted(set(REGISTRY) - existing)


def _path_params(path: str) -> list[dict[str, Any]]:
    params = []
    for name in re.findall(r"\{([^}:]+)(?::[^}]*)?\}", path):
        numeric = name == "id" or name.endswith("_id")
        schema = {"type": "integer", "minimum": 1, "maximum": 2**62} if numeric else STR
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return params


def _problem(status: int) -> dict[str, Any]:
    return {
        "description": _ERROR_TEXT.get(status, "error"),
        "content": {"application/problem+json": {"schema": PROBLEM}},
    }


def _operation(route: Route, op: Operation) -> dict[str, Any]:
    scope = getattr(route.handler, "scope", "unset")
    public = op.public if op.public is not None else not isinstance(scope, str) or scope == "unset"
    out: dict[str, Any] = {
        "operationId": f"{route.method.lower()}_{re.sub(r'[^a-zA-Z0-9]+', '_', route.path).strip('_')}",
        "summary": op.summary,
        "tags": list(op.tags) or [_tag(route.path)],
        "parameters": _path_params(route.path) + list(op.query),
        "responses": {},
    }
    description = op.description
    if not public:
        out["security"] = [{"bearer": []}]
        out["x-required-scope"] = scope
        description = (description + "\n\n" if description else "") + f"Requires the `{scope}` scope."
    else:
        out["security"] = []
    if description:
        out["description"] = description
    if op.body is not None:
        out["requestBody"] = {"required": op.body_required, "content": {op.body_type: {"schema": op.body}}}
    ok: dict[str, Any] = {"description": "success"}
    if op.response is not None:
        ok["content"] = {op.response_type: {"schema": op.response}}
    out["responses"][str(op.status)] = ok
    for status, (text, schema, ctype) in op.responses.items():
        entry: dict[str, Any] = {"description": text}
        if schema is not None:
            entry["content"] = {ctype: {"schema": schema}}
        out["responses"][str(status)] = entry
    errors = [400, 404, 405, 422, 503]
    if not public:
        errors += [401, 403]
    if op.body is not None:
        errors += [413]
    if route.method in ("POST", "PUT"):
        errors += [409]
    errors += [429, *op.errors]
    for status in sorted(set(errors)):
        out["responses"].setdefault(str(status), _problem(status))
    return out


def _tag(path: str) -> str:
    parts = [p for p in path.split("/") if p and not p.startswith("{")]
    if parts[:2] == ["api", "v1"]:
        parts = parts[2:]
    return parts[0] if parts else "root"


def build(table: Iterable[Any], *, title: str = "infosentry", version: str = "1") -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in sorted(routes_of(table), key=lambda r: (r.path, r.method)):
        op = operation_of(route) or Operation("undocumented route")
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Self-hosted information sentry. Errors are application/problem+json (RFC 9457); "
            "lists are paginated with limit and an opaque cursor (next_cursor).",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "isk_... token"}},
            "schemas": {"Problem": PROBLEM},
        },
    }


# --- routes of modules that do not use @doc ---------------------------------------------------------------

HEALTH = obj({"status": enum("ok")})
USER = obj(
    {
        "id": INT,
        "email": STR,
        "display_name": STR,
        "timezone": STR,
        "language": enum("en", "zh"),
        "is_admin": BOOL,
        "combined_digest": BOOL,
        "created_at": TIME,
        "last_login_at": null(TIME),
    }
)
TOKEN = obj(
    {
        "id": INT,
        "name": STR,
        "kind": enum("api", "session"),
        "prefix": STR,
        "scopes": arr(STR),
        "created_at": TIME,
        "expires_at": null(TIME),
        "revoked_at": null(TIME),
        "last_used_at": null(TIME),
    }
)

describe(
    "GET",
    "/health",
    "Liveness: 200 when the database answers",
    tags=("health",),
    response=HEALTH,
    responses={503: ("the database is unreachable", obj({"status": STR}, ["status"]), "application/json")},
)
describe("GET", "/api/v1/users/me", "The caller's profile", tags=("account",), response=USER)
describe(
    "PUT",
    "/api/v1/users/me",
    "Change display name, time zone, language or the combined-digest preference",
    tags=("account",),
    response=USER,
    body=obj(
        {
            "display_name": {"type": "string", "maxLength": 100},
            "timezone": STR,
            "language": enum("en", "zh"),
            "combined_digest": BOOL,
        },
        [],
        extra=False,
    ),
)
describe("GET", "/api/v1/tokens", "The caller's API and session tokens", tags=("account",), response=page_of(TOKEN))
describe(
    "POST",
    "/api/v1/tokens",
    "Create an API token (shown once); never more scopes than the calling token",
    tags=("account",),
    status=201,
    body=obj(
        {
            "name": {"type": "string", "maxLength": 100},
            "scopes": arr(STR, maxItems=20),
            "expires_in_days": {"type": "integer", "minimum": 1, "maximum": 3650},
        },
        [],
        extra=False,
    ),
    response=obj({"id": INT, "token": STR, "scopes": arr(STR), "expires_at": null(TIME)}),
)
describe(
    "DELETE",
    "/api/v1/tokens/{id}",
    "Revoke one of the caller's tokens",
    tags=("account",),
    status=204,
)
