"""SQL for decisions (one per goal and item), the decide and judge queues, the judge cache, decision
runs (agent_runs), and the status transitions of pending pushes (coalescing, cancelling, expiring).

Decisions and their runs are written in bulk (unnest of arrays): one statement per batch, whatever its size.
Scheduling comparisons take `now` as a parameter so tests can drive the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from infosentry.store import LIVE_GOALS_AND_ITEMS, Conn, delete_in_batches
from infosentry.store.slots import GOAL_LOCK

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The decision sweep holds this session advisory lock: decisions are made by one job at a time (the set-based
# batches are fast; serialising them means no two jobs judge or write the same pair or claim the same item).
DECIDE_LOCK = 0x1F0DEC
JUDGE_LOCK = 0x1F0DED  # the judge job: one at a time, independent of the decision sweep

# A gated pair is stored with score 0 (its would-be score in components.ungated_score): it gets an IGNORE decision
# with the gate as reason when it would otherwise have reached a tier, so "why was this not pushed" has an answer.
_GATED = """(m.gate IN ('negative_term', 'blocked_source')
             AND (m.components ->> 'ungated_score') ~ '^[0-9.eE+-]+$'
             AND (m.components ->> 'ungated_score')::float8 >= $2)"""


def _candidates_sql(where: str) -> str:
    """Matches that need a decision among those selected by `where` ($1 = their item ids, $2 = DIGEST_MIN_SCORE):
    new ones at or above the floor (or gated ones that would have been), and not yet pushed decisions whose
    match was re-scored since they were made."""
    return (
        """
WITH d AS MATERIALIZED (  -- the few decided pairs of these items, read once through decisions_item
    SELECT id, goal_id, item_id, tier, status, score, match_computed_at
    FROM decisions WHERE item_id = ANY($1::bigint[])
), c AS MATERIALIZED (  -- one pass over the items' matches; the joins below only see what needs deciding
    SELECT m.*, d.id AS decision_id, d.tier AS prev_tier, d.status AS prev_status, d.score AS prev_score
    FROM matches m
    LEFT JOIN d ON d.goal_id = m.goal_id AND d.item_id = m.item_id
    WHERE """
        + where
        + """
      AND ((d.id IS NULL AND (m.score >= $2 OR """
        + _GATED
        + """))
           OR (d.status IN ('pending', 'skipped') AND m.computed_at > COALESCE(d.match_computed_at, '-infinity')))
)
SELECT c.goal_id, c.item_id, c.score, c.components, c.reasons, c.gate, c.lexical_only,
       c.is_backfill AS match_backfill, c.computed_at,
       g.user_id, g.name AS goal_name, g.description, g.priority_terms, g.negative_terms, g.priority_mode,
       g.version AS goal_version, g.timezone AS goal_timezone,
       i.title, i.url, i.snippet, i.source_id, i.published_at, i.ingested_at, i.is_backfill AS item_backfill,
       s.name AS source_name,
       EXISTS (SELECT 1 FROM blocked_sources b WHERE b.goal_id = c.goal_id AND b.source_id = i.source_id)
           AS blocked,
       c.decision_id, c.prev_tier, c.prev_status, c.prev_score
