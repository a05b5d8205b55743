"""SQL for pushing: pending decisions to deliver, the email outbox, the inbox (notifications) ledger, push
slots, clicks, feedback and blocked sources.

`notifications` UNIQUE (goal_id, item_id) is the push ledger: an item reaches a goal at most once, whatever
the tier. Scheduling comparisons take `now` as a parameter so tests can drive the clock.
"""

from __future__ import annotations

from datetime import date, datetime

import asyncpg

Conn = asyncpg.Connection | asyncpg.Pool

PUSH_KINDS = ("immediate", "batch", "digest")
# advisory lock classes (two-int form): one push step per goal or per user at a time
GOAL_LOCK = 0x50_55  # "PU"
USER_LOCK = 0x50_56

_PENDING = """
SELECT d.id AS decision_id, d.goal_id, d.item_id, d.tier, d.score, d.reason, d.decided_at,
       i.title, i.url, i.snippet, i.published_at, i.ingested_at, i.source_id, s.name AS source_name
FROM decisions d
JOIN items i ON i.id = d.item_id
JOIN sources s ON s.id = i.source_id
WHERE d.goal_id = $1 AND d.status = 'pending' AND d.tier = ANY($2::text[])
  AND d.decided_at >= $3 AND d.score >= $4
  AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.goal_id = d.goal_id AND n.item_id = d.item_id)
  AND NOT EXISTS (SELECT 1 FROM blocked_sources b WHERE b.goal_id = d.goal_id AND b.source_id = i.source_id)
ORDER BY d.score DESC, d.id
LIMIT $5
FOR UPDATE OF d SKIP LOCKED
"""


async def try_lock_goal(conn: asyncpg.Connection, goal_id: int) -> bool:
    """Transaction-scoped: at most one push step works on a goal at a time (others skip it this round)."""
    return await conn.fetchval("SELECT pg_try_advisory_xact_lock($1, $2::int)", GOAL_LOCK, goal_id % 2**31)


async def lock_goal(conn: asyncpg.Connection, goal_id: int) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1, $2::int)", GOAL_LOCK, goal_id % 2**31)


async def try_lock_user(conn: asyncpg.Connection, user_id: int) -> bool:
    return await conn.fetchval("SELECT pg_try_advisory_xact_lock($1, $2::int)", USER_LOCK, user_id % 2**31)


async def pending_items(
    conn: asyncpg.Connection, goal_id: int, *, tiers: list[str], since: datetime, min_score: float, limit: int
) -> list[asyncpg.Record]:
    """Pending, not yet pushed, not blocked decisions of a goal, best first, locked for this transaction."""
    return await conn.fetch(_PENDING, goal_id, tiers, since, min_score, limit)


# --- goals and their owners --------------------------------------------------------------------------------

_DELIVERY = """
SELECT g.id AS goal_id, g.user_id, g.name, g.status, g.timezone, g.batch_windows, g.digest_time,
       g.created_at, COALESCE(g.email, u.email) AS to_addr, COALESCE(g.language, u.language) AS language,
       u.email AS user_email, u.language AS user_language, u.timezone AS user_timezone,
       u.combined_digest
FROM goals g JOIN users u ON u.id = g.user_id
"""


