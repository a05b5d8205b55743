-- Decide and push: what the decision sweep, the unsubscribe links and the operator's push view need.

-- migrate:up

-- The match version a decision was made on: a match re-scored later (lexical -> semantic, feedback)
-- has a newer computed_at, and its decision is re-made while it is not yet pushed.
ALTER TABLE decisions ADD COLUMN match_computed_at timestamptz;

-- Items whose matches were written or re-scored since the last decision sweep. Statement triggers on
-- matches fill it in the matcher's own transaction, so no new or re-scored match can be missed (and the
-- matcher needs no knowledge of decisions). `version` bumps on every re-queue: the sweep deletes only the
-- version it read, so a re-score that lands while an item is being decided is decided again.
CREATE SEQUENCE decide_queue_version;
CREATE TABLE decide_queue (
    item_id   bigint PRIMARY KEY,
    version   bigint NOT NULL DEFAULT nextval('decide_queue_version'),
    queued_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX decide_queue_order ON decide_queue (queued_at, item_id);

CREATE FUNCTION infosentry_queue_decisions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO decide_queue (item_id)
    SELECT DISTINCT item_id FROM new_matches
    ON CONFLICT (item_id) DO UPDATE SET version = nextval('decide_queue_version');
    RETURN NULL;
END $$;
CREATE TRIGGER matches_queue_insert AFTER INSERT ON matches REFERENCING NEW TABLE AS new_matches
    FOR EACH STATEMENT EXECUTE FUNCTION infosentry_queue_decisions();
CREATE TRIGGER matches_queue_update AFTER UPDATE ON matches REFERENCING NEW TABLE AS new_matches
    FOR EACH STATEMENT EXECUTE FUNCTION infosentry_queue_decisions();

-- Boundary-band pairs waiting for the LLM judge. The decision sweep hands them over here and moves on, so
-- rule-based decisions (IMMEDIATE among them) never wait for the LLM; the judge job works this queue.
CREATE SEQUENCE judge_queue_version;
CREATE TABLE judge_queue (
    goal_id   bigint NOT NULL REFERENCES goals (id) ON DELETE CASCADE,
    item_id   bigint NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    version   bigint NOT NULL DEFAULT nextval('judge_queue_version'),
    queued_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (goal_id, item_id)
);
CREATE INDEX judge_queue_order ON judge_queue (queued_at);

-- The decisions of a batch of items (the decision sweep), and the runs of one item (the item page, replay).
CREATE INDEX IF NOT EXISTS decisions_item ON decisions (item_id);
CREATE INDEX IF NOT EXISTS agent_runs_item ON agent_runs (item_id);

-- The inbox of one goal, newest first.
CREATE INDEX IF NOT EXISTS notifications_goal ON notifications (goal_id, id DESC);

-- The key that signs unsubscribe links (one row, random per installation, kept in backups so links
-- in old emails keep working after a restore).
CREATE TABLE push_link_key (
    id         integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    key        text NOT NULL DEFAULT md5(gen_random_uuid()::text) || md5(gen_random_uuid()::text),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO push_link_key DEFAULT VALUES;

-- What was pushed today (the day of the session's TimeZone: SET TIME ZONE 'Asia/Shanghai' first),
-- per kind: items that reached the inbox, and the emails and where they stand.
CREATE VIEW infosentry_pushes_today AS
WITH pushed AS (
    SELECT lower(tier) AS kind, count(*) AS items, count(*) FILTER (WHERE read_at IS NOT NULL) AS read
    FROM notifications
    WHERE created_at >= date_trunc('day', now())
    GROUP BY 1
),
mails AS (
    SELECT kind,
           count(*) AS emails,
           count(*) FILTER (WHERE status = 'sent') AS sent,
           count(*) FILTER (WHERE status IN ('pending', 'sending')) AS waiting,
           count(*) FILTER (WHERE status IN ('pending', 'sending') AND attempts > 0) AS retrying,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'suppressed') AS suppressed
    FROM emails
    WHERE created_at >= date_trunc('day', now()) AND kind IN ('immediate', 'batch', 'digest')
    GROUP BY 1
)
SELECT k.kind,
       COALESCE(p.items, 0)::int AS items_pushed,
       COALESCE(p.read, 0)::int AS items_read,
       COALESCE(m.emails, 0)::int AS emails,
       COALESCE(m.sent, 0)::int AS sent,
       COALESCE(m.waiting, 0)::int AS waiting,
       COALESCE(m.retrying, 0)::int AS retrying,
       COALESCE(m.failed, 0)::int AS failed,
       COALESCE(m.suppressed, 0)::int AS suppressed
FROM (VALUES ('immediate'), ('batch'), ('digest')) k (kind)
LEFT JOIN pushed p USING (kind)
LEFT JOIN mails m USING (kind);

-- migrate:down
DROP VIEW IF EXISTS infosentry_pushes_today;
DROP TABLE IF EXISTS push_link_key;
DROP INDEX IF EXISTS notifications_goal;
DROP INDEX IF EXISTS agent_runs_item;
DROP INDEX IF EXISTS decisions_item;
DROP TRIGGER IF EXISTS matches_queue_update ON matches;
DROP TRIGGER IF EXISTS matches_queue_insert ON matches;
DROP FUNCTION IF EXISTS infosentry_queue_decisions();
DROP TABLE IF EXISTS judge_queue;
DROP SEQUENCE IF EXISTS judge_queue_version;
DROP TABLE IF EXISTS decide_queue;
DROP SEQUENCE IF EXISTS decide_queue_version;
ALTER TABLE decisions DROP COLUMN IF EXISTS match_computed_at;
