"""SQL for items (one row per story), item_sources (every source a story was seen in), their embedding
state and the item views of the inbox.

Set-based: lookups take arrays, inserts and updates unnest arrays, so a batch costs a few statements.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import numpy as np
from pgvector import Vector

from infosentry.models import NewItem
from infosentry.store import Conn, delete_in_batches

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


async def title_candidates(
    conn: Conn, keys: Iterable[str], *, hours: int = 72, marks: Iterable[str] = ()
) -> list[asyncpg.Record]:
    """Recent items with one of these title fingerprints or sharing one of these Chinese title marks, with every
    source they were seen in (near-duplicate detection across sources). Uses the items_title_key and
    items_title_marks indexes."""
    keys, marks = list(set(keys)), list(set(marks))
    if not keys and not marks:
        return []
    return await conn.fetch(
        """SELECT i.id, i.title_key, i.title_marks, i.title, i.snippet, i.published_at, i.ingested_at,
                  array_agg(x.source_id) AS source_ids
           FROM items i JOIN item_sources x ON x.item_id = i.id
           WHERE (i.title_key = ANY($1::text[]) OR i.title_marks && $3::text[])
             AND i.ingested_at > now() - make_interval(hours => $2)
           GROUP BY i.id
           ORDER BY i.id""",
        keys,
        hours,
        marks,
    )


async def insert_items(conn: Conn, rows: Sequence[NewItem]) -> dict[str, int]:
    """Insert new items; returns {url_hash: id} of the rows actually inserted (a concurrent writer may
    have inserted the same story first: ON CONFLICT leaves that one in place)."""
    if not rows:
        return {}

    def col(name: str) -> list[Any]:
        return [getattr(r, name) for r in rows]

    inserted = await conn.fetch(
        """INSERT INTO items (url, canonical_url, url_hash, guid, title, snippet, author, tags, published_at,
                              source_id, title_key, is_backfill, title_marks)
           SELECT u.url, u.canonical_url, u.url_hash, u.guid, u.title, u.snippet, u.author,
                  CASE WHEN u.tags = '' THEN '{}'::text[] ELSE string_to_array(u.tags, $13) END,
                  u.published_at, u.source_id, u.title_key, u.is_backfill,
                  CASE WHEN u.marks = '' THEN NULL ELSE string_to_array(u.marks, $13) END
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                       $8::text[], $9::timestamptz[], $10::bigint[], $11::text[], $12::boolean[], $14::text[])
                AS u(url, canonical_url, url_hash, guid, title, snippet, author, tags, published_at, source_id,
                     title_key, is_backfill, marks)
           ON CONFLICT (url_hash) DO NOTHING
           RETURNING url_hash, id""",
        col("url"),
        col("canonical_url"),
        col("url_hash"),
        col("guid"),
        col("title"),
        col("snippet"),
        col("author"),
        [TAG_SEPARATOR.join(r.tags) for r in rows],
        col("published_at"),
        col("source_id"),
        col("title_key"),
        col("is_backfill"),
        TAG_SEPARATOR,
        [TAG_SEPARATOR.join(r.title_marks) for r in rows],
    )
    return {r["url_hash"]: r["id"] for r in inserted}


async def link_sources(conn: Conn, links: Sequence[tuple[int, int, str, str | None]]) -> int:
    """Record that items were seen in sources: (item_id, source_id, url as that source links it, alias url_hash
    or None when the link is the item's own URL). Returns how many links are new.

    Retention may prune an item between the lookup that found it and this link (the soak caught it as a foreign
    key error failing a whole fetch): the items are locked against deletion first, and one already gone is
    simply not linked (its tombstone keeps it from coming back)."""
    if not links:
        return 0
    status = await conn.execute(
        """WITH live AS (SELECT id FROM items WHERE id = ANY($1::bigint[]) FOR KEY SHARE)
           INSERT INTO item_sources (item_id, source_id, url, url_hash)
           SELECT v.* FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[]) AS v(item_id, source_id, url, h)
           WHERE v.item_id IN (SELECT id FROM live)
           ON CONFLICT (item_id, source_id) DO NOTHING""",
        [link[0] for link in links],
        [link[1] for link in links],
        [link[2] for link in links],
        [link[3] for link in links],
    )
    return int(status.split()[-1])


async def item_for_user(conn: Conn, *, user_id: int, item_id: int) -> asyncpg.Record | None:
    """The item, if it reached one of the user's goals (scored or pushed) or the user follows one of its sources."""
    return await conn.fetchrow(
        """SELECT i.id, i.title, i.url, i.canonical_url, i.snippet, i.author, i.tags, i.published_at, i.ingested_at,
                  i.source_id, s.name AS source_name, s.type AS source_type
           FROM items i JOIN sources s ON s.id = i.source_id
           WHERE i.id = $2 AND (
               EXISTS (SELECT 1 FROM matches m JOIN goals g ON g.id = m.goal_id
                       WHERE m.item_id = i.id AND g.user_id = $1)
               OR EXISTS (SELECT 1 FROM notifications n WHERE n.item_id = i.id AND n.user_id = $1)
               OR EXISTS (SELECT 1 FROM item_sources x JOIN subscriptions sub ON sub.source_id = x.source_id
                          WHERE x.item_id = i.id AND sub.user_id = $1)
               OR EXISTS (SELECT 1 FROM subscriptions sub WHERE sub.source_id = i.source_id AND sub.user_id = $1))""",
        user_id,
        item_id,
    )


