"""Background work on procrastinate: one thin task per pipeline step, periodic sweeps, the worker loop.

The only module that knows the pipeline order. Jobs are nudges: every task re-reads its work from
table state, so a lost, repeated or late job loses and duplicates nothing; the periodic sweeps
pick up whatever a lost nudge missed. Tasks reach the process Runtime through the worker's
additional context. Imports steps and runtime; never imports api or cli.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import procrastinate
from procrastinate import exceptions as pexc
from procrastinate.psycopg_connector import PsycopgConnector

from infosentry.runtime import Runtime
from infosentry.store import ops as ops_store

log = logging.getLogger(__name__)

QUEUES = ("ingest", "embed", "agent", "email")
HEARTBEAT_SECONDS = 10.0

# Tasks are registered on this app; each process binds it to its database with open_queue().
app = procrastinate.App(connector=PsycopgConnector())


class Stats:
    """Per-process counters, written with the heartbeat and exported by /metrics."""

    jobs_done = 0
    jobs_failed = 0


@contextlib.asynccontextmanager
async def open_queue(dsn: str, *, max_size: int = 10) -> AsyncIterator[procrastinate.App]:
    """Bind the task app to this process's database for the duration of the block (one per process)."""
    with app.replace_connector(PsycopgConnector(conninfo=dsn, min_size=1, max_size=max_size)) as bound:
        async with bound.open_async():
            yield bound


def _rt(context: procrastinate.JobContext) -> Runtime:
    assert context.additional_context is not None
    rt = context.additional_context["rt"]
    assert isinstance(rt, Runtime)
    return rt


async def nudge(qapp: procrastinate.App, task: str, *, lock: str | None = None, **kwargs: Any) -> None:
    """Defer `task` unless one is already queued (queueing lock): many nudges collapse into one job."""
    with contextlib.suppress(pexc.AlreadyEnqueued):
        await qapp.configure_task(name=task, queueing_lock=lock or task).defer_async(**kwargs)


def step(func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Count jobs and log failures of a task body with a stable action name."""

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            result = await func(*args, **kwargs)
        except Exception:
            Stats.jobs_failed += 1
            log.exception("job failed", extra={"action": f"job_{func.__name__}_failed"})
            raise
        Stats.jobs_done += 1
        from infosentry import metrics

        metrics.JOB_SECONDS.labels(func.__name__).observe(time.perf_counter() - started)
        return result

    return wrapper


# --- maintenance -------------------------------------------------------------------------------------------


@app.periodic(cron="* * * * *", periodic_id="maintenance")
@app.task(name="maintenance", queue="agent", pass_context=True)
@step
async def maintenance(context: procrastinate.JobContext, timestamp: int) -> None:
    """Retry jobs of dead workers, delete old finished jobs, prune stale heartbeats."""
    jm = context.app.job_manager
    for job in await jm.get_stalled_jobs():
        log.warning("retrying stalled job", extra={"action": "job_stalled_retry", "job_id": job.id})
        await jm.retry_job(job)
    await jm.delete_old_jobs(nb_hours=24, include_failed=False)
    await ops_store.prune_heartbeats(_rt(context).pool, older_than_hours=24)


# --- ingest (fetch due sources) -----------------------------------------------------------------------------

# --- end ingest ---

# --- embed and match ---------------------------------------------------------------------------------------

# --- end embed and match ---

# --- decide and push ---------------------------------------------------------------------------------------

# --- end decide and push ---

# --- monitoring and alerts ---------------------------------------------------------------------------------

# --- end monitoring and alerts ---


# --- the worker loop ---------------------------------------------------------------------------------------


async def heartbeat_loop(rt: Runtime, queues: Iterable[str]) -> None:
    """Write this process's heartbeat row every ~10 s until cancelled (database outages are survived)."""
    queues = list(queues)
    while True:
        try:
            await ops_store.heartbeat(rt, queues=queues, jobs_done=Stats.jobs_done)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("heartbeat failed: %s", exc, extra={"action": "heartbeat_failed"})
        await asyncio.sleep(HEARTBEAT_SECONDS)


async def run_worker(rt: Runtime, qapp: procrastinate.App, queues: Iterable[str], *, concurrency: int,
                     install_signal_handlers: bool) -> None:  # fmt: skip
    """Work the given queues until cancelled or signalled; in-flight jobs are drained on shutdown."""
    await qapp.run_worker_async(
        queues=list(queues),
        concurrency=concurrency,
        wait=True,
        install_signal_handlers=install_signal_handlers,
        additional_context={"rt": rt, "qapp": qapp},
        shutdown_graceful_timeout=25,
        delete_jobs="successful",
        update_heartbeat_interval=5,
        stalled_worker_timeout=20,
    )
