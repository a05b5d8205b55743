-- Monitoring: views an operator can query with psql alone (is anything stuck, what is broken), the
-- alerts of CONTRACT §7 computed from live data, and notification bookkeeping for alert episodes.
-- The alert thresholds live here, in one place; infosentry/alerts.py reads the view, never re-derives it.

-- migrate:up

-- Per queue: jobs ready to run (todo), scheduled for later, running (doing), failed (kept), failed in the
-- last hour, stalled (running on a worker that stopped sending procrastinate heartbeats for 30 s), and the
-- age of the oldest job that is ready but not started. Every known queue has a row, even when empty.
CREATE VIEW infosentry_queue_depth AS
WITH known (queue) AS (VALUES ('ingest'), ('embed'), ('agent'), ('email')),
queues AS (
    SELECT queue FROM known
    UNION
    SELECT DISTINCT queue_name FROM procrastinate_jobs WHERE status IN ('todo', 'doing', 'failed')
),
jobs AS (
    SELECT j.queue_name AS queue, j.status, j.scheduled_at, j.id,
           j.status = 'doing' AND (w.id IS NULL OR w.last_heartbeat < now() - interval '30 seconds') AS stalled
    FROM procrastinate_jobs j
    LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
    WHERE j.status IN ('todo', 'doing', 'failed')
),
ready AS (
    SELECT j.queue,
           now() - GREATEST(j.scheduled_at, (SELECT min(e.at) FROM procrastinate_events e
                                            WHERE e.job_id = j.id AND e.type = 'deferred')) AS age
    FROM jobs j
    WHERE j.status = 'todo' AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())
),
failed_recent AS (
    SELECT j.queue_name AS queue, count(DISTINCT j.id) AS n
    FROM procrastinate_events e JOIN procrastinate_jobs j ON j.id = e.job_id
    WHERE e.type = 'failed' AND e.at > now() - interval '1 hour'
    GROUP BY 1
)
SELECT q.queue,
       (SELECT count(*) FROM ready r WHERE r.queue = q.queue)::int AS todo,
       (SELECT count(*) FROM jobs j WHERE j.queue = q.queue AND j.status = 'todo'
                                      AND j.scheduled_at > now())::int AS scheduled,
       (SELECT count(*) FROM jobs j WHERE j.queue = q.queue AND j.status = 'doing')::int AS doing,
       (SELECT count(*) FROM jobs j WHERE j.queue = q.queue AND j.status = 'failed')::int AS failed,
       COALESCE((SELECT n FROM failed_recent f WHERE f.queue = q.queue), 0)::int AS failed_last_hour,
       (SELECT count(*) FROM jobs j WHERE j.queue = q.queue AND j.stalled)::int AS stalled,
       round(COALESCE(extract(epoch FROM (SELECT max(r.age) FROM ready r WHERE r.queue = q.queue)), 0))::int
           AS oldest_todo_age_s
FROM queues q;

-- Every process's heartbeat (written every ~10 s), with its age; stale after 60 s.
CREATE VIEW infosentry_workers AS
SELECT id, role, queues, pid, host, started_at, last_seen_at,
       round(extract(epoch FROM now() - last_seen_at))::int AS age_s,
       last_seen_at < now() - interval '60 seconds' AS stale,
       jobs_done
FROM worker_heartbeats;

-- The alerts of CONTRACT §7, one row per active alert and subject (queue, source id, channel...).
CREATE VIEW infosentry_alerts AS
SELECT 'queue_backlog'::text AS alert, 'warning'::text AS severity, d.queue AS subject,
       format('%s jobs waiting in queue %s (oldest %s s); threshold 100', d.todo, d.queue, d.oldest_todo_age_s)
           AS detail,
       d.todo::numeric AS value, 100::numeric AS threshold
FROM infosentry_queue_depth d
WHERE d.todo > 100
UNION ALL
SELECT 'smtp_failures', 'warning', s.channel,
       format('%s consecutive SMTP failures; last error: %s', s.consecutive_failures,
              COALESCE(left(s.last_error, 200), '-')),
       s.consecutive_failures, 3
FROM delivery_state s
WHERE s.channel = 'smtp' AND s.consecutive_failures > 3
UNION ALL
SELECT 'llm_errors', 'warning', '',
       format('%s LLM/embedding calls answered 429 or 5xx in the last hour; threshold 10', c.n), c.n, 10
FROM (SELECT count(*) AS n FROM external_calls
      WHERE created_at > now() - interval '1 hour' AND (http_status = 429 OR http_status >= 500)) c
WHERE c.n > 10
UNION ALL
SELECT 'budget_breaker_open', 'notice', b.day::text,
       format('budget breaker open since %s UTC: %s; spent %s USD today (cap %s)',
              to_char(b.opened_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'),
              COALESCE(b.breaker_reason, 'cap reached'), round(b.usd_total, 4), b.usd_cap),
       b.usd_total::numeric, b.usd_cap::numeric
FROM infosentry_budget_today b  -- today in the budget time zone: a new day starts with the breaker closed
WHERE b.breaker_open
UNION ALL
SELECT 'source_failing', 'warning', s.id::text,
       format('source %s (%s) failed %s times in a row: %s', s.id, left(s.name, 80), s.error_streak,
              COALESCE(left(s.last_error, 200), '-')),
       s.error_streak, 5
FROM sources s
WHERE s.enabled AND s.error_streak > 5
UNION ALL
SELECT 'worker_heartbeat', 'critical', q.queue,
       CASE WHEN h.last_seen IS NULL THEN format('no worker serves queue %s', q.queue)
            ELSE format('no worker heartbeat for queue %s for %s s', q.queue,
                        round(extract(epoch FROM now() - h.last_seen))) END,
       round(extract(epoch FROM now() - h.last_seen)), 60
FROM (VALUES ('ingest'), ('embed'), ('agent'), ('email')) q (queue)
LEFT JOIN LATERAL (SELECT max(w.last_seen_at) AS last_seen FROM worker_heartbeats w
                   WHERE q.queue = ANY (w.queues)) h ON true
WHERE h.last_seen IS NULL OR h.last_seen < now() - interval '60 seconds';

-- Notification bookkeeping: the webhook may fail and is retried a few times on later ticks.
ALTER TABLE alert_episodes
    ADD COLUMN detail          text NOT NULL DEFAULT '',
    ADD COLUMN notify_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN notify_error    text;

-- migrate:down
ALTER TABLE alert_episodes DROP COLUMN IF EXISTS detail, DROP COLUMN IF EXISTS notify_attempts,
    DROP COLUMN IF EXISTS notify_error;
DROP VIEW IF EXISTS infosentry_alerts;
DROP VIEW IF EXISTS infosentry_workers;
DROP VIEW IF EXISTS infosentry_queue_depth;
