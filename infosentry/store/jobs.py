"""SQL over procrastinate's own tables (procrastinate_jobs, procrastinate_events): job states and counts, for
the fault drills and monitoring. Jobs are written only through procrastinate."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from infosentry.store import Conn


async def job_states(conn: Conn, job_ids: list[int]) -> dict[int, str]:
    """id -> status of the jobs that still exist (successful jobs are deleted once done)."""
    rows = await conn.fetch("SELECT id, status::text FROM procrastinate_jobs WHERE id = ANY($1)", job_ids)
    return {r["id"]: r["status"] for r in rows}


async def job(conn: Conn, job_id: int) -> dict[str, Any] | None:
    """status and worker_id of a job that still exists."""
    row = await conn.fetchrow("SELECT status::text AS status, worker_id FROM procrastinate_jobs WHERE id = $1", job_id)
    return dict(row) if row else None


async def counts_by_status(conn: Conn) -> dict[str, int]:
    rows = await conn.fetch("SELECT status::text, count(*) AS n FROM procrastinate_jobs GROUP BY 1")
    return {r["status"]: r["n"] for r in rows}


async def failed_since(conn: Conn, since: datetime) -> dict[str, int]:
    """Jobs that failed since `since`, counted by task."""
    rows = await conn.fetch(
        """SELECT j.task_name, count(*) AS n FROM procrastinate_events e JOIN procrastinate_jobs j ON j.id = e.job_id
           WHERE e.type = 'failed' AND e.at >= $1 GROUP BY 1 ORDER BY 1""",
        since,
    )
    return {r["task_name"]: r["n"] for r in rows}
