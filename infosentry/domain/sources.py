"""Sources a user follows: follow (with feed discovery when asked), edit, enable/disable, unfollow, OPML and
hot-list catalog imports, OPML export, and what a follower may see of a source.

A source (type + URL) is shared and fetched once however many users follow it; each user has a subscription.
Header values in a source's config may carry credentials: only the user who set them sees them.
Imports sources (config validation, discovery), opml, urls, store.sources, domain.fields, runtime.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from infosentry import opml
from infosentry.domain import Actor
from infosentry.domain.fields import Fields
from infosentry.errors import BadRequest, Conflict, Invalid, NotFound
from infosentry.fetch_errors import FetchError
from infosentry.runtime import Runtime
from infosentry.sources import DEFAULT_INTERVALS, SOURCE_TYPES
from infosentry.sources import hotlist as hotlist_type
from infosentry.store import sources as sources_store
from infosentry.urls import normalise_source_url, placeholder_name

log = logging.getLogger(__name__)

FIELDS = {"type", "url", "name", "fetch_interval_sec", "config", "enabled"}
MAX_OPML_BYTES = 1024 * 1024


@dataclass
class SourceSpec:
    """A validated source definition, ready to insert."""

    type: str
    url: str
    name: str
    fetch_interval_sec: int
    config: dict[str, Any]


@dataclass
class ImportEntry:
    """One line of an import (OPML outline or catalog entry), before validation."""

    type: str | None
    url: str
    name: str | None = None
    interval: int | None = None
    config: dict[str, Any] | None = None


@dataclass
class ImportReport:
    added: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[dict[str, Any]]]:
        return {"added": self.added, "skipped": self.skipped, "invalid": self.invalid}


def view(row: asyncpg.Record | dict[str, Any], user_id: int) -> dict[str, Any]:
    """A source as its follower sees it: header values are shown only to the user who created the source."""
    data = dict(row)
    config = dict(data.get("config") or {})
    if config.get("headers") and data.get("created_by") != user_id:
        config["headers"] = {name: "***" for name in config["headers"]}
    data["config"] = config
    data.pop("created_by", None)
    return data


def validate(*, type: str | None, url: Any, name: Any = None, interval: Any = None, config: Any = None) -> SourceSpec:
    """Check a source definition (from the API, the pages, the CLI or an import); one Invalid listing every
    bad field. No network access."""
    errors: list[dict[str, str]] = []

    def bad(name_: str, message: str) -> None:
        errors.append({"field": name_, "message": message})

    kind = (type or "rss").strip().lower() if isinstance(type, str) or type is None else None
    if kind not in SOURCE_TYPES:
        bad("type", f"must be one of {', '.join(SOURCE_TYPES)}")
    if not isinstance(url, str) or not re.match(r"(?i)^https?://[^\s/]", url.strip()) or len(url) > 2048:
        bad("url", "must be an absolute http(s) URL of at most 2048 characters")
    if name is not None and (not isinstance(name, str) or not 1 <= len(name.strip()) <= 200):
        bad("name", "must be 1 to 200 characters")
    if interval is not None and (
        isinstance(interval, bool) or not isinstance(interval, int) or not 60 <= interval <= 86400
    ):
        bad("fetch_interval_sec", "must be an integer between 60 and 86400")
    if config is not None and not isinstance(config, dict):
        bad("config", "must be a JSON object")
    if errors:
        raise Invalid("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)
    assert kind is not None and isinstance(url, str)
    url = normalise_source_url(url)
    try:
        clean = SOURCE_TYPES[kind].validate_config(url, config or {})
    except ValueError as exc:
        field_name = "url" if str(exc).startswith("url:") else "config"
        raise Invalid(f"{field_name}: {exc}", errors=[{"field": field_name, "message": str(exc)}]) from None
    if kind == "hotlist":
        url = hotlist_type.api_url(clean)  # one source per hot list, however the user spelled it
    return SourceSpec(
        type=kind,
        url=url,
        name=(name.strip() if isinstance(name, str) else "") or placeholder_name(url),
        fetch_interval_sec=interval or DEFAULT_INTERVALS[kind],
        config=clean,
    )


def _private(config: dict[str, Any]) -> bool:
    """Request headers are often credentials: a source carrying them belongs to whoever set them."""
    return bool(config.get("headers"))


async def _follow_spec(
    rt: Runtime, user_id: int, spec: SourceSpec, *, enabled: bool = True
) -> tuple[asyncpg.Record, bool, bool]:
    """Create the source (or find the one with the same identity) and subscribe the user, within the user's
    MAX_SOURCES_PER_USER. Returns (the source as the user sees it, source created, subscription created).
    A source with request headers is private: (type, url, owner), never another user's."""
    limit = int(rt.hot["MAX_SOURCES_PER_USER"])
    async with rt.pool.acquire() as c, c.transaction():
        row, created = await sources_store.insert_source(
            c,
            type=spec.type,
            url=spec.url,
            name=spec.name,
            config=spec.config,
            fetch_interval_sec=spec.fetch_interval_sec,
            created_by=user_id,
            owner_id=user_id if _private(spec.config) else None,
        )
        if await sources_store.user_source(c, user_id, row["id"]) is None:
            if await sources_store.count_subscriptions(c, user_id) >= limit:
                raise Invalid(f"at most {limit} sources per user (MAX_SOURCES_PER_USER); unsubscribe from one first")
        subscribed = await sources_store.subscribe(c, user_id, row["id"], enabled=enabled)
        seen = await sources_store.user_source(c, user_id, row["id"])
        assert seen is not None
        return seen, created, subscribed


