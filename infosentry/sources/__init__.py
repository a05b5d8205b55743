"""Registry of source types (rss, site, hotlist), each behind one interface: validate_config, fetch, parse.
Network and parsing only: may import infosentry.fetch/.text and parsers — never infosentry.db or .store.
"""

from __future__ import annotations

from infosentry.sources import hotlist, rss, site
from infosentry.sources.base import FetchOutcome, ItemDraft, ParsedFeed, ParseRunner, SourceType

SOURCE_TYPES: dict[str, SourceType] = {"rss": rss, "site": site, "hotlist": hotlist}  # type: ignore[dict-item]
# Contract §5.1: RSS every 900 s, site and hot list every 1800 s unless the source says otherwise.
DEFAULT_INTERVALS: dict[str, int] = {"rss": 900, "site": 1800, "hotlist": 1800}


def source_type(name: str) -> SourceType:
    """The module for a source type name; ValueError("type: ...") for an unknown one."""
    try:
        return SOURCE_TYPES[name]
    except KeyError:
        known = ", ".join(sorted(SOURCE_TYPES))
        raise ValueError(f"type: unknown source type {name!r} (known: {known})") from None


__all__ = [
    "DEFAULT_INTERVALS",
    "SOURCE_TYPES",
    "FetchOutcome",
    "ItemDraft",
    "ParseRunner",
    "ParsedFeed",
    "SourceType",
    "source_type",
]