async def delivery(conn: Conn, goal_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(_DELIVERY + " WHERE g.id = $1", goal_id)


async def active_goals(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch(_DELIVERY + " WHERE g.status = 'active' ORDER BY g.id")


async def due_immediate_goals(conn: Conn, *, now: datetime, coalesce_seconds: float) -> list[int]:
    """Active goals whose oldest pending IMMEDIATE decision has waited out the coalescing window."""
    rows = await conn.fetch(
        """SELECT d.goal_id FROM decisions d JOIN goals g ON g.id = d.goal_id AND g.status = 'active'
           WHERE d.status = 'pending' AND d.tier = 'IMMEDIATE'
           GROUP BY d.goal_id
           HAVING min(d.decided_at) + make_interval(secs => $2::float8) <= $1
           ORDER BY min(d.decided_at)""",
        now,
        coalesce_seconds,
    )
    return [r["goal_id"] for r in rows]


async def oldest_pending_immediate(conn: asyncpg.Connection, goal_id: int) -> datetime | None:
    return await conn.fetchval(
        "SELECT min(decided_at) FROM decisions WHERE goal_id = $1 AND status = 'pending' AND tier = 'IMMEDIATE'",
        goal_id,
    )


async def immediate_to_batch(conn: Conn) -> int:
    """IMMEDIATE_ENABLED=false: what waits in a coalescing window becomes BATCH."""
    status = await conn.execute(
        """UPDATE decisions SET tier = 'BATCH',
                  reason = left(reason || ' [IMMEDIATE_ENABLED=false: moved to BATCH]', 500)
           WHERE status = 'pending' AND tier = 'IMMEDIATE'"""
    )
    return int(status.split()[-1])


async def cancel_inactive(conn: Conn) -> int:
    """Pending decisions of paused or archived goals are cancelled: a paused goal pushes nothing, and
    resuming it starts fresh instead of flushing stale items."""
    status = await conn.execute(
        """UPDATE decisions d SET status = 'cancelled', reason = left(d.reason || ' [goal ' || g.status || ']', 500)
           FROM goals g
           WHERE g.id = d.goal_id AND d.status = 'pending' AND g.status <> 'active'"""
    )
    return int(status.split()[-1])


async def cancel_blocked(conn: Conn, goal_id: int | None = None) -> int:
    """Pending decisions whose item's source is blocked for the goal are cancelled (never pushed)."""
    status = await conn.execute(
        """UPDATE decisions d SET status = 'cancelled', reason = left(d.reason || ' [source blocked]', 500)
           FROM items i, blocked_sources b
           WHERE i.id = d.item_id AND b.goal_id = d.goal_id AND b.source_id = i.source_id
             AND d.status = 'pending' AND ($1::bigint IS NULL OR d.goal_id = $1)""",
        goal_id,
    )
    return int(status.split()[-1])


async def close_already_pushed(conn: Conn) -> int:
    """A pending decision whose item already reached the goal (the ledger says so) is closed, not re-sent."""
    status = await conn.execute(
        """UPDATE decisions d SET status = 'skipped', reason = left(d.reason || ' [already pushed]', 500)
           FROM notifications n
           WHERE n.goal_id = d.goal_id AND n.item_id = d.item_id AND d.status = 'pending'"""
    )
    return int(status.split()[-1])


async def expire_stale(conn: Conn, *, older_than: datetime) -> int:
    """BATCH/DIGEST decisions outranked in every window and digest for too long are closed (skipped)."""
    status = await conn.execute(
        """UPDATE decisions SET status = 'skipped',
                  reason = left(reason || ' [not among the best in any window or digest; expired]', 500)
           WHERE status = 'pending' AND tier IN ('BATCH', 'DIGEST') AND decided_at < $1""",
        older_than,
    )
    return int(status.split()[-1])


# --- writing a push ----------------------------------------------------------------------------------------


async def insert_email(
    conn: asyncpg.Connection,
    *,
    dedupe_key: str,
    kind: str,
    user_id: int,
    goal_id: int | None,
    to_addr: str,
    subject: str,
    body_text: str,
    body_html: str,
    headers: dict[str, str],
    status: str,
    last_error: str | None,
) -> int | None:
    return await conn.fetchval(
        """INSERT INTO emails (dedupe_key, kind, user_id, goal_id, to_addr, subject, body_text, body_html, headers,
                               status, last_error)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
           ON CONFLICT (dedupe_key) DO NOTHING RETURNING id""",
        dedupe_key,
        kind,
        user_id,
        goal_id,
        to_addr,
        subject,
        body_text,
        body_html,
        headers,
        status,
        last_error,
    )


async def record_push(
    conn: asyncpg.Connection, *, user_id: int, goal_id: int, rows: list[asyncpg.Record], email_id: int | None
) -> list[int]:
    """Inbox rows (the ledger) for the pushed decisions, and the decisions marked pushed. Returns item ids."""
    inserted = await conn.fetch(
        """INSERT INTO notifications (user_id, goal_id, item_id, decision_id, tier, score, reason, email_id)
           SELECT $1, $2, v.item_id, v.decision_id, v.tier, v.score, v.reason, $3
           FROM unnest($4::bigint[], $5::bigint[], $6::text[], $7::real[], $8::text[])
               AS v(item_id, decision_id, tier, score, reason)
           ON CONFLICT (goal_id, item_id) DO NOTHING
           RETURNING item_id""",
        user_id,
        goal_id,
        email_id,
        [r["item_id"] for r in rows],
        [r["decision_id"] for r in rows],
        [r["tier"] for r in rows],
        [r["score"] for r in rows],
        [r["reason"] for r in rows],
    )
    await conn.execute(
        "UPDATE decisions SET status = 'pushed', pushed_at = now() WHERE id = ANY($1::bigint[])",
        [r["decision_id"] for r in rows],
    )
    return [r["item_id"] for r in inserted]


async def claim_slot(conn: asyncpg.Connection, kind: str, owner_id: int, local_date: date, slot: str) -> bool:
    """Mark a batch window or digest as fired; False when it already was (it fires exactly once)."""
    return bool(
        await conn.fetchval(
            """INSERT INTO push_slots (kind, owner_id, local_date, slot) VALUES ($1, $2, $3, $4)
               ON CONFLICT DO NOTHING RETURNING true""",
            kind,
            owner_id,
            local_date,
            slot,
        )
    )


async def finish_slot(
    conn: asyncpg.Connection,
    kind: str,
    owner_id: int,
    local_date: date,
    slot: str,
    email_id: int | None,
    item_count: int,
) -> None:
    await conn.execute(
        """UPDATE push_slots SET email_id = $5, item_count = $6
           WHERE kind = $1 AND owner_id = $2 AND local_date = $3 AND slot = $4""",
        kind,
        owner_id,
        local_date,
        slot,
        email_id,
        item_count,
    )


async def fired_slots(conn: Conn, kinds: list[str], since: date) -> set[tuple[str, int, date, str]]:
    rows = await conn.fetch(
        "SELECT kind, owner_id, local_date, slot FROM push_slots WHERE kind = ANY($1::text[]) AND local_date >= $2",
        kinds,
        since,
    )
    return {(r["kind"], r["owner_id"], r["local_date"], r["slot"]) for r in rows}


async def slot_fired_on(conn: Conn, kind: str, owner_id: int, local_date: date) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT true FROM push_slots WHERE kind = $1 AND owner_id = $2 AND local_date = $3 LIMIT 1",
            kind,
            owner_id,
            local_date,
        )
    )


