-- Pruned stories stay known: retention deletes items, but a feed may still list one (an undated entry of a slow
-- blog, a hot list); without a trace it would come back as news. The hashes (own URL and aliases, 16 bytes
-- each) of pruned items are kept here for a while (retention.TOMBSTONE_DAYS) and ingest skips them.

-- migrate:up
CREATE TABLE item_tombstones (
    url_hash  bytea PRIMARY KEY,                 -- decode(items.url_hash, 'hex')
    pruned_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX item_tombstones_age ON item_tombstones (pruned_at);

-- migrate:down
DROP TABLE IF EXISTS item_tombstones;
