"""Plain records passed between the pipeline steps and the store (no I/O, no rules).

Imports nothing of ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(slots=True)
class NewItem:
    """A story seen for the first time, ready to insert (deduplicated by canonical URL and title)."""

    url: str
    canonical_url: str
    url_hash: str
    guid: str | None
    title: str
    snippet: str
    author: str | None
    tags: list[str]
    published_at: datetime | None
    source_id: int
    title_key: str
    is_backfill: bool
    title_marks: list[str] = field(default_factory=list)  # Chinese near-duplicate index keys (ingest.dedupe)


@dataclass(slots=True)
class FetchResult:
    """The outcome of one fetch of one source, as written to the source row and one ingest log row."""

    source_id: int
    started_at: datetime
    duration_ms: int
    ok: bool
    next_fetch_at: datetime
    not_modified: bool = False
    http_status: int | None = None
    fetched: int = 0
    new: int = 0
    duplicate: int = 0
    error_kind: str | None = None
    error: str | None = None
    etag: str | None = None  # validators of a success (a failure keeps the old ones)
    last_modified: str | None = None
    interval: int | None = None  # the interval learned from the feed, None = keep the current one
    title: str | None = None  # the feed's title, names a source that still carries its placeholder name
    placeholder_name: str = ""

    @property
    def status(self) -> str:
        return ("not_modified" if self.not_modified else "ok") if self.ok else "error"


@dataclass(slots=True)
class RunSummary:
    """What one ingest run did."""

    sources: int = 0
    ok: int = 0
    not_modified: int = 0
    failed: int = 0
    fetched: int = 0
    new_items: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    results: dict[int, FetchResult] = field(default_factory=dict)  # per source, for single refreshes

    def as_dict(self) -> dict[str, int | float]:
        return {
            "sources": self.sources,
            "ok": self.ok,
            "not_modified": self.not_modified,
            "failed": self.failed,
            "fetched": self.fetched,
            "new_items": self.new_items,
            "duplicates": self.duplicates,
            "seconds": self.seconds,
        }
