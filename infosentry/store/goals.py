"""SQL for goals: CRUD scoped to their owner (another user's goal is simply not found), pausing, the
delivery settings the push step reads, and the goal vectors and backfill state of the embed step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import numpy as np
from pgvector import Vector

from infosentry.store import Conn

# The text that is scored: changing any of these bumps goals.version (new vector, re-scoring, backfill).
SCORED_FIELDS = ("name", "description", "priority_terms", "negative_terms", "priority_mode")
EDITABLE = (
    *SCORED_FIELDS,
    "batch_windows",
    "digest_time",
    "timezone",
    "email",
    "language",
    "status",
    "batch_enabled",
    "digest_enabled",
)

_COLUMNS = """g.id, g.user_id, g.name, g.description, g.priority_terms, g.negative_terms, g.priority_mode,
    g.status, g.batch_windows, g.batch_enabled, g.digest_time, g.digest_enabled, g.timezone,
    COALESCE(g.email, u.email) AS email,
    g.email IS NULL AS email_is_default, COALESCE(g.language, u.language) AS language,
    g.language IS NULL AS language_is_default, g.version,
    (g.embedded_version = g.version) IS TRUE AS embedded, g.embedding_model,
    (g.matched_version = g.version) IS TRUE AS backfilled, g.created_at, g.updated_at,
    (SELECT count(*) FROM matches m WHERE m.goal_id = g.id) AS match_count,
    (SELECT count(*) FROM notifications n WHERE n.goal_id = g.id) AS pushed_count,
    (SELECT count(*) FROM notifications n
      WHERE n.goal_id = g.id AND n.created_at > now() - interval '7 days') AS pushed_week"""


async def lock_owner(conn: asyncpg.Connection, user_id: int) -> None:
    """Serialise goal creation per user (inside a transaction), so the per-user cap holds under concurrency."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('goals'), $1::int)", user_id % 2**31)


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


_DELIVERY = """
SELECT g.id AS goal_id, g.user_id, g.name, g.status, g.timezone, g.batch_windows, g.digest_time,
       g.batch_enabled, g.digest_enabled,
       g.created_at, COALESCE(g.email, u.email) AS to_addr, COALESCE(g.language, u.language) AS language,
       u.email AS user_email, u.language AS user_language, u.timezone AS user_timezone,
       u.combined_digest
FROM goals g JOIN users u ON u.id = g.user_id
"""


async def delivery(conn: Conn, goal_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(_DELIVERY + " WHERE g.id = $1", goal_id)


async def deliveries(conn: Conn, goal_ids: Sequence[int]) -> list[asyncpg.Record]:
    return await conn.fetch(_DELIVERY + " WHERE g.id = ANY($1::bigint[])", list(goal_ids))


async def active_goals(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch(_DELIVERY + " WHERE g.status = 'active' ORDER BY g.id")


async def by_id(conn: Conn, goal_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, name, status, user_id FROM goals WHERE id = $1", goal_id)


async def goals_to_embed(conn: Conn, model: str, limit: int) -> list[asyncpg.Record]:
    """Active goals whose vector is missing, stale (text changed: version) or of another model, or that have no
    calibration of this model for their version yet (goals embedded before calibration existed)."""
    return await conn.fetch(
        """SELECT id, name, description, priority_terms, version FROM goals g
           WHERE status = 'active'
             AND (embedded_version IS DISTINCT FROM version OR embedding_model IS DISTINCT FROM $1
                  OR NOT EXISTS (SELECT 1 FROM goal_calibration c
                                 WHERE c.goal_id = g.id AND c.signal = $1 AND c.goal_version = g.version))
           ORDER BY updated_at LIMIT $2""",
        model,
        limit,
    )


async def store_goal_vectors(
    conn: Conn, ids: list[int], versions: list[int], vectors: list[np.ndarray], model: str
) -> None:
    """Store goal vectors for the version they were computed from (a goal edited meanwhile keeps waiting) and
    make the goal's recent items due for re-scoring with it."""
    await conn.execute(
        """UPDATE goals SET embedding = v.e, embedding_model = $4, embedded_version = v.version,
               matched_version = NULL
           FROM unnest($1::bigint[], $2::int[], $3::vector[]) AS v(id, version, e)
           WHERE goals.id = v.id AND goals.version = v.version""",
        ids,
        versions,
        [Vector(np.asarray(v, dtype=np.float32)) for v in vectors],
        model,
    )


async def goals_to_backfill(conn: Conn, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT id, user_id, version, updated_at FROM goals
           WHERE status = 'active' AND matched_version IS DISTINCT FROM version
           ORDER BY updated_at LIMIT $1""",
        limit,
    )


async def goals_to_refresh_prf(conn: Conn, model: str, *, first: int, every: int, limit: int) -> list[int]:
    """Backfilled goals of this model due a new pseudo-relevance-feedback vector: never computed and `first`
    values seen, or `every` values seen since the last one (seen restarts at the window's size then).
    A user's due goals come together (the user who has waited longest first): they share the recent items
    their vectors are computed from, which are read once per user."""
    rows = await conn.fetch(
        """SELECT g.id FROM goals g JOIN goal_calibration c
               ON c.goal_id = g.id AND c.signal = $1 AND c.goal_version = g.version
           WHERE g.status = 'active' AND g.embedding_model = $1 AND g.embedded_version = g.version
             AND g.matched_version = g.version
             AND c.seen >= CASE WHEN c.prf_at IS NULL THEN $2::int ELSE $3::int END
           ORDER BY min(c.updated_at) OVER (PARTITION BY g.user_id), g.user_id, c.updated_at LIMIT $4""",
        model,
        first,
        every,
        limit,
    )
    return [int(r["id"]) for r in rows]


async def set_matched_version(conn: Conn, goal_id: int, version: int) -> bool:
    status = await conn.execute(
        "UPDATE goals SET matched_version = $2 WHERE id = $1 AND version = $2", goal_id, version
    )
    return status.endswith(" 1")


async def goal_vectors(conn: Conn, goal_ids: list[int]) -> list[asyncpg.Record]:
    """The vectors matching compares items with (the goal's pseudo-relevance-feedback vector when it has one,
    else its embedded vector), with the version and model they were computed for and the PRF stamp."""
    return await conn.fetch(
        """SELECT g.id, COALESCE(c.prf, g.embedding) AS embedding, g.embedded_version, g.embedding_model, c.prf_at
           FROM goals g LEFT JOIN goal_calibration c
                ON c.goal_id = g.id AND c.signal = g.embedding_model AND c.goal_version = g.embedded_version
           WHERE g.id = ANY($1::bigint[])""",
        goal_ids,
    )


async def base_vector(conn: Conn, goal_id: int) -> asyncpg.Record | None:
    """The goal's embedded vector (from its text), with its user, version and model."""
    return await conn.fetchrow(
        """SELECT id, user_id, name, description, priority_terms, embedding, embedded_version, embedding_model,
                  version FROM goals WHERE id = $1""",
        goal_id,
    )


async def schedules(conn: Conn, goal_ids: list[int]) -> list[asyncpg.Record]:
    """When these goals push: batch windows, digest time, time zone."""
    return await conn.fetch(
        "SELECT id, name, batch_windows, digest_time, timezone FROM goals WHERE id = ANY($1)", goal_ids
    )
