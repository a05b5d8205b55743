-- The web app: per-goal BATCH and DIGEST switches, and API tokens tied to the session that minted them.

-- migrate:up

-- Off: the goal's batch windows (or its daily digest) send nothing. BATCH items of a goal without batch windows
-- still reach its digest; with both off only IMMEDIATE pushes remain.
ALTER TABLE goals ADD COLUMN batch_enabled boolean NOT NULL DEFAULT true;
ALTER TABLE goals ADD COLUMN digest_enabled boolean NOT NULL DEFAULT true;

-- The web session a token descends from (directly, or through tokens it minted): such a token never outlives the
-- session, and revoking the session (signing out) revokes it.
ALTER TABLE api_tokens ADD COLUMN session_id bigint REFERENCES api_tokens (id) ON DELETE CASCADE;
CREATE INDEX api_tokens_session ON api_tokens (session_id) WHERE session_id IS NOT NULL;

-- The inbox filtered by tier and read state stays an index scan of the user's newest rows.
CREATE INDEX notifications_user_unread ON notifications (user_id, id DESC) WHERE read_at IS NULL;

-- migrate:down
DROP INDEX IF EXISTS notifications_user_unread;
DROP INDEX IF EXISTS api_tokens_session;
ALTER TABLE api_tokens DROP COLUMN IF EXISTS session_id;
ALTER TABLE goals DROP COLUMN IF EXISTS digest_enabled;
ALTER TABLE goals DROP COLUMN IF EXISTS batch_enabled;