async def discover(rt: Runtime, url: str) -> tuple[str, str]:
    """(type, feed URL) for a URL a user pasted: the URL itself when it serves a feed, else the feed its page
    advertises (<link rel="alternate">). Network I/O; raises FetchError."""
    from infosentry.sources.discover import discover_feed

    return await discover_feed(await rt.fetcher(), url)


@dataclass
class Followed:
    source: dict[str, Any]  # as the user sees it
    created: bool  # the source is new (nobody followed it)
    subscribed: bool  # the user did not follow it before
    note: str | None = None  # for the user: the feed that was discovered, or why discovery was skipped


async def follow(rt: Runtime, actor: Actor, body: dict[str, Any], *, discover_feed: bool = False) -> Followed:
    """Follow a source (created when nobody follows it yet). With discover_feed, an rss URL that is a web page
    is replaced by the feed it advertises (network I/O; the JSON API never fetches, so it passes False and a page
    shows up as a parse error after the first fetch)."""
    f = Fields(body, FIELDS)
    enabled = f.bool("enabled", default=True)
    f.done()  # unknown fields and a bad `enabled`; validate() checks the rest
    kind, url, note = body.get("type"), body.get("url"), None
    if discover_feed and kind in (None, "rss"):
        validate(type="rss", url=url)  # a clear error before any network I/O
        try:
            kind, feed_url = await discover(rt, str(url))
        except FetchError as exc:
            if exc.kind == "parse":
                raise Invalid(f"url: {exc}", errors=[{"field": "url", "message": str(exc)}]) from None
            note = f"could not look at {url} now ({exc}); added it as an RSS feed"
            kind = "rss"
        else:
            if feed_url != url:
                note = f"discovered feed {feed_url}"
            url = feed_url
    spec = validate(
        type=kind, url=url, name=body.get("name"), interval=body.get("fetch_interval_sec"), config=body.get("config")
    )
    row, created, subscribed = await _follow_spec(rt, actor.user_id, spec, enabled=enabled)
    if enabled:
        await rt.nudge("ingest_due")
    return Followed(view(row, actor.user_id), created, subscribed, note)


async def mine(rt: Runtime, actor: Actor, source_id: int) -> asyncpg.Record:
    row = await sources_store.user_source(rt.pool, actor.user_id, source_id)
    if row is None:
        raise NotFound("no such source")
    return row


async def get(rt: Runtime, actor: Actor, source_id: int) -> dict[str, Any]:
    """Settings, health, items of the last 24 h and the last 10 fetches."""
    data = view(await mine(rt, actor, source_id), actor.user_id)
    data["items_24h"] = await sources_store.items_since(rt.pool, source_id, 24)
    data["recent_fetches"] = [dict(r) for r in await sources_store.recent_logs(rt.pool, source_id, 10)]
    return data


