"""SQL for feedback (like/dislike per goal and item) and sources blocked per goal."""

from __future__ import annotations

import asyncpg

from infosentry.store import Conn


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


async def blocked_sources(conn: Conn, *, goal_id: int, after_source_id: int | None, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT b.source_id, s.name AS source_name, s.url AS source_url, s.type AS source_type, b.created_at
           FROM blocked_sources b JOIN sources s ON s.id = b.source_id
           WHERE b.goal_id = $1 AND ($2::bigint IS NULL OR b.source_id > $2)
           ORDER BY b.source_id LIMIT $3""",
        goal_id,
        after_source_id,
        limit,
    )
