"""Helpers shared by the benchmarks: the shared data directory, and CPU time and memory of processes
(this one, its parse workers, the embedded Postgres server) read from /proc and psutil.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
from pathlib import Path
from typing import Any

import psutil

CLK = os.sysconf("SC_CLK_TCK")


def shared_data(name: str) -> Path:
    """A file of the workplace's shared/data directory: $BENCH_SHARED_DATA, else the first shared/data found
    above this checkout (a git worktree lives one level deeper than the main checkout)."""
    env = os.environ.get("BENCH_SHARED_DATA")
    if env:
        return Path(env) / name
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "shared" / "data" / name
        if candidate.exists():
            return candidate
    return here.parents[3] / "shared" / "data" / name  # the historical location (for the error message)


def proc_cpu(pid: int) -> float:
    """utime + stime of a live process, in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK


def proc_hwm_mib(pid: int) -> float:
    """Peak resident set (VmHWM) of a live process, MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def proc_rss_mib(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return 0.0


def self_cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def self_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def postgres_pids(pgdata: Path) -> list[int]:
    """The postmaster of the server in `pgdata` and its live children."""
    master = postmaster_pid(pgdata)
    if master is None:
        return []
    try:
        return [master, *(p.pid for p in psutil.Process(master).children())]
    except psutil.Error:
        return [master]


def postgres_cpu(pgdata: Path) -> float:
    """CPU seconds of the whole server: the postmaster, its live children (backends, autovacuum, walwriter,
    checkpointer...) and the children it already reaped (a backend that exited between two readings keeps
    counting, through the postmaster's children_user/children_system)."""
    master = postmaster_pid(pgdata)
    if master is None:
        return 0.0
    try:
        parent = psutil.Process(master)
        t = parent.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in parent.children():
            try:
                c = child.cpu_times()
                total += c.user + c.system
            except psutil.Error:
                continue
        return total
    except psutil.Error:
        return 0.0


def postgres_rss_mib(pgdata: Path) -> float:
    """Sum of the proportional set sizes (PSS) of the server's processes, MiB: what the server adds to the
    machine's memory, shared buffers counted once (a plain RSS sum counts them once per backend)."""
    return pss_mib(postgres_pids(pgdata))


def pss_mib(pids: list[int]) -> float:
    """Sum of the PSS of these processes, MiB (from /proc/PID/smaps_rollup: cheap enough to sample often)."""
    total = 0.0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) / 1024
                    break
        except OSError:
            continue
    return total


def _run_sink(ports: Any) -> None:
    from tests.fakes.smtp import SmtpSink

    sink = SmtpSink().__enter__()
    ports.put(sink.port)
    while True:
        time.sleep(3600)


class SinkProcess:
    """The SMTP sink in a process of its own, as a real mail server would be: its CPU (it parses every message)
    is neither the sender's nor the harness's, and it answers whatever the harness's threads are doing."""

    host = "127.0.0.1"

    def __enter__(self) -> SinkProcess:
        ctx = multiprocessing.get_context("spawn")
        ports = ctx.Queue()
        self.proc = ctx.Process(target=_run_sink, args=(ports,), daemon=True)
        self.proc.start()
        self.port: int = ports.get(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.join(5)

    def env(self) -> dict[str, str]:
        from tests.fakes.smtp import sink_env

        return sink_env(self.host, self.port)
