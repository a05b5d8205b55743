"""SQL for monitoring: the operator views (queue depth, failing sources, SMTP and LLM health), the alerts
view and alert episodes.

The thresholds of the alerts live in the `infosentry_alerts` view (sql/migrations/0005_monitoring.sql).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import asyncpg

from infosentry.store import Conn, delete_in_batches

ALERTS_LOCK = 0x1F05E8  # advisory lock: one alert evaluator at a time across processes


async def ping(conn: Conn) -> float:
    """Round-trip time of a trivial query, in milliseconds."""
    started = time.perf_counter()
    await conn.fetchval("SELECT 1")
    return (time.perf_counter() - started) * 1000


async def queue_depth(conn: Conn) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch("SELECT * FROM infosentry_queue_depth ORDER BY queue")]


async def failing_sources(conn: Conn, *, min_streak: int = 6, limit: int = 50) -> tuple[int, list[dict[str, Any]]]:
    """(how many enabled sources have error_streak >= min_streak, the worst `limit` of them)."""
    total = await conn.fetchval("SELECT count(*) FROM sources WHERE enabled AND error_streak >= $1", min_streak)
    rows = await conn.fetch(
        """SELECT id, name, type, url, error_streak, last_error, last_error_kind, last_success_at, next_fetch_at
           FROM sources WHERE enabled AND error_streak >= $1
           ORDER BY error_streak DESC, id LIMIT $2""",
        min_streak,
        limit,
    )
    return int(total), [dict(r) for r in rows]


async def smtp_state(conn: Conn) -> dict[str, Any]:
    row = await conn.fetchrow(
        """SELECT consecutive_failures, last_error, last_success_at, updated_at
           FROM delivery_state WHERE channel = 'smtp'"""
    )
    if row is None:
        return {"consecutive_failures": 0, "last_error": None, "last_success_at": None, "updated_at": None}
    return dict(row)


async def outbox_counts(conn: Conn) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM emails GROUP BY status")
    counts = {s: 0 for s in ("pending", "sending", "sent", "failed", "suppressed")}
    counts.update({r["status"]: int(r["n"]) for r in rows})
    return counts


async def llm_last_hour(conn: Conn) -> dict[str, Any]:
    """External (embedding + LLM) calls of the last hour by outcome."""
    row = await conn.fetchrow(
        """SELECT count(*) AS calls,
                  count(*) FILTER (WHERE NOT ok) AS errors,
                  count(*) FILTER (WHERE http_status = 429) AS rate_limited,
                  count(*) FILTER (WHERE http_status >= 500) AS server_errors,
                  count(*) FILTER (WHERE kind = 'judge') AS judge_calls,
                  count(*) FILTER (WHERE kind = 'embed') AS embed_calls,
                  max(created_at) FILTER (WHERE NOT ok) AS last_error_at
           FROM external_calls WHERE created_at > now() - interval '1 hour'"""
    )
    assert row is not None
    return {k: (int(v) if isinstance(v, int) else v) for k, v in dict(row).items()}


async def active_alerts(conn: Conn) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT a.alert, a.severity, a.subject, a.detail, a.value::float8 AS value,
                  a.threshold::float8 AS threshold, e.started_at AS since, e.id AS episode_id
           FROM infosentry_alerts a
           LEFT JOIN alert_episodes e ON e.alert = a.alert AND e.subject = a.subject AND e.ended_at IS NULL
           ORDER BY CASE a.severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, a.alert, a.subject"""
    )
    return [dict(r) for r in rows]


# --- alert episodes ---------------------------------------------------------------------------------------


