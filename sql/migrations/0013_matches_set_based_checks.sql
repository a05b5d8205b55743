-- Matches are the busiest table: every new item adds about 25 rows (1,000 goals, the upper part of each goal's
-- scores kept). Two row-by-row costs dominated each batch's insert: the foreign keys (a lookup and a row lock
-- in goals and in items per inserted row) and parsing components and reasons into jsonb (the rows are read
-- whole, never searched inside). Replayed on the 24 batches of `bin/bench match --items 3000` (73,534 rows,
-- 1,000 goals): the insert 3.4-3.7 s -> 1.6-2.0 s.
--
-- What the foreign keys promised stays true, set-based: upsert_matches locks the batch's distinct goals and
-- items (FOR KEY SHARE, as the keys did) and inserts only rows whose goal and item it locked, and deleting
-- goals or items deletes their matches in the same statement's transaction (statement triggers below).

-- migrate:up
ALTER TABLE matches DROP CONSTRAINT matches_goal_id_fkey;
ALTER TABLE matches DROP CONSTRAINT matches_item_id_fkey;
ALTER TABLE matches ALTER COLUMN components TYPE json USING components::json;
ALTER TABLE matches ALTER COLUMN reasons DROP DEFAULT;
ALTER TABLE matches ALTER COLUMN reasons TYPE json USING reasons::json;
ALTER TABLE matches ALTER COLUMN reasons SET DEFAULT '[]';

CREATE FUNCTION infosentry_drop_goal_matches() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM matches WHERE goal_id IN (SELECT id FROM gone);
    RETURN NULL;
END $$;
CREATE TRIGGER goals_drop_matches AFTER DELETE ON goals REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION infosentry_drop_goal_matches();

CREATE FUNCTION infosentry_drop_item_matches() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM matches WHERE item_id IN (SELECT id FROM gone);
    RETURN NULL;
END $$;
CREATE TRIGGER items_drop_matches AFTER DELETE ON items REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION infosentry_drop_item_matches();

-- migrate:down
DROP TRIGGER items_drop_matches ON items;
DROP FUNCTION infosentry_drop_item_matches();
DROP TRIGGER goals_drop_matches ON goals;
DROP FUNCTION infosentry_drop_goal_matches();
DELETE FROM matches m WHERE NOT EXISTS (SELECT 1 FROM goals g WHERE g.id = m.goal_id)
                         OR NOT EXISTS (SELECT 1 FROM items i WHERE i.id = m.item_id);
ALTER TABLE matches ALTER COLUMN reasons DROP DEFAULT;
ALTER TABLE matches ALTER COLUMN reasons TYPE jsonb USING reasons::jsonb;
ALTER TABLE matches ALTER COLUMN reasons SET DEFAULT '[]';
ALTER TABLE matches ALTER COLUMN components TYPE jsonb USING components::jsonb;
ALTER TABLE matches ADD CONSTRAINT matches_goal_id_fkey FOREIGN KEY (goal_id) REFERENCES goals (id) ON DELETE CASCADE;
ALTER TABLE matches ADD CONSTRAINT matches_item_id_fkey FOREIGN KEY (item_id) REFERENCES items (id) ON DELETE CASCADE;
