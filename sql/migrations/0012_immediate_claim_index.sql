-- Every flush looks for goals whose oldest pending IMMEDIATE decision has waited out the coalescing window
-- (decisions.claim_due_immediate). decisions_pending also holds every BATCH and DIGEST decision waiting for its
-- window, tens of thousands by the end of a busy day, and the flush read all of them; the IMMEDIATE ones are
-- the few not yet sent.

-- migrate:up
CREATE INDEX IF NOT EXISTS decisions_pending_immediate ON decisions (goal_id, decided_at)
    WHERE status = 'pending' AND tier = 'IMMEDIATE';

-- migrate:down
DROP INDEX IF EXISTS decisions_pending_immediate;