async def try_alerts_lock(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", ALERTS_LOCK))


async def release_alerts_lock(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", ALERTS_LOCK)


async def sync_episodes(conn: asyncpg.Connection, *, flap_minutes: float) -> dict[str, list[dict[str, Any]]]:
    """Match the open episodes to the alerts active now, in one transaction.

    An alert that is no longer active closes its episode; a new one opens an episode, or reopens the
    (alert, subject) episode that closed less than `flap_minutes` ago, so a flapping condition is one
    episode and one notification. Returns {"opened": [...], "reopened": [...], "closed": [...]}.
    """
    async with conn.transaction():
        closed = await conn.fetch(
            """UPDATE alert_episodes e SET ended_at = now()
               WHERE e.ended_at IS NULL
                 AND NOT EXISTS (SELECT 1 FROM infosentry_alerts a WHERE a.alert = e.alert AND a.subject = e.subject)
               RETURNING id, alert, subject, severity, started_at, ended_at"""
        )
        reopened = await conn.fetch(
            """WITH active AS (SELECT * FROM infosentry_alerts),
                    latest AS (
                        SELECT DISTINCT ON (e.alert, e.subject) e.id, e.alert, e.subject, e.ended_at
                        FROM alert_episodes e JOIN active a ON a.alert = e.alert AND a.subject = e.subject
                        WHERE NOT EXISTS (SELECT 1 FROM alert_episodes o WHERE o.alert = e.alert
                                          AND o.subject = e.subject AND o.ended_at IS NULL)
                        ORDER BY e.alert, e.subject, e.id DESC)
               UPDATE alert_episodes e SET ended_at = NULL, severity = a.severity, detail = a.detail
               FROM latest l JOIN active a ON a.alert = l.alert AND a.subject = l.subject
               WHERE e.id = l.id AND l.ended_at > now() - make_interval(secs => $1::float8 * 60)
               RETURNING e.id, e.alert, e.subject, e.severity, e.started_at""",
            flap_minutes,
        )
        opened = await conn.fetch(
            """INSERT INTO alert_episodes (alert, subject, severity, detail)
               SELECT a.alert, a.subject, a.severity, a.detail FROM infosentry_alerts a
               WHERE NOT EXISTS (SELECT 1 FROM alert_episodes e WHERE e.alert = a.alert AND e.subject = a.subject
                                 AND e.ended_at IS NULL)
               ON CONFLICT DO NOTHING
               RETURNING id, alert, subject, severity, detail, started_at"""
        )
        # keep the detail of open episodes current (counts change while an alert stays active)
        await conn.execute(
            """UPDATE alert_episodes e SET detail = a.detail, severity = a.severity
               FROM infosentry_alerts a
               WHERE e.ended_at IS NULL AND a.alert = e.alert AND a.subject = e.subject
                 AND (e.detail <> a.detail OR e.severity <> a.severity)"""
        )
    return {
        "opened": [dict(r) for r in opened],
        "reopened": [dict(r) for r in reopened],
        "closed": [dict(r) for r in closed],
    }


async def episodes_to_notify(conn: Conn, *, max_attempts: int) -> list[dict[str, Any]]:
    """Open episodes not notified yet, not given up on, and not waiting for their next attempt."""
    rows = await conn.fetch(
        """SELECT id, alert, subject, severity, detail, started_at, notify_attempts
           FROM alert_episodes
           WHERE ended_at IS NULL AND notified_at IS NULL AND notify_attempts < $1
             AND (notify_after IS NULL OR notify_after <= now())
           ORDER BY id""",
        max_attempts,
    )
    return [dict(r) for r in rows]


async def mark_notified(conn: Conn, ids: list[int]) -> None:
    await conn.execute(
        "UPDATE alert_episodes SET notified_at = now(), notify_attempts = notify_attempts + 1, notify_error = NULL"
        " WHERE id = ANY($1::bigint[])",
        ids,
    )


async def mark_notify_failed(
    conn: Conn, ids: list[int], error: str, *, retry_in: float | None, max_attempts: int
) -> None:
    """Count a failed attempt; the next one not before `retry_in` seconds (None: give up on these episodes)."""
    await conn.execute(
        """UPDATE alert_episodes
           SET notify_attempts = CASE WHEN $3::float8 IS NULL THEN greatest(notify_attempts + 1, $4)
                                      ELSE notify_attempts + 1 END,
               notify_error = $2, notify_after = now() + make_interval(secs => coalesce($3::float8, 0))
           WHERE id = ANY($1::bigint[])""",
        ids,
        error[:500],
        retry_in,
        max_attempts,
    )


async def episodes(conn: Conn, *, active_only: bool = False, limit: int = 100) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT id, alert, subject, severity, detail, started_at, ended_at, notified_at, notify_attempts,
                  notify_error
           FROM alert_episodes WHERE (NOT $1 OR ended_at IS NULL) ORDER BY id DESC LIMIT $2""",
        active_only,
        limit,
    )
    return [dict(r) for r in rows]


_ACTIVITY = """
SELECT
  (SELECT count(*) FROM items WHERE ingested_at >= $1)                              AS items_new,
  (SELECT count(*) FROM items WHERE embedding_status = 'pending')                   AS items_pending_embedding,
  (SELECT count(*) FROM items WHERE embedded_at >= $1)                              AS items_embedded,
  (SELECT count(*) FROM matches WHERE computed_at >= $1)                            AS matches_new,
  (SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM
     (SELECT status, count(*) AS n FROM agent_runs WHERE created_at >= $1 GROUP BY status) r) AS runs,
  (SELECT coalesce(jsonb_object_agg(reason, n), '{}') FROM
     (SELECT coalesce(fallback_reason, '?') AS reason, count(*) AS n FROM agent_runs
      WHERE created_at >= $1 AND status = 'FALLBACK' GROUP BY 1) r)                AS fallback_reasons,
  (SELECT coalesce(jsonb_object_agg(tier, n), '{}') FROM
     (SELECT tier, count(*) AS n FROM decisions WHERE decided_at >= $1 GROUP BY tier) d) AS decisions,
  (SELECT count(*) FROM notifications WHERE created_at >= $1)                       AS inbox_new,
  (SELECT count(*) FROM emails WHERE status IN ('pending', 'sending'))              AS emails_waiting,
  (SELECT count(*) FROM emails WHERE status IN ('pending', 'sending') AND attempts > 0) AS emails_retrying,
  (SELECT count(*) FROM emails WHERE status = 'failed')                             AS emails_failed,
  (SELECT count(*) FROM emails WHERE sent_at >= $1)                                 AS emails_sent,
  (SELECT count(*) FROM external_calls WHERE created_at >= $1 AND NOT ok)           AS external_errors,
  (SELECT count(*) FROM external_calls WHERE created_at >= $1 AND ok)               AS external_ok,
  (SELECT coalesce(bool_or(breaker_open), false) FROM budget_days
    WHERE day >= (now() AT TIME ZONE 'UTC')::date - 1)                              AS breaker_open,
  (SELECT count(*) FROM procrastinate_events
    WHERE type = 'failed' AND at >= $1)                                             AS jobs_failed,
  (SELECT count(*) FROM worker_heartbeats
    WHERE last_seen_at > now() - make_interval(secs => $2))                         AS live_processes
"""


async def activity_since(conn: Conn, since: datetime, *, fresh_seconds: float) -> dict[str, Any]:
    """What the whole system did since `since` (one snapshot, for the fault drills)."""
    row = await conn.fetchrow(_ACTIVITY, since, fresh_seconds)
    assert row is not None
    return {k: (json.loads(v) if isinstance(v, str) else v) for k, v in dict(row).items()}


async def terminate_other_connections(conn: Conn) -> int:
    """End every other client connection to this database (what clients see of a restart)."""
    return int(
        await conn.fetchval(
            """SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"""
        )
    )


async def pipeline_backlog(conn: Conn, source_ids: list[int], user_id: int) -> dict[str, int]:
    """What still waits between these sources and this user's inbox and mail (the demo waits for zeros)."""
    row = await conn.fetchrow(
        """SELECT
             (SELECT count(*) FROM sources WHERE id = ANY($1::bigint[]) AND last_fetch_at IS NULL) AS unfetched,
             (SELECT count(*) FROM items i JOIN item_sources x ON x.item_id = i.id
              WHERE x.source_id = ANY($1::bigint[])
                AND (i.embedding_status = 'pending' OR i.matched_at IS NULL)) AS unmatched,
             (SELECT count(*) FROM decide_queue) AS undecided,
             (SELECT count(*) FROM decisions d JOIN goals g ON g.id = d.goal_id
              WHERE g.user_id = $2 AND d.status = 'pending' AND d.tier = 'IMMEDIATE') AS unflushed,
             (SELECT count(*) FROM emails WHERE user_id = $2 AND status IN ('pending', 'sending')) AS unsent,
             (SELECT count(*) FROM items i JOIN item_sources x ON x.item_id = i.id
              WHERE x.source_id = ANY($1::bigint[])) AS items""",
        source_ids,
        user_id,
    )
    return dict(row)


async def prune_episodes(conn: Conn, *, older_than_days: float) -> int:
    return await delete_in_batches(
        conn,
        "alert_episodes",
        "ended_at IS NOT NULL AND ended_at < now() - make_interval(secs => $1::float8 * 86400)",
        older_than_days,
    )
