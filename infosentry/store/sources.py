"""SQL for sources, per-user subscriptions, the due-source claim (lease), fetch results and ingest logs.

Set-based: results of many fetches are written with one statement per table (unnest of arrays).
Imports errors only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from infosentry.models import FetchResult
from infosentry.store import Conn, delete_in_batches

# What a subscriber sees of a source: the source row, its subscription, and the source's health.
_USER_COLUMNS = """s.id, s.type, s.url, s.name, s.config, sub.enabled, s.enabled AS source_enabled,
    s.fetch_interval_sec, s.current_interval_sec, s.created_by, s.created_at, s.updated_at,
    sub.created_at AS subscribed_at, s.last_fetch_at, s.next_fetch_at, s.last_success_at, s.error_streak,
    s.last_error, s.last_error_kind, s.owner_id IS NOT NULL AS private"""


# --- sources and subscriptions ------------------------------------------------------------------------------


async def insert_source(
    conn: Conn,
    *,
    type: str,
    url: str,
    name: str,
    config: dict[str, Any],
    fetch_interval_sec: int,
    created_by: int | None,
    owner_id: int | None = None,
) -> tuple[asyncpg.Record, bool]:
    """Insert a source, or return the existing one with the same identity: (type, url) for a shared source,
    (type, url, owner) for a private one. The flag says if it is new."""
    row = await conn.fetchrow(
        """INSERT INTO sources (type, url, name, config, fetch_interval_sec, created_by, owner_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (type, url, coalesce(owner_id, 0)) DO NOTHING RETURNING *""",
        type,
        url,
        name,
        config,
        fetch_interval_sec,
        created_by,
        owner_id,
    )
    if row is not None:
        return row, True
    existing = await conn.fetchrow(
        "SELECT * FROM sources WHERE type = $1 AND url = $2 AND owner_id IS NOT DISTINCT FROM $3", type, url, owner_id
    )
    assert existing is not None  # rows are never deleted while a conflicting insert runs
    return existing, False


async def subscribe(conn: Conn, user_id: int, source_id: int, *, enabled: bool = True) -> bool:
    """Subscribe; True when the subscription is new (an existing one is left as it is)."""
    if enabled:
        await _wake_if_unfollowed(conn, user_id, source_id)
    status = await conn.execute(
        """INSERT INTO subscriptions (user_id, source_id, enabled) VALUES ($1, $2, $3)
           ON CONFLICT (user_id, source_id) DO NOTHING""",
        user_id,
        source_id,
        enabled,
    )
    return status.endswith(" 1")


async def _wake_if_unfollowed(conn: Conn, user_id: int, source_id: int) -> None:
    """A source nobody else follows (enabled) becomes due now: it may have been parked (park_unfollowed), and its
    first follower wants fresh items."""
    await conn.execute(
        """UPDATE sources s SET next_fetch_at = LEAST(s.next_fetch_at, now())
           WHERE s.id = $2 AND NOT EXISTS (SELECT 1 FROM subscriptions x
                                           WHERE x.source_id = s.id AND x.enabled AND x.user_id <> $1)""",
        user_id,
        source_id,
    )


async def unsubscribe(conn: Conn, user_id: int, source_id: int) -> bool:
    status = await conn.execute("DELETE FROM subscriptions WHERE user_id = $1 AND source_id = $2", user_id, source_id)
    return status.endswith(" 1")


async def set_subscription_enabled(conn: Conn, user_id: int, source_id: int, enabled: bool) -> bool:
    if enabled:
        await _wake_if_unfollowed(conn, user_id, source_id)
    status = await conn.execute(
        "UPDATE subscriptions SET enabled = $3 WHERE user_id = $1 AND source_id = $2", user_id, source_id, enabled
    )
    return status.endswith(" 1")


async def subscriber_count(conn: Conn, source_id: int) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM subscriptions WHERE source_id = $1", source_id))


async def user_source(conn: Conn, user_id: int, source_id: int) -> asyncpg.Record | None:
    """The source as `user_id` sees it, or None when they do not subscribe to it."""
    return await conn.fetchrow(
        f"""SELECT {_USER_COLUMNS} FROM subscriptions sub JOIN sources s ON s.id = sub.source_id
            WHERE sub.user_id = $1 AND sub.source_id = $2""",
        user_id,
        source_id,
    )


async def user_sources(
    conn: Conn, user_id: int, *, limit: int, after_id: int = 0, type: str | None = None, enabled: bool | None = None
) -> list[asyncpg.Record]:
    """The sources a user subscribes to, by id (keyset pagination)."""
    return await conn.fetch(
        f"""SELECT {_USER_COLUMNS} FROM subscriptions sub JOIN sources s ON s.id = sub.source_id
            WHERE sub.user_id = $1 AND s.id > $2 AND ($3::text IS NULL OR s.type = $3)
              AND ($4::boolean IS NULL OR sub.enabled = $4)
            ORDER BY s.id LIMIT $5""",
        user_id,
        after_id,
        type,
        enabled,
        limit,
    )


async def subscribed_keys(conn: Conn, user_id: int) -> set[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT s.type, s.url FROM subscriptions sub JOIN sources s ON s.id = sub.source_id WHERE sub.user_id = $1",
        user_id,
    )
    return {(r["type"], r["url"]) for r in rows}


async def count_subscriptions(conn: Conn, user_id: int) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM subscriptions WHERE user_id = $1", user_id))


async def make_private(conn: Conn, source_id: int, owner_id: int) -> None:
    """The source now carries its follower's request headers: it is theirs alone (a unique violation when they
    already have a private source with this type and URL)."""
    await conn.execute("UPDATE sources SET owner_id = $2 WHERE id = $1", source_id, owner_id)


async def update_source(
    conn: Conn,
    source_id: int,
    *,
    name: str | None = None,
    url: str | None = None,
    config: dict[str, Any] | None = None,
    fetch_interval_sec: int | None = None,
) -> asyncpg.Record | None:
    """Change what a source fetches or how often. A new URL or config forgets the validators and the error
    streak and makes the source due at once; a new interval reschedules it no later than one interval away."""
    return await conn.fetchrow(
        """UPDATE sources SET
               name = COALESCE($2, name),
               url = COALESCE($3, url),
               config = COALESCE($4, config),
               fetch_interval_sec = COALESCE($5, fetch_interval_sec),
               current_interval_sec = CASE WHEN $5::int IS NULL THEN current_interval_sec END,
               etag = CASE WHEN $3::text IS NULL AND $4::jsonb IS NULL THEN etag END,
               last_modified = CASE WHEN $3::text IS NULL AND $4::jsonb IS NULL THEN last_modified END,
               error_streak = CASE WHEN $3::text IS NULL AND $4::jsonb IS NULL THEN error_streak ELSE 0 END,
               next_fetch_at = CASE
                   WHEN $3::text IS NOT NULL OR $4::jsonb IS NOT NULL THEN now()
                   WHEN $5::int IS NOT NULL THEN LEAST(next_fetch_at, now() + make_interval(secs => $5))
                   ELSE next_fetch_at END,
               updated_at = now()
           WHERE id = $1 RETURNING *""",
        source_id,
        name,
        url,
        config,
        fetch_interval_sec,
    )


async def recent_logs(conn: Conn, source_id: int, limit: int = 10) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT started_at, duration_ms, status, http_status, fetched, new, duplicate, error_kind, error
           FROM ingest_logs WHERE source_id = $1 ORDER BY started_at DESC, id DESC LIMIT $2""",
        source_id,
        limit,
    )