async def link_key(conn: Conn) -> str:
    return await conn.fetchval("SELECT key FROM push_link_key WHERE id = 1")


# --- the outbox sender -------------------------------------------------------------------------------------


async def suppress_due(conn: Conn, *, now: datetime, kinds: list[str], reason: str) -> int:
    status = await conn.execute(
        """UPDATE emails SET status = 'suppressed', last_error = $3
           WHERE status = 'pending' AND next_attempt_at <= $1 AND kind = ANY($2::text[])""",
        now,
        kinds,
        reason,
    )
    return int(status.split()[-1])


async def claim_due(conn: Conn, *, now: datetime, limit: int, lease_seconds: float) -> list[asyncpg.Record]:
    """Due rows (pending, or `sending` whose lease ran out: a crashed sender) move to `sending` with a lease."""
    return await conn.fetch(
        """UPDATE emails e SET status = 'sending', attempts = e.attempts + 1,
                  next_attempt_at = $1 + make_interval(secs => $3::float8)
           WHERE e.id IN (SELECT id FROM emails
                          WHERE status IN ('pending', 'sending') AND next_attempt_at <= $1
                          ORDER BY next_attempt_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)
           RETURNING e.*""",
        now,
        limit,
        lease_seconds,
    )


async def mark_sent(conn: Conn, email_id: int) -> None:
    await conn.execute(
        "UPDATE emails SET status = 'sent', sent_at = now(), last_error = NULL WHERE id = $1 AND status = 'sending'",
        email_id,
    )


