"""SQL for matches (one scored row per goal and item): the data one matching batch needs, the bulk
upsert, feedback neighbours, and a goal's matches best first. Every write is set-based (unnest)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from infosentry.store import LIVE_GOALS_AND_ITEMS, Conn, items


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
                  i.matched_at, i.embedding_model, COALESCE(i.context_embedding, i.embedding) AS context_embedding,
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
                   g.version, g.embedding_model, g.embedded_version, vis.visible,
                   COALESCE(g.language, u.language) AS language,
                   (SELECT c.prf_at FROM goal_calibration c WHERE c.goal_id = g.id AND c.signal = g.embedding_model
                      AND c.goal_version = g.embedded_version) AS prf_at
            FROM goals g JOIN vis ON vis.user_id = g.user_id JOIN users u ON u.id = g.user_id
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


MATCH_WRITE_LOCK = 0x1F03A7  # advisory: one matching transaction writes at a time


async def lock_for_write(conn: asyncpg.Connection) -> None:
    """Take this transaction's turn to write matches (released when it ends). A matching write rewrites the
    calibration rows of every goal it scored and, through the trigger, puts its items on the decide queue; two
    at once took those rows in different orders and deadlocked, and Postgres aborted one of them (with a batch's
    paid embeddings). They mostly queued on the calibration rows anyway. Writing goal vectors, which resets
    those goals' calibration rows, takes the same turn."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", MATCH_WRITE_LOCK)


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
    items matched. Pairs whose goal or item vanished meanwhile are skipped.

    matches has no foreign keys: see LIVE_GOALS_AND_ITEMS."""
    if goal_ids:
        await conn.execute(
            f"""WITH {LIVE_GOALS_AND_ITEMS}
               INSERT INTO matches AS m (goal_id, item_id, score, components, reasons, gate, lexical_only,
                                         is_backfill, computed_at)
               SELECT v.g, v.i, v.s, v.c::json, v.r::json, v.gate, v.lex, v.bf, now()
               FROM unnest($1::bigint[], $2::bigint[], $3::real[], $4::text[], $5::text[], $6::text[],
                           $7::bool[], $8::bool[]) AS v(g, i, s, c, r, gate, lex, bf)
               WHERE v.g IN (SELECT id FROM live_goals) AND v.i IN (SELECT id FROM live_items)
               ON CONFLICT (goal_id, item_id) DO UPDATE SET
                   score = EXCLUDED.score, components = EXCLUDED.components, reasons = EXCLUDED.reasons,
                   gate = EXCLUDED.gate, lexical_only = EXCLUDED.lexical_only,
                   is_backfill = m.is_backfill OR EXCLUDED.is_backfill, computed_at = now()""",
            goal_ids,
            item_ids,
            [min(1.0, max(0.0, s)) for s in scores],
            [orjson.dumps(c).decode() for c in components],  # orjson: about half the rows of a batch are stored
            [orjson.dumps(r).decode() for r in reasons],
            gates,
            lexical_only,
            is_backfill,
        )
    if matched_item_ids:
        await items.mark_matched(conn, matched_item_ids)


async def goal_matches(
    conn: Conn, goal_id: int, *, min_score: float, limit: int, after: tuple[float, int] | None
) -> list[asyncpg.Record]:
    """The goal's scored items, best first, with the item, its source and the decision when there is one."""
    return await conn.fetch(
        """SELECT m.item_id, m.score, m.components, m.reasons, m.gate, m.lexical_only, m.is_backfill,
                  m.computed_at, i.title, i.url, i.snippet, i.published_at, i.ingested_at, i.embedding_status,
                  s.id AS source_id, s.name AS source_name,
                  d.tier, d.status AS decision_status, d.reason AS decision_reason, d.decided_at, d.pushed_at,
                  f.feedback, EXISTS (SELECT 1 FROM blocked_sources b
                                      WHERE b.goal_id = m.goal_id AND b.source_id = i.source_id) AS source_blocked
           FROM matches m
           JOIN items i ON i.id = m.item_id
           JOIN sources s ON s.id = i.source_id
           LEFT JOIN decisions d ON d.goal_id = m.goal_id AND d.item_id = m.item_id
           LEFT JOIN feedback f ON f.goal_id = m.goal_id AND f.item_id = m.item_id
           WHERE m.goal_id = $1 AND m.score >= $2
             AND ($3::float8 IS NULL OR (m.score::float8, m.item_id) < ($3::float8, $4::bigint))
           ORDER BY m.score DESC, m.item_id DESC
           LIMIT $5""",
        goal_id,
        min_score,
        after[0] if after else None,
        after[1] if after else 0,
        limit,
    )


