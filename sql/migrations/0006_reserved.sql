-- Placeholder: migration 6 is taken by another branch (the web app's migration is 0008). Delete this file when
-- merging that branch; the loader needs the numbers without gaps until then.

-- migrate:up
SELECT 1;

-- migrate:down
SELECT 1;