async def mark_retry(conn: Conn, email_id: int, *, at: datetime, error: str) -> None:
    await conn.execute(
        "UPDATE emails SET status = 'pending', next_attempt_at = $2, last_error = $3 WHERE id = $1",
        email_id,
        at,
        error[:1000],
    )


async def mark_failed(conn: Conn, email_id: int, *, error: str) -> None:
    await conn.execute(
        "UPDATE emails SET status = 'failed', last_error = $2 WHERE id = $1",
        email_id,
        error[:1000],
    )


async def mark_suppressed(conn: Conn, email_id: int, *, reason: str) -> None:
    await conn.execute("UPDATE emails SET status = 'suppressed', last_error = $2 WHERE id = $1", email_id, reason)


async def smtp_result(conn: Conn, *, ok: bool, error: str | None = None) -> None:
    """delivery_state('smtp'): consecutive failures for the alert, reset by a success."""
    if ok:
        await conn.execute(
            """INSERT INTO delivery_state (channel, consecutive_failures, last_success_at, updated_at)
               VALUES ('smtp', 0, now(), now())
               ON CONFLICT (channel) DO UPDATE SET consecutive_failures = 0, last_success_at = now(),
                                                   updated_at = now()"""
        )
    else:
        await conn.execute(
            """INSERT INTO delivery_state (channel, consecutive_failures, last_error, updated_at)
               VALUES ('smtp', 1, $1, now())
               ON CONFLICT (channel) DO UPDATE SET consecutive_failures = delivery_state.consecutive_failures + 1,
                                                   last_error = $1, updated_at = now()""",
            (error or "")[:1000],
        )


async def release_stuck(conn: Conn, *, now: datetime) -> int:
    """`sending` rows whose lease ran out (the sender crashed mid-send) go back to pending."""
    status = await conn.execute(
        "UPDATE emails SET status = 'pending', last_error = 'sender lost (lease expired); retrying' "
        "WHERE status = 'sending' AND next_attempt_at <= $1",
        now,
    )
    return int(status.split()[-1])


async def due_email_count(conn: Conn, *, now: datetime) -> int:
    return await conn.fetchval(
        "SELECT count(*) FROM emails WHERE status IN ('pending', 'sending') AND next_attempt_at <= $1", now
    )


# --- the inbox ---------------------------------------------------------------------------------------------

_NOTIFICATION = """
SELECT n.id, n.goal_id, g.name AS goal_name, n.item_id, n.tier, n.score, n.reason, n.created_at, n.read_at,
       n.email_id, i.title, i.url, i.snippet, i.published_at, i.source_id, s.name AS source_name,
       f.feedback
FROM notifications n
JOIN goals g ON g.id = n.goal_id
JOIN items i ON i.id = n.item_id
JOIN sources s ON s.id = i.source_id
LEFT JOIN feedback f ON f.goal_id = n.goal_id AND f.item_id = n.item_id
"""


async def list_notifications(
    conn: Conn, *, user_id: int, goal_id: int | None, status: str | None, before_id: int | None, limit: int
) -> list[asyncpg.Record]:
    return await conn.fetch(
        _NOTIFICATION
        + """WHERE n.user_id = $1 AND ($2::bigint IS NULL OR n.goal_id = $2)
                 AND ($3::text IS NULL OR ($3 = 'unread') = (n.read_at IS NULL))
                 AND ($4::bigint IS NULL OR n.id < $4)
             ORDER BY n.id DESC LIMIT $5""",
        user_id,
        goal_id,
        status,
        before_id,
        limit,
    )