async def unstored_matches(
    conn: Conn,
    goal_id: int,
    *,
    signal: str,
    m: float,
    s: float,
    z0: float,
    ceiling: float,
    min_score: float,
    limit: int,
    after: tuple[float, int] | None,
) -> list[asyncpg.Record]:
    """The goal's items without a stored pair (match.stored_pairs), ranked at read time: the calibrated semantic
    score of the item's context vector against the goal's matching vector, capped at `ceiling` (match.TailRank).
    Items the goal's owner sees through an enabled subscription, embedded with the goal's model, from a source not
    blocked for the goal; same columns as goal_matches."""
    return await conn.fetch(
        """WITH g AS (
               SELECT g.id, g.user_id, COALESCE(c.prf, g.embedding) AS v FROM goals g
               LEFT JOIN goal_calibration c
                      ON c.goal_id = g.id AND c.signal = g.embedding_model AND c.goal_version = g.embedded_version
               WHERE g.id = $1 AND g.embedding_model = $2 AND g.embedding IS NOT NULL),
           seen AS (
               SELECT DISTINCT x.item_id FROM g
               JOIN subscriptions sub ON sub.user_id = g.user_id AND sub.enabled
               JOIN item_sources x ON x.source_id = sub.source_id),
           ranked AS MATERIALIZED (  -- each cosine once (inlined, the planner computed it for the filter and the sort)
               SELECT i.id, 1 - (COALESCE(i.context_embedding, i.embedding) <=> g.v) AS cosine
               FROM seen JOIN items i ON i.id = seen.item_id CROSS JOIN g
               WHERE i.embedding_model = $2 AND i.embedding_status = 'done'
                 AND NOT EXISTS (SELECT 1 FROM matches m WHERE m.goal_id = $1 AND m.item_id = i.id)
                 AND NOT EXISTS (SELECT 1 FROM blocked_sources b WHERE b.goal_id = $1 AND b.source_id = i.source_id)),
           scored AS (
               SELECT id, cosine,
                      least($6::float8,
                            1 / (1 + exp(-greatest(-60, least(60, (cosine - $3::float8) / $4::float8 - $5::float8)))))
                          AS score
               FROM ranked),
           -- the page first, then its details: joining items, sources and feedback for every candidate cost
           -- more than the cosines themselves (tests/bench/bench_tail.py)
           page AS MATERIALIZED (
               SELECT id, cosine, score FROM scored
               WHERE score >= $7 AND ($8::float8 IS NULL OR (score, id) < ($8::float8, $9::bigint))
               ORDER BY score DESC, id DESC
               LIMIT $10)
           SELECT r.id AS item_id, r.score,
                  jsonb_build_object('model', $2::text, 'cosine', round(r.cosine::numeric, 4), 'ranked_at_read', true)
                      AS components,
                  '[]'::jsonb AS reasons, NULL::text AS gate, false AS lexical_only, i.is_backfill,
                  now() AS computed_at, i.title, i.url, i.snippet, i.published_at, i.ingested_at, i.embedding_status,
                  s.id AS source_id, s.name AS source_name,
                  NULL::text AS tier, NULL::text AS decision_status, NULL::text AS decision_reason,
                  NULL::timestamptz AS decided_at, NULL::timestamptz AS pushed_at,
                  f.feedback, false AS source_blocked
           FROM page r
           JOIN items i ON i.id = r.id
           JOIN sources s ON s.id = i.source_id
           LEFT JOIN feedback f ON f.goal_id = $1 AND f.item_id = r.id
           ORDER BY r.score DESC, r.id DESC""",
        goal_id,
        signal,
        m,
        s,
        z0,
        ceiling,
        min_score,
        after[0] if after else None,
        after[1] if after else 0,
        limit,
    )


async def undecided_count(conn: Conn, goal_ids: list[int]) -> int:
    """Matches that got no decision (they scored below every tier)."""
    return int(
        await conn.fetchval(
            """SELECT count(*) FROM matches m LEFT JOIN decisions d ON d.goal_id = m.goal_id AND d.item_id = m.item_id
               WHERE m.goal_id = ANY($1) AND d.id IS NULL""",
            goal_ids,
        )
    )
