"""SQL for worker heartbeats (one row per live process) and the infosentry_workers view."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg

from infosentry.store import Conn

if TYPE_CHECKING:
    from infosentry.runtime import Runtime


async def heartbeat(rt: Runtime, *, queues: list[str], jobs_done: int) -> None:
    await rt.pool.execute(
        """INSERT INTO worker_heartbeats (id, role, queues, pid, host, started_at, last_seen_at, jobs_done)
           VALUES ($1, $2, $3, $4, $5, $6, now(), $7)
           ON CONFLICT (id) DO UPDATE SET role = EXCLUDED.role, queues = EXCLUDED.queues,
               started_at = EXCLUDED.started_at, last_seen_at = now(), jobs_done = EXCLUDED.jobs_done""",
        rt.worker_id,
        rt.role,
        queues,
        rt.pid,
        rt.host,
        rt.started_at,
        jobs_done,
    )


async def prune_heartbeats(pool: asyncpg.Pool, *, older_than_hours: int) -> None:
    await pool.execute(
        "DELETE FROM worker_heartbeats WHERE last_seen_at < now() - make_interval(hours => $1)",
        older_than_hours,
    )


async def remove_heartbeat(rt: Runtime) -> None:
    await rt.pool.execute("DELETE FROM worker_heartbeats WHERE id = $1", rt.worker_id)


async def workers(conn: Conn) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM infosentry_workers ORDER BY role, host, pid")
    return [dict(r) for r in rows]


async def live(conn: Conn, *, fresh_seconds: float) -> list[dict[str, Any]]:
    """Processes with a fresh heartbeat: id, role, queues, pid, host, last_seen_at."""
    rows = await conn.fetch(
        """SELECT id, role, queues, pid, host, last_seen_at FROM worker_heartbeats
           WHERE last_seen_at > now() - make_interval(secs => $1) ORDER BY id""",
        fresh_seconds,
    )
    return [dict(r) for r in rows]


async def has_heartbeat(conn: Conn, *, host: str, pid: int) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM worker_heartbeats WHERE host = $1 AND pid = $2", host, pid))


async def last_seen(conn: Conn) -> dict[str, Any]:
    """id -> last_seen_at of every heartbeat row."""
    return {r["id"]: r["last_seen_at"] for r in await conn.fetch("SELECT id, last_seen_at FROM worker_heartbeats")}
