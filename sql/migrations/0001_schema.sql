-- The whole infosentry data model. Later migrations refine it.
-- Format: the part after "-- migrate:up" upgrades, the part after "-- migrate:down" reverts.

-- migrate:up
CREATE EXTENSION IF NOT EXISTS vector;

-- Accounts -------------------------------------------------------------------------------------------------
CREATE TABLE users (
    id              bigserial PRIMARY KEY,
    email           text NOT NULL UNIQUE CHECK (email = lower(email) AND position('@' IN email) > 1),
    display_name    text NOT NULL DEFAULT '' CHECK (length(display_name) <= 100),
    timezone        text NOT NULL DEFAULT 'Asia/Shanghai',
    language        text NOT NULL DEFAULT 'en' CHECK (language IN ('en', 'zh')),
    is_admin        boolean NOT NULL DEFAULT false,
    combined_digest boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_login_at   timestamptz
);

CREATE TABLE api_tokens (
    id           bigserial PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL DEFAULT '',
    kind         text NOT NULL DEFAULT 'api' CHECK (kind IN ('api', 'session')),
    token_hash   text NOT NULL UNIQUE,          -- sha256 hex of the token; the token itself is never stored
    prefix       text NOT NULL,                 -- first characters, to recognise a token in lists
    scopes       text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);

CREATE TABLE login_links (
    id           bigserial PRIMARY KEY,
    email        text NOT NULL,
    token_hash   text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz,
    voided_at    timestamptz,                   -- a newer link voids older ones
    requested_ip inet
);
CREATE INDEX login_links_email ON login_links (email, created_at DESC);

CREATE TABLE rate_limits (
    key          text NOT NULL,
    window_start timestamptz NOT NULL,
    hits         integer NOT NULL DEFAULT 0,
    PRIMARY KEY (key, window_start)
);

-- Sources --------------------------------------------------------------------------------------------------
CREATE TABLE sources (
    id                 bigserial PRIMARY KEY,
    type               text NOT NULL CHECK (type IN ('rss', 'site', 'hotlist')),
    url                text NOT NULL,
    name               text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    config             jsonb NOT NULL DEFAULT '{}',
    enabled            boolean NOT NULL DEFAULT true,
    fetch_interval_sec integer NOT NULL CHECK (fetch_interval_sec BETWEEN 60 AND 86400),
    current_interval_sec integer,              -- adaptive interval learned from publishing frequency
    next_fetch_at      timestamptz NOT NULL DEFAULT now(),
    last_fetch_at      timestamptz,
    last_success_at    timestamptz,
    error_streak       integer NOT NULL DEFAULT 0 CHECK (error_streak >= 0),
    last_error         text,
    last_error_kind    text,
    etag               text,
    last_modified      text,
    created_by         bigint REFERENCES users (id) ON DELETE SET NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (type, url)
);
-- the due-source sweep: enabled sources ordered by next_fetch_at
CREATE INDEX sources_due ON sources (next_fetch_at) WHERE enabled;

CREATE TABLE subscriptions (
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    source_id  bigint NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
    enabled    boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, source_id)
);
CREATE INDEX subscriptions_source ON subscriptions (source_id) WHERE enabled;

CREATE TABLE ingest_logs (
    id           bigserial PRIMARY KEY,
    source_id    bigint NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
    started_at   timestamptz NOT NULL,
    duration_ms  integer NOT NULL,
    status       text NOT NULL CHECK (status IN ('ok', 'not_modified', 'error')),
    http_status  integer,
    fetched      integer NOT NULL DEFAULT 0,
    new          integer NOT NULL DEFAULT 0,
    duplicate    integer NOT NULL DEFAULT 0,
    error_kind   text,
    error        text
);
CREATE INDEX ingest_logs_source ON ingest_logs (source_id, started_at DESC);
CREATE INDEX ingest_logs_started ON ingest_logs (started_at);