FROM c
JOIN goals g ON g.id = c.goal_id AND g.status = 'active'
JOIN items i ON i.id = c.item_id
JOIN sources s ON s.id = i.source_id
ORDER BY c.item_id, c.goal_id
"""
    )


_CANDIDATES = _candidates_sql("m.item_id = ANY($1::bigint[])")
_PAIR_CANDIDATES = _candidates_sql("(m.item_id, m.goal_id) IN (SELECT unnest($1::bigint[]), unnest($3::bigint[]))")


async def queued(conn: Conn, *, limit: int, exclude: list[int]) -> list[asyncpg.Record]:
    """The oldest queued items (item_id, version), leaving out those this job already holds."""
    return await conn.fetch(
        """SELECT item_id, version FROM decide_queue WHERE item_id <> ALL($2::bigint[])
           ORDER BY queued_at, item_id LIMIT $1""",
        limit,
        exclude,
    )


async def dequeue(conn: Conn, entries: list[tuple[int, int]]) -> set[int]:
    """Remove items from the queue, but only at the version that was read: an item re-queued meanwhile (its
    matches changed again) stays for the next round. So does one a matching write is re-queueing right now
    (its row locked): waiting for it deadlocked, as that write locks queue rows in another order. Returns the
    items left in the queue."""
    if not entries:
        return set()
    removed = await conn.fetch(
        """DELETE FROM decide_queue WHERE item_id = ANY(ARRAY(
               SELECT q.item_id FROM decide_queue q
               JOIN unnest($1::bigint[], $2::bigint[]) AS v(item_id, version)
                 ON q.item_id = v.item_id AND q.version = v.version
               FOR UPDATE OF q SKIP LOCKED))
           RETURNING item_id""",
        [e[0] for e in entries],
        [e[1] for e in entries],
    )
    return {e[0] for e in entries} - {r["item_id"] for r in removed}


async def enqueue(conn: Conn, item_ids: list[int]) -> None:
    if item_ids:
        await conn.execute(
            """INSERT INTO decide_queue (item_id) SELECT DISTINCT unnest($1::bigint[])
               ON CONFLICT (item_id) DO UPDATE SET version = nextval('decide_queue_version')""",
            item_ids,
        )


async def queue_depth(conn: Conn) -> tuple[int, float]:
    """(items waiting for a decision, age in seconds of the oldest)."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, COALESCE(extract(epoch FROM now() - min(queued_at)), 0) AS age FROM decide_queue"
    )
    return int(row["n"]), float(row["age"])


async def candidates(conn: Conn, item_ids: list[int], *, digest_min: float) -> list[asyncpg.Record]:
    """Matches of these items that need a decision: new ones at or above `digest_min`, and not yet pushed
    decisions whose match was re-scored since they were made."""
    return await conn.fetch(_CANDIDATES, item_ids, digest_min)


async def pair_candidates(conn: Conn, pairs: list[tuple[int, int]], *, digest_min: float) -> list[asyncpg.Record]:
    """Like `candidates`, for (goal, item) pairs (the judge queue)."""
    return await conn.fetch(_PAIR_CANDIDATES, [p[1] for p in pairs], digest_min, [p[0] for p in pairs])


async def enqueue_judge(conn: Conn, pairs: list[tuple[int, int]]) -> None:
    """Hand boundary pairs (goal, item) to the judge; a pair already waiting gets a new version."""
    if pairs:
        await conn.execute(
            """INSERT INTO judge_queue (goal_id, item_id)
               SELECT DISTINCT * FROM unnest($1::bigint[], $2::bigint[])
               ON CONFLICT (goal_id, item_id) DO UPDATE SET version = nextval('judge_queue_version')""",
            [p[0] for p in pairs],
            [p[1] for p in pairs],
        )


async def judge_batch(conn: Conn, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT goal_id, item_id, version FROM judge_queue ORDER BY queued_at, goal_id, item_id LIMIT $1", limit
    )


async def dequeue_judge(conn: Conn, entries: list[tuple[int, int, int]]) -> None:
    """Remove judged pairs at the version that was read (a pair re-queued meanwhile stays)."""
    if entries:
        await conn.execute(
            """DELETE FROM judge_queue q
               USING unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS v(goal_id, item_id, version)
               WHERE q.goal_id = v.goal_id AND q.item_id = v.item_id AND q.version = v.version""",
            [e[0] for e in entries],
            [e[1] for e in entries],
            [e[2] for e in entries],
        )


async def judge_depth(conn: Conn) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM judge_queue"))


