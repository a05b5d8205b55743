"""Shared by every source type: ItemDraft/ParsedFeed/FetchOutcome, the parse-runner hook, config checks
and the conditional fetch-then-parse step. May import infosentry.fetch_errors, infosentry.text and the standard
library (infosentry.fetch for types only) — never infosentry.db or infosentry.store.
"""

from __future__ import annotations

import asyncio
import codecs
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urljoin, urlsplit

from infosentry.fetch_errors import FetchError

if TYPE_CHECKING:  # the parse workers import this module: no HTTP stack at run time
    from infosentry.fetch import Fetcher


@dataclass(slots=True)
class ItemDraft:
    """One item as a source reports it, before canonicalisation and deduplication."""

    url: str
    title: str
    snippet: str = ""
    published_at: datetime | None = None  # aware, UTC
    guid: str | None = None
    author: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ParsedFeed:
    items: list[ItemDraft]
    title: str | None = None
    ttl_seconds: int | None = None  # the feed's own refresh hint (RSS <ttl>)
    link: str | None = None


@dataclass(slots=True)
class FetchOutcome:
    """Result of one source fetch. ``feed`` is None when not modified. ``etag``/``last_modified`` are the
    validators to store for the next conditional GET (None means forget them)."""

    not_modified: bool
    feed: ParsedFeed | None
    etag: str | None
    last_modified: str | None
    retry_after_at: datetime | None
    max_age: int | None
    http_status: int
    final_url: str | None = None
    elapsed: float = 0.0


ParseFn = Callable[[bytes, str | None, str, dict[str, Any]], ParsedFeed]
# Runs a top-level parse function with its arguments off the event loop. The default is asyncio.to_thread;
# ingest may pass functools.partial(loop.run_in_executor, process_pool) to use both cores.
ParseRunner = Callable[..., Awaitable[ParsedFeed]]


class SourceType(Protocol):
    """The interface each module in infosentry.sources implements."""

    def validate_config(self, url: str, config: Mapping[str, Any]) -> dict[str, Any]: ...

    async def fetch(
        self,
        fetcher: Fetcher,
        url: str,
        config: Mapping[str, Any],
        etag: str | None = None,
        last_modified: str | None = None,
        *,
        parse_runner: ParseRunner | None = None,
    ) -> FetchOutcome: ...

    def parse(self, body: bytes, content_type: str | None, base_url: str, config: Mapping[str, Any]) -> ParsedFeed: ...


# ---- config validation helpers -------------------------------------------------------------------------

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers the fetcher owns; letting a source config set them would break framing or the redirect policy.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "te", "upgrade", "if-none-match"}
    | {"if-modified-since", "accept-encoding", "proxy-authorization", "keep-alive", "trailer"}
)
MAX_CONFIG_HEADERS = 20