-- Items (one row per story) --------------------------------------------------------------------------------
CREATE TABLE items (
    id               bigserial PRIMARY KEY,
    url              text NOT NULL,
    canonical_url    text NOT NULL,
    url_hash         text NOT NULL UNIQUE,      -- 32 hex of sha256(canonical_url)
    guid             text,
    title            text NOT NULL,
    snippet          text NOT NULL DEFAULT '' CHECK (length(snippet) <= 500),
    author           text,
    tags             text[] NOT NULL DEFAULT '{}',
    published_at     timestamptz,
    ingested_at      timestamptz NOT NULL DEFAULT now(),
    source_id        bigint NOT NULL REFERENCES sources (id) ON DELETE CASCADE,  -- first source seen
    title_key        text NOT NULL,             -- normalised title fingerprint (near-duplicate detection)
    is_backfill      boolean NOT NULL DEFAULT false,  -- back catalogue of a new source: never IMMEDIATE
    embedding        vector,                    -- dimension follows the embedding model
    embedding_model  text,
    embedding_status text NOT NULL DEFAULT 'pending' CHECK (embedding_status IN ('pending', 'done', 'failed')),
    embed_attempts   integer NOT NULL DEFAULT 0,
    embedded_at      timestamptz,
    matched_at       timestamptz                -- null until scored against the goals (reconciliation)
);
CREATE INDEX items_embed_pending ON items (ingested_at) WHERE embedding_status = 'pending';
CREATE INDEX items_unmatched ON items (ingested_at) WHERE matched_at IS NULL;
CREATE INDEX items_title_key ON items (title_key, ingested_at);
CREATE INDEX items_ingested ON items (ingested_at);

-- every source an item was seen in: one story, many sources
CREATE TABLE item_sources (
    item_id       bigint NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    source_id     bigint NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
    url           text NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (item_id, source_id)
);
CREATE INDEX item_sources_source ON item_sources (source_id);

-- Goals ----------------------------------------------------------------------------------------------------
CREATE TABLE goals (
    id              bigserial PRIMARY KEY,
    user_id         bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    description     text NOT NULL CHECK (length(description) BETWEEN 1 AND 2000),
    priority_terms  text[] NOT NULL DEFAULT '{}',
    negative_terms  text[] NOT NULL DEFAULT '{}',
    priority_mode   text NOT NULL DEFAULT 'SOFT' CHECK (priority_mode IN ('SOFT', 'STRICT')),
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused', 'archived')),
    batch_windows   text[] NOT NULL DEFAULT '{12:30,18:30}' CHECK (cardinality(batch_windows) <= 3),
    digest_time     text NOT NULL DEFAULT '09:00' CHECK (digest_time ~ '^([01][0-9]|2[0-3]):[0-5][0-9]$'),
    timezone        text NOT NULL DEFAULT 'Asia/Shanghai',
    email           text,                       -- null: the owner's address
    language        text CHECK (language IN ('en', 'zh')),  -- null: the owner's language
    version         integer NOT NULL DEFAULT 1, -- bumped when the text that is scored changes
    embedding       vector,
    embedding_model text,
    embedded_version integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX goals_user ON goals (user_id);
CREATE INDEX goals_active ON goals (id) WHERE status = 'active';

-- Matching, decisions, delivery ----------------------------------------------------------------------------
CREATE TABLE matches (
    goal_id     bigint NOT NULL REFERENCES goals (id) ON DELETE CASCADE,
    item_id     bigint NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    score       real NOT NULL CHECK (score >= 0 AND score <= 1),
    components  jsonb NOT NULL,
    reasons     jsonb NOT NULL DEFAULT '[]',
    gate        text CHECK (gate IN ('negative_term', 'blocked_source', 'strict_no_hit')),
    lexical_only boolean NOT NULL DEFAULT false, -- scored without an embedding (embedding pending)
    is_backfill boolean NOT NULL DEFAULT false,
    computed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (goal_id, item_id)
);
CREATE INDEX matches_item ON matches (item_id);
CREATE INDEX matches_goal_score ON matches (goal_id, score DESC);

CREATE TABLE agent_runs (
    id                bigserial PRIMARY KEY,
    goal_id           bigint REFERENCES goals (id) ON DELETE CASCADE,
    item_id           bigint REFERENCES items (id) ON DELETE CASCADE,
    trigger           text NOT NULL,
    status            text NOT NULL CHECK (status IN ('SUCCESS', 'FALLBACK', 'ERROR')),
    input             jsonb NOT NULL,          -- full snapshot: goal, item, match, thresholds, budget
    output            jsonb NOT NULL DEFAULT '{}',
    llm_used          boolean NOT NULL DEFAULT false,
    llm_model         text,
    llm_request       jsonb,
    llm_response      jsonb,
    fallback_reason   text,
    prompt_tokens     integer NOT NULL DEFAULT 0,
    completion_tokens integer NOT NULL DEFAULT 0,
    usd               numeric(12, 6) NOT NULL DEFAULT 0,
    latency_ms        integer NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agent_runs_goal ON agent_runs (goal_id, id DESC);

-- one paid judgment per (item, goal version)
CREATE TABLE judge_cache (
    item_id      bigint NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    goal_id      bigint NOT NULL REFERENCES goals (id) ON DELETE CASCADE,
    goal_version integer NOT NULL,
    label        text NOT NULL CHECK (label IN ('IMMEDIATE', 'BATCH')),
    confidence   real NOT NULL,
    reason       text NOT NULL,
    model        text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (item_id, goal_id, goal_version)
);

CREATE TABLE decisions (
    id          bigserial PRIMARY KEY,
    goal_id     bigint NOT NULL REFERENCES goals (id) ON DELETE CASCADE,
    item_id     bigint NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    tier        text NOT NULL CHECK (tier IN ('IMMEDIATE', 'BATCH', 'DIGEST', 'IGNORE')),
    status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'pushed', 'skipped', 'cancelled')),
    score       real NOT NULL,
    reason      text NOT NULL DEFAULT '',
    run_id      bigint REFERENCES agent_runs (id) ON DELETE SET NULL,
    decided_at  timestamptz NOT NULL DEFAULT now(),
    pushed_at   timestamptz,
    UNIQUE (goal_id, item_id)
);
CREATE INDEX decisions_pending ON decisions (goal_id, tier, decided_at) WHERE status = 'pending';