async def undecided_items(conn: Conn, *, since: datetime, settle: datetime, digest_min: float, limit: int) -> list[int]:
    """Reconciliation: recent items with a match that needs a decision but is not queued (should not happen:
    the queue is filled by triggers in the matcher's transaction; this proves it)."""
    rows = await conn.fetch(
        """SELECT DISTINCT m.item_id
           FROM items i
           JOIN matches m ON m.item_id = i.id
           JOIN goals g ON g.id = m.goal_id AND g.status = 'active'
           LEFT JOIN decisions d ON d.goal_id = m.goal_id AND d.item_id = m.item_id
           WHERE i.ingested_at >= $1 AND m.computed_at < $2
             AND NOT EXISTS (SELECT 1 FROM decide_queue q WHERE q.item_id = m.item_id)
             AND ((d.id IS NULL AND (m.score >= $3 OR """
        + _GATED.replace("$2", "$3")
        + """))
                  OR (d.status IN ('pending', 'skipped')
                      AND m.computed_at > COALESCE(d.match_computed_at, '-infinity')))
           LIMIT $4""",
        since,
        settle,
        digest_min,
        limit,
    )
    return [r["item_id"] for r in rows]


async def write(conn: Conn, rows: list[dict[str, Any]]) -> list[asyncpg.Record]:
    """Insert one run per row and upsert its decision (one per goal and item). A decision that was pushed or
    cancelled meanwhile is left alone, and so is a pair whose goal or item is gone. Returns the decisions written
    (id, goal_id, item_id, tier, status).

    decisions and agent_runs have no foreign keys: see LIVE_GOALS_AND_ITEMS."""
    if not rows:
        return []
    cols = {
        name: [r[name] for r in rows]
        for name in (
            "goal_id",
            "item_id",
            "trigger",
            "run_status",
            "input",
            "output",
            "llm_used",
            "llm_model",
            "llm_request",
            "llm_response",
            "fallback_reason",
            "prompt_tokens",
            "completion_tokens",
            "usd",
            "latency_ms",
            "tier",
            "status",
            "score",
            "reason",
            "match_computed_at",
        )
    }
    return await conn.fetch(
        f"""
        WITH {LIVE_GOALS_AND_ITEMS},
        v AS (
            SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::json[], $6::json[],
                                 $7::boolean[], $8::text[], $9::json[], $10::json[], $11::text[], $12::integer[],
                                 $13::integer[], $14::float8[], $15::integer[], $16::text[], $17::text[],
                                 $18::real[], $19::text[], $20::timestamptz[])
                AS u(goal_id, item_id, trigger, run_status, input, output, llm_used, llm_model, llm_request,
                     llm_response, fallback_reason, prompt_tokens, completion_tokens, usd, latency_ms, tier,
                     status, score, reason, match_computed_at)
            WHERE u.goal_id IN (SELECT id FROM live_goals) AND u.item_id IN (SELECT id FROM live_items)
        ), r AS (
            INSERT INTO agent_runs (goal_id, item_id, trigger, status, input, output, llm_used, llm_model,
                                    llm_request, llm_response, fallback_reason, prompt_tokens, completion_tokens,
                                    usd, latency_ms)
            SELECT goal_id, item_id, trigger, run_status, input, output, llm_used, llm_model, llm_request,
                   llm_response, fallback_reason, prompt_tokens, completion_tokens, usd::numeric(12, 6), latency_ms
            FROM v
            RETURNING id, goal_id, item_id
        )
        INSERT INTO decisions AS d (goal_id, item_id, tier, status, score, reason, run_id, match_computed_at)
        SELECT v.goal_id, v.item_id, v.tier, v.status, v.score, v.reason, r.id, v.match_computed_at
        FROM v JOIN r USING (goal_id, item_id)
        ON CONFLICT (goal_id, item_id) DO UPDATE SET
            tier = EXCLUDED.tier, status = EXCLUDED.status, score = EXCLUDED.score, reason = EXCLUDED.reason,
            run_id = EXCLUDED.run_id, match_computed_at = EXCLUDED.match_computed_at,
            -- an unchanged tier keeps its place in a coalescing window or batch (a re-score is no new event)
            decided_at = CASE WHEN d.tier = EXCLUDED.tier AND d.status = EXCLUDED.status THEN d.decided_at
                              ELSE now() END
        -- never replaced by a decision made on an older version of the match (a slow judge vs a fresh re-score)
        WHERE d.status IN ('pending', 'skipped')
          AND COALESCE(d.match_computed_at, '-infinity') <= EXCLUDED.match_computed_at
        RETURNING d.id, d.goal_id, d.item_id, d.tier, d.status
        """,
        *cols.values(),
    )


