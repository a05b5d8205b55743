"""HTTP plumbing shared by every handler: app keys, scope marks, JSON bodies, path and query parameters,
pagination. Validation of field values is the domain's (domain.fields).

Imports errors, domain (Actor), runtime.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from infosentry.domain import Actor
from infosentry.errors import BadRequest, NotFound
from infosentry.runtime import Runtime

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

RT = web.AppKey("rt", Runtime)


PRINCIPAL = web.RequestKey("principal", Actor)


def requires(scope: str | None) -> Callable[[Handler], Handler]:
    """Mark a handler with the scope it needs (None = public, no token)."""

    def mark(handler: Handler) -> Handler:
        handler.scope = scope  # type: ignore[attr-defined]
        return handler

    return mark


def client_ip(request: web.Request) -> str | None:
    """The caller's address. X-Forwarded-For is believed only from a peer in TRUSTED_PROXIES (our reverse
    proxies): walking it from the right, the first address that is not one of our proxies is the client.
    From anyone else the header could be forged to dodge the per-IP limits, so it is ignored."""
    peer = _ip(request.remote)
    trusted = _networks(request.app[RT].settings.trusted_proxies)
    if peer is None or not any(peer in net for net in trusted):
        return str(peer) if peer else None
    client = peer
    for hop in reversed(request.headers.get("X-Forwarded-For", "").split(",")):
        address = _ip(hop.strip())
        if address is None:
            break  # a garbled hop: trust nothing to its left
        client = address
        if not any(address in net for net in trusted):
            break
    return str(client)


def _ip(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value) if value else None
    except ValueError:
        return None


@functools.lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def rt(request: web.Request) -> Runtime:
    return request.app[RT]


def principal(request: web.Request) -> Actor:
    """The authenticated caller of a handler marked with @requires(scope)."""
    p = request.get(PRINCIPAL)
    assert isinstance(p, Actor), "handler without @requires(scope)"
    return p


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if hasattr(value, "tolist"):  # numpy arrays and pgvector values
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps_bytes(data: Any) -> bytes:
    # orjson: list routes spend most of their time encoding rows (about 10x faster than json.dumps)
    return orjson.dumps(data, default=_default, option=_ORJSON_OPTIONS)


def dumps(data: Any) -> str:
    return dumps_bytes(data).decode()


def ok(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=dumps_bytes(data), status=status, content_type="application/json", headers=headers)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a precise 400."""
    raw = await request.read()
    if not raw:
        raise BadRequest("request body must be a JSON object")
    # Both the decoder and the walk below recurse once per level: "[" * 100000 exhausts the stack, and
    # RecursionError would otherwise surface as a 500 with a stack trace.
    too_deep = "request body is nested too deeply"
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(too_deep) from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    try:
        storable = _storable(body)
    except RecursionError:
        raise BadRequest(too_deep) from None
    if not storable:
        raise BadRequest("request body contains a NUL character or an unpaired surrogate, which cannot be stored")
    return body


def _storable(value: Any) -> bool:
    """PostgreSQL text cannot hold NUL, and UTF-8 cannot encode lone surrogates ('\\ud800' is valid JSON)."""
    if isinstance(value, str):
        if "\x00" in value:
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_storable(k) and _storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_storable(v) for v in value)
    return True


def path_id(request: web.Request, name: str = "id") -> int:
    raw = request.match_info[name]
    if not re.fullmatch(r"\d{1,18}", raw):
        raise NotFound(f"no such {name.removesuffix('_id') or 'object'}")
    return int(raw)


def query_int(
    request: web.Request, name: str, default: int | None = None, *, low: int = 0, high: int = 2**62
) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"-?\d{1,18}", raw):
        raise BadRequest(f"query parameter {name} must be an integer")
    value = int(raw)
    if not low <= value <= high:
        raise BadRequest(f"query parameter {name} must be between {low} and {high}")
    return value


def query_float(
    request: web.Request, name: str, default: float | None = None, *, low: float = 0.0, high: float = 1.0
) -> float | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name} must be a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise BadRequest(f"query parameter {name} must be between {low:g} and {high:g}")
    return value


@dataclass(frozen=True)
class Page:
    limit: int
    after: list[Any] | None  # the sort key of the last row of the previous page


def page(request: web.Request) -> Page:
    """limit (default 50, max 200) and an opaque cursor (base64 JSON of the last sort key)."""
    limit = query_int(request, "limit", 50, low=1, high=200)
    assert limit is not None
    raw = request.query.get("cursor")
    after = None
    if raw:
        try:
            after = json.loads(base64.urlsafe_b64decode(raw.encode() + b"==="))
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("cursor is not valid") from None
        if not isinstance(after, list) or not 1 <= len(after) <= 4 or not all(map(_cursor_part, after)):
            raise BadRequest("cursor is not valid")
    return Page(limit=limit, after=after)


def _cursor_part(value: Any) -> bool:
    """Sort keys are ids, scores and timestamps: anything else (or out of range for SQL) is a forged cursor."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= 64


def cursor_for(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(dumps(key).encode()).decode().rstrip("=")


def paged(rows: list[dict[str, Any]], pg: Page, key: Callable[[dict[str, Any]], list[Any]]) -> dict[str, Any]:
    """Standard list shape: {items, next_cursor}; callers fetch limit+1 rows to know if there is more."""
    more = len(rows) > pg.limit
    rows = rows[: pg.limit]
    return {"items": rows, "next_cursor": cursor_for(key(rows[-1])) if more and rows else None}
