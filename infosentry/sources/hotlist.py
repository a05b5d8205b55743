"""Hot-list sources: newsnow-style JSON APIs (GET {base_url}/api/s?id={source_id}) and the bundled catalog
of well-known ids (hotlist_catalog.json). May import infosentry.fetch/.text/.sources — never the database.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

from infosentry.fetch_errors import FetchError
from infosentry.sources.base import (
    ItemDraft,
    ParsedFeed,
    absolute_http_url,
    check_http_url,
    check_keys,
    decode_body,
    fetch_source,
    to_utc,
)
from infosentry.sources.site import parse_time
from infosentry.text import clean_text, clean_title

API_PATH = "/api/s"
ACCEPT = "application/json"
CONFIG_KEYS = frozenset({"base_url", "source_id"})
SNIPPET_LIMIT = 500
_SOURCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_OK_STATUSES = frozenset({"success", "cache"})


def validate_config(url: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"base_url", "source_id"}``; either may be omitted when ``url`` is the API URL itself
    (``https://host/api/s?id=weibo``), and ``base_url`` defaults to the origin of ``url``."""
    check_keys(config, CONFIG_KEYS)
    base_url, source_id = config.get("base_url"), config.get("source_id")
    if base_url is None or source_id is None:
        parts = urlsplit(check_http_url(url, "url"))
        prefix = parts.path[: -len(API_PATH)] if parts.path.rstrip("/").endswith(API_PATH) else ""
        if base_url is None:
            base_url = urlunsplit((parts.scheme, parts.netloc, prefix, "", ""))
        if source_id is None:
            source_id = (parse_qs(parts.query).get("id") or [None])[0]
    base_url = check_http_url(base_url, "base_url").rstrip("/")
    base_parts = urlsplit(base_url)
    if base_parts.query or base_parts.fragment:
        raise ValueError("base_url: must not have a query or fragment")
    if not isinstance(source_id, str) or not _SOURCE_ID.fullmatch(source_id):
        raise ValueError("source_id: required, a hot-list source id such as 'weibo' (letters, digits, '-', '_', '.')")
    return {"base_url": base_url, "source_id": source_id}


def api_url(config: Mapping[str, Any]) -> str:
    """The URL a validated config fetches; also the natural ``sources.url`` for a hot-list source."""
    return f"{config['base_url']}{API_PATH}?id={quote(config['source_id'], safe='')}"


def _published(value: Any, now: datetime) -> datetime | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 10**11 else value
        try:
            return to_utc(datetime.fromtimestamp(seconds, UTC), now)
        except (ValueError, OverflowError, OSError):
            return None
    if isinstance(value, str):
        return parse_time(value, now)
    return None


def parse(body: bytes, content_type: str | None, base_url: str, config: Mapping[str, Any]) -> ParsedFeed:
    """Items of one hot-list response; duplicates of a URL within the response are dropped. Pure."""
    if not body.strip():
        raise FetchError("parse", "empty response body: no hot list to parse")
    try:
        doc = json.loads(decode_body(body, content_type))
    except ValueError as exc:
        raise FetchError("parse", f"hot-list response is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise FetchError("parse", "hot-list response is not a JSON object")
    status = doc.get("status")
    if status not in _OK_STATUSES:
        detail = doc.get("message") or doc.get("error")
        suffix = f": {str(detail)[:200]}" if detail else ""
        raise FetchError("parse", f"hot-list API answered status {status!r}{suffix}")
    raw_items = doc.get("items")
    if not isinstance(raw_items, list):
        raise FetchError("parse", "hot-list response has no 'items' array")
    now = datetime.now(UTC)
    items: list[ItemDraft] = []
    seen: set[str] = set()
    for raw in raw_items:
        if not isinstance(raw, Mapping):
            continue
        href = raw.get("url") or raw.get("mobileUrl")
        url = absolute_http_url(href if isinstance(href, str) else None, base_url)
        title = clean_title(raw.get("title") if isinstance(raw.get("title"), str) else None)
        if url is None or not title or url in seen:
            continue
        seen.add(url)
        extra = raw.get("extra") if isinstance(raw.get("extra"), Mapping) else {}
        hover = extra.get("hover")
        item_id = raw.get("id")
        items.append(
            ItemDraft(
                url=url,
                title=title,
                snippet=clean_text(hover, SNIPPET_LIMIT) if isinstance(hover, str) else "",
                published_at=_published(raw.get("pubDate"), now) or _published(extra.get("date"), now),
                guid=str(item_id)[:2048] if item_id not in (None, "") else None,
            )
        )
    return ParsedFeed(items=items, title=None, ttl_seconds=None, link=base_url)


def load_catalog() -> list[dict[str, Any]]:
    """The bundled catalog: ``[{"id", "name", "title"?, "interval"}]`` of well-known public source ids
    (intervals in seconds, as the upstream project suggests). Data only; nothing imports it automatically."""
    text = resources.files("infosentry.sources").joinpath("hotlist_catalog.json").read_text("utf-8")
    return json.loads(text)["sources"]


# The type's fetch (see SourceType): validate the config, GET its API URL conditionally, parse off the loop.
fetch = functools.partial(fetch_source, validate=validate_config, parse=parse, accept=ACCEPT, target=api_url)