async def mark_read(conn: Conn, *, user_id: int, notification_id: int) -> asyncpg.Record | None:
    await conn.execute(
        "UPDATE notifications SET read_at = now() WHERE id = $1 AND user_id = $2 AND read_at IS NULL",
        notification_id,
        user_id,
    )
    return await conn.fetchrow(_NOTIFICATION + " WHERE n.id = $1 AND n.user_id = $2", notification_id, user_id)


async def goal_owned(conn: Conn, *, user_id: int, goal_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, name, status FROM goals WHERE id = $1 AND user_id = $2", goal_id, user_id)


async def item_for_user(conn: Conn, *, user_id: int, item_id: int) -> asyncpg.Record | None:
    """The item, if it reached one of the user's goals (scored or pushed) or the user follows one of its sources."""
    return await conn.fetchrow(
        """SELECT i.id, i.title, i.url, i.canonical_url, i.snippet, i.author, i.tags, i.published_at, i.ingested_at,
                  i.source_id, s.name AS source_name, s.type AS source_type
           FROM items i JOIN sources s ON s.id = i.source_id
           WHERE i.id = $2 AND (
               EXISTS (SELECT 1 FROM matches m JOIN goals g ON g.id = m.goal_id
                       WHERE m.item_id = i.id AND g.user_id = $1)
               OR EXISTS (SELECT 1 FROM notifications n WHERE n.item_id = i.id AND n.user_id = $1)
               OR EXISTS (SELECT 1 FROM item_sources x JOIN subscriptions sub ON sub.source_id = x.source_id
                          WHERE x.item_id = i.id AND sub.user_id = $1)
               OR EXISTS (SELECT 1 FROM subscriptions sub WHERE sub.source_id = i.source_id AND sub.user_id = $1))""",
        user_id,
        item_id,
    )


async def item_goals(conn: Conn, *, user_id: int, item_id: int) -> list[asyncpg.Record]:
    """Per goal of the user: the item's score, decision and feedback."""
    return await conn.fetch(
        """SELECT g.id AS goal_id, g.name AS goal_name, m.score, m.reasons, d.tier, d.status AS decision_status,
                  d.reason, n.id AS notification_id, f.feedback,
                  EXISTS (SELECT 1 FROM blocked_sources b JOIN items i ON i.id = $2
                          WHERE b.goal_id = g.id AND b.source_id = i.source_id) AS source_blocked
           FROM goals g
           LEFT JOIN matches m ON m.goal_id = g.id AND m.item_id = $2
           LEFT JOIN decisions d ON d.goal_id = g.id AND d.item_id = $2
           LEFT JOIN notifications n ON n.goal_id = g.id AND n.item_id = $2
           LEFT JOIN feedback f ON f.goal_id = g.id AND f.item_id = $2
           WHERE g.user_id = $1 AND (m.item_id IS NOT NULL OR n.id IS NOT NULL OR f.item_id IS NOT NULL)
           ORDER BY g.id""",
        user_id,
        item_id,
    )


async def item_reached_goal(conn: Conn, *, goal_id: int, item_id: int) -> bool:
    return bool(
        await conn.fetchval(
            """SELECT EXISTS (SELECT 1 FROM matches WHERE goal_id = $1 AND item_id = $2)
                   OR EXISTS (SELECT 1 FROM notifications WHERE goal_id = $1 AND item_id = $2)""",
            goal_id,
            item_id,
        )
    )


async def set_feedback(conn: Conn, *, goal_id: int, item_id: int, user_id: int, feedback: str) -> None:
    await conn.execute(
        """INSERT INTO feedback (goal_id, item_id, user_id, feedback) VALUES ($1, $2, $3, $4)
           ON CONFLICT (goal_id, item_id) DO UPDATE SET feedback = EXCLUDED.feedback, updated_at = now()""",
        goal_id,
        item_id,
        user_id,
        feedback,
    )


async def delete_feedback(conn: Conn, *, goal_id: int, item_id: int) -> bool:
    status = await conn.execute("DELETE FROM feedback WHERE goal_id = $1 AND item_id = $2", goal_id, item_id)
    return status != "DELETE 0"


async def block_source(conn: Conn, *, goal_id: int, source_id: int, user_id: int) -> bool:
    return bool(
        await conn.fetchval(
            """INSERT INTO blocked_sources (goal_id, source_id, user_id) VALUES ($1, $2, $3)
               ON CONFLICT DO NOTHING RETURNING true""",
            goal_id,
            source_id,
            user_id,
        )
    )


async def unblock_source(conn: Conn, *, goal_id: int, source_id: int) -> bool:
    status = await conn.execute("DELETE FROM blocked_sources WHERE goal_id = $1 AND source_id = $2", goal_id, source_id)
    return status != "DELETE 0"


async def blocked_sources(
    conn: Conn, *, goal_id: int, before: tuple[datetime, int] | None, limit: int
) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT b.source_id, s.name AS source_name, s.url AS source_url, s.type AS source_type, b.created_at
           FROM blocked_sources b JOIN sources s ON s.id = b.source_id
           WHERE b.goal_id = $1 AND ($2::bigint IS NULL OR b.source_id > $2)
           ORDER BY b.source_id LIMIT $3""",
        goal_id,
        before[1] if before else None,
        limit,
    )


async def record_click(
    conn: Conn,
    *,
    item_id: int,
    goal_id: int | None,
    channel: str,
    user_agent: str | None,
    ip: str | None,
    is_scanner: bool,
) -> str | None:
    """Record a click and return the item's own URL (None: no such item). An unknown or unrelated goal id is
    stored as NULL rather than trusted."""
    return await conn.fetchval(
        """WITH it AS (SELECT id, url FROM items WHERE id = $1),
                -- FOR KEY SHARE: a goal deleted while we click is seen as gone (NULL), never a broken reference
                g AS (SELECT id AS goal_id FROM goals
                      WHERE id = $2
                        AND (EXISTS (SELECT 1 FROM notifications WHERE goal_id = $2 AND item_id = $1)
                             OR EXISTS (SELECT 1 FROM matches WHERE goal_id = $2 AND item_id = $1))
                      FOR KEY SHARE),
                ins AS (INSERT INTO clicks (item_id, goal_id, channel, user_agent, ip, is_scanner)
                        SELECT it.id, (SELECT goal_id FROM g), $3, $4, $5::inet, $6 FROM it)
           SELECT url FROM it""",
        item_id,
        goal_id,
        channel,
        user_agent,
        ip,
        is_scanner,
    )


async def pause_goal(conn: Conn, goal_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """UPDATE goals SET status = CASE WHEN status = 'active' THEN 'paused' ELSE status END, updated_at = now()
           WHERE id = $1 RETURNING id, name, status""",
        goal_id,
    )


async def pause_user_goals(conn: Conn, user_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        """UPDATE goals SET status = 'paused', updated_at = now() WHERE user_id = $1 AND status = 'active'
           RETURNING id, name, status""",
        user_id,
    )


async def goal_name(conn: Conn, goal_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, name, status, user_id FROM goals WHERE id = $1", goal_id)


# --- reconciliation ----------------------------------------------------------------------------------------


async def overdue_immediate(conn: Conn, *, now: datetime, coalesce_seconds: float, grace_seconds: float) -> int:
    return await conn.fetchval(
        """SELECT count(*) FROM decisions d JOIN goals g ON g.id = d.goal_id AND g.status = 'active'
           WHERE d.status = 'pending' AND d.tier = 'IMMEDIATE'
             AND d.decided_at + make_interval(secs => $2::float8 + $3::float8) <= $1""",
        now,
        coalesce_seconds,
        grace_seconds,
    )
