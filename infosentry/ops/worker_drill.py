"""The worker drill: a drill-owned worker is SIGKILLed in the middle of a slow job; the job must be retried by
another worker and completed exactly once. `python -m infosentry.ops.worker_drill probe-worker QUEUE` is the
drill-owned worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infosentry import db, jobs
from infosentry import queue as queue_mod
from infosentry.ops.faults import (
    Progress,
    Report,
    add_fault,
    live_workers,
    new_fault,
    quiet,
    remove_fault,
    spawn,
    stop,
    update_fault,
)
from infosentry.runtime import open_runtime
from infosentry.settings import Settings, load_settings
from infosentry.store import jobs as jobs_store

PROBE_WORKER = ["infosentry.ops.worker_drill", "probe-worker"]  # python -m ... QUEUE: a drill-owned worker
PROBE_TASK = "chaos_probe"


# --- worker: SIGKILL a worker mid-job ----------------------------------------------------------------------


def _register_probe() -> None:
    """The drill's slow job. Only drill-owned workers (on the drill's own queue) know it."""
    if PROBE_TASK in jobs.app.tasks:
        return

    @jobs.app.task(name=PROBE_TASK, queue="chaos", pass_context=True)
    async def chaos_probe(context: Any, *, seconds: float, log: str) -> None:
        entry = {"job": context.job.id, "attempts": context.job.attempts, "pid": os.getpid()}
        _append(Path(log), {**entry, "event": "start", "at": time.time()})
        await asyncio.sleep(seconds)
        _append(Path(log), {**entry, "event": "done", "at": time.time()})


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _probe_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


async def _probe_worker(queue: str) -> None:
    """Entry of a drill-owned worker: `python -m infosentry.ops.drills probe-worker QUEUE` (no heartbeat row, so
    killing it raises no worker alert)."""
    _register_probe()
    settings = load_settings()
    async with open_runtime(settings, role="chaos") as rt, queue_mod.open_queue(rt.dsn, max_size=3) as qapp:
        await jobs.run_worker(rt, qapp, [queue], concurrency=1, install_signal_handlers=True)


async def _wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        await asyncio.sleep(interval)
    return None


async def drill_worker(
    settings: Settings,
    *,
    seconds: float = 10.0,
    fast: bool = False,
    timeout: float = 150.0,
    progress: Progress = quiet,
) -> Report:
    """Start a worker of ours, give it a slow job, SIGKILL it mid-job; the job must be retried (procrastinate's
    stalled-job recovery, run by the `maintenance` task) and completed by another worker, exactly once."""
    report = Report("worker")
    queue = f"chaos-{os.getpid()}-{int(time.time())}"
    fault = new_fault("worker")
    add_fault(settings, fault)
    log = settings.data_dir / "chaos-logs" / f"{queue}.probe.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    dsn = db.resolve_dsn(settings)
    pool = await db.create_pool(dsn, min_size=1, max_size=3)
    procs: list[dict[str, Any]] = []
    try:
        async with queue_mod.open_queue(dsn, max_size=2) as qapp:
            agents = [w for w in await live_workers(pool) if "agent" in w["queues"]]
            if not agents:
                report.notes.append(
                    "no live worker serves queue agent, where `maintenance` runs: the killed job "
                    "cannot be recovered until one does"
                )
            first = spawn(settings, [*PROBE_WORKER, queue], overrides={}, name="chaos-worker-a")
            procs.append(first)
            update_fault(settings, fault["id"], processes=[first])
            job_id = await qapp.configure_task(name=PROBE_TASK, queue=queue).defer_async(seconds=seconds, log=str(log))
            report.injected.append(f"slow job {job_id} ({seconds:.0f} s) on queue {queue}, worker A pid {first['pid']}")
            progress(f"chaos worker: job {job_id} deferred; waiting for worker A (pid {first['pid']}) to start it")
            started = await _wait_for(lambda: [r for r in _probe_log(log) if r["event"] == "start"], 30)
            if not started:
                report.fail(f"worker A never started the job (log: {first['log']})")
                return report
            await asyncio.sleep(min(1.0, seconds / 4))  # well inside the job
            stop(first, kill=True)
            killed_at = time.time()
            db.forget_process(settings, first["pid"])
            report.injected.append(f"SIGKILL worker A (pid {first['pid']}) mid-job")
            row = await jobs_store.job(pool, job_id)
            if row is None or row["status"] != "doing":
                report.fail(f"after the kill the job is {row['status'] if row else 'gone'}, expected 'doing'")
                return report
            report.degraded.append(f"job {job_id} stuck in 'doing' with a dead worker")
            second = spawn(settings, [*PROBE_WORKER, queue], overrides={}, name="chaos-worker-b")
            procs.append(second)
            update_fault(settings, fault["id"], processes=[second])
            if fast:
                # what the heartbeat timeout would establish after 30 s: worker A is dead (we killed it);
                # then the maintenance task (a regular worker on queue agent) retries its job now
                if row["worker_id"] is not None:
                    await qapp.job_manager.unregister_worker(row["worker_id"])
                await qapp.configure_task(name="maintenance").defer_async(timestamp=int(time.time()))
                report.notes.append(
                    "--fast: worker A was unregistered and `maintenance` deferred at once (without "
                    "--fast, detection takes 30 s of missing heartbeats + up to 60 s)"
                )
            progress(f"chaos worker: worker B (pid {second['pid']}) up; waiting for the job to be retried")
            done = await _wait_for(
                lambda: [r for r in _probe_log(log) if r["event"] == "done"], timeout + seconds, interval=0.2
            )
            records = _probe_log(log)
            retried = [r for r in records if r["event"] == "start" and r["pid"] == second["pid"]]
            if retried:
                report.timings["kill_to_retry"] = retried[0]["at"] - killed_at
            if not done:
                report.fail(f"the job was not completed within {timeout:.0f} s of the kill")
            elif len(done) != 1 or done[0]["pid"] != second["pid"]:
                report.fail(f"job completed {len(done)} times, by pids {[r['pid'] for r in done]}")
            else:
                report.timings["kill_to_done"] = done[0]["at"] - killed_at
                attempt = f"attempt {retried[0]['attempts'] + 1}, " if retried else ""
                report.kept_working.append(
                    f"job {job_id} retried ({attempt}worker B) and completed exactly once, "
                    f"{report.timings['kill_to_done']:.1f} s after the kill"
                )
            left = (await jobs_store.job_states(pool, [job_id])).get(job_id)
            if left not in (None, "succeeded"):
                report.fail(f"job {job_id} ended as {left}")
            report.data = {"job": job_id, "queue": queue, "probe_log": records}
    finally:
        for entry in procs:
            await asyncio.to_thread(stop, entry)
        remove_fault(settings, fault["id"])
        await pool.close()
    return report


if __name__ == "__main__":  # a drill-owned worker: python -m infosentry.ops.worker_drill probe-worker QUEUE
    if len(sys.argv) != 3 or sys.argv[1] != "probe-worker":
        sys.exit("usage: python -m infosentry.ops.worker_drill probe-worker QUEUE")
    from infosentry import logs

    logs.setup("INFO", "text")
    asyncio.run(_probe_worker(sys.argv[2]))
