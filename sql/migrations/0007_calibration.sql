-- Self-calibrating scores: per goal and signal (an embedding model's name, or 'lexical' for keyword overlap),
-- the recent raw values the goal produced and the prior measured against a background corpus when the goal
-- was embedded (infosentry/calibrate.py). No hand-measured per-model anchors anywhere.

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
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (goal_id, signal)
);

-- migrate:down
DROP TABLE IF EXISTS goal_calibration;
