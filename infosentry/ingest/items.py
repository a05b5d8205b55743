"""Storing the items of many fetches at once: deduplicated against the database and each other (canonical URL,
then title fingerprint plus near-identical text across sources), new stories inserted, and every story linked
to every source it was seen in. Set-based: five statements per batch, whatever its size.

Imports ingest.dedupe, ingest.parsing (PreparedFeed), models, store.items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from infosentry.ingest.dedupe import DEDUPE_WINDOW, Candidate, find_same_story, title_marks
from infosentry.ingest.parsing import PreparedFeed
from infosentry.models import NewItem
from infosentry.store import items as items_store

BACKFILL_GRACE = timedelta(hours=1)


@dataclass(slots=True)
class FeedItems:
    """The parsed items of one fetch, with the source row they came from."""

    source: Mapping[str, Any]  # id, created_at, last_success_at
    feed: PreparedFeed
    new: int = 0
    duplicate: int = 0


async def store_items(
    conn: asyncpg.Connection, batch: Sequence[FeedItems], now: datetime, *, max_age: timedelta | None = None
) -> None:
    """Insert what is new, link what is known; count new and duplicate items on each FeedItems. Entries that
    are no news any more count as duplicates: stories pruned by retention (tombstones) and, with `max_age` (the
    items' retention), entries published before it."""
    if not batch:
        return
    all_hashes = [item.url_hash for b in batch for item in b.feed.items]
    existing = await items_store.ids_by_hash(conn, all_hashes)
    unknown = [h for h in all_hashes if h not in existing]
    gone = await items_store.pruned_hashes(conn, unknown) if unknown else set()
    oldest = now - max_age if max_age is not None else None
    fresh = [item for b in batch for item in b.feed.items if item.url_hash not in existing]
    fresh_keys = {item.title_key for item in fresh}
    marks_of = {item.url_hash: title_marks(item.title) for item in fresh}
    by_title: dict[str, list[Candidate]] = {}
    by_mark: dict[str, list[Candidate]] = {}  # Chinese titles that differ by a tag, punctuation or a tail
    hours = int(DEDUPE_WINDOW.total_seconds() // 3600)
    wanted = {m for ms in marks_of.values() for m in ms}
    for c in await items_store.title_candidates(conn, fresh_keys, hours=hours, marks=wanted):
        cand = Candidate(c["id"], c["snippet"], c["published_at"], set(c["source_ids"]), c["title"])
        if c["title_key"] in fresh_keys:
            by_title.setdefault(c["title_key"], []).append(cand)
        for m in c["title_marks"] or ():
            if m in wanted:
                by_mark.setdefault(m, []).append(cand)
    new_items: dict[str, tuple[NewItem, FeedItems]] = {}  # url_hash -> the new item and the fetch that found it
    # (item id or url_hash of a new item, source id, url, alias): the alias hash is stored for every link but
    # the one that created the item, so a merged story's own URL finds its item at the next fetch
    links: list[tuple[int | str, int, str, str | None]] = []
    for b in batch:
        source_id = int(b.source["id"])
        first_fetch = b.source["last_success_at"] is None
        cutoff = b.source["created_at"] - BACKFILL_GRACE
        seen: set[str] = set()
        for draft in b.feed.items:
            digest, tkey = draft.url_hash, draft.title_key
            if digest in seen:
                b.duplicate += 1
                continue
            seen.add(digest)
            published = min(draft.published_at, now) if draft.published_at else None
            if digest in gone or (oldest is not None and published is not None and published < oldest):
                b.duplicate += 1
                continue
            target: int | str | None = existing.get(digest)
            if target is None and digest in new_items:
                target = digest
            marks = marks_of.get(digest, [])
            if target is None:
                near = [c for m in marks for c in by_mark.get(m, ())]
                cand = find_same_story(by_title.get(tkey), source_id, draft.snippet, draft.title, published, near)
                if cand is not None:
                    target = cand.target
                    cand.source_ids.add(source_id)
            if target is not None:
                b.duplicate += 1
                links.append((target, source_id, draft.url, digest))
                continue
            item = NewItem(
                url=draft.url,
                canonical_url=draft.canonical_url,
                url_hash=digest,
                guid=draft.guid,
                title=draft.title,
                snippet=draft.snippet,
                author=draft.author,
                tags=draft.tags,
                published_at=published,
                source_id=source_id,
                title_key=tkey,
                is_backfill=bool((published and published < cutoff) or (first_fetch and published is None)),
                title_marks=marks,
            )
            new_items[digest] = (item, b)
            mine = Candidate(digest, draft.snippet, published, {source_id}, draft.title)
            by_title.setdefault(tkey, []).append(mine)
            for m in marks:
                by_mark.setdefault(m, []).append(mine)
            links.append((digest, source_id, draft.url, None))
    # sorted: concurrent writers (other worker processes) then take index locks in one order, never deadlock
    inserted = await items_store.insert_items(conn, sorted((i for i, _ in new_items.values()), key=_by_hash))
    lost = [h for h in new_items if h not in inserted]  # a concurrent writer stored the same story first
    inserted_elsewhere = await items_store.ids_by_hash(conn, lost) if lost else {}
    for digest, (_, b) in new_items.items():
        if digest in inserted:
            b.new += 1
        else:
            b.duplicate += 1
    ids = {**inserted, **inserted_elsewhere}
    resolved = []
    for target, source_id, url, alias in links:
        item_id = ids.get(target) if isinstance(target, str) else target
        if item_id is not None:
            resolved.append((item_id, source_id, url, alias))
    await items_store.link_sources(conn, sorted(resolved, key=lambda link: (link[0], link[1])))


def _by_hash(item: NewItem) -> str:
    return item.url_hash