CREATE TABLE emails (
    id              bigserial PRIMARY KEY,
    dedupe_key      text NOT NULL UNIQUE,
    kind            text NOT NULL CHECK (kind IN ('immediate', 'batch', 'digest', 'login', 'alert')),
    user_id         bigint REFERENCES users (id) ON DELETE CASCADE,
    goal_id         bigint REFERENCES goals (id) ON DELETE SET NULL,
    to_addr         text NOT NULL,
    subject         text NOT NULL,
    body_text       text NOT NULL,
    body_html       text NOT NULL,
    headers         jsonb NOT NULL DEFAULT '{}',
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'suppressed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX emails_due ON emails (next_attempt_at) WHERE status IN ('pending', 'sending');

-- the in-app inbox and the push ledger: an item reaches a goal at most once, whatever the tier
CREATE TABLE notifications (
    id          bigserial PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    goal_id     bigint NOT NULL REFERENCES goals (id) ON DELETE CASCADE,
    item_id     bigint NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    decision_id bigint REFERENCES decisions (id) ON DELETE SET NULL,
    tier        text NOT NULL CHECK (tier IN ('IMMEDIATE', 'BATCH', 'DIGEST')),
    score       real NOT NULL,
    reason      text NOT NULL DEFAULT '',
    email_id    bigint REFERENCES emails (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    read_at     timestamptz,
    UNIQUE (goal_id, item_id)
);
CREATE INDEX notifications_user ON notifications (user_id, id DESC);

-- one row per scheduled push slot (batch window or digest day): fires exactly once
CREATE TABLE push_slots (
    kind       text NOT NULL CHECK (kind IN ('batch', 'digest', 'combined_digest')),
    owner_id   bigint NOT NULL,                 -- goal id, or user id for the combined digest
    local_date date NOT NULL,
    slot       text NOT NULL,                   -- 'HH:MM'
    email_id   bigint REFERENCES emails (id) ON DELETE SET NULL,
    item_count integer NOT NULL DEFAULT 0,
    fired_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, owner_id, local_date, slot)
);

-- Feedback -------------------------------------------------------------------------------------------------
CREATE TABLE clicks (
    id         bigserial PRIMARY KEY,
    item_id    bigint NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    goal_id    bigint REFERENCES goals (id) ON DELETE SET NULL,
    channel    text NOT NULL CHECK (channel IN ('email', 'inbox', 'api', 'other')),
    user_agent text,
    ip         inet,
    is_scanner boolean NOT NULL DEFAULT false,
    clicked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX clicks_goal ON clicks (goal_id, clicked_at);

CREATE TABLE feedback (
    goal_id    bigint NOT NULL REFERENCES goals (id) ON DELETE CASCADE,
    item_id    bigint NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    feedback   text NOT NULL CHECK (feedback IN ('like', 'dislike')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (goal_id, item_id)
);

CREATE TABLE blocked_sources (
    goal_id    bigint NOT NULL REFERENCES goals (id) ON DELETE CASCADE,
    source_id  bigint NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (goal_id, source_id)
);

-- Budget and external calls --------------------------------------------------------------------------------
CREATE TABLE budget_days (
    day               date PRIMARY KEY,
    embed_requests    integer NOT NULL DEFAULT 0,
    embed_tokens      bigint NOT NULL DEFAULT 0,
    embed_usd         numeric(12, 6) NOT NULL DEFAULT 0,
    llm_calls         integer NOT NULL DEFAULT 0,
    llm_prompt_tokens bigint NOT NULL DEFAULT 0,
    llm_completion_tokens bigint NOT NULL DEFAULT 0,
    llm_usd           numeric(12, 6) NOT NULL DEFAULT 0,
    breaker_open      boolean NOT NULL DEFAULT false,
    breaker_reason    text,
    opened_at         timestamptz,
    reset_at          timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- every call to an embedding or LLM endpoint (error-rate alert, audit)
CREATE TABLE external_calls (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('embed', 'judge')),
    ok          boolean NOT NULL,
    http_status integer,
    error       text,
    latency_ms  integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX external_calls_recent ON external_calls (created_at);

-- Operations -----------------------------------------------------------------------------------------------
CREATE TABLE config (
    key        text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text
);

CREATE TABLE config_audit (
    id         bigserial PRIMARY KEY,
    key        text NOT NULL,
    old_value  jsonb,
    new_value  jsonb,
    changed_by text,
    changed_at timestamptz NOT NULL DEFAULT now()
);

-- every process learns of a config change at once; the periodic re-read is the safety net
CREATE FUNCTION infosentry_config_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('infosentry_config', COALESCE(NEW.key, OLD.key));
    RETURN NULL;
END $$;
CREATE TRIGGER config_notify AFTER INSERT OR UPDATE OR DELETE ON config
    FOR EACH ROW EXECUTE FUNCTION infosentry_config_notify();

CREATE TABLE delivery_state (
    channel              text PRIMARY KEY,     -- 'smtp'
    consecutive_failures integer NOT NULL DEFAULT 0,
    last_error           text,
    last_success_at      timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE worker_heartbeats (
    id           text PRIMARY KEY,             -- host:pid
    role         text NOT NULL,
    queues       text[] NOT NULL DEFAULT '{}',
    pid          integer NOT NULL,
    host         text NOT NULL,
    started_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    jobs_done    bigint NOT NULL DEFAULT 0
);

CREATE TABLE alert_episodes (
    id          bigserial PRIMARY KEY,
    alert       text NOT NULL,
    subject     text NOT NULL DEFAULT '',     -- e.g. the source id for per-source alerts
    severity    text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    ended_at    timestamptz,
    notified_at timestamptz
);
CREATE UNIQUE INDEX alert_episodes_open ON alert_episodes (alert, subject) WHERE ended_at IS NULL;

-- migrate:down
DROP TABLE IF EXISTS alert_episodes, worker_heartbeats, delivery_state, config_audit, config,
    external_calls, budget_days, blocked_sources, feedback, clicks, push_slots, notifications, emails,
    decisions, judge_cache, agent_runs, matches, goals, item_sources, items, ingest_logs, subscriptions,
    sources, rate_limits, login_links, api_tokens, users CASCADE;
DROP FUNCTION IF EXISTS infosentry_config_notify();
