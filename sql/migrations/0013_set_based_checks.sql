-- Matches, decisions and decision runs are the busiest tables: every new item adds about 25 match rows (1,000
-- goals, the upper part of each goal's scores kept) and 6 decisions, each with its run. Two row-by-row costs
-- dominated their inserts: the foreign keys (a lookup and a row lock in goals and in items per inserted row,
-- and for a decision a third in agent_runs) and parsing the row's JSON into jsonb (read back whole, never
-- searched inside). Replayed on the batches of `bin/bench match --items 3000` (1,000 goals): the 73,534 match
-- rows 3.4-3.7 s -> 1.6-2.0 s; the 18,970 decisions and runs 3.7-4.8 s -> 2.3-2.6 s.
--
-- What the keys promised stays true, set-based: the writers lock the batch's distinct goals and items (FOR
-- KEY SHARE, as the keys did) and insert only rows whose goal and item they locked, and deleting goals, items
-- or runs deletes (or, for a decision's run, unlinks) their rows in the same transaction, one statement each
-- (the triggers below; the key's SET NULL on runs scanned decisions once per pruned run, having no index).

-- migrate:up
ALTER TABLE matches DROP CONSTRAINT matches_goal_id_fkey, DROP CONSTRAINT matches_item_id_fkey;
ALTER TABLE decisions DROP CONSTRAINT decisions_goal_id_fkey, DROP CONSTRAINT decisions_item_id_fkey,
                      DROP CONSTRAINT decisions_run_id_fkey;
ALTER TABLE agent_runs DROP CONSTRAINT agent_runs_goal_id_fkey, DROP CONSTRAINT agent_runs_item_id_fkey;

ALTER TABLE matches ALTER COLUMN components TYPE json USING components::json;
ALTER TABLE matches ALTER COLUMN reasons DROP DEFAULT;
ALTER TABLE matches ALTER COLUMN reasons TYPE json USING reasons::json;
ALTER TABLE matches ALTER COLUMN reasons SET DEFAULT '[]';
ALTER TABLE agent_runs ALTER COLUMN input TYPE json USING input::json;
ALTER TABLE agent_runs ALTER COLUMN output DROP DEFAULT;
ALTER TABLE agent_runs ALTER COLUMN output TYPE json USING output::json;
ALTER TABLE agent_runs ALTER COLUMN output SET DEFAULT '{}';
ALTER TABLE agent_runs ALTER COLUMN llm_request TYPE json USING llm_request::json;
ALTER TABLE agent_runs ALTER COLUMN llm_response TYPE json USING llm_response::json;

CREATE FUNCTION infosentry_drop_goal_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM matches WHERE goal_id IN (SELECT id FROM gone);
    DELETE FROM decisions WHERE goal_id IN (SELECT id FROM gone);
    DELETE FROM agent_runs WHERE goal_id IN (SELECT id FROM gone);
    RETURN NULL;
END $$;
CREATE TRIGGER goals_drop_rows AFTER DELETE ON goals REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION infosentry_drop_goal_rows();

CREATE FUNCTION infosentry_drop_item_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM matches WHERE item_id IN (SELECT id FROM gone);
    DELETE FROM decisions WHERE item_id IN (SELECT id FROM gone);
    DELETE FROM agent_runs WHERE item_id IN (SELECT id FROM gone);
    RETURN NULL;
END $$;
CREATE TRIGGER items_drop_rows AFTER DELETE ON items REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION infosentry_drop_item_rows();

CREATE FUNCTION infosentry_unlink_runs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE decisions SET run_id = NULL WHERE run_id IN (SELECT id FROM gone);
    RETURN NULL;
END $$;
CREATE TRIGGER agent_runs_unlink AFTER DELETE ON agent_runs REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION infosentry_unlink_runs();

-- migrate:down
DROP TRIGGER agent_runs_unlink ON agent_runs;
DROP FUNCTION infosentry_unlink_runs();
DROP TRIGGER items_drop_rows ON items;
DROP FUNCTION infosentry_drop_item_rows();
DROP TRIGGER goals_drop_rows ON goals;
DROP FUNCTION infosentry_drop_goal_rows();

ALTER TABLE agent_runs ALTER COLUMN llm_response TYPE jsonb USING llm_response::jsonb;
ALTER TABLE agent_runs ALTER COLUMN llm_request TYPE jsonb USING llm_request::jsonb;
ALTER TABLE agent_runs ALTER COLUMN output DROP DEFAULT;
ALTER TABLE agent_runs ALTER COLUMN output TYPE jsonb USING output::jsonb;
ALTER TABLE agent_runs ALTER COLUMN output SET DEFAULT '{}';
ALTER TABLE agent_runs ALTER COLUMN input TYPE jsonb USING input::jsonb;
ALTER TABLE matches ALTER COLUMN reasons DROP DEFAULT;
ALTER TABLE matches ALTER COLUMN reasons TYPE jsonb USING reasons::jsonb;
ALTER TABLE matches ALTER COLUMN reasons SET DEFAULT '[]';
ALTER TABLE matches ALTER COLUMN components TYPE jsonb USING components::jsonb;

-- rows the keys would not have allowed (a run or decision racing a deletion cannot leave one, but be sure)
DELETE FROM matches m WHERE NOT EXISTS (SELECT 1 FROM goals g WHERE g.id = m.goal_id)
                         OR NOT EXISTS (SELECT 1 FROM items i WHERE i.id = m.item_id);
DELETE FROM decisions d WHERE NOT EXISTS (SELECT 1 FROM goals g WHERE g.id = d.goal_id)
                           OR NOT EXISTS (SELECT 1 FROM items i WHERE i.id = d.item_id);
DELETE FROM agent_runs r WHERE (r.goal_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM goals g WHERE g.id = r.goal_id))
                            OR (r.item_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM items i WHERE i.id = r.item_id));
UPDATE decisions d SET run_id = NULL
WHERE run_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM agent_runs r WHERE r.id = d.run_id);
ALTER TABLE agent_runs ADD CONSTRAINT agent_runs_goal_id_fkey FOREIGN KEY (goal_id) REFERENCES goals (id) ON DELETE CASCADE,
                       ADD CONSTRAINT agent_runs_item_id_fkey FOREIGN KEY (item_id) REFERENCES items (id) ON DELETE CASCADE;
ALTER TABLE decisions ADD CONSTRAINT decisions_goal_id_fkey FOREIGN KEY (goal_id) REFERENCES goals (id) ON DELETE CASCADE,
                      ADD CONSTRAINT decisions_item_id_fkey FOREIGN KEY (item_id) REFERENCES items (id) ON DELETE CASCADE,
                      ADD CONSTRAINT decisions_run_id_fkey FOREIGN KEY (run_id) REFERENCES agent_runs (id) ON DELETE SET NULL;
ALTER TABLE matches ADD CONSTRAINT matches_goal_id_fkey FOREIGN KEY (goal_id) REFERENCES goals (id) ON DELETE CASCADE,
                    ADD CONSTRAINT matches_item_id_fkey FOREIGN KEY (item_id) REFERENCES items (id) ON DELETE CASCADE;
