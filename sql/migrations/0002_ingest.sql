-- Ingest: a fetch lease on sources (a source is never fetched twice at once, even by `source refresh`),
-- and the infosentry_source_health view operators read with psql.

-- migrate:up
ALTER TABLE sources ADD COLUMN lease_until timestamptz;  -- set while a worker fetches the source

-- alias: the canonical-URL hash of a source's link when it differs from the item's (a story merged into another
-- source's item on title and text), so the next fetch recognises it instead of inserting it again
ALTER TABLE item_sources ADD COLUMN url_hash text;
CREATE INDEX item_sources_alias ON item_sources (url_hash) WHERE url_hash IS NOT NULL;

-- items first seen from a source in a time range (health view, GET /sources/{id})
CREATE INDEX item_sources_source_seen ON item_sources (source_id, first_seen_at);
DROP INDEX item_sources_source;

CREATE VIEW infosentry_source_health AS
SELECT s.id,
       s.name,
       s.type,
       s.url,
       s.enabled,
       (SELECT count(*) FROM subscriptions sub WHERE sub.source_id = s.id AND sub.enabled) AS subscribers,
       s.last_fetch_at,
       s.last_success_at,
       s.next_fetch_at,
       s.error_streak,
       s.last_error_kind,
       s.last_error,
       (SELECT count(*) FROM item_sources x
         WHERE x.source_id = s.id AND x.first_seen_at > now() - interval '24 hours') AS items_24h,
       coalesce(l.fetches, 0) AS fetches_24h,
       coalesce(l.failures, 0) AS failures_24h
FROM sources s
LEFT JOIN LATERAL (
    SELECT count(*) AS fetches, count(*) FILTER (WHERE g.status = 'error') AS failures
    FROM ingest_logs g
    WHERE g.source_id = s.id AND g.started_at > now() - interval '24 hours'
) l ON true
ORDER BY s.error_streak DESC, s.id;

-- migrate:down
DROP VIEW IF EXISTS infosentry_source_health;
CREATE INDEX IF NOT EXISTS item_sources_source ON item_sources (source_id);
DROP INDEX IF EXISTS item_sources_source_seen;
DROP INDEX IF EXISTS item_sources_alias;
ALTER TABLE item_sources DROP COLUMN IF EXISTS url_hash;
ALTER TABLE sources DROP COLUMN IF EXISTS lease_until;