async def list_sources(
    rt: Runtime,
    actor: Actor,
    *,
    type: str | None = None,
    enabled: bool | None = None,
    limit: int = 200,
    after_id: int = 0,
) -> list[dict[str, Any]]:
    if type is not None and type not in SOURCE_TYPES:
        raise BadRequest(f"type must be one of {', '.join(SOURCE_TYPES)}")
    rows = await sources_store.user_sources(
        rt.pool, actor.user_id, limit=limit, after_id=after_id, type=type, enabled=enabled
    )
    return [view(r, actor.user_id) for r in rows]


async def edit(rt: Runtime, actor: Actor, source_id: int, body: dict[str, Any]) -> dict[str, Any]:
    """Change a source (url, name, interval, config) or the caller's subscription (enabled).

    Other followers chose this feed: a shared source is never repointed (url, config) under them unless by an
    admin, and only its creator or an admin renames it or changes its interval."""
    f = Fields(body, FIELDS)
    enabled = f.bool("enabled")
    if "type" in body:
        f.check(False, "type", "cannot be changed; add a new source instead")
    if "config" in body:
        f.check(isinstance(body["config"], dict), "config", "must be an object")
    f.done()
    row = await mine(rt, actor, source_id)
    shared_change = {k for k in ("url", "name", "fetch_interval_sec", "config") if k in body}
    if shared_change:
        shared = await sources_store.subscriber_count(rt.pool, source_id) > 1
        if shared and not actor.is_admin and {"url", "config"} & shared_change:
            raise Conflict(
                "this source is shared with other subscribers: add the new url as a new source (and "
                "unsubscribe from this one) instead of changing its url or config"
            )
        if shared and not (actor.is_admin or row["created_by"] == actor.user_id):
            raise Conflict(
                "this source is shared with other subscribers: only the user who added it (or an admin) "
                "can change its name or interval"
            )
        config = dict(body["config"] if "config" in body else row["config"])
        if "url" in body and "config" not in body and row["created_by"] != actor.user_id:
            # headers someone else set are for the URL they set them for, not for wherever it is repointed
            config.pop("headers", None)
        spec = validate(
            type=row["type"],
            url=body.get("url", row["url"]),
            name=body.get("name", row["name"]),
            interval=body.get("fetch_interval_sec", row["fetch_interval_sec"]),
            config=config,
        )
        if _private(spec.config) and not row["private"] and shared:
            raise Conflict("a source with request headers is private to you: add it as a new source instead")
        try:
            async with rt.pool.acquire() as conn, conn.transaction():
                if _private(spec.config) and not row["private"]:
                    await sources_store.make_private(conn, source_id, actor.user_id)
                await sources_store.update_source(
                    conn,
                    source_id,
                    name=spec.name if "name" in body else None,
                    url=spec.url if spec.url != row["url"] else None,
                    config=spec.config if spec.config != row["config"] else None,
                    fetch_interval_sec=spec.fetch_interval_sec if "fetch_interval_sec" in body else None,
                )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"another {row['type']} source already has this url; subscribe to it instead") from None
    if enabled is not None:
        await sources_store.set_subscription_enabled(rt.pool, actor.user_id, source_id, enabled)
    if shared_change or enabled:
        await rt.nudge("ingest_due")
    return view(await mine(rt, actor, source_id), actor.user_id)


async def set_enabled(rt: Runtime, actor: Actor, source_id: int, enabled: bool) -> dict[str, Any]:
    """Toggle the caller's subscription (a source nobody follows enabled is not fetched)."""
    if not await sources_store.set_subscription_enabled(rt.pool, actor.user_id, source_id, enabled):
        raise NotFound("no such source")
    if enabled:
        await rt.nudge("ingest_due")
    return view(await mine(rt, actor, source_id), actor.user_id)