async def item_goals(conn: Conn, *, user_id: int, item_id: int) -> list[asyncpg.Record]:
    """Per goal of the user: the item's score, decision and feedback."""
    return await conn.fetch(
        """SELECT g.id AS goal_id, g.name AS goal_name, m.score, m.reasons, d.tier, d.status AS decision_status,
                  d.reason, n.id AS notification_id, f.feedback,
                  EXISTS (SELECT 1 FROM blocked_sources b JOIN items i ON i.id = $2
                          WHERE b.goal_id = g.id AND b.source_id = i.source_id) AS source_blocked
           FROM goals g
           LEFT JOIN matches m ON m.goal_id = g.id AND m.item_id = $2
           LEFT JOIN decisions d ON d.goal_id = g.id AND d.item_id = $2
           LEFT JOIN notifications n ON n.goal_id = g.id AND n.item_id = $2
           LEFT JOIN feedback f ON f.goal_id = g.id AND f.item_id = $2
           WHERE g.user_id = $1 AND (m.item_id IS NOT NULL OR n.id IS NOT NULL OR f.item_id IS NOT NULL)
           ORDER BY g.id""",
        user_id,
        item_id,
    )


async def claim_pending(conn: asyncpg.Connection, limit: int, *, fifo_seconds: float) -> list[asyncpg.Record]:
    """Lock up to `limit` items waiting for an embedding; other workers skip them. Call inside a transaction held
    until the vectors are stored. (NO KEY UPDATE: rows that reference these items, as another goal's backfill
    writes, are not held up by the claim.)

    Items of the last `fifo_seconds` go first, oldest first: a fetch wave brings hundreds of items in a second,
    and newest first left the wave's first items waiting until its last were done (seconds, on instant alerts).
    A backlog older than that (an outage) goes newest first after them: fresh news matters most."""
    return await conn.fetch(
        """WITH recent AS (
               SELECT id FROM items
               WHERE embedding_status = 'pending' AND ingested_at >= now() - make_interval(secs => $2)
               ORDER BY ingested_at, id LIMIT $1 FOR NO KEY UPDATE SKIP LOCKED),
           backlog AS (
               SELECT id FROM items
               WHERE embedding_status = 'pending' AND ingested_at < now() - make_interval(secs => $2)
               ORDER BY ingested_at DESC, id DESC LIMIT $1 - (SELECT count(*) FROM recent)
               FOR NO KEY UPDATE SKIP LOCKED)
           SELECT i.id, i.title, i.snippet, i.embed_attempts
           FROM items i JOIN (SELECT id FROM recent UNION ALL SELECT id FROM backlog) c ON c.id = i.id""",
        limit,
        fifo_seconds,
    )


async def store_embeddings(
    conn: Conn, ids: list[int], vectors: list[np.ndarray], contexts: list[np.ndarray], model: str
) -> None:
    """Vector, context vector, model and status of many items in one UPDATE; matched_at is cleared so a lost
    matching step is redone by the sweep."""
    if not ids:
        return
    await conn.execute(
        """UPDATE items SET embedding = v.e, context_embedding = v.c, embedding_model = $4,
               embedding_status = 'done', embedded_at = now(), embed_attempts = items.embed_attempts + 1,
               matched_at = NULL
           FROM unnest($1::bigint[], $2::vector[], $3::vector[]) AS v(id, e, c)
           WHERE items.id = v.id""",
        ids,
        [Vector(np.asarray(v, dtype=np.float32)) for v in vectors],
        [Vector(np.asarray(v, dtype=np.float32)) for v in contexts],
        model,
    )


