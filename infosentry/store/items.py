"""SQL for items (one row per story) and item_sources (every source a story was seen in).

Set-based: lookups take arrays, inserts unnest arrays, so a batch of fetched items costs a few statements.
Imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

Conn = asyncpg.Pool | asyncpg.Connection

# Tags travel as one string per item joined by the ASCII unit separator (unnest cannot carry ragged arrays);
# clean tag text never contains control characters.
TAG_SEPARATOR = "\x1f"


async def ids_by_hash(conn: Conn, hashes: Iterable[str]) -> dict[str, int]:
    """{url_hash: item id} for stories known by these canonical-URL hashes: their own URL, or an alias (the
    link another source used for the same story)."""
    rows = await conn.fetch(
        """SELECT url_hash, id FROM items WHERE url_hash = ANY($1::text[])
           UNION ALL
           SELECT url_hash, item_id FROM item_sources WHERE url_hash = ANY($1::text[])""",
        list(set(hashes)),
    )
    found: dict[str, int] = {}
    for r in rows:  # the item's own URL comes first and wins over an alias
        found.setdefault(r["url_hash"], r["id"])
    return found


async def title_candidates(conn: Conn, keys: Iterable[str], *, hours: int = 72) -> list[asyncpg.Record]:
    """Recent items with one of these title fingerprints, with every source they were seen in
    (near-duplicate detection across sources). Uses the items_title_key index."""
    keys = list(set(keys))
    if not keys:
        return []
    return await conn.fetch(
        """SELECT i.id, i.title_key, i.title, i.snippet, i.published_at, i.ingested_at,
                  array_agg(x.source_id) AS source_ids
           FROM items i JOIN item_sources x ON x.item_id = i.id
           WHERE i.title_key = ANY($1::text[]) AND i.ingested_at > now() - make_interval(hours => $2)
           GROUP BY i.id
           ORDER BY i.id""",
        keys,
        hours,
    )


async def insert_items(conn: Conn, rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Insert new items; returns {url_hash: id} of the rows actually inserted (a concurrent writer may
    have inserted the same story first: ON CONFLICT leaves that one in place)."""
    if not rows:
        return {}

    def col(name: str) -> list[Any]:
        return [r[name] for r in rows]

    inserted = await conn.fetch(
        """INSERT INTO items (url, canonical_url, url_hash, guid, title, snippet, author, tags, published_at,
                              source_id, title_key, is_backfill)
           SELECT u.url, u.canonical_url, u.url_hash, u.guid, u.title, u.snippet, u.author,
                  CASE WHEN u.tags = '' THEN '{}'::text[] ELSE string_to_array(u.tags, $13) END,
                  u.published_at, u.source_id, u.title_key, u.is_backfill
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                       $8::text[], $9::timestamptz[], $10::bigint[], $11::text[], $12::boolean[])
                AS u(url, canonical_url, url_hash, guid, title, snippet, author, tags, published_at, source_id,
                     title_key, is_backfill)
           ON CONFLICT (url_hash) DO NOTHING
           RETURNING url_hash, id""",
        col("url"),
        col("canonical_url"),
        col("url_hash"),
        col("guid"),
        col("title"),
        col("snippet"),
        col("author"),
        [TAG_SEPARATOR.join(r["tags"]) for r in rows],
        col("published_at"),
        col("source_id"),
        col("title_key"),
        col("is_backfill"),
        TAG_SEPARATOR,
    )
    return {r["url_hash"]: r["id"] for r in inserted}


async def link_sources(conn: Conn, links: Sequence[tuple[int, int, str, str | None]]) -> int:
    """Record that items were seen in sources: (item_id, source_id, url as that source links it, alias url_hash
    or None when the link is the item's own URL). Returns how many links are new."""
    if not links:
        return 0
    status = await conn.execute(
        """INSERT INTO item_sources (item_id, source_id, url, url_hash)
           SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[])
           ON CONFLICT (item_id, source_id) DO NOTHING""",
        [link[0] for link in links],
        [link[1] for link in links],
        [link[2] for link in links],
        [link[3] for link in links],
    )
    return int(status.split()[-1])


async def item_with_sources(conn: Conn, item_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT i.id, i.url, i.canonical_url, i.title, i.snippet, i.published_at, i.ingested_at, i.source_id,
                  i.is_backfill, i.tags, i.author,
                  coalesce(array_agg(x.source_id ORDER BY x.first_seen_at) FILTER (WHERE x.source_id IS NOT NULL),
                           '{}') AS source_ids
           FROM items i LEFT JOIN item_sources x ON x.item_id = i.id
           WHERE i.id = $1 GROUP BY i.id""",
        item_id,
    )