async def unfollow(rt: Runtime, actor: Actor, source_id: int) -> None:
    """Unsubscribe; the source stays for its other followers."""
    if not await sources_store.unsubscribe(rt.pool, actor.user_id, source_id):
        raise NotFound("no such source")


async def _import(
    rt: Runtime, user_id: int, entries: Iterable[ImportEntry], report: ImportReport, *, enabled: bool = True
) -> ImportReport:
    """Follow every entry; already followed ones (or ones listed twice) are skipped, bad ones reported."""
    followed = await sources_store.subscribed_keys(rt.pool, user_id)
    for entry in entries:
        try:
            spec = validate(
                type=entry.type, url=entry.url, name=entry.name, interval=entry.interval, config=entry.config
            )
        except Invalid as exc:
            report.invalid.append({"url": entry.url, "name": entry.name, "reason": exc.detail})
            continue
        if (spec.type, spec.url) in followed:
            report.skipped.append({"url": spec.url, "name": spec.name, "reason": "already subscribed"})
            continue
        try:
            row, created, _ = await _follow_spec(rt, user_id, spec, enabled=enabled)
        except Invalid as exc:  # the user's source limit: the rest of the document is reported, not added
            report.invalid.append({"url": spec.url, "name": spec.name, "reason": exc.detail})
            continue
        followed.add((spec.type, spec.url))
        report.added.append(
            {
                "id": row["id"],
                "url": spec.url,
                "name": row["name"],
                "type": spec.type,
                "new_source": created,
                "enabled": row["enabled"],
            }
        )
    if report.added and enabled:
        await rt.nudge("ingest_due")
    return report


async def import_opml(rt: Runtime, actor: Actor, data: bytes | str) -> ImportReport:
    """Follow every feed of an OPML document (nested folders flattened). Raises Invalid when unreadable."""
    if not data.strip():
        raise BadRequest("send an OPML document")
    if len(data) > MAX_OPML_BYTES:
        raise Invalid(f"OPML document larger than {MAX_OPML_BYTES} bytes")
    try:
        doc = opml.parse_opml(data)
    except ValueError as exc:
        raise Invalid(f"OPML: {exc}") from None
    lines = int(rt.hot["MAX_OPML_LINES"])
    if len(doc.entries) > lines:
        raise Invalid(f"the OPML document lists {len(doc.entries)} feeds; at most {lines} per import (MAX_OPML_LINES)")
    entries = (ImportEntry(e.type, e.url, e.name or None, e.interval, e.config) for e in doc.entries)
    return await _import(rt, actor.user_id, entries, ImportReport(invalid=list(doc.invalid)))


async def import_catalog(rt: Runtime, actor: Actor, base_url: str, *, enabled: bool = False) -> ImportReport:
    """Follow every hot list of the bundled catalog on `base_url` (a newsnow-style server). Subscriptions are
    disabled unless `enabled`: these need the internet; enable the ones you want."""
    entries = (
        ImportEntry(
            "hotlist",
            base_url,
            f"{e['name']} · {e['title']}" if e.get("title") else e["name"],
            min(max(int(e.get("interval") or 1800), 60), 86400),
            {"base_url": base_url, "source_id": e["id"]},
        )
        for e in catalog()
    )
    return await _import(rt, actor.user_id, entries, ImportReport(), enabled=enabled)


async def export_opml(rt: Runtime, actor: Actor) -> str:
    """The user's sources as OPML 2.0 (header values are never written)."""
    rows, after = [], 0
    while True:
        page = await sources_store.user_sources(rt.pool, actor.user_id, limit=1000, after_id=after)
        rows.extend(page)
        if len(page) < 1000:
            break
        after = page[-1]["id"]
    return opml.emit_opml(
        {
            "type": r["type"],
            "url": r["url"],
            "name": r["name"],
            "fetch_interval_sec": r["fetch_interval_sec"],
            # header values may be credentials (someone else's, on a shared source): never exported
            "config": {k: v for k, v in (r["config"] or {}).items() if k != "headers"} if r["type"] != "rss" else {},
        }
        for r in rows
    )


def catalog() -> list[dict[str, Any]]:
    """The bundled catalog of public hot lists."""
    return hotlist_type.load_catalog()
