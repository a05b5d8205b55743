"""SQL for embedding state and matching: claiming pending/unmatched items, storing item and goal vectors,
the data one matching batch needs, and the bulk upsert of match rows. Every write is set-based (unnest)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
from pgvector import Vector

Conn = asyncpg.Pool | asyncpg.Connection


# --- items: embedding ---------------------------------------------------------------------------------------


async def claim_pending(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    """Lock up to `limit` items waiting for an embedding, newest first (fresh news matters most); other workers
    skip them. Call inside a transaction held until the vectors are stored."""
    return await conn.fetch(
        """SELECT id, title, snippet, embed_attempts FROM items
           WHERE embedding_status = 'pending'
           ORDER BY ingested_at DESC LIMIT $1 FOR UPDATE SKIP LOCKED""",
        limit,
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


async def claim_unmatched(conn: asyncpg.Connection, limit: int, *, include_pending: bool) -> list[int]:
    """Lock items never scored against the goals (a lost nudge, a crash after embedding, items kept pending
    while embedding is paused when include_pending), newest first."""
    rows = await conn.fetch(
        """SELECT id FROM items
           WHERE matched_at IS NULL AND ($2 OR embedding_status <> 'pending')
           ORDER BY ingested_at DESC LIMIT $1 FOR UPDATE SKIP LOCKED""",
        limit,
        include_pending,
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


async def work_waiting(conn: Conn, model: str) -> dict[str, bool]:
    """Is there anything for the embed/match job (cheap EXISTS probes for the periodic sweep)?"""
    row = await conn.fetchrow(
        """SELECT EXISTS (SELECT 1 FROM items WHERE embedding_status = 'pending') AS pending,
                  EXISTS (SELECT 1 FROM items WHERE matched_at IS NULL) AS unmatched,
                  EXISTS (SELECT 1 FROM goals WHERE status = 'active'
                          AND (embedded_version IS DISTINCT FROM version
                               OR embedding_model IS DISTINCT FROM $1
                               OR matched_version IS DISTINCT FROM version)) AS goals""",
        model,
    )
    return dict(row)


async def embedding_counts(conn: Conn) -> dict[str, int]:
    rows = await conn.fetch("SELECT embedding_status AS s, count(*) AS n FROM items GROUP BY 1")
    return {r["s"]: int(r["n"]) for r in rows}


# --- goals: vectors and backfill ----------------------------------------------------------------------------


async def goals_to_embed(conn: Conn, model: str, limit: int) -> list[asyncpg.Record]:
    """Active goals whose vector is missing, stale (text changed: version) or of another model."""
    return await conn.fetch(
        """SELECT id, name, description, priority_terms, version FROM goals
           WHERE status = 'active'
             AND (embedded_version IS DISTINCT FROM version OR embedding_model IS DISTINCT FROM $1)
           ORDER BY updated_at LIMIT $2""",
        model,
        limit,
    )


async def store_goal_vectors(
    conn: Conn, ids: list[int], versions: list[int], vectors: list[np.ndarray], model: str
) -> None:
    """Store goal vectors for the version they were computed from (a goal edited meanwhile keeps waiting) and
    make the goal's recent items due for re-scoring with it."""
    await conn.execute(
        """UPDATE goals SET embedding = v.e, embedding_model = $4, embedded_version = v.version,
               matched_version = NULL
           FROM unnest($1::bigint[], $2::int[], $3::vector[]) AS v(id, version, e)
           WHERE goals.id = v.id AND goals.version = v.version""",
        ids,
        versions,
        [Vector(np.asarray(v, dtype=np.float32)) for v in vectors],
        model,
    )


