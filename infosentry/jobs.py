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
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import procrastinate

from infosentry import alerts, decide, embed, metrics, push, queue, retention
from infosentry.ingest import run as ingest
from infosentry.runtime import Runtime
from infosentry.store import workers as workers_store

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0
app = queue.app


class Stats:
    """Per-process counters, written with the heartbeat and exported by /metrics."""

    jobs_done = 0
    jobs_failed = 0


def _rt(context: procrastinate.JobContext) -> Runtime:
    assert context.additional_context is not None
    rt = context.additional_context["rt"]
    assert isinstance(rt, Runtime)
    return rt


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
        metrics.JOB_SECONDS.labels(func.__name__).observe(time.perf_counter() - started)
        return result

    return wrapper


async def _nudge(qapp: procrastinate.App | None, task: str) -> None:
    """Nudge `task` from a step; a step run without a queue (the demo, tests) nudges nothing."""
    if qapp is not None:
        await queue.nudge(qapp, task)


# --- maintenance -------------------------------------------------------------------------------------------


@app.periodic(cron="* * * * *", periodic_id="maintenance")
@app.task(name="maintenance", queue="agent", pass_context=True)
@step
async def maintenance(context: procrastinate.JobContext, timestamp: int) -> None:
    """Retry jobs of dead workers, delete old finished jobs, prune stale heartbeats."""
    jm = context.app.job_manager
    await retry_stalled(jm)
    await jm.delete_old_jobs(nb_hours=24, include_failed=False, include_cancelled=True, include_aborted=True)
    await workers_store.prune_heartbeats(_rt(context).pool, older_than_hours=24)


async def retry_stalled(jm: procrastinate.manager.JobManager) -> None:
    for job in await jm.get_stalled_jobs():
        try:
            await jm.retry_job(job)
            log.warning("retrying stalled job", extra={"action": "job_stalled_retry", "job_id": job.id})
        except procrastinate.exceptions.UniqueViolation:
            # the same nudge (same queueing lock) is queued again: that copy does the work, which is kept in
            # tables; the stalled copy is closed rather than failing this retry and every later one
            await jm.finish_job(job, procrastinate.jobs.Status.ABORTED, delete_job=False)
            log.warning("stalled job already queued again", extra={"action": "job_stalled_dropped", "job_id": job.id})


# --- ingest (fetch due sources) -----------------------------------------------------------------------------


@app.periodic(cron="* * * * * */10", periodic_id="ingest_due")
@app.task(name="ingest_due", queue="ingest", pass_context=True, queueing_lock="ingest_due")
@step
async def ingest_due(context: procrastinate.JobContext, timestamp: int | None = None) -> None:
    """Fetch every due source (claimed with SKIP LOCKED and a lease, so runs in several processes never
    overlap and a crashed run's sources come back after the lease); nudge embedding as new items are stored.
    One run per process claims (a tick returns at once while one does: it takes what comes due)."""
    await ingest.run_due(_rt(context), on_new_items=lambda: queue.nudge(context.app, "embed_pending"))


# --- end ingest ---

# --- embed and match ---------------------------------------------------------------------------------------


@app.task(name="embed_pending", queue="embed", pass_context=True, queueing_lock="embed_pending")
@step
async def embed_pending(context: procrastinate.JobContext) -> None:
    """Embed pending items in batches and score them (lexically while embedding is paused); goal vectors and
    backfills first. Bounded per job: re-nudges itself while work remains; nudges the decide step."""
    report = await embed.run(_rt(context), on_matched=lambda: queue.nudge(context.app, "decide_pending"))
    if report.more:
        await queue.nudge(context.app, "embed_pending")


@app.periodic(cron="* * * * *", periodic_id="embed_sweep")
@app.task(name="embed_sweep", queue="embed", pass_context=True, queueing_lock="embed_sweep")
@step
async def embed_sweep(context: procrastinate.JobContext, timestamp: int | None = None) -> None:
    """Safety net for lost nudges: pending or unmatched items, goals to embed or backfill, items of an old
    embedding model still needed for matching -> one embed_pending job."""
    if (await embed.sweep(_rt(context)))["work"]:
        await queue.nudge(context.app, "embed_pending")


# --- end embed and match ---

# --- decide and push ---------------------------------------------------------------------------------------