async def record_embed_failure(conn: Conn, ids: list[int], *, max_attempts: int) -> list[int]:
    """Count a refused attempt for these items; those that reached max_attempts become 'failed' (visible,
    still scored lexically). Returns the ids that failed for good."""
    if not ids:
        return []
    rows = await conn.fetch(
        """UPDATE items SET embed_attempts = embed_attempts + 1,
               embedding_status = CASE WHEN embed_attempts + 1 >= $2 THEN 'failed' ELSE embedding_status END
           WHERE id = ANY($1::bigint[]) RETURNING id, embedding_status""",
        ids,
        max_attempts,
    )
    return [r["id"] for r in rows if r["embedding_status"] == "failed"]


async def claim_unmatched(
    conn: asyncpg.Connection, limit: int, *, include_pending: bool, pending_wait: float
) -> list[int]:
    """Lock items never scored against the goals (a lost nudge, a crash after embedding; items still pending
    when include_pending, or once they have waited `pending_wait` seconds), newest first."""
    rows = await conn.fetch(
        """SELECT id FROM items
           WHERE matched_at IS NULL
             AND ($2 OR embedding_status <> 'pending' OR ingested_at < now() - make_interval(secs => $3))
           ORDER BY ingested_at DESC LIMIT $1 FOR NO KEY UPDATE SKIP LOCKED""",
        limit,
        include_pending,
        pending_wait,
    )
    return [r["id"] for r in rows]


async def requeue_other_model(conn: Conn, model: str, *, hours: int, limit: int) -> int:
    """Items still needed for matching (recent, or rated by a goal) embedded with another model go back to
    pending, so a provider/model change re-embeds them; their old vectors stay until replaced."""
    status = await conn.execute(
        """UPDATE items SET embedding_status = 'pending', embed_attempts = 0
           WHERE id IN (
               SELECT id FROM items i
               WHERE i.embedding_status = 'done' AND i.embedding_model IS DISTINCT FROM $1
                 AND (i.ingested_at > now() - make_interval(hours => $2)
                      OR EXISTS (SELECT 1 FROM feedback f WHERE f.item_id = i.id))
               LIMIT $3)""",
        model,
        hours,
        limit,
    )
    return int(status.split()[-1])


async def pool_vectors(conn: Conn, model: str, *, after_id: int, hours: int, limit: int) -> list[asyncpg.Record]:
    """Raw vectors of recent embedded items of `model` with id > after_id, newest first (the context pool)."""
    return await conn.fetch(
        """SELECT id, embedding, extract(epoch FROM ingested_at) AS ts FROM items
           WHERE embedding_status = 'done' AND embedding_model = $1 AND id > $2
             AND ingested_at > now() - make_interval(hours => $3)
           ORDER BY id DESC LIMIT $4""",
        model,
        after_id,
        hours,
        limit,
    )


async def work_waiting(conn: Conn, model: str, *, prf_first: int, prf_every: int) -> dict[str, bool]:
    """Is there anything for the embed/match job (cheap EXISTS probes for the periodic sweep)?"""
    row = await conn.fetchrow(
        """SELECT EXISTS (SELECT 1 FROM items WHERE embedding_status = 'pending') AS pending,
                  EXISTS (SELECT 1 FROM items WHERE matched_at IS NULL) AS unmatched,
                  EXISTS (SELECT 1 FROM goals WHERE status = 'active'
                          AND (embedded_version IS DISTINCT FROM version
                               OR embedding_model IS DISTINCT FROM $1
                               OR matched_version IS DISTINCT FROM version
                               OR EXISTS (SELECT 1 FROM goal_calibration c WHERE c.goal_id = goals.id
                                          AND c.signal = $1 AND c.goal_version = goals.version
                                          AND c.seen >= CASE WHEN c.prf_at IS NULL THEN $2::int ELSE $3::int END)
                               OR NOT EXISTS (SELECT 1 FROM goal_calibration c WHERE c.goal_id = goals.id
                                              AND c.signal = $1 AND c.goal_version = goals.version))) AS goals""",
        model,
        prf_first,
        prf_every,
    )
    return dict(row)


# The user's recent items, found from their subscriptions through item_sources (every source an item was seen
# in, the first included: a link is written with the item, first_seen_at no earlier than its ingested_at).
# Testing each recent item for visibility instead read every recent item's row: 160-210 ms per call with 90,000
# items, against 35-47 ms (bin/bench scale), and PRF refreshes call it for every user many times a day.
_VISIBLE_RECENT = """i.id IN (SELECT s.item_id FROM item_sources s JOIN subscriptions sub
                                    ON sub.source_id = s.source_id AND sub.user_id = $1 AND sub.enabled
                                 WHERE s.first_seen_at > now() - make_interval(hours => $2))
                  AND i.ingested_at > now() - make_interval(hours => $2)"""