# --- judge cache -------------------------------------------------------------------------------------------


async def cached_judgment(conn: Conn, item_id: int, goal_id: int, goal_version: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM judge_cache WHERE item_id = $1 AND goal_id = $2 AND goal_version = $3",
        item_id,
        goal_id,
        goal_version,
    )


async def cache_judgment(
    conn: Conn, item_id: int, goal_id: int, goal_version: int, label: str, confidence: float, reason: str, model: str
) -> None:
    await conn.execute(
        """INSERT INTO judge_cache (item_id, goal_id, goal_version, label, confidence, reason, model)
           VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING""",
        item_id,
        goal_id,
        goal_version,
        label,
        confidence,
        reason,
        model,
    )


# --- runs --------------------------------------------------------------------------------------------------

RUN_SUMMARY = """r.id, r.goal_id, r.item_id, r.trigger, r.status, r.output ->> 'tier' AS tier, r.llm_used,
                 r.llm_model, r.fallback_reason, r.prompt_tokens, r.completion_tokens, r.usd, r.latency_ms,
                 r.created_at"""


@dataclass(frozen=True)
class PushRun:
    """A run of a push step (an email flush, a batch window, a digest): what it considered and what it sent."""

    goal_id: int
    trigger: str
    input: dict[str, Any]
    output: dict[str, Any]
    latency_ms: int = 0


async def insert_push_runs(conn: Conn, runs: Sequence[PushRun]) -> None:
    """The runs in one statement, whatever the number of goals."""
    if not runs:
        return
    await conn.execute(
        """INSERT INTO agent_runs (goal_id, trigger, status, input, output, latency_ms)
           SELECT goal_id, trigger, 'SUCCESS', input, output, latency_ms
           FROM unnest($1::bigint[], $2::text[], $3::json[], $4::json[], $5::integer[])
               AS v(goal_id, trigger, input, output, latency_ms)
           WHERE v.goal_id IN (SELECT id FROM goals WHERE id = ANY($1::bigint[]) ORDER BY id FOR KEY SHARE)""",
        [r.goal_id for r in runs],
        [r.trigger for r in runs],
        [r.input for r in runs],
        [r.output for r in runs],
        [r.latency_ms for r in runs],
    )


async def list_runs(
    conn: Conn,
    *,
    user_id: int,
    goal_id: int | None,
    item_id: int | None,
    status: str | None,
    trigger: str | None,
    before_id: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"""SELECT {RUN_SUMMARY}, g.name AS goal_name
            FROM agent_runs r JOIN goals g ON g.id = r.goal_id
            WHERE g.user_id = $1 AND ($2::bigint IS NULL OR r.goal_id = $2) AND ($3::bigint IS NULL OR r.item_id = $3)
              AND ($4::text IS NULL OR r.status = $4) AND ($5::text IS NULL OR r.trigger = $5)
              AND ($6::bigint IS NULL OR r.id < $6)
            ORDER BY r.id DESC LIMIT $7""",
        user_id,
        goal_id,
        item_id,
        status,
        trigger,
        before_id,
        limit,
    )
    return [dict(r) for r in rows]


