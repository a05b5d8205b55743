"""SQL for operations: worker heartbeats."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg

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
