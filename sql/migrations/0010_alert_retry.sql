-- A failing alert webhook is tried again by the one retry policy (retry.WEBHOOK): not before notify_after
-- (backoff, or the server's Retry-After); an answer that says "not this" (a 4xx but 408/409/425/429) gives up.

-- migrate:up
ALTER TABLE alert_episodes ADD COLUMN notify_after timestamptz;

-- migrate:down
ALTER TABLE alert_episodes DROP COLUMN IF EXISTS notify_after;