async def decide_step(rt: Runtime, qapp: procrastinate.App | None) -> Any:
    """Decide what is queued by the rules; flush the instant alerts chunk by chunk, nudge the push flush for the
    other pushes and the judge for boundary pairs."""
    report = await decide.decide_pending(rt, on_immediate=_instant_flush(rt, qapp))
    await _nudge_flush(rt, qapp, report)
    if report.to_judge:
        await _nudge(qapp, "judge_pending")
    if report.busy:
        await _nudge(qapp, "decide_pending")
    return report


async def judge_step(rt: Runtime, qapp: procrastinate.App | None) -> Any:
    report = await decide.judge_pending(rt, on_immediate=_instant_flush(rt, qapp))
    await _nudge_flush(rt, qapp, report)
    if report.more:
        await _nudge(qapp, "judge_pending")
    return report


def _instant_flush(rt: Runtime, qapp: procrastinate.App | None) -> decide.OnImmediate:
    """IMMEDIATE decisions are flushed by the round that wrote them (only what is due: coalescing still applies):
    handing them to a flush_push job put a queue wait on every instant alert's path, seconds under load."""

    async def flush() -> None:
        if rt.hot["IMMEDIATE_ENABLED"] and (await push.flush_immediate(rt, push.utcnow())).sendable:
            await _nudge(qapp, "send_emails")

    return flush


async def _nudge_flush(rt: Runtime, qapp: procrastinate.App | None, report: decide.DecideReport) -> None:
    """Batch windows and digests stay with flush_push (its periodic run is also the safety net for instant
    alerts a round could not flush); with IMMEDIATE switched off, it moves those decisions to BATCH."""
    flushed = report.tiers.get("IMMEDIATE", 0) if rt.hot["IMMEDIATE_ENABLED"] else 0
    if report.pushable > flushed:
        await _nudge(qapp, "flush_push")


async def flush_step(rt: Runtime, qapp: procrastinate.App | None) -> Any:
    report = await push.flush(rt)
    if report.sendable:
        await _nudge(qapp, "send_emails")
    return report


@app.periodic(cron="* * * * * */15", periodic_id="decide_pending", queueing_lock="decide_pending")
@app.task(name="decide_pending", queue="agent", pass_context=True, queueing_lock="decide_pending")
@step
async def decide_pending(context: procrastinate.JobContext, timestamp: int | None = None) -> None:
    """Tier the matches of queued items (new or re-scored), write decisions and runs; flush the instant alerts."""
    await decide_step(_rt(context), context.app)


@app.periodic(cron="* * * * * */15", periodic_id="judge_pending", queueing_lock="judge_pending")
@app.task(name="judge_pending", queue="agent", pass_context=True, queueing_lock="judge_pending")
@step
async def judge_pending(context: procrastinate.JobContext, timestamp: int | None = None) -> None:
    """The LLM boundary judge over the judge queue (bounded per job); flushes the instant alerts."""
    await judge_step(_rt(context), context.app)


@app.periodic(cron="* * * * * */10", periodic_id="flush_push", queueing_lock="flush_push")
@app.task(name="flush_push", queue="agent", pass_context=True, queueing_lock="flush_push")
@step
async def flush_push(context: procrastinate.JobContext, timestamp: int | None = None) -> None:
    """Coalesced IMMEDIATE emails, batch windows and digests that are due; nudge the sender."""
    await flush_step(_rt(context), context.app)


@app.periodic(cron="* * * * * */15", periodic_id="send_emails", queueing_lock="send_emails")
@app.task(name="send_emails", queue="email", pass_context=True, queueing_lock="send_emails")
@step
async def send_emails(context: procrastinate.JobContext, timestamp: int | None = None) -> None:
    """Send due outbox rows (push, login and alert emails) with retries and backoff."""
    if (await push.send_due(_rt(context))).more:
        await queue.nudge(context.app, "send_emails")


