-- Embed and match: item context vectors, goal backfill bookkeeping, budget-day time zone and admin resets,
-- and the infosentry_budget_today view operators read with psql.

-- migrate:up

-- The item's vector blended with its nearest recent neighbours (same model), computed once when the item is
-- embedded; scoring compares goals with this (see infosentry/match.py), feedback neighbours use it too.
ALTER TABLE items ADD COLUMN context_embedding vector;

-- The goal version whose recent items (72 h) have been scored (backfill); NULL = backfill due.
ALTER TABLE goals ADD COLUMN matched_version integer;

-- The time zone the budget day was counted in (settings TZ), and the spend already counted when an admin
-- reset the breaker: the caps apply to what is spent after the last reset of the day.
ALTER TABLE budget_days ADD COLUMN tz text;
ALTER TABLE budget_days ADD COLUMN usd_at_reset numeric(12, 6) NOT NULL DEFAULT 0;
ALTER TABLE budget_days ADD COLUMN llm_calls_at_reset integer NOT NULL DEFAULT 0;

-- rated items of a goal, newest first (feedback neighbours and source trust)
CREATE INDEX feedback_goal_recent ON feedback (goal_id, updated_at DESC);
-- embedded items of a model, newest first (the context pool, model-change re-embedding)
CREATE INDEX items_embedded_model ON items (embedding_model, id DESC) WHERE embedding_status = 'done';

-- Today's budget in the budget time zone (the TZ the service counts in, recorded on each day's row).
-- Caps come from the config table when set there, else the built-in defaults (an env-only default is not
-- visible to SQL; `infosentry budget` shows the effective value).
CREATE VIEW infosentry_budget_today AS
WITH zone AS (
    SELECT COALESCE((SELECT tz FROM budget_days WHERE tz IS NOT NULL ORDER BY day DESC LIMIT 1),
                    'Asia/Shanghai') AS tz
),
today AS (
    SELECT (now() AT TIME ZONE zone.tz)::date AS day, zone.tz FROM zone
),
caps AS (
    SELECT COALESCE((SELECT (value #>> '{}')::numeric FROM config WHERE key = 'DAILY_USD_BUDGET'), 0.33)
               AS usd_cap,
           COALESCE((SELECT (value #>> '{}')::int FROM config WHERE key = 'JUDGE_PER_DAY'), 200) AS judge_cap
)
SELECT t.day,
       t.tz,
       COALESCE(b.embed_requests, 0) AS embed_requests,
       COALESCE(b.embed_tokens, 0) AS embed_tokens,
       COALESCE(b.embed_usd, 0) AS embed_usd,
       COALESCE(b.llm_calls, 0) AS llm_calls,
       COALESCE(b.llm_prompt_tokens, 0) AS llm_prompt_tokens,
       COALESCE(b.llm_completion_tokens, 0) AS llm_completion_tokens,
       COALESCE(b.llm_usd, 0) AS llm_usd,
       COALESCE(b.embed_usd + b.llm_usd, 0) AS usd_total,
       c.usd_cap,
       c.judge_cap,
       GREATEST(c.usd_cap - COALESCE(b.embed_usd + b.llm_usd - b.usd_at_reset, 0), 0) AS remaining_usd,
       COALESCE(b.breaker_open, false) AS breaker_open,
       b.breaker_reason,
       b.opened_at,
       b.reset_at,
       b.updated_at
FROM today t
CROSS JOIN caps c
LEFT JOIN budget_days b ON b.day = t.day;

-- migrate:down
DROP VIEW IF EXISTS infosentry_budget_today;
DROP INDEX IF EXISTS items_embedded_model;
DROP INDEX IF EXISTS feedback_goal_recent;
ALTER TABLE budget_days DROP COLUMN IF EXISTS llm_calls_at_reset;
ALTER TABLE budget_days DROP COLUMN IF EXISTS usd_at_reset;
ALTER TABLE budget_days DROP COLUMN IF EXISTS tz;
ALTER TABLE goals DROP COLUMN IF EXISTS matched_version;
ALTER TABLE items DROP COLUMN IF EXISTS context_embedding;
