-- Placeholder: revision 0006 belongs to another branch (the runner wants numbers without gaps). It changes
-- nothing; when that branch is merged, its 0006 replaces this file.

-- migrate:up
SELECT 1;

-- migrate:down
SELECT 1;