async def items_since(conn: Conn, source_id: int, hours: int = 24) -> int:
    return int(
        await conn.fetchval(
            """SELECT count(*) FROM item_sources
               WHERE source_id = $1 AND first_seen_at > now() - make_interval(hours => $2)""",
            source_id,
            hours,
        )
    )


async def health(conn: Conn, *, user_id: int | None = None) -> list[asyncpg.Record]:
    """Rows of the infosentry_source_health view (every source, or those one user subscribes to)."""
    return await conn.fetch(
        """SELECT h.* FROM infosentry_source_health h
           WHERE $1::bigint IS NULL
              OR EXISTS (SELECT 1 FROM subscriptions sub WHERE sub.source_id = h.id AND sub.user_id = $1)""",
        user_id,
    )


# --- scheduling ---------------------------------------------------------------------------------------------


async def claim_due(conn: Conn, *, limit: int, lease_seconds: int) -> list[asyncpg.Record]:
    """Lease up to `limit` due sources (enabled, followed by at least one enabled subscription).

    SKIP LOCKED lets concurrent claimers take disjoint sets; the lease (lease_until, and next_fetch_at
    pushed past it) keeps a claimed source away from every other claimer until its result is written,
    and makes a source whose worker died due again once the lease runs out. Uses the sources_due index.
    """
    return await conn.fetch(
        """WITH due AS (
               SELECT s.id FROM sources s
               WHERE s.enabled AND s.next_fetch_at <= now()
                 AND (s.lease_until IS NULL OR s.lease_until < now())
                 AND EXISTS (SELECT 1 FROM subscriptions sub WHERE sub.source_id = s.id AND sub.enabled)
               ORDER BY s.next_fetch_at
               LIMIT $1
               FOR UPDATE OF s SKIP LOCKED
           )
           -- = ANY(ARRAY(...)): a nested loop on the primary key; a join with the CTE scanned every source
           UPDATE sources s SET lease_until = now() + make_interval(secs => $2),
                                next_fetch_at = now() + make_interval(secs => $2)
           WHERE s.id = ANY(ARRAY(SELECT id FROM due))
           RETURNING s.*""",
        limit,
        lease_seconds,
    )


async def park_unfollowed(conn: Conn, *, hours: int = 24) -> int:
    """Push due sources that nobody follows (enabled) a day ahead, so the claim's index scan never wades
    through them (a disabled catalog, sources whose last follower left). Following one wakes it."""
    status = await conn.execute(
        """UPDATE sources s SET next_fetch_at = now() + make_interval(hours => $1)
           WHERE s.enabled AND s.next_fetch_at <= now()
             AND NOT EXISTS (SELECT 1 FROM subscriptions sub WHERE sub.source_id = s.id AND sub.enabled)""",
        hours,
    )
    return int(status.split()[-1])