async def goals_to_backfill(conn: Conn, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT id, user_id, version, updated_at FROM goals
           WHERE status = 'active' AND matched_version IS DISTINCT FROM version
           ORDER BY updated_at LIMIT $1""",
        limit,
    )


async def recent_visible_items(conn: Conn, user_id: int, *, hours: int, after_id: int, limit: int) -> list[int]:
    """Ids of recent items from sources the user subscribes to (enabled), ascending from after_id."""
    rows = await conn.fetch(
        """SELECT i.id FROM items i
           WHERE i.ingested_at > now() - make_interval(hours => $2) AND i.id > $3
             AND (EXISTS (SELECT 1 FROM item_sources s JOIN subscriptions sub
                              ON sub.source_id = s.source_id AND sub.user_id = $1 AND sub.enabled
                          WHERE s.item_id = i.id)
                  OR EXISTS (SELECT 1 FROM subscriptions sub
                             WHERE sub.source_id = i.source_id AND sub.user_id = $1 AND sub.enabled))
           ORDER BY i.id LIMIT $4""",
        user_id,
        hours,
        after_id,
        limit,
    )
    return [r["id"] for r in rows]


async def set_matched_version(conn: Conn, goal_id: int, version: int) -> bool:
    status = await conn.execute(
        "UPDATE goals SET matched_version = $2 WHERE id = $1 AND version = $2", goal_id, version
    )
    return status.endswith(" 1")


# --- one matching batch -------------------------------------------------------------------------------------


@dataclass
class Batch:
    items: list[asyncpg.Record]
    goals: list[asyncpg.Record]
    trust: list[asyncpg.Record]
    existing: list[asyncpg.Record]
    blocked: list[asyncpg.Record]  # (goal_id, source_id) pairs among the batch's goals and sources


async def load_batch(conn: Conn, item_ids: list[int], goal_ids: list[int] | None) -> Batch:
    """Items (with every source they were seen in), the active goals whose owners subscribe to one of those
    sources (restricted to goal_ids if given; without their vectors, see goal_vectors), source trust counts,
    and the pairs already stored."""
    items = await conn.fetch(
        """SELECT i.id, i.title, i.snippet, i.published_at, i.ingested_at, i.is_backfill, i.embedding_status,
                  i.embedding_model, COALESCE(i.context_embedding, i.embedding) AS context_embedding,
                  NULL::vector AS embedding,
                  ARRAY(SELECT s.source_id FROM item_sources s WHERE s.item_id = i.id
                        UNION SELECT i.source_id) AS sources
           FROM items i WHERE i.id = ANY($1::bigint[]) ORDER BY i.id""",
        item_ids,
    )
    if not items:
        return Batch([], [], [], [], [])
    sources = sorted({int(s) for r in items for s in r["sources"]})
    # Visibility is aggregated per user once (not a subquery per goal); the goal filter is a separate
    # statement text rather than "$2 IS NULL OR ...", which turns into a slow generic plan after 5 runs.
    goal_filter = "" if goal_ids is None else "AND g.id = ANY($2::bigint[])"
    goals = await conn.fetch(
        f"""WITH vis AS (
                SELECT sub.user_id, array_agg(sub.source_id) AS visible FROM subscriptions sub
                WHERE sub.enabled AND sub.source_id = ANY($1::bigint[])
                GROUP BY sub.user_id)
            SELECT g.id, g.user_id, g.name, g.description, g.priority_terms, g.negative_terms, g.priority_mode,
                   g.version, g.embedding_model, g.embedded_version, vis.visible
            FROM goals g JOIN vis ON vis.user_id = g.user_id
            WHERE g.status = 'active' {goal_filter}
            ORDER BY g.id""",
        sources,
        *([] if goal_ids is None else [goal_ids]),
    )
    if not goals:
        return Batch(list(items), [], [], [], [])
    gids = [g["id"] for g in goals]
    blocked = await conn.fetch(
        """SELECT goal_id, source_id FROM blocked_sources
           WHERE goal_id = ANY($1::bigint[]) AND source_id = ANY($2::bigint[])""",
        gids,
        sources,
    )
    trust = await conn.fetch(
        """SELECT goal_id, source_id, sum(likes) AS likes, sum(dislikes) AS dislikes, sum(clicks) AS clicks
           FROM (
               SELECT f.goal_id, s.source_id, count(*) FILTER (WHERE f.feedback = 'like') AS likes,
                      count(*) FILTER (WHERE f.feedback = 'dislike') AS dislikes, 0 AS clicks
               FROM feedback f JOIN item_sources s ON s.item_id = f.item_id
               WHERE f.goal_id = ANY($1::bigint[]) AND s.source_id = ANY($2::bigint[])
               GROUP BY 1, 2
               UNION ALL
               SELECT c.goal_id, s.source_id, 0, 0, count(DISTINCT c.item_id)
               FROM clicks c JOIN item_sources s ON s.item_id = c.item_id
               WHERE c.goal_id = ANY($1::bigint[]) AND s.source_id = ANY($2::bigint[]) AND NOT c.is_scanner
               GROUP BY 1, 2
           ) x GROUP BY 1, 2""",
        gids,
        sources,
    )
    existing = await conn.fetch(
        "SELECT goal_id, item_id FROM matches WHERE item_id = ANY($1::bigint[]) AND goal_id = ANY($2::bigint[])",
        item_ids,
        gids,
    )
    return Batch(list(items), list(goals), list(trust), list(existing), list(blocked))


async def goal_vectors(conn: Conn, goal_ids: list[int]) -> list[asyncpg.Record]:
    """Stored vectors of goals (with the version and model they were computed for)."""
    return await conn.fetch(
        "SELECT id, embedding, embedded_version, embedding_model FROM goals WHERE id = ANY($1::bigint[])",
        goal_ids,
    )


async def rated_items(conn: Conn, goal_ids: list[int], model: str, *, per_goal: int) -> list[asyncpg.Record]:
    """The newest `per_goal` liked/disliked items of each goal that have a vector of `model`."""
    if not goal_ids:
        return []
    return await conn.fetch(
        """SELECT f.goal_id, f.feedback, COALESCE(i.context_embedding, i.embedding) AS vector
           FROM (SELECT goal_id, item_id, feedback,
                        row_number() OVER (PARTITION BY goal_id ORDER BY updated_at DESC) AS rn
                 FROM feedback WHERE goal_id = ANY($1::bigint[])) f
           JOIN items i ON i.id = f.item_id
           WHERE f.rn <= $3 AND i.embedding_model = $2 AND i.embedding_status = 'done'""",
        goal_ids,
        model,
        per_goal,
    )


async def feedback_stamps(conn: Conn, goal_ids: list[int]) -> list[asyncpg.Record]:
    """Per goal with feedback: a fingerprint of its ratings (count, latest change, signed sum of the rated item
    ids), the cache key of rated_items: any added, removed or flipped rating changes it."""
    return await conn.fetch(
        """SELECT goal_id, count(*) AS n, max(updated_at) AS changed,
                  sum(CASE WHEN feedback = 'like' THEN item_id ELSE -item_id END) AS signed
           FROM feedback WHERE goal_id = ANY($1::bigint[]) GROUP BY goal_id""",
        goal_ids,
    )


async def upsert_matches(
    conn: asyncpg.Connection,
    goal_ids: list[int],
    item_ids: list[int],
    scores: list[float],
    components: list[dict[str, Any]],
    reasons: list[list[str]],
    gates: list[str | None],
    lexical_only: list[bool],
    is_backfill: list[bool],
    *,
    matched_item_ids: list[int],
) -> None:
    """Insert or re-score match rows in one statement (computed_at bumped; is_backfill sticky), then mark the
    items matched. Pairs whose goal or item vanished meanwhile are skipped."""
    if goal_ids:
        await conn.execute(
            """INSERT INTO matches AS m (goal_id, item_id, score, components, reasons, gate, lexical_only,
                                         is_backfill, computed_at)
               SELECT v.g, v.i, v.s, v.c::jsonb, v.r::jsonb, v.gate, v.lex, v.bf, now()
               FROM unnest($1::bigint[], $2::bigint[], $3::real[], $4::text[], $5::text[], $6::text[],
                           $7::bool[], $8::bool[]) AS v(g, i, s, c, r, gate, lex, bf)
               WHERE EXISTS (SELECT 1 FROM goals WHERE id = v.g) AND EXISTS (SELECT 1 FROM items WHERE id = v.i)
               ON CONFLICT (goal_id, item_id) DO UPDATE SET
                   score = EXCLUDED.score, components = EXCLUDED.components, reasons = EXCLUDED.reasons,
                   gate = EXCLUDED.gate, lexical_only = EXCLUDED.lexical_only,
                   is_backfill = m.is_backfill OR EXCLUDED.is_backfill, computed_at = now()""",
            goal_ids,
            item_ids,
            [min(1.0, max(0.0, s)) for s in scores],
            [json.dumps(c, ensure_ascii=False) for c in components],
            [json.dumps(r, ensure_ascii=False) for r in reasons],
            gates,
            lexical_only,
            is_backfill,
        )
    if matched_item_ids:
        await mark_matched(conn, matched_item_ids)


async def mark_matched(conn: Conn, item_ids: list[int]) -> None:
    await conn.execute("UPDATE items SET matched_at = now() WHERE id = ANY($1::bigint[])", item_ids)