async def get_run(conn: Conn, *, user_id: int, run_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        """SELECT r.*, g.name AS goal_name,
                  (SELECT row_to_json(d) FROM (SELECT id, tier, status, score, reason, decided_at, pushed_at
                                               FROM decisions WHERE run_id = r.id) d) AS decision
           FROM agent_runs r JOIN goals g ON g.id = r.goal_id
           WHERE r.id = $1 AND g.user_id = $2""",
        run_id,
        user_id,
    )
    return dict(row) if row else None


_PENDING = """
SELECT d.id AS decision_id, d.goal_id, d.item_id, d.tier, d.score, d.reason, d.decided_at,
       i.title, i.url, i.snippet, i.published_at, i.ingested_at, i.source_id, s.name AS source_name
FROM decisions d
JOIN items i ON i.id = d.item_id
JOIN sources s ON s.id = i.source_id
WHERE d.goal_id = ANY($1::bigint[]) AND d.status = 'pending' AND d.tier = ANY($2::text[])
  AND d.decided_at >= $3 AND d.score >= $4
  AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.goal_id = d.goal_id AND n.item_id = d.item_id)
  AND NOT EXISTS (SELECT 1 FROM blocked_sources b WHERE b.goal_id = d.goal_id AND b.source_id = i.source_id)
ORDER BY d.goal_id, d.score DESC, d.id
LIMIT $5
FOR UPDATE OF d SKIP LOCKED
"""


async def pending_items(
    conn: asyncpg.Connection, goal_id: int, *, tiers: list[str], since: datetime, min_score: float, limit: int
) -> list[asyncpg.Record]:
    """Pending, not yet pushed, not blocked decisions of a goal, best first, locked for this transaction."""
    return await conn.fetch(_PENDING, [goal_id], tiers, since, min_score, limit)


async def pending_immediate(conn: asyncpg.Connection, goal_ids: Sequence[int]) -> list[asyncpg.Record]:
    """Every pending IMMEDIATE decision of these goals (pending_items' rules), by goal, best first, locked."""
    return await conn.fetch(_PENDING, list(goal_ids), ["IMMEDIATE"], _EPOCH, 0.0, None)


async def claim_due_immediate(
    conn: asyncpg.Connection, *, now: datetime, coalesce_seconds: float, limit: int, skip: Sequence[int] = ()
) -> list[int]:
    """Active goals whose oldest pending IMMEDIATE decision has waited out the coalescing window, oldest first,
    each locked for this transaction (the push step's goal lock; a goal another process holds is left to it)."""
    rows = await conn.fetch(
        """SELECT goal_id FROM (
               SELECT d.goal_id, min(d.decided_at) AS first
               FROM decisions d JOIN goals g ON g.id = d.goal_id AND g.status = 'active'
               WHERE d.status = 'pending' AND d.tier = 'IMMEDIATE' AND d.goal_id <> ALL($3::bigint[])
               GROUP BY d.goal_id
               HAVING min(d.decided_at) + make_interval(secs => $2::float8) <= $1
               ORDER BY first
               LIMIT $4
           ) due
           WHERE pg_try_advisory_xact_lock($5, (goal_id % 2147483648)::int)
           ORDER BY first""",
        now,
        coalesce_seconds,
        list(skip),
        limit,
        GOAL_LOCK,
    )
    return [r["goal_id"] for r in rows]


async def immediate_to_batch(conn: Conn) -> int:
    """IMMEDIATE_ENABLED=false: what waits in a coalescing window becomes BATCH."""
    status = await conn.execute(
        """UPDATE decisions SET tier = 'BATCH',
                  reason = left(reason || ' [IMMEDIATE_ENABLED=false: moved to BATCH]', 500)
           WHERE status = 'pending' AND tier = 'IMMEDIATE'"""
    )
    return int(status.split()[-1])