def check_keys(config: Mapping[str, Any], allowed: Iterable[str], prefix: str = "") -> None:
    if not isinstance(config, Mapping):
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: must be an object")
    allowed = set(allowed)
    unknown = sorted(str(key) for key in config if key not in allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise ValueError(f"{prefix}{unknown[0]}: unknown key (allowed: {known})")


def check_http_url(value: Any, name: str) -> str:
    """A syntactically valid absolute http(s) URL; the address check happens at fetch time."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}: required, an absolute http(s) URL")
    value = value.strip()
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"{name}: not a valid URL ({exc})") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"{name}: must use http or https, not {parts.scheme or 'no scheme'!r}")
    if not parts.hostname:
        raise ValueError(f"{name}: has no host")
    if any(ch.isspace() for ch in value):
        raise ValueError(f"{name}: must not contain whitespace")
    return value


def check_headers(value: Any, name: str = "headers") -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name}: must be an object of header name to string value")
    if len(value) > MAX_CONFIG_HEADERS:
        raise ValueError(f"{name}: at most {MAX_CONFIG_HEADERS} headers")
    headers: dict[str, str] = {}
    for key, val in value.items():
        if not isinstance(key, str) or not _HEADER_NAME.fullmatch(key):
            raise ValueError(f"{name}.{key}: not a valid header name")
        if key.lower() in _RESERVED_HEADERS:
            raise ValueError(f"{name}.{key}: set by the fetcher, cannot be configured")
        if not isinstance(val, str) or any(ch in val for ch in "\r\n\0") or len(val) > 4096:
            raise ValueError(f"{name}.{key}: must be a single-line string of at most 4096 characters")
        headers[key] = val
    return headers


# ---- parse helpers --------------------------------------------------------------------------------------


def absolute_http_url(href: str | None, base: str) -> str | None:
    """``href`` resolved against ``base``; None unless the result is an http(s) URL with a host."""
    if not href:
        return None
    try:
        url = urljoin(base, href.strip())
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return url


def to_utc(value: datetime | None, now: datetime | None = None) -> datetime | None:
    """Aware UTC datetime (naive means UTC), clamped to ``now`` when it lies in the future."""
    if value is None:
        return None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    now = now or datetime.now(UTC)
    return now if value > now else value


_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9._:-]+)", re.IGNORECASE)
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?([A-Za-z0-9._:-]+)", re.IGNORECASE)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _known_codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode_body(body: bytes, content_type: str | None, *, sniff_meta: bool = False) -> str:
    """Text of an HTML or JSON body: BOM, then HTTP charset, then <meta charset>, then UTF-8, then GB18030
    (a large share of hot-list and site sources are Chinese pages that omit their charset)."""
    for bom, name in _BOMS:
        if body.startswith(bom):
            return body[len(bom) :].decode(name, errors="replace")
    candidates = []
    if content_type and (match := _CHARSET.search(content_type)):
        candidates.append(match.group(1))
    if sniff_meta and (match := _META_CHARSET.search(body[:4096])):
        candidates.append(match.group(1).decode("ascii"))
    for name in candidates:
        codec = _known_codec(name)
        if codec in ("gb2312", "gbk"):
            codec = "gb18030"  # a superset; pages labelled GB2312 routinely use GBK characters
        if codec:
            try:
                return body.decode(codec)
            except UnicodeDecodeError:
                continue
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return body.decode("gb18030")
    except UnicodeDecodeError:
        return body.decode("utf-8", errors="replace")


# ---- the shared fetch step ------------------------------------------------------------------------------


ValidateFn = Callable[[str, Mapping[str, Any]], dict[str, Any]]


async def fetch_source(
    fetcher: Fetcher,
    url: str,
    config: Mapping[str, Any],
    etag: str | None = None,
    last_modified: str | None = None,
    *,
    validate: ValidateFn,
    parse: ParseFn,
    accept: str,
    parse_runner: ParseRunner | None = None,
    target: Callable[[dict[str, Any]], str] | None = None,
) -> FetchOutcome:
    """The body of every type's `fetch`: validate the config, GET the target (the source URL unless the type
    derives one) with the type's Accept and the config's extra headers, then parse."""
    clean = validate(url, config)
    headers = {"Accept": accept, **clean.get("headers", {})}
    return await fetch_and_parse(
        fetcher,
        target(clean) if target else url,
        parse,
        clean,
        etag=etag,
        last_modified=last_modified,
        headers=headers,
        parse_runner=parse_runner,
    )


async def fetch_and_parse(
    fetcher: Fetcher,
    url: str,
    parse: ParseFn,
    config: dict[str, Any],
    *,
    etag: str | None,
    last_modified: str | None,
    headers: Mapping[str, str] | None = None,
    parse_runner: ParseRunner | None = None,
    conditional: bool = True,
) -> FetchOutcome:
    """GET ``url`` (conditionally), skip parsing when unchanged, otherwise parse off the event loop."""
    sent_etag = etag if conditional else None
    sent_modified = last_modified if conditional else None
    response = await fetcher.get(url, headers=headers, etag=sent_etag, last_modified=sent_modified)
    # Per Miniflux: "Expires: 0" means the validators cannot be trusted, so neither store nor send them.
    trust_validators = conditional and response.headers.get("Expires", "").strip() != "0"
    new_etag = response.etag or (sent_etag if response.not_modified else None)
    new_modified = response.last_modified or (sent_modified if response.not_modified else None)
    # A 200 carrying the validator we sent is the same document; servers that ignore If-None-Match do this.
    unchanged = response.not_modified or (
        trust_validators
        and (
            (sent_etag is not None and response.etag == sent_etag)
            or (response.etag is None and sent_modified is not None and response.last_modified == sent_modified)
        )
    )
    feed = None
    if not unchanged:
        runner = parse_runner or asyncio.to_thread
        feed = await runner(parse, response.body, response.content_type, response.url, config)
    return FetchOutcome(
        not_modified=unchanged,
        feed=feed,
        etag=new_etag if trust_validators else None,
        last_modified=new_modified if trust_validators else None,
        retry_after_at=response.retry_after_at,
        max_age=response.max_age,
        http_status=response.status,
        final_url=response.url,
        elapsed=response.elapsed,
    )


__all__ = [
    "FetchError",
    "FetchOutcome",
    "ItemDraft",
    "ParseRunner",
    "ParsedFeed",
    "SourceType",
    "absolute_http_url",
    "check_headers",
    "check_http_url",
    "check_keys",
    "decode_body",
    "fetch_and_parse",
    "fetch_source",
    "to_utc",
]
