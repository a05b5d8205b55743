"""The db drill: restart the database under the running system (embedded: pg_ctl restart; external: cut every
connection, or a restart command) and measure how every process and queue comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from typing import Any

import asyncpg

from infosentry import db
from infosentry import queue as queue_mod
from infosentry.errors import Unavailable
from infosentry.ops.faults import Progress, Report, live_workers, now, quiet
from infosentry.settings import Settings
from infosentry.store import jobs as jobs_store
from infosentry.store import monitoring as monitoring_store
from infosentry.store import workers as workers_store

# --- db: restart the database ------------------------------------------------------------------------------


CANARY_TASK = "builtin:procrastinate.builtin_tasks.remove_old_jobs"


async def _defer_canaries(qapp: Any, queues: list[str], *, delay: int = 0) -> dict[str, int]:
    """One harmless job per queue (procrastinate's own remove_old_jobs on a queue name that holds nothing):
    every worker knows it, so its completion proves a worker of that queue is polling the database."""
    ids = {}
    for queue in queues:
        task = qapp.configure_task(name=CANARY_TASK, queue=queue, schedule_in={"seconds": delay} if delay else None)
        ids[queue] = await task.defer_async(max_hours=24 * 3650, queue="chaos-canary-nothing")
    return ids


async def _canary_states(pool: asyncpg.Pool, ids: dict[str, int]) -> dict[str, str]:
    found = await jobs_store.job_states(pool, list(ids.values()))
    # successful jobs are deleted (delete_jobs="successful"), so a missing row is a succeeded one
    return {q: found.get(i, "succeeded") for q, i in ids.items()}


async def drill_db(
    settings: Settings,
    *,
    timeout: float = 60.0,
    restart_command: str | None = None,
    api_url: str | None = None,
    progress: Progress = quiet,
) -> Report:
    """Restart the database under the running system and measure how every process comes back."""
    report = Report("db")
    with _quiet_pools():
        await _drill_db(
            settings, report, timeout=timeout, restart_command=restart_command, api_url=api_url, progress=progress
        )
    return report


@contextlib.contextmanager
def _quiet_pools() -> Any:
    """The drill's own pools complain loudly (with tracebacks) while the server is away: that is the point."""
    loggers = [logging.getLogger(n) for n in ("asyncpg.pool", "psycopg.pool", "procrastinate")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


async def _drill_db(
    settings: Settings,
    report: Report,
    *,
    timeout: float,
    restart_command: str | None,
    api_url: str | None,
    progress: Progress,
) -> None:
    pgdata = db.pgdata_of(settings)
    dsn = db.resolve_dsn(settings)
    pool = await db.create_pool(dsn, min_size=1, max_size=3)
    try:
        async with queue_mod.open_queue(dsn, max_size=2) as qapp:
            before = await live_workers(pool)
            queues = sorted({q for w in before for q in w["queues"]})
            url = (api_url or f"{settings.public_url}/health").rstrip("/")
            api_before = await _http_status(url)
            pre = await _defer_canaries(qapp, queues, delay=1)  # due during the outage
            jobs_before = await jobs_store.counts_by_status(pool)
            report.data["before"] = {
                "processes": [w["id"] for w in before],
                "queues": queues,
                "api": api_before,
                "jobs": jobs_before,
            }
            progress(
                f"chaos db: {len(before)} live processes ({', '.join(w['id'] for w in before) or 'none'}), "
                f"queues {','.join(queues) or 'none'}, api {url}: {api_before or 'unreachable'}"
            )
            since = now()
            if restart_command:
                started = time.monotonic()
                proc = await asyncio.create_subprocess_shell(restart_command)
                if await proc.wait() != 0:
                    raise Unavailable(f"restart command failed: {restart_command}")
                took = time.monotonic() - started
                report.injected.append(f"ran `{restart_command}` ({took:.1f} s)")
            elif pgdata is not None:
                took = await asyncio.to_thread(db.restart_embedded, pgdata)
                report.injected.append(f"restarted the embedded Postgres ({pgdata}) with pg_ctl: {took:.1f} s")
            else:
                started = time.monotonic()
                cut = await monitoring_store.terminate_other_connections(pool)
                report.data["mode"] = "terminate"
                took = time.monotonic() - started
                report.injected.append(
                    f"terminated {cut} connections to the database (external server; pass "
                    "--restart-command to restart it for real)"
                )
            report.timings["restart"] = took
            restarted_at = now()
            progress(f"chaos db: {report.injected[-1]}; watching processes reconnect (up to {timeout:.0f} s)")
            await _await_reconnect(
                pool, qapp, report, before, queues, pre, url, api_before, restarted_at, since, timeout
            )
    finally:
        await pool.close()


async def _await_reconnect(
    pool: asyncpg.Pool,
    qapp: Any,
    report: Report,
    before: list[dict[str, Any]],
    queues: list[str],
    pre: dict[str, int],
    url: str,
    api_before: int | None,
    restarted_at: datetime,
    since: datetime,
    timeout: float,
) -> None:
    started = time.monotonic()
    db_back = api_back = None
    post: dict[str, int] = {}
    back: dict[str, float] = {}
    canaries: dict[str, str] = {}
    while time.monotonic() - started < timeout:
        elapsed = time.monotonic() - started
        try:
            await monitoring_store.ping(pool)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await asyncio.sleep(0.2)
            continue
        if db_back is None:
            db_back = elapsed
            with contextlib.suppress(Exception):
                post = await _defer_canaries(qapp, queues)
        if api_before == 200 and api_back is None and await _http_status(url) == 200:
            api_back = elapsed
        seen = await workers_store.last_seen(pool)
        for w in before:
            if w["id"] not in back and seen.get(w["id"]) and seen[w["id"]] > restarted_at:
                back[w["id"]] = elapsed
        canaries = await _canary_states(
            pool,
            {f"{q} (due during restart)": i for q, i in pre.items()}
            | {f"{q} (after restart)": i for q, i in post.items()},
        )
        done = (
            len(back) == len(before)
            and (api_before != 200 or api_back is not None)
            and db_back is not None
            and all(s == "succeeded" for s in canaries.values())
        )
        if done:
            break
        await asyncio.sleep(0.3)
    if db_back is None:
        report.fail(f"the database did not come back within {timeout:.0f} s")
        return
    report.timings["database_back"] = db_back
    for w in before:
        if w["id"] in back:
            report.kept_working.append(f"process {w['id']} ({w['role']}) heartbeat resumed after {back[w['id']]:.1f} s")
        else:
            report.fail(f"process {w['id']} ({w['role']}) did not write a heartbeat within {timeout:.0f} s")
    if back:
        report.timings["all_processes_back"] = max(back.values())
    if api_before == 200:
        if api_back is not None:
            report.kept_working.append(f"/health answered 200 again after {api_back:.1f} s")
            report.timings["api_back"] = api_back
        else:
            report.fail("/health did not answer 200 again")
    for name, state in sorted(canaries.items()):
        if state == "succeeded":
            report.kept_working.append(f"queue {name}: canary job done")
        else:
            report.fail(
                f"queue {name}: canary job still {state}: no worker of that queue is taking jobs "
                "(its procrastinate worker did not survive the restart)"
            )
    failed = await jobs_store.failed_since(pool, since)
    if failed:
        tasks = ", ".join(f"{task} {n}" for task, n in failed.items())
        report.fail(f"{sum(failed.values())} jobs failed during the restart ({tasks}; the service log says why)")
    else:
        report.kept_working.append("no job failed or was lost (every canary, queued before and after, ran)")
    if report.data.get("mode") == "terminate":
        report.degraded.append("every connection of every process to the database was cut at once")
    else:
        report.degraded.append(f"database unavailable for about {report.timings['restart']:.1f} s")


async def _http_status(url: str) -> int | None:
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            async with session.get(url) as resp:
                return resp.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
