"""SQL for goals (always scoped to their owner: another user's goal is simply not found) and a goal's matches."""

from __future__ import annotations

from typing import Any

import asyncpg

Conn = asyncpg.Pool | asyncpg.Connection

# The text that is scored: changing any of these bumps goals.version (new vector, re-scoring, backfill).
SCORED_FIELDS = ("name", "description", "priority_terms", "negative_terms", "priority_mode")
EDITABLE = (*SCORED_FIELDS, "batch_windows", "digest_time", "timezone", "email", "language", "status")

_COLUMNS = """g.id, g.user_id, g.name, g.description, g.priority_terms, g.negative_terms, g.priority_mode,
    g.status, g.batch_windows, g.digest_time, g.timezone, COALESCE(g.email, u.email) AS email,
    g.email IS NULL AS email_is_default, COALESCE(g.language, u.language) AS language,
    g.language IS NULL AS language_is_default, g.version,
    (g.embedded_version = g.version) IS TRUE AS embedded, g.embedding_model,
    (g.matched_version = g.version) IS TRUE AS backfilled, g.created_at, g.updated_at,
    (SELECT count(*) FROM matches m WHERE m.goal_id = g.id) AS match_count,
    (SELECT count(*) FROM notifications n WHERE n.goal_id = g.id) AS pushed_count"""


async def count(conn: Conn, user_id: int) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM goals WHERE user_id = $1", user_id))


async def get(conn: Conn, user_id: int, goal_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM goals g JOIN users u ON u.id = g.user_id WHERE g.id = $1 AND g.user_id = $2",
        goal_id,
        user_id,
    )


async def list_goals(
    conn: Conn, user_id: int, *, limit: int, after_id: int = 0, status: str | None = None
) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT {_COLUMNS} FROM goals g JOIN users u ON u.id = g.user_id
            WHERE g.user_id = $1 AND g.id > $2 AND ($3::text IS NULL OR g.status = $3)
            ORDER BY g.id LIMIT $4""",
        user_id,
        after_id,
        status,
        limit,
    )


async def create(conn: Conn, user_id: int, fields: dict[str, Any]) -> asyncpg.Record:
    cols = [c for c in EDITABLE if c in fields]
    placeholders = ", ".join(f"${k + 2}" for k in range(len(cols)))
    goal_id = await conn.fetchval(
        f"INSERT INTO goals (user_id, {', '.join(cols)}) VALUES ($1, {placeholders}) RETURNING id",
        user_id,
        *[fields[c] for c in cols],
    )
    row = await get(conn, user_id, goal_id)
    assert row is not None
    return row


async def update(
    conn: asyncpg.Connection, user_id: int, goal_id: int, changes: dict[str, Any]
) -> asyncpg.Record | None:
    """Apply changes (in a transaction); the version bumps when the scored text changed, and a goal that
    becomes active again is due for a backfill. None when the goal is not the user's."""
    async with conn.transaction():
        old = await conn.fetchrow("SELECT * FROM goals WHERE id = $1 AND user_id = $2 FOR UPDATE", goal_id, user_id)
        if old is None:
            return None
        changed = {c: v for c, v in changes.items() if c in EDITABLE and _differs(old[c], v)}
        if changed:
            sets = [f"{c} = ${k + 2}" for k, c in enumerate(changed)]
            if any(c in SCORED_FIELDS for c in changed):
                sets.append("version = version + 1")
            if changed.get("status") == "active" and old["status"] != "active":
                sets.append("matched_version = NULL")
            sets.append("updated_at = now()")
            await conn.execute(f"UPDATE goals SET {', '.join(sets)} WHERE id = $1", goal_id, *changed.values())
        return await get(conn, user_id, goal_id)


def _differs(old: Any, new: Any) -> bool:
    if isinstance(old, (list, tuple)) or isinstance(new, (list, tuple)):
        return list(old or []) != list(new or [])
    return old != new


async def delete(conn: Conn, user_id: int, goal_id: int) -> bool:
    status = await conn.execute("DELETE FROM goals WHERE id = $1 AND user_id = $2", goal_id, user_id)
    return status.endswith(" 1")


async def goal_matches(
    conn: Conn, goal_id: int, *, min_score: float, limit: int, after: tuple[float, int] | None
) -> list[asyncpg.Record]:
    """The goal's scored items, best first, with the item, its source and the decision when there is one."""
    return await conn.fetch(
        """SELECT m.item_id, m.score, m.components, m.reasons, m.gate, m.lexical_only, m.is_backfill,
                  m.computed_at, i.title, i.url, i.snippet, i.published_at, i.ingested_at, i.embedding_status,
                  s.id AS source_id, s.name AS source_name,
                  d.tier, d.status AS decision_status, d.reason AS decision_reason, d.decided_at, d.pushed_at
           FROM matches m
           JOIN items i ON i.id = m.item_id
           JOIN sources s ON s.id = i.source_id
           LEFT JOIN decisions d ON d.goal_id = m.goal_id AND d.item_id = m.item_id
           WHERE m.goal_id = $1 AND m.score >= $2
             AND ($3::real IS NULL OR (m.score, m.item_id) < ($3::real, $4::bigint))
           ORDER BY m.score DESC, m.item_id DESC
           LIMIT $5""",
        goal_id,
        min_score,
        after[0] if after else None,
        after[1] if after else 0,
        limit,
    )