async def claim_one(conn: Conn, source_id: int, *, lease_seconds: int) -> tuple[asyncpg.Record | None, str]:
    """Lease one source now, due or not (a manual refresh). Returns (row, "") or (None, reason)."""
    row = await conn.fetchrow(
        """WITH one AS (
               SELECT id FROM sources
               WHERE id = $1 AND (lease_until IS NULL OR lease_until < now())
               FOR UPDATE SKIP LOCKED
           )
           UPDATE sources s SET lease_until = now() + make_interval(secs => $2),
                                next_fetch_at = GREATEST(s.next_fetch_at, now() + make_interval(secs => $2))
           FROM one WHERE s.id = one.id
           RETURNING s.*""",
        source_id,
        lease_seconds,
    )
    if row is not None:
        return row, ""
    exists = await conn.fetchval("SELECT true FROM sources WHERE id = $1", source_id)
    return None, ("busy" if exists else "missing")


async def renew_leases(conn: Conn, source_ids: Sequence[int], *, lease_seconds: int) -> int:
    """Extend the leases a live run still holds (results not written yet); a dead run renews nothing, so its
    sources are due again one lease after its last renewal.

    Rows locked by the run's own writer are skipped: their results are being written, which ends the lease,
    and waiting on them (the writer locking the same rows in another order) deadlocked under load.
    """
    status = await conn.execute(
        """UPDATE sources SET lease_until = now() + make_interval(secs => $2),
                              next_fetch_at = GREATEST(next_fetch_at, now() + make_interval(secs => $2))
           WHERE id = ANY(ARRAY(SELECT id FROM sources WHERE id = ANY($1::bigint[]) AND lease_until IS NOT NULL
                                FOR NO KEY UPDATE SKIP LOCKED))""",
        list(source_ids),
        lease_seconds,
    )
    return int(status.split()[-1])


async def release(conn: Conn, source_ids: Sequence[int]) -> None:
    """Give back leases of sources that were claimed but never fetched (a run cancelled at shutdown)."""
    await conn.execute(
        "UPDATE sources SET lease_until = NULL, next_fetch_at = now() WHERE id = ANY($1::bigint[])",
        list(source_ids),
    )


# --- results ------------------------------------------------------------------------------------------------


async def record_results(conn: Conn, results: Sequence[FetchResult]) -> None:
    """Write the outcome of many fetches at once: the sources' state and one ingest log row each."""
    if not results:
        return

    def col(name: str) -> list[Any]:
        return [getattr(r, name) for r in results]

    await conn.execute(
        """UPDATE sources s SET
               last_fetch_at = u.started_at,
               last_success_at = CASE WHEN u.ok THEN u.started_at ELSE s.last_success_at END,
               error_streak = CASE WHEN u.ok THEN 0 ELSE s.error_streak + 1 END,
               last_error = CASE WHEN u.ok THEN NULL ELSE u.error END,
               last_error_kind = CASE WHEN u.ok THEN NULL ELSE u.error_kind END,
               etag = CASE WHEN u.ok THEN u.etag ELSE s.etag END,
               last_modified = CASE WHEN u.ok THEN u.last_modified ELSE s.last_modified END,
               current_interval_sec = COALESCE(u.interval, s.current_interval_sec),
               next_fetch_at = u.next_fetch_at,
               lease_until = NULL,
               name = CASE WHEN u.title IS NOT NULL AND s.name = u.placeholder THEN u.title ELSE s.name END
           FROM unnest($1::bigint[], $2::boolean[], $3::timestamptz[], $4::text[], $5::text[], $6::text[],
                       $7::text[], $8::int[], $9::timestamptz[], $10::text[], $11::text[])
                AS u(source_id, ok, started_at, error, error_kind, etag, last_modified, interval, next_fetch_at,
                     title, placeholder)
           WHERE s.id = u.source_id""",
        col("source_id"),
        col("ok"),
        col("started_at"),
        col("error"),
        col("error_kind"),
        col("etag"),
        col("last_modified"),
        col("interval"),
        col("next_fetch_at"),
        col("title"),
        col("placeholder_name"),
    )
    await conn.execute(
        """INSERT INTO ingest_logs (source_id, started_at, duration_ms, status, http_status, fetched, new,
                                    duplicate, error_kind, error)
           SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::int[], $4::text[], $5::int[], $6::int[],
                                $7::int[], $8::int[], $9::text[], $10::text[])""",
        col("source_id"),
        col("started_at"),
        col("duration_ms"),
        col("status"),
        col("http_status"),
        col("fetched"),
        col("new"),
        col("duplicate"),
        col("error_kind"),
        col("error"),
    )


async def prune_logs(conn: Conn, *, older_than_days: float) -> int:
    """Delete ingest logs older than the retention."""
    return await delete_in_batches(
        conn, "ingest_logs", "started_at < now() - make_interval(secs => $1::float8 * 86400)", older_than_days
    )
