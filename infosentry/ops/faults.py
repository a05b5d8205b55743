"""What every fault drill shares: the report it returns, the state file of injected faults (so `recover`,
later and from any shell, undoes exactly what was done), the worker processes a drill owns, and observations
of the running system. Imports db, settings, store (monitoring, workers); never api or cli.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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

from infosentry.errors import Conflict, Invalid, Unavailable
from infosentry.settings import Settings
from infosentry.store import monitoring as monitoring_store
from infosentry.store import workers as workers_store

DRILLS = ("openai", "smtp", "db", "worker", "budget")
STATE_FILE = "chaos.json"
FRESH_SECONDS = 30.0  # a heartbeat younger than this is a live process (they beat every 10 s)
WHO = "chaos"

Progress = Callable[[str], None]


def quiet(_: str) -> None:
    pass


def now() -> datetime:
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


def add_fault(settings: Settings, fault: dict[str, Any]) -> None:
    state = load_state(settings)
    state["faults"].append(fault)
    save_state(settings, state)


def update_fault(settings: Settings, fault_id: str, **changes: Any) -> None:
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


def remove_fault(settings: Settings, fault_id: str) -> None:
    state = load_state(settings)
    state["faults"] = [f for f in state["faults"] if f["id"] != fault_id]
    save_state(settings, state)


def new_fault(drill: str) -> dict[str, Any]:
    return {
        "id": f"{drill}-{int(time.time() * 1000)}",
        "drill": drill,
        "since": now().isoformat(),
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


def process(entry: dict[str, Any]) -> psutil.Process | None:
    """The recorded process if it is still the one we started (pids are reused)."""
    try:
        proc = psutil.Process(entry["pid"])
        if abs(proc.create_time() - entry["create_time"]) > 0.5 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


def alive(entry: dict[str, Any]) -> bool:
    return process(entry) is not None


def reap(pid: int) -> None:
    """Collect the exit status of a child of this process (so it does not linger as a zombie)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop(entry: dict[str, Any], *, timeout: float = 30.0, kill: bool = False) -> str:
    """SIGTERM (graceful: running jobs finish) or SIGKILL a drill-owned process; wait until it is gone."""
    proc = process(entry)
    if proc is None:
        reap(entry["pid"])
        return "already gone"
    with contextlib.suppress(psutil.Error):
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reap(entry["pid"])
        if process(entry) is None:
            return "killed" if kill else "stopped"
        time.sleep(0.05)
    with contextlib.suppress(psutil.Error):
        proc.kill()
    reap(entry["pid"])
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
async def observe(conn: asyncpg.Pool | asyncpg.Connection, since: datetime) -> dict[str, Any]:
    return await monitoring_store.activity_since(conn, since, fresh_seconds=FRESH_SECONDS)


async def live_workers(conn: asyncpg.Pool | asyncpg.Connection) -> list[dict[str, Any]]:
    """Processes with a fresh heartbeat: id, role, queues, pid, last_seen_at."""
    return await workers_store.live(conn, fresh_seconds=FRESH_SECONDS)


def others_on(workers: list[dict[str, Any]], queues: set[str]) -> list[str]:
    """Live processes (not the drill's) that also serve one of `queues`."""
    return [f"{w['id']} ({w['role']}: {','.join(w['queues'])})" for w in workers if set(w["queues"]) & queues]


async def wait_heartbeat(pool: asyncpg.Pool, pid: int, timeout: float) -> bool:
    host = socket.gethostname()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await workers_store.has_heartbeat(pool, host=host, pid=pid):
            return True
        await asyncio.sleep(0.2)
    return False


def refuse_second(settings: Settings, drill: str) -> None:
    faults = load_state(settings)["faults"]
    if any(f["drill"] == drill for f in faults):
        raise Conflict(f"a {drill} drill is already injected; run `infosentry chaos recover` first")
