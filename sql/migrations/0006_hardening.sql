-- Hardening: credentialed sources are private, clicks are deduplicated per minute, late pushes are marked.

-- migrate:up

-- A source whose config carries request headers (often credentials: Cookie, Authorization, X-Api-Key) belongs
-- to the user who set them and is never shared: nobody else reads its headers, receives what they fetch, or
-- repoints them at another host. Shared sources (owner_id NULL) stay one row per (type, url).
ALTER TABLE sources ADD COLUMN owner_id bigint REFERENCES users (id) ON DELETE CASCADE;
UPDATE sources SET owner_id = created_by
WHERE created_by IS NOT NULL AND config ? 'headers' AND config -> 'headers' <> '{}'::jsonb;
-- headers nobody owns any more (their user is gone) are dropped rather than kept on a shared source
UPDATE sources SET config = config - 'headers' WHERE owner_id IS NULL AND config ? 'headers';
ALTER TABLE sources DROP CONSTRAINT sources_type_url_key;
CREATE UNIQUE INDEX sources_identity ON sources (type, url, coalesce(owner_id, 0));
-- the other followers of a credentialed source move to a shared copy without the headers
INSERT INTO sources (type, url, name, config, fetch_interval_sec)
SELECT s.type, s.url, s.name, s.config - 'headers', s.fetch_interval_sec
FROM sources s
WHERE s.owner_id IS NOT NULL
  AND EXISTS (SELECT 1 FROM subscriptions x WHERE x.source_id = s.id AND x.user_id <> s.owner_id)
ON CONFLICT DO NOTHING;
UPDATE subscriptions x SET source_id = c.id
FROM sources s, sources c
WHERE x.source_id = s.id AND s.owner_id IS NOT NULL AND x.user_id <> s.owner_id
  AND c.type = s.type AND c.url = s.url AND c.owner_id IS NULL;

-- One click per (item, goal, channel, minute): a scanner or an impatient double click counts once.
ALTER TABLE clicks DROP CONSTRAINT clicks_channel_check;
UPDATE clicks SET channel = 'in_app' WHERE channel = 'inbox';
ALTER TABLE clicks ADD CONSTRAINT clicks_channel_check CHECK (channel IN ('email', 'in_app', 'api', 'other'));
ALTER TABLE clicks ADD COLUMN minute bigint;
UPDATE clicks SET minute = floor(extract(epoch FROM clicked_at) / 60);
ALTER TABLE clicks ALTER COLUMN minute SET NOT NULL;
ALTER TABLE clicks ALTER COLUMN minute SET DEFAULT floor(extract(epoch FROM now()) / 60);
DELETE FROM clicks c USING clicks d
WHERE c.item_id = d.item_id AND coalesce(c.goal_id, 0) = coalesce(d.goal_id, 0) AND c.channel = d.channel
  AND c.minute = d.minute AND c.id > d.id;
CREATE UNIQUE INDEX clicks_once ON clicks (item_id, coalesce(goal_id, 0), channel, minute);
CREATE INDEX clicks_age ON clicks (clicked_at);

-- A batch window or digest sent after its time (the service was down) says so.
ALTER TABLE push_slots ADD COLUMN late boolean NOT NULL DEFAULT false;

-- Retention deletes by age (retention.py); items have items_ingested already.
CREATE INDEX agent_runs_age ON agent_runs (created_at);
CREATE INDEX emails_age ON emails (created_at) WHERE status IN ('sent', 'failed', 'suppressed');
CREATE INDEX ingest_logs_age ON ingest_logs (started_at);

-- migrate:down
DROP INDEX IF EXISTS ingest_logs_age;
DROP INDEX IF EXISTS emails_age;
DROP INDEX IF EXISTS agent_runs_age;
ALTER TABLE push_slots DROP COLUMN IF EXISTS late;
DROP INDEX IF EXISTS clicks_age;
DROP INDEX IF EXISTS clicks_once;
ALTER TABLE clicks DROP COLUMN IF EXISTS minute;
ALTER TABLE clicks DROP CONSTRAINT clicks_channel_check;
UPDATE clicks SET channel = 'inbox' WHERE channel = 'in_app';
ALTER TABLE clicks ADD CONSTRAINT clicks_channel_check CHECK (channel IN ('email', 'inbox', 'api', 'other'));
-- private copies of a shared URL cannot go back under UNIQUE (type, url): their subscribers move to the shared one
UPDATE subscriptions x SET source_id = c.id
FROM sources s, sources c
WHERE x.source_id = s.id AND s.owner_id IS NOT NULL AND c.type = s.type AND c.url = s.url AND c.owner_id IS NULL
  AND NOT EXISTS (SELECT 1 FROM subscriptions y WHERE y.user_id = x.user_id AND y.source_id = c.id);
DELETE FROM sources s USING sources c
WHERE s.owner_id IS NOT NULL AND c.type = s.type AND c.url = s.url AND c.owner_id IS NULL;
DROP INDEX IF EXISTS sources_identity;
ALTER TABLE sources ADD CONSTRAINT sources_type_url_key UNIQUE (type, url);
ALTER TABLE sources DROP COLUMN IF EXISTS owner_id;
