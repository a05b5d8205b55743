"""RSS 0.9x/1.0/2.0, Atom and JSON Feed: feedparser only ever sees bytes, and documents declaring XML
entities are refused before any parser runs. May import feedparser, infosentry.fetch/.text/.sources.
"""

from __future__ import annotations

import codecs
import functools
import io
import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import feedparser

from infosentry.fetch_errors import FetchError
from infosentry.sources.base import (
    ItemDraft,
    ParsedFeed,
    absolute_http_url,
    check_headers,
    check_http_url,
    check_keys,
    fetch_source,
    to_utc,
)
from infosentry.text import clean_text, clean_title, defuse_markup, truncate

ACCEPT = (
    "application/rss+xml, application/atom+xml, application/feed+json, application/rdf+xml;q=0.9, "
    "application/xml;q=0.9, text/xml;q=0.9, application/json;q=0.8, */*;q=0.5"
)
CONFIG_KEYS = frozenset({"headers"})
SNIPPET_LIMIT = 500
TITLE_FROM_TEXT_LIMIT = 120
MAX_TAGS = 20
MAX_TTL_SECONDS = 7 * 24 * 3600


def validate_config(url: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"headers": {name: value}}`` at most; the feed URL itself is the source URL."""
    check_http_url(url, "url")
    check_keys(config, CONFIG_KEYS)
    clean: dict[str, Any] = {}
    if "headers" in config:
        clean["headers"] = check_headers(config["headers"])
    return clean


# ---- XML safety ------------------------------------------------------------------------------------------

_DOCTYPE = re.compile(rb"<!DOCTYPE", re.IGNORECASE)
_ENTITY = re.compile(rb"<!ENTITY", re.IGNORECASE)
_ELEMENT_START = re.compile(rb"<[A-Za-z_:]")
# Real feeds open their root element within a few hundred bytes; the bound keeps the scan cheap whatever
# the document, and a prolog longer than this is judged by the blunt rule in declares_entities.
PROLOG_SCAN_LIMIT = 64 * 1024
# Byte patterns of "<?" / "<" in encodings that are not ASCII-compatible (XML 1.0 appendix F).
_WIDE_ENCODINGS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
    (b"\x00\x00\x00<", "utf-32-be"),
    (b"<\x00\x00\x00", "utf-32-le"),
    (b"\x00<\x00?", "utf-16-be"),
    (b"<\x00?\x00", "utf-16-le"),
    (b"\x4c\x6f\xa7\x94", "cp037"),  # EBCDIC "<?xm"; feedparser transcodes it, so it must be checked too
)


def _ascii_view(body: bytes) -> bytes:
    for prefix, encoding in _WIDE_ENCODINGS:
        if body.startswith(prefix):
            return body.decode(encoding, errors="replace").encode("utf-8", errors="replace")
    return body


def _root_element_before(data: bytes, end: int) -> bool:
    """True when an element starts before ``end``, outside comments and processing instructions.

    One pass with find(): a regex that strips comments retries every "<!--" to the end of the input,
    which made 80 KB of unclosed openers cost 15 s. A comment or PI still open at ``end`` hides nothing.
    """
    pos = 0
    while (pos := data.find(b"<", pos, end)) != -1:
        if data.startswith(b"<!--", pos):
            close = data.find(b"-->", pos + 4, end)
            if close == -1:
                return False
            pos = close + 3
        elif data.startswith(b"<?", pos):
            close = data.find(b"?>", pos + 2, end)
            if close == -1:
                return False
            pos = close + 2
        elif _ELEMENT_START.match(data, pos):
            return True
        else:
            pos += 1
    return False


def declares_entities(body: bytes) -> bool:
    """True when the document has a DOCTYPE in its prolog and declares any entity.

    Deliberately blunt: any ``<!ENTITY`` after a real DOCTYPE counts, so no trick inside the internal
    subset (comments, quoted "]>") can hide a declaration. Billion-laughs, quadratic blow-up and external
    entities all need a declaration; plain feeds never do. The root element is looked for in the first
    PROLOG_SCAN_LIMIT bytes only: past that, any DOCTYPE counts as the prolog's, so a document padded
    to hide its DTD is refused, while one without any declaration is still parsed.
    """
    data = _ascii_view(body)
    doctype = _DOCTYPE.search(data)
    if doctype is None:
        return False
    # A "<!DOCTYPE" after the root element is text inside the content (e.g. CDATA), not a DTD.
    if _root_element_before(data, min(doctype.start(), PROLOG_SCAN_LIMIT)):
        return False
    return _ENTITY.search(data, doctype.end()) is not None


# ---- parsing ---------------------------------------------------------------------------------------------

# Atomic comments: a lazy ".*?" could also run across "-->", so a failing match tried 2^n splits of n comments.
_HTML_START = re.compile(rb"\s*(?:<\?xml[^>]*>\s*)?(?>(?:<!--.*?-->\s*)*)<(?:!doctype\s+html|html[\s>])", re.I | re.S)
_FEED_ROOT = re.compile(rb"<(?:rss|feed|rdf:RDF|RDF)[\s>]")


def _is_json(body: bytes, content_type: str | None) -> bool:
    if content_type and "json" in content_type.lower():
        return True
    return body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{"


_XML_DECL_ENCODING = re.compile(rb"^\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)", re.IGNORECASE)
_HTTP_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9._-]+)", re.IGNORECASE)


def _repair_encoding(body: bytes, content_type: str | None) -> tuple[bytes, str | None]:
    """Transcode a feed that claims UTF-8 (or nothing) but is really GB18030/GBK to UTF-8.

    Misconfigured Chinese sites do this often; feedparser would fall back to windows-1252 and produce
    mojibake. Only a clean GB18030 decode is trusted (Latin-1 text almost never is one).
    """
    if body.startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return body, content_type
    names = set()
    if http := _HTTP_CHARSET.search(content_type or ""):
        names.add(http.group(1).lower())
    if declared := _XML_DECL_ENCODING.match(body[:200]):
        names.add(declared.group(1).decode("ascii").lower())
    if names - {"utf-8", "utf8"}:
        return body, content_type
    try:
        body.decode("utf-8")
        return body, content_type
    except UnicodeDecodeError:
        pass
    try:
        text = body.decode("gb18030")
    except UnicodeDecodeError:
        return body, content_type
    media = (content_type or "application/xml").split(";")[0]
    return text.encode("utf-8"), f"{media}; charset=utf-8"


def parse(body: bytes, content_type: str | None, base_url: str, config: Mapping[str, Any]) -> ParsedFeed:
    """Parse an RSS/Atom/JSON Feed document. Pure and picklable, so it can run in a process pool.

    Raises FetchError(kind="parse") with a specific reason when nothing usable is found; malformed
    ("bozo") feeds that still yield entries are accepted.
    """
    if not body.strip():
        raise FetchError("parse", "empty response body: no feed to parse")
    if _is_json(body, content_type):
        return parse_json_feed(body, base_url)
    if declares_entities(body):
        raise FetchError("parse", "feed declares XML entities (DTD) — refused")
    body, content_type = _repair_encoding(body, content_type)
    # With a base URI feedparser re-resolves the base at every element, a quarter of its parse time; only xml:base
    # needs that (a relative one resolves against the document's URL). Other links are resolved in _entry_draft,
    # and guids stay as the feed wrote them (with a base, <guid>12345</guid> came back as a URL on the feed's host).
    headers = {"content-location": base_url} if b"xml:base" in _ascii_view(body) else {}
    if content_type:
        headers["content-type"] = content_type
    # BytesIO, not bytes: feedparser treats a bytes argument as a file path and opens it.
    doc = feedparser.parse(io.BytesIO(body), response_headers=headers, sanitize_html=False, resolve_relative_uris=False)
    entries = doc.get("entries") or []
    if not entries:
        _raise_if_unusable(doc, body, content_type)
    now = datetime.now(UTC)
    items = [draft for entry in entries if (draft := _entry_draft(entry, base_url, now)) is not None]
    if entries and not items:
        raise FetchError("parse", f"none of the feed's {len(entries)} entries has an http(s) link")
    feed = doc.get("feed") or {}
    return ParsedFeed(
        items=items,
        title=clean_title(feed.get("title")) or None,
        ttl_seconds=_ttl_seconds(feed.get("ttl")),
        link=absolute_http_url(feed.get("link"), base_url),
    )


def _raise_if_unusable(doc: Any, body: bytes, content_type: str | None) -> None:
    """Explain an entry-less result, or return when it is a well-formed empty feed."""
    version = doc.get("version") or ""
    problem = doc.get("bozo_exception")
    if version and not doc.get("bozo"):
        return
    if _HTML_START.match(body[:4096]) or (
        content_type and "html" in content_type.lower() and not _FEED_ROOT.search(body[:4096])
    ):
        raise FetchError("parse", "response is an HTML page, not a feed (use feed discovery or a site source)")
    if version:
        raise FetchError("parse", f"malformed {version} feed with no readable entries: {problem}")
    reason = f": {problem}" if problem else ""
    raise FetchError("parse", f"no RSS, Atom or JSON Feed document found{reason}")


def _struct_to_datetime(value: Any, now: datetime) -> datetime | None:
    if not value:
        return None
    try:
        return to_utc(datetime(*value[:6], tzinfo=UTC), now)
    except (TypeError, ValueError, OverflowError):
        return None


def _tags(raw: Iterable[Any] | None) -> list[str]:
    tags: list[str] = []
    for tag in raw or ():
        term = tag.get("term") or tag.get("label") if isinstance(tag, Mapping) else tag
        text = clean_title(term, 100) if isinstance(term, str) else ""
        if text and text not in tags:
            tags.append(text)
        if len(tags) >= MAX_TAGS:
            break
    return tags


def _entry_draft(entry: Mapping[str, Any], base_url: str, now: datetime) -> ItemDraft | None:
    guid = (entry.get("id") or "").strip()[:2048] or None
    url = absolute_http_url(entry.get("link"), base_url)
    if url is None:
        for link in entry.get("links") or ():
            if link.get("rel", "alternate") == "alternate" and (url := absolute_http_url(link.get("href"), base_url)):
                break
    if url is None and guid:
        url = absolute_http_url(guid, base_url) if guid.lower().startswith(("http://", "https://")) else None
    if url is None:
        return None
    source, source_type = entry.get("summary"), (entry.get("summary_detail") or {}).get("type")
    if not source and entry.get("content"):
        first = entry["content"][0]
        source, source_type = first.get("value"), first.get("type")
    snippet = clean_text(source, SNIPPET_LIMIT, is_html=source_type != "text/plain")
    # Feeds leave "<" unescaped in links; as a title the URL is text like any other.
    title = clean_title(entry.get("title")) or truncate(snippet, TITLE_FROM_TEXT_LIMIT) or defuse_markup(url)
    published = None
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        if published := _struct_to_datetime(entry.get(key), now):
            break
    return ItemDraft(
        url=url,
        title=title,
        snippet=snippet,
        published_at=published,
        guid=guid,
        author=clean_title(entry.get("author"), 200) or None,
        tags=_tags(entry.get("tags")),
    )


def _ttl_seconds(value: Any) -> int | None:
    try:
        minutes = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return min(minutes * 60, MAX_TTL_SECONDS) if minutes > 0 else None


# ---- JSON Feed (https://jsonfeed.org/version/1.1) ---------------------------------------------------------


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _iso_datetime(value: Any, now: datetime) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return to_utc(datetime.fromisoformat(value.strip()), now)
    except ValueError:
        return None


def _json_author(item: Mapping[str, Any]) -> str | None:
    authors = item.get("authors")
    candidates = authors if isinstance(authors, list) else [item.get("author")]
    for author in candidates:
        if isinstance(author, Mapping) and (name := _text(author.get("name"))):
            return clean_title(name, 200) or None
    return None


def parse_json_feed(body: bytes, base_url: str) -> ParsedFeed:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FetchError("parse", f"invalid JSON: {exc}") from exc
    version = doc.get("version") if isinstance(doc, dict) else None
    if not isinstance(version, str) or not version.startswith("https://jsonfeed.org/version/"):
        raise FetchError("parse", "JSON document is not a JSON Feed (no https://jsonfeed.org/version/ marker)")
    raw_items = doc.get("items")
    if not isinstance(raw_items, list):
        raise FetchError("parse", "JSON Feed has no 'items' array")
    now = datetime.now(UTC)
    items: list[ItemDraft] = []
    for item in raw_items:
        if not isinstance(item, Mapping):
            continue
        url = absolute_http_url(_text(item.get("url")) or _text(item.get("external_url")), base_url)
        if url is None:
            continue
        summary, html, plain = (
            _text(item.get("summary")),
            _text(item.get("content_html")),
            _text(item.get("content_text")),
        )
        snippet = clean_text(summary or html or plain, SNIPPET_LIMIT, is_html=not (plain and not (summary or html)))
        tags = [t for t in item.get("tags") or () if isinstance(t, str)] if isinstance(item.get("tags"), list) else []
        item_id = item.get("id")
        items.append(
            ItemDraft(
                url=url,
                title=clean_title(_text(item.get("title")))
                or truncate(snippet, TITLE_FROM_TEXT_LIMIT)
                or defuse_markup(url),
                snippet=snippet,
                published_at=_iso_datetime(item.get("date_published"), now)
                or _iso_datetime(item.get("date_modified"), now),
                guid=str(item_id)[:2048] if item_id not in (None, "") else None,
                author=_json_author(item),
                tags=_tags(tags),
            )
        )
    if raw_items and not items:
        raise FetchError("parse", f"none of the JSON Feed's {len(raw_items)} items has an http(s) url")
    return ParsedFeed(
        items=items,
        title=clean_title(_text(doc.get("title"))) or None,
        ttl_seconds=None,
        link=absolute_http_url(_text(doc.get("home_page_url")), base_url),
    )


# The type's fetch (see SourceType): validate the config, GET the URL conditionally, parse off the loop.
fetch = functools.partial(fetch_source, validate=validate_config, parse=parse, accept=ACCEPT)
