"""One exception tree for the whole service; each error knows its HTTP status and a stable code.

Leaf module: imports nothing of ours.
"""

from __future__ import annotations

from typing import Any


class InfosentryError(Exception):
    """Something went wrong."""

    status = 500
    code = "internal"
    title = "Internal error"

    def __init__(self, detail: str | None = None, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = errors or []


class BadRequest(InfosentryError):
    status, code, title = 400, "bad_request", "Bad request"


class Unauthorized(InfosentryError):
    status, code, title = 401, "unauthorized", "Missing or invalid token"


class Forbidden(InfosentryError):
    status, code, title = 403, "forbidden", "Token lacks the required scope"


class NotFound(InfosentryError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(InfosentryError):
    status, code, title = 409, "conflict", "Conflict"


class Invalid(InfosentryError):
    """Input is well-formed but semantically invalid (bad config value, bad field)."""

    status, code, title = 422, "invalid", "Invalid input"


class RateLimited(InfosentryError):
    status, code, title = 429, "rate_limited", "Too many requests"

    def __init__(self, detail: str | None = None, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after  # seconds, sent as Retry-After


class Unavailable(InfosentryError):
    status, code, title = 503, "unavailable", "A dependency is unavailable"


class SchemaBehind(InfosentryError):
    status, code, title = 503, "schema_behind", "Database schema is behind"