async def cancel_inactive(conn: Conn, goal_id: int | None = None) -> int:
    """Pending decisions of paused or archived goals (all, or just `goal_id`) are cancelled: a paused goal
    pushes nothing, and resuming it starts fresh instead of flushing stale items."""
    status = await conn.execute(
        """UPDATE decisions d SET status = 'cancelled', reason = left(d.reason || ' [goal ' || g.status || ']', 500)
           FROM goals g
           WHERE g.id = d.goal_id AND d.status = 'pending' AND g.status <> 'active'
             AND ($1::bigint IS NULL OR d.goal_id = $1)""",
        goal_id,
    )
    return int(status.split()[-1])


async def cancel_blocked(conn: Conn, goal_id: int | None = None) -> int:
    """Pending decisions whose item's source is blocked for the goal are cancelled (never pushed)."""
    status = await conn.execute(
        """UPDATE decisions d SET status = 'cancelled', reason = left(d.reason || ' [source blocked]', 500)
           FROM items i, blocked_sources b
           WHERE i.id = d.item_id AND b.goal_id = d.goal_id AND b.source_id = i.source_id
             AND d.status = 'pending' AND ($1::bigint IS NULL OR d.goal_id = $1)""",
        goal_id,
    )
    return int(status.split()[-1])


async def close_already_pushed(conn: Conn) -> int:
    """A pending decision whose item already reached the goal (the ledger says so) is closed, not re-sent."""
    status = await conn.execute(
        """UPDATE decisions d SET status = 'skipped', reason = left(d.reason || ' [already pushed]', 500)
           FROM notifications n
           WHERE n.goal_id = d.goal_id AND n.item_id = d.item_id AND d.status = 'pending'"""
    )
    return int(status.split()[-1])


async def expire_stale(conn: Conn, *, older_than: datetime) -> int:
    """BATCH/DIGEST decisions outranked in every window and digest for too long are closed (skipped)."""
    status = await conn.execute(
        """UPDATE decisions SET status = 'skipped',
                  reason = left(reason || ' [not among the best in any window or digest; expired]', 500)
           WHERE status = 'pending' AND tier IN ('BATCH', 'DIGEST') AND decided_at < $1""",
        older_than,
    )
    return int(status.split()[-1])


async def overdue_immediate(conn: Conn, *, now: datetime, coalesce_seconds: float, grace_seconds: float) -> int:
    return await conn.fetchval(
        """SELECT count(*) FROM decisions d JOIN goals g ON g.id = d.goal_id AND g.status = 'active'
           WHERE d.status = 'pending' AND d.tier = 'IMMEDIATE'
             AND d.decided_at + make_interval(secs => $2::float8 + $3::float8) <= $1""",
        now,
        coalesce_seconds,
        grace_seconds,
    )


async def pending_for_user(conn: Conn, user_id: int) -> list[dict[str, Any]]:
    """Decisions still waiting for their window or digest, best first per goal."""
    rows = await conn.fetch(
        """SELECT g.name AS goal, d.tier, d.score, i.title, d.reason FROM decisions d
           JOIN goals g ON g.id = d.goal_id JOIN items i ON i.id = d.item_id
           WHERE g.user_id = $1 AND d.status = 'pending' ORDER BY g.id, d.score DESC""",
        user_id,
    )
    return [dict(r) for r in rows]


async def count_tier(conn: Conn, goal_ids: list[int], tier: str) -> int:
    return int(
        await conn.fetchval("SELECT count(*) FROM decisions WHERE goal_id = ANY($1) AND tier = $2", goal_ids, tier)
    )


async def try_session_lock(conn: asyncpg.Connection, key: int) -> bool:
    """A session advisory lock (DECIDE_LOCK, JUDGE_LOCK): held until unlocked or the connection ends."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))


async def session_unlock(conn: asyncpg.Connection, key: int) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", key)


async def prune_runs(conn: Conn, *, older_than_days: float) -> int:
    """Decision and push runs past the retention (a pushed item's decision keeps its own reason)."""
    return await delete_in_batches(
        conn, "agent_runs", "created_at < now() - make_interval(secs => $1::float8 * 86400)", older_than_days
    )