async def recent_visible_vectors(conn: Conn, user_id: int, model: str, *, hours: int, limit: int) -> list[Any]:
    """Context vectors of the newest embedded items (of `model`) the user sees, up to `limit`."""
    rows = await conn.fetch(
        f"""SELECT COALESCE(i.context_embedding, i.embedding) AS v FROM items i
            WHERE {_VISIBLE_RECENT} AND i.embedding_status = 'done' AND i.embedding_model = $3
            ORDER BY i.id DESC LIMIT $4""",
        user_id,
        hours,
        model,
        limit,
    )
    return [r["v"] for r in rows]


async def recent_visible_items(conn: Conn, user_id: int, *, hours: int, after_id: int, limit: int) -> list[int]:
    """Ids of recent items from sources the user subscribes to (enabled), ascending from after_id."""
    rows = await conn.fetch(
        f"""SELECT i.id FROM items i WHERE {_VISIBLE_RECENT} AND i.id > $3 ORDER BY i.id LIMIT $4""",
        user_id,
        hours,
        after_id,
        limit,
    )
    return [r["id"] for r in rows]


async def mark_matched(conn: Conn, item_ids: list[int]) -> None:
    await conn.execute("UPDATE items SET matched_at = now() WHERE id = ANY($1::bigint[])", item_ids)


async def count_visible(conn: Conn, user_id: int) -> int:
    """Items seen in any source the user follows."""
    return int(
        await conn.fetchval(
            "SELECT count(DISTINCT item_id) FROM item_sources x JOIN subscriptions s ON s.source_id = x.source_id "
            "WHERE s.user_id = $1",
            user_id,
        )
    )


async def prune_unneeded(conn: Conn, *, older_than_days: float) -> int:
    """Items past the retention that no one was sent (inbox) or rated (feedback neighbours), with their
    matches, decisions, runs and source links (cascade); their hashes become tombstones."""
    return await _prune(
        conn,
        """ingested_at < now() - make_interval(secs => $1::float8 * 86400)
           AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.item_id = items.id)
           AND NOT EXISTS (SELECT 1 FROM feedback f WHERE f.item_id = items.id)""",
        older_than_days,
    )


async def prune_kept(conn: Conn, *, older_than_days: float) -> int:
    """Even items in an inbox or rated go, after the longer inbox retention."""
    return await _prune(conn, "ingested_at < now() - make_interval(secs => $1::float8 * 86400)", older_than_days)


async def _prune(conn: Conn, where: str, older_than_days: float, batch: int = 2_000) -> int:
    """Delete items matching `where` (this module's own SQL) in batches, leaving a tombstone per URL hash (the
    item's own and its aliases) so a feed still listing the story does not bring it back as news."""
    query = f"""WITH doomed AS (SELECT id, url_hash FROM items WHERE {where} LIMIT $2),
                     hashes AS (SELECT url_hash FROM doomed
                                UNION SELECT x.url_hash FROM item_sources x
                                      WHERE x.item_id IN (SELECT id FROM doomed) AND x.url_hash IS NOT NULL),
                     marked AS (INSERT INTO item_tombstones (url_hash)
                                SELECT decode(url_hash, 'hex') FROM hashes ON CONFLICT (url_hash) DO NOTHING)
                DELETE FROM items WHERE id IN (SELECT id FROM doomed)"""
    total = 0
    while True:
        deleted = int((await conn.execute(query, older_than_days, batch)).split()[-1])
        total += deleted
        if deleted < batch:
            return total


async def pruned_hashes(conn: Conn, hashes: Iterable[str]) -> set[str]:
    """The hashes among these that belonged to pruned items."""
    rows = await conn.fetch(
        "SELECT encode(url_hash, 'hex') AS h FROM item_tombstones "
        "WHERE url_hash = ANY(ARRAY(SELECT decode(h, 'hex') FROM unnest($1::text[]) h))",
        list(set(hashes)),
    )
    return {r["h"] for r in rows}


async def prune_tombstones(conn: Conn, *, older_than_days: float) -> int:
    return await delete_in_batches(
        conn,
        "item_tombstones",
        "pruned_at < now() - make_interval(secs => $1::float8 * 86400)",
        older_than_days,
        key="url_hash",
    )


async def recent_visible_texts(conn: Conn, user_id: int, *, limit: int) -> list[asyncpg.Record]:
    """Title and snippet of the newest items from sources the user follows (term suggestions)."""
    return await conn.fetch(
        """SELECT i.id, i.title, i.snippet FROM subscriptions sub
           JOIN items i ON i.source_id = sub.source_id
           WHERE sub.user_id = $1
           ORDER BY i.id DESC LIMIT $2""",
        user_id,
        limit,
    )