@app.periodic(cron="* * * * *", periodic_id="reconcile_push", queueing_lock="reconcile_push")
@app.task(name="reconcile_push", queue="agent", pass_context=True, queueing_lock="reconcile_push")
@step
async def reconcile_push(context: procrastinate.JobContext, timestamp: int | None = None) -> None:
    """Finish what a lost or crashed job left: stuck `sending` emails, overdue IMMEDIATE flushes, due emails,
    cancelled/expired decisions. Every 10 minutes also matches without decisions (re-queued for deciding)."""
    rt = _rt(context)
    report = await push.reconcile(rt)
    if report.overdue_immediate:
        await queue.nudge(context.app, "flush_push")
    if report.due_emails or report.released_emails:
        await queue.nudge(context.app, "send_emails")
    if timestamp is None or (timestamp // 60) % 10 == 0:
        await decide.requeue_lost(rt)
    if await decide.queued_items(rt):
        await queue.nudge(context.app, "decide_pending")
    if await decide.judge_queue_depth(rt):
        await queue.nudge(context.app, "judge_pending")


# --- end decide and push ---

# --- monitoring and alerts ---------------------------------------------------------------------------------

ALERTS_SECONDS = 30.0


async def _alerts_tick(rt: Runtime, qapp: procrastinate.App | None) -> None:
    result = await alerts.tick(rt)
    if result.emailed:
        await _nudge(qapp, "send_emails")


@app.periodic(cron="* * * * * */30", periodic_id="alerts_tick")
@app.task(name="alerts_tick", queue="agent", pass_context=True)
@step
async def alerts_tick(context: procrastinate.JobContext, timestamp: int) -> None:
    """Evaluate the alerts, open/close episodes, notify new episodes once (admin email and/or webhook)."""
    await _alerts_tick(_rt(context), context.app)


@app.periodic(cron="*/5 * * * *", periodic_id="retention")
@app.task(name="retention", queue="agent", pass_context=True, queueing_lock="retention")
@step
async def retention_task(context: procrastinate.JobContext, timestamp: int | None = None) -> None:
    """Forget what is past its retention (retention.py: items nobody needs, logs, runs, emails, clicks, ...)."""
    await retention.prune(_rt(context))


async def alerts_loop(rt: Runtime, qapp: procrastinate.App | None) -> None:
    """The same tick in-process, every 30 s, for processes that serve HTTP: when every worker is dead (the
    critical alert), no alerts_tick job runs, so the API process must be the one that notices and notifies.
    Ticks are serialised across processes by an advisory lock, so running both is safe."""
    while True:
        await asyncio.sleep(ALERTS_SECONDS)
        try:
            await _alerts_tick(rt, qapp)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("alerts tick failed: %s", exc, extra={"action": "alerts_tick_failed"})


# --- end monitoring and alerts ---


# --- the worker loop ---------------------------------------------------------------------------------------


async def heartbeat_loop(rt: Runtime, queues: Iterable[str]) -> None:
    """Write this process's heartbeat row every ~10 s until cancelled (database outages are survived); the row
    is removed when the loop is cancelled, so a clean stop is not mistaken for a dead worker."""
    queues = list(queues)
    try:
        while True:
            try:
                await workers_store.heartbeat(rt, queues=queues, jobs_done=Stats.jobs_done)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc, extra={"action": "heartbeat_failed"})
            await asyncio.sleep(HEARTBEAT_SECONDS)
    finally:
        try:
            await workers_store.remove_heartbeat(rt)
        except Exception as exc:  # the database may be the reason we stop
            log.debug("heartbeat cleanup failed: %s", exc)


async def run_worker(
    rt: Runtime, qapp: procrastinate.App, queues: Iterable[str], *, concurrency: int, install_signal_handlers: bool
) -> None:
    """Work the given queues until cancelled or signalled; in-flight jobs are drained on shutdown.

    procrastinate stops its worker when a side task fails (its LISTEN connection or heartbeat while the database
    restarts): a stop we did not ask for is followed by a fresh worker after a short backoff, so a process never
    goes on living without working its queues.
    """
    queues = list(queues)
    stopping = asyncio.Event()
    if install_signal_handlers:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
    delay = 1.0
    while True:
        started = time.monotonic()
        worker = asyncio.create_task(
            qapp.run_worker_async(
                queues=queues,
                concurrency=concurrency,
                wait=True,
                install_signal_handlers=False,
                additional_context={"rt": rt, "qapp": qapp},
                shutdown_graceful_timeout=25,
                delete_jobs="successful",
                update_heartbeat_interval=5,
                stalled_worker_timeout=20,
            ),
            name="procrastinate-worker",
        )
        stop = asyncio.create_task(stopping.wait())
        try:
            await asyncio.wait({worker, stop}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            worker.cancel()  # procrastinate drains the running jobs (shutdown_graceful_timeout)
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            raise
        finally:
            stop.cancel()
        if stopping.is_set():
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            return
        if time.monotonic() - started > 60:
            delay = 1.0
        reason = worker.exception() if not worker.cancelled() else None
        log.warning(
            "queue worker stopped (%s); starting it again in %.0f s",
            reason or "a side task failed",
            delay,
            extra={"action": "worker_restart"},
        )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)
