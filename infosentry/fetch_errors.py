"""FetchError: a classified fetch or parse failure, and its kinds. Kept apart from the fetcher (aiohttp) so the
parse workers, which raise it, import no HTTP stack: each parse process stays at feedparser's size.
Imports the standard library only.
"""

from __future__ import annotations

from datetime import datetime

ERROR_KINDS = frozenset(
    {
        "invalid_url",
        "blocked_address",
        "dns",
        "tls",
        "timeout",
        "connection",
        "http_status",
        "too_large",
        "too_many_redirects",
        "parse",
    }
)


class FetchError(Exception):
    """A classified fetch or parse failure; ``kind`` drives the user-facing message and the backoff.

    ``status`` is the HTTP status for ``http_status``; ``retry_after`` is the absolute (UTC) time the
    server asked us to wait until (Retry-After), if any; ``url`` is the URL being fetched when known.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: datetime | None = None,
        url: str | None = None,
    ) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown FetchError kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.url = url

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"FetchError({self.kind!r}, {self.message!r}, status={self.status!r})"

    # Parsers run in a process pool, so the error must survive pickling with its keyword fields.
    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (_rebuild_fetch_error, (self.kind, self.message, self.status, self.retry_after, self.url))


def _rebuild_fetch_error(
    kind: str, message: str, status: int | None, retry_after: datetime | None, url: str | None
) -> FetchError:
    return FetchError(kind, message, status=status, retry_after=retry_after, url=url)
