"""SQL for the inbox: notifications (the push ledger: UNIQUE (goal_id, item_id), an item reaches a goal
at most once whatever the tier) and clicks on tracked links."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from infosentry.store import Conn, delete_in_batches


@dataclass(frozen=True)
class Push:
    """A user's decided items going out together (in email `email_id`, or to the inbox only when None)."""

    user_id: int
    email_id: int | None
    rows: Sequence[asyncpg.Record]  # pending decisions: decision_id, goal_id, item_id, tier, score, reason


async def record_push(conn: asyncpg.Connection, pushes: Sequence[Push]) -> set[tuple[int, int]]:
    """Inbox rows (the ledger) for the pushed decisions and the decisions marked pushed, in two statements
    whatever the number of goals. Returns the (goal id, item id) pairs that reached the inbox now."""
    flat = [(p, r) for p in pushes for r in p.rows]
    if not flat:
        return set()
    inserted = await conn.fetch(
        """INSERT INTO notifications (user_id, goal_id, item_id, decision_id, tier, score, reason, email_id)
           SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::real[],
                                $7::text[], $8::bigint[])
           ON CONFLICT (goal_id, item_id) DO NOTHING
           RETURNING goal_id, item_id""",
        [p.user_id for p, _ in flat],
        [r["goal_id"] for _, r in flat],
        [r["item_id"] for _, r in flat],
        [r["decision_id"] for _, r in flat],
        [r["tier"] for _, r in flat],
        [r["score"] for _, r in flat],
        [r["reason"] for _, r in flat],
        [p.email_id for p, _ in flat],
    )
    await conn.execute(
        "UPDATE decisions SET status = 'pushed', pushed_at = now() WHERE id = ANY($1::bigint[])",
        [r["decision_id"] for _, r in flat],
    )
    return {(r["goal_id"], r["item_id"]) for r in inserted}


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
    conn: Conn,
    *,
    user_id: int,
    goal_id: int | None,
    status: str | None,
    before_id: int | None,
    limit: int,
    tier: str | None = None,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        _NOTIFICATION
        + """WHERE n.user_id = $1 AND ($2::bigint IS NULL OR n.goal_id = $2)
                 AND ($3::text IS NULL OR ($3 = 'unread') = (n.read_at IS NULL))
                 AND ($4::bigint IS NULL OR n.id < $4)
                 AND ($6::text IS NULL OR n.tier = $6)
             ORDER BY n.id DESC LIMIT $5""",
        user_id,
        goal_id,
        status,
        before_id,
        limit,
        tier,
    )


async def unread_counts(conn: Conn, user_id: int) -> dict[int, int]:
    """Unread inbox entries per goal."""
    rows = await conn.fetch(
        "SELECT goal_id, count(*) AS n FROM notifications WHERE user_id = $1 AND read_at IS NULL GROUP BY goal_id",
        user_id,
    )
    return {r["goal_id"]: int(r["n"]) for r in rows}


async def mark_all_read(conn: Conn, *, user_id: int, goal_id: int | None, tier: str | None = None) -> int:
    status = await conn.execute(
        """UPDATE notifications SET read_at = now()
           WHERE user_id = $1 AND read_at IS NULL AND ($2::bigint IS NULL OR goal_id = $2)
             AND ($3::text IS NULL OR tier = $3)""",
        user_id,
        goal_id,
        tier,
    )
    return int(status.split()[-1])


async def mark_read(conn: Conn, *, user_id: int, notification_id: int) -> asyncpg.Record | None:
    await conn.execute(
        "UPDATE notifications SET read_at = now() WHERE id = $1 AND user_id = $2 AND read_at IS NULL",
        notification_id,
        user_id,
    )
    return await conn.fetchrow(_NOTIFICATION + " WHERE n.id = $1 AND n.user_id = $2", notification_id, user_id)


async def item_reached_goal(conn: Conn, *, goal_id: int, item_id: int) -> bool:
    """The item was scored or pushed for the goal, or the goal lists it (its owner follows one of the item's
    sources: the matches listing ranks such items at read time without a stored pair)."""
    return bool(
        await conn.fetchval(
            """SELECT EXISTS (SELECT 1 FROM matches WHERE goal_id = $1 AND item_id = $2)
                   OR EXISTS (SELECT 1 FROM notifications WHERE goal_id = $1 AND item_id = $2)
                   OR EXISTS (SELECT 1 FROM goals g
                              JOIN subscriptions sub ON sub.user_id = g.user_id AND sub.enabled
                              WHERE g.id = $1
                                AND sub.source_id IN (SELECT source_id FROM item_sources WHERE item_id = $2
                                                      UNION SELECT source_id FROM items WHERE id = $2))""",
            goal_id,
            item_id,
        )
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
    stored as NULL rather than trusted; a second click on the same link within the same minute is not stored
    again (clicks_once)."""
    return await conn.fetchval(
        """WITH it AS (SELECT id, url FROM items WHERE id = $1),
                -- FOR KEY SHARE: a goal deleted while we click is seen as gone (NULL), never a broken reference
                g AS (SELECT id AS goal_id FROM goals
                      WHERE id = $2
                        AND (EXISTS (SELECT 1 FROM notifications WHERE goal_id = $2 AND item_id = $1)
                             OR EXISTS (SELECT 1 FROM matches WHERE goal_id = $2 AND item_id = $1))
                      FOR KEY SHARE),
                ins AS (INSERT INTO clicks (item_id, goal_id, channel, user_agent, ip, is_scanner)
                        SELECT it.id, (SELECT goal_id FROM g), $3, $4, $5::inet, $6 FROM it
                        ON CONFLICT DO NOTHING)
           SELECT url FROM it""",
        item_id,
        goal_id,
        channel,
        user_agent,
        ip,
        is_scanner,
    )


async def pushed_to_user(conn: Conn, user_id: int) -> list[dict[str, Any]]:
    """Everything pushed to a user, by goal and tier, with the state of its email and the rule that decided it
    (from the decision run: the reader's reason carries no thresholds)."""
    rows = await conn.fetch(
        """SELECT g.name AS goal, n.tier, n.score, i.title, n.reason, n.created_at, e.status AS email_status,
                  r.output ->> 'rule' AS rule
           FROM notifications n JOIN goals g ON g.id = n.goal_id JOIN items i ON i.id = n.item_id
           LEFT JOIN emails e ON e.id = n.email_id
           LEFT JOIN decisions d ON d.id = n.decision_id LEFT JOIN agent_runs r ON r.id = d.run_id
           WHERE n.user_id = $1 ORDER BY g.id, array_position(ARRAY['IMMEDIATE','BATCH','DIGEST'], n.tier),
                 n.score DESC""",
        user_id,
    )
    return [dict(r) for r in rows]


async def prune_clicks(conn: Conn, *, older_than_days: float) -> int:
    """Forget clicks older than the retention (source trust reads recent clicks only)."""
    return await delete_in_batches(
        conn, "clicks", "clicked_at < now() - make_interval(secs => $1::float8 * 86400)", older_than_days
    )
