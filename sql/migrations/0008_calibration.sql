-- Matching for Chinese and any model. (1) Self-calibrating scores: per goal and signal (an embedding model's name, or 'lexical' for keyword overlap),
-- the recent raw values the goal produced and the prior measured against a background corpus when the goal
-- was embedded (infosentry/calibrate.py). No hand-measured per-model anchors anywhere. (2) Near-duplicate
-- Chinese titles: index keys that two sources' copies of one headline share (infosentry/ingest/dedupe.py).

-- migrate:up

CREATE TABLE goal_calibration (
    goal_id      bigint NOT NULL REFERENCES goals (id) ON DELETE CASCADE,
    signal       text NOT NULL,
    goal_version integer NOT NULL,               -- the goal text the values were measured with
    prior_loc    real,                           -- median and lower-half sigma against the background corpus
    prior_spread real,
    neighbour    real,                           -- feedback: similarity above which a rated item is a neighbour
    recent       real[] NOT NULL DEFAULT '{}',   -- the newest values (at most calibrate.WINDOW), oldest first
    seen         bigint NOT NULL DEFAULT 0,      -- values ever observed under this goal version
    -- the goal vector matching uses: the embedded goal plus the centroid of its best recent items (pseudo-
    -- relevance feedback, label-free), or NULL while the goal has too few items to pick them
    prf          vector,
    prf_at       timestamptz,                    -- when prf was computed (or found impossible)
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (goal_id, signal)
);

-- the first and last characters of a Chinese title (NULL for other titles), found with a GIN index
ALTER TABLE items ADD COLUMN title_marks text[];
CREATE INDEX items_title_marks ON items USING gin (title_marks) WHERE title_marks IS NOT NULL;

-- migrate:down
DROP INDEX IF EXISTS items_title_marks;
ALTER TABLE items DROP COLUMN IF EXISTS title_marks;
DROP TABLE IF EXISTS goal_calibration;
