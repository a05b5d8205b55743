"""End to end through the real jobs: a fake feed server → ingest → embed (local model) → match → decide → judge →
push → SMTP sink, and a worker process SIGKILLed in the middle of a judge job (slow LLM), recovered by
procrastinate's stalled-job retry (the `maintenance` task) with nothing lost and nothing duplicated."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from infosentry import embed, jobs, queue
from infosentry.runtime import Runtime, open_runtime
from infosentry.settings import Settings
from infosentry.store import goals as goals_store
from tests import pushkit as kit
from tests.conftest import follow, make_all_due, make_user
from tests.fakes.feeds import FakeFeedServer
from tests.fakes.openai import FakeOpenAI
from tests.fakes.smtp import SmtpSink

MATCHING = (
    "NASA launches rocket carrying new Mars rover",
    "NASA launched a rocket on Saturday carrying its new Mars rover, the agency's most ambitious mission to "
    "Mars yet; astronauts on the International Space Station watched the launch.",
)
OTHER = [
    (
        "Pacers Hang Tough Minus Suspended Players",
        "Using a makeshift roster a night after brawling with fans, the "
        "Indiana Pacers pressed the Orlando Magic until the very end.",
    ),
    (
        "ECB Rates Unchanged",
        "European Central Bank President Jean-Claude Trichet kept up his anti-inflation rhetoric "
        "on Thursday, warning of short-term risks.",
    ),
    (
        "Aides Seeking Arafat Burial in West Bank",
        "Palestinian officials asked Israel for permission to bury him in Ramallah.",
    ),
]
SPACE_GOAL = {
    "name": "Space exploration",
    "description": "NASA and other space agencies: rocket launches, Mars rovers, the International Space Station, "
    "and discoveries about planets, moons and stars",
    "priority_terms": ["NASA", "Mars", "space station"],
    "batch_windows": [],
}


def rss(entries: list[tuple[str, str]]) -> str:
    now = datetime.now(UTC)
    items = "".join(
        f"<item><title>{title}</title><link>https://news.example.com/e2e/{abs(hash(title)) % 10**8}</link>"
        f"<pubDate>{format_datetime(now - timedelta(minutes=i))}</pubDate><description>{body}</description></item>"
        for i, (title, body) in enumerate(entries)
    )
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>E2E</title>{items}</channel></rss>'


async def until(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def worker(rt: Runtime, queues: list[str] | tuple[str, ...] = queue.QUEUES) -> AsyncIterator[Any]:
    """A real worker in this process (every queue, periodic tasks included), drained on exit."""
    async with queue.open_queue(rt.dsn) as qapp:
        task = asyncio.create_task(
            jobs.run_worker(rt, qapp, list(queues), concurrency=4, install_signal_handlers=False)
        )
        try:
            yield qapp
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.mark.slow
async def test_feed_to_email_through_the_real_jobs(
    settings: Settings, smtp_sink: SmtpSink, openai_server: FakeOpenAI
) -> None:
    # the judge (for a boundary score) says IMMEDIATE; embeddings are the local model's
    openai_server.chat_handler(
        lambda body: json.dumps(
            {"label": "IMMEDIATE", "confidence": 0.9, "reason": "'NASA' and 'Mars rover' in the title"}
        )
    )
    cfg = replace(
        settings,
        smtp_host=smtp_sink.host,
        smtp_port=smtp_sink.port,
        smtp_tls=False,
        **openai_server.settings_overrides(provider="local"),
    )
    async with FakeFeedServer() as feeds, open_runtime(cfg) as rt:
        await kit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=0)
        feeds.add("/news.xml", rss(OTHER))
        user_id, _ = await make_user(rt, "e2e@example.com")
        goal = await goals_store.create(rt.pool, user_id, {**SPACE_GOAL, "timezone": "UTC"})
        await embed.run(rt)  # the goal's vector (a goal created through the API gets it from the embed job)
        source_id = await follow(rt, user_id, feeds.url("/news.xml"), name="E2E")
        async with worker(rt) as qapp:
            await queue.nudge(qapp, "ingest_due")
            # the first fetch: nothing relevant, nothing pushed, every item scored
            await until(
                lambda: rt.pool.fetchval("SELECT count(*) = 3 FROM items WHERE matched_at IS NOT NULL"),
                30,
                "the first items to be matched",
            )
            # the story breaks: the feed carries it, the source is due again
            feeds.add("/news.xml", rss([MATCHING, *OTHER]))
            await make_all_due(rt)
            started = time.monotonic()
            await queue.nudge(qapp, "ingest_due")
            received = await smtp_sink.wait_for(1, timeout=30)
            latency = time.monotonic() - started
            await asyncio.sleep(1.0)  # nothing else follows
    assert len(smtp_sink.received) == 1
    msg = received[0].message
    assert msg["Subject"] == "[Goal: Space exploration] 1 new high-priority item"
    body = msg.get_body(("plain",)).get_content()
    assert MATCHING[0] in body and "mentions 'NASA'" in body and "/r/" in body
    async with open_runtime(settings) as check:
        rows = await kit.notifications(check)
        assert [(r["goal_id"], r["tier"]) for r in rows] == [(goal["id"], "IMMEDIATE")]
        title = await check.pool.fetchval("SELECT title FROM items WHERE id = $1", rows[0]["item_id"])
        assert title == MATCHING[0]
        assert await check.pool.fetchval("SELECT count(*) FROM decisions WHERE tier <> 'IGNORE'") == 1
        assert source_id
    assert latency < 15, f"breaking story took {latency:.1f} s from the fetch nudge to the mailbox"


def _worker_env(dsn: str, data_dir: Path, fake: FakeOpenAI, sink: SmtpSink) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SMTP_", "INFOSENTRY_", "DATABASE_"))}
    return (
        env
        | fake.env()
        | sink.env()
        | {
            "DATABASE_URL": dsn,
            "INFOSENTRY_DATA_DIR": str(data_dir),
            "EMBED_PROVIDER": "local",
            "LOG_FORMAT": "text",
            "LOG_LEVEL": "INFO",
        }
    )


@pytest.mark.slow
async def test_a_worker_killed_mid_job_loses_and_duplicates_nothing(
    settings: Settings,
    dsn: str,
    tmp_path: Path,
    openai_server: FakeOpenAI,
    smtp_sink: SmtpSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = openai_server
    cfg = replace(
        settings,
        smtp_host=smtp_sink.host,
        smtp_port=smtp_sink.port,
        smtp_tls=False,
        **fake.settings_overrides(provider="local"),
    )
    async with open_runtime(cfg) as rt:
        await kit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=0)
        user_id, _ = await make_user(rt, "kill@example.com")
        source_id = await kit.source(rt, user_id)
        goal_id = await kit.goal(rt, user_id, "Chip exports", batch_windows=[])
        sure = await kit.item(rt, source_id, "Chip export ban widened, effective today")
        boundary = await kit.item(rt, source_id, "Chip makers weigh the new export rules")
        await kit.match(rt, goal_id, sure, 0.97)
        await kit.match(rt, goal_id, boundary, 0.90)
        # the judge hangs on the first call: the decide job is in the middle of it when the worker dies
        fake.hang_next(1, seconds=60, endpoint="chat")
        fake.chat_queue(json.dumps({"label": "IMMEDIATE", "confidence": 0.9, "reason": "'export ban' in the title"}))
        log = open(tmp_path / "worker.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "infosentry", "worker", "--queue", "agent", "--concurrency", "1"],
            env=_worker_env(dsn, tmp_path, fake, smtp_sink),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            async with queue.open_queue(rt.dsn) as qapp:
                await queue.nudge(qapp, "decide_pending")
                await until(lambda: asyncio.sleep(0, fake.requests["chat"] >= 1), 30, "the worker to call the judge")
                job = await rt.pool.fetchrow(
                    "SELECT id, worker_id, status FROM procrastinate_jobs WHERE task_name = 'judge_pending' "
                    "AND status = 'doing'"
                )
                assert job is not None, (tmp_path / "worker.log").read_text()[-3000:]
                # the rule-based decision was committed before; the boundary pair waits in the judge queue
                assert await kit.tiers(rt, goal_id) == {sure: "IMMEDIATE"}
                assert await rt.pool.fetchval("SELECT count(*) FROM judge_queue WHERE item_id = $1", boundary) == 1
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
        # time passes: the dead worker's procrastinate heartbeat is older than the stalled threshold
        await rt.pool.execute(
            "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '10 minutes' WHERE id = $1",
            job["worker_id"],
        )
        caplog.set_level(logging.WARNING, logger="infosentry.jobs")
        async with worker(rt, ["agent", "email"]) as qapp:
            await qapp.configure_task(name="maintenance").defer_async(timestamp=int(time.time()))
            # the stalled job is retried and runs to completion (successful jobs are deleted), or, when the
            # worker's periodic nudge queued the same task first, closed while that copy does the work
            await until(
                lambda: rt.pool.fetchval(
                    "SELECT count(*) = 0 FROM procrastinate_jobs WHERE id = $1 AND status <> 'aborted'", job["id"]
                ),
                30,
                "the stalled job to be retried",
            )
            await until(
                lambda: rt.pool.fetchval("SELECT count(*) = 0 FROM emails WHERE status IN ('pending', 'sending')"),
                30,
                "the emails",
            )
            await until(lambda: rt.pool.fetchval("SELECT count(*) = 2 FROM notifications"), 30, "both pushes")
            await until(
                lambda: rt.pool.fetchval("SELECT count(*) = 0 FROM emails WHERE status IN ('pending', 'sending')"),
                30,
                "the emails",
            )
        assert any(getattr(r, "action", "") in ("job_stalled_retry", "job_stalled_dropped") for r in caplog.records)
        assert await kit.tiers(rt, goal_id) == {sure: "IMMEDIATE", boundary: "IMMEDIATE"}
        assert await rt.pool.fetchval("SELECT count(*) FROM agent_runs WHERE trigger = 'match'") == 2
        assert await rt.pool.fetchval("SELECT count(*) FROM decide_queue") == 0
        assert await rt.pool.fetchval("SELECT count(*) FROM judge_queue") == 0
        pushed = await kit.notifications(rt)
        assert sorted(n["item_id"] for n in pushed) == sorted([sure, boundary])
        mails = await kit.emails(rt)
        assert {m["status"] for m in mails} == {"sent"}
        assert len(smtp_sink.received) == len(mails)
        keys = [m.message["X-Infosentry-Key"] for m in smtp_sink.received]
        assert len(keys) == len(set(keys))
        assert fake.requests["chat"] == 2  # the hung call, and one more after the retry: never paid twice after


async def test_a_stalled_nudge_that_was_queued_again_is_closed_not_retried(rt: Runtime) -> None:
    """A dead worker's job whose nudge is already queued again (same queueing lock) cannot be retried — the lock
    allows one queued copy — so maintenance closes it and the queued copy does the work; other stalled jobs
    are still retried."""
    async with queue.open_queue(rt.dsn) as qapp:
        dead = await rt.pool.fetchval(
            "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - interval '10 minutes') RETURNING id"
        )
        stalled = {}
        for task in ("judge_pending", "decide_pending"):
            await queue.nudge(qapp, task)
            stalled[task] = await rt.pool.fetchval("SELECT id FROM procrastinate_jobs WHERE task_name = $1", task)
            await rt.pool.execute(
                "UPDATE procrastinate_jobs SET status = 'doing', worker_id = $1 WHERE id = $2", dead, stalled[task]
            )
        await queue.nudge(qapp, "judge_pending")  # only this one is queued again
        await jobs.retry_stalled(qapp.job_manager)
        rows = await rt.pool.fetch(
            "SELECT id, task_name, status FROM procrastinate_jobs "
            "WHERE task_name IN ('judge_pending', 'decide_pending')"
        )
    by_id = {r["id"]: (r["task_name"], r["status"]) for r in rows}
    assert by_id.pop(stalled["judge_pending"]) == ("judge_pending", "aborted")
    assert by_id.pop(stalled["decide_pending"]) == ("decide_pending", "todo")
    assert list(by_id.values()) == [("judge_pending", "todo")]


async def test_a_nudge_for_a_task_this_process_never_registered_is_refused(rt: Runtime) -> None:
    """Deferred blind, such a job would sit on the 'default' queue no worker reads and hold the task's queueing
    lock, so even the task's periodic runs could no longer be queued."""
    import procrastinate.exceptions

    async with queue.open_queue(rt.dsn) as qapp:
        with pytest.raises(procrastinate.exceptions.TaskNotFound):
            await queue.nudge(qapp, "ingest_duee")
        await queue.nudge(qapp, "ingest_due")
    rows = await rt.pool.fetch("SELECT task_name, queue_name FROM procrastinate_jobs")
    assert [tuple(r) for r in rows] == [("ingest_due", "ingest")]
