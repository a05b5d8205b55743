"""Memory of `infosentry serve --role all`, by process: `bin/bench memory [--feeds 100] [--items 20] [--users 10]
[--goals-per-user 10] [--idle 20] [--timeout 600] [--no-breakdown]`.

A fresh data dir (embedded Postgres), the local embedder (no OpenAI key), and `serve --role all` started on it.
Its process tree is sampled every 0.25 s (RSS of the main process, the parse pool's forkserver and its workers;
the embedded Postgres apart, as the sum of its processes' PSS; the tree's PSS sum too, which counts pages
shared between the forkserver and its workers once):
  1. idle: `idle` seconds after /health answers, nothing to do;
  2. load: `users` × `goals-per-user` goals and `feeds` feeds × `items` items (bench_ingest's generator, on
     127.0.0.1) appear; the worker ingests, embeds with the local model, matches and decides them; the phase
     ends when every item is matched (or at `timeout`);
  3. after: `idle` seconds more, nothing to do (is the memory given back?).
Per phase and process role: peak and last RSS. Then (unless --no-breakdown) a separate process loads what the
worker loads, step by step, and prints the RSS after each step: what holds the memory (imports, the model's
float32 weights, one embedding batch's activations, the reused numpy workspace).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from tests.bench import results
from tests.bench.bench_api import cli, free_port, wait_healthy
from tests.bench.bench_ingest import HOSTS, serve
from tests.bench.common import postgres_rss_mib, pss_mib

TOPICS = [
    ("Feed headlines", "Headlines from the bench feeds about something that happened in a place", ["headline"]),
    ("Committee debates", "Committees and advisers debating items at length", ["committee", "advisers"]),
    ("Foxes and dogs", "Quick brown foxes jumping over lazy dogs", ["fox", "dog"]),
    ("Space", "Space missions, NASA, rockets and astronomy", ["NASA", "rocket"]),
    ("Elections", "Elections, campaigns and votes around the world", ["election", "vote"]),
]


def roles(main_pid: int) -> dict[str, list[int]]:
    """{role: pids} of the serve process tree: main, forkserver, parse workers, other children."""
    out: dict[str, list[int]] = {"main": [main_pid], "forkserver": [], "parse worker": [], "other": []}
    try:
        children = psutil.Process(main_pid).children(recursive=True)
    except psutil.Error:
        return out
    forkservers = set()
    for child in children:
        try:
            cmd = " ".join(child.cmdline())
            ppid = child.ppid()
        except psutil.Error:
            continue
        if "forkserver import main" in cmd and ppid == main_pid:
            out["forkserver"].append(child.pid)
            forkservers.add(child.pid)
    for child in children:
        if child.pid in forkservers:
            continue
        try:
            ppid = child.ppid()
        except psutil.Error:
            continue
        out["parse worker" if ppid in forkservers else "other"].append(child.pid)
    return out


class Sampler(threading.Thread):
    def __init__(self, main_pid: int, pgdata: Path, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.main_pid, self.pgdata, self.interval = main_pid, pgdata, interval
        self.phase = "startup"
        self.peaks: dict[str, dict[str, float]] = {}
        self.last: dict[str, dict[str, float]] = {}
        self.series: list[dict[str, Any]] = []
        self.stop = threading.Event()

    def sample(self) -> dict[str, float]:
        by_role = roles(self.main_pid)
        mib: dict[str, float] = {}
        for role, pids in by_role.items():
            values = []
            for pid in pids:
                try:
                    values.append(psutil.Process(pid).memory_info().rss / 2**20)
                except psutil.Error:
                    continue
            if role == "parse worker":
                mib["parse workers (sum)"] = sum(values)
                mib["parse worker (largest)"] = max(values or [0.0])
                mib["parse workers (count)"] = len(values)
            elif values:
                mib[role] = sum(values)
        mib["serve tree (sum)"] = sum(
            v for k, v in mib.items() if k in ("main", "forkserver", "parse workers (sum)", "other")
        )
        mib["serve tree PSS (sum)"] = pss_mib([pid for pids in by_role.values() for pid in pids])
        mib["postgres PSS (sum)"] = postgres_rss_mib(self.pgdata)
        return mib

    def run(self) -> None:
        while not self.stop.is_set():
            mib = self.sample()
            phase = self.phase
            peaks = self.peaks.setdefault(phase, {})
            for k, v in mib.items():
                peaks[k] = max(peaks.get(k, 0.0), v)
            self.last[phase] = mib
            self.series.append({"t": round(time.time(), 2), "phase": phase, **{k: round(v, 1) for k, v in mib.items()}})
            self.stop.wait(self.interval)


def seed(dsn: str, urls: list[str], users: int, goals_per_user: int) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        sids = []
        for n, url in enumerate(urls):
            sids.append(
                conn.execute(
                    "INSERT INTO sources (type, url, name, fetch_interval_sec) VALUES ('rss', %s, %s, 900)"
                    " RETURNING id",
                    (url, f"Bench feed {n}"),
                ).fetchone()[0]
            )
        for u in range(users):
            uid = conn.execute(
                "INSERT INTO users (email) VALUES (%s) RETURNING id", (f"user{u}@bench.example",)
            ).fetchone()[0]
            for sid in sids:
                conn.execute("INSERT INTO subscriptions (user_id, source_id) VALUES (%s, %s)", (uid, sid))
            for g in range(goals_per_user):
                name, desc, terms = TOPICS[(u + g) % len(TOPICS)]
                conn.execute(
                    "INSERT INTO goals (user_id, name, description, priority_terms) VALUES (%s, %s, %s, %s)",
                    (uid, f"{name} {g}", desc, terms),
                )


def postgres_backends(dsn: str) -> list[dict[str, Any]]:
    """Every server process with its PSS, kind, client and last statement: which connections hold the memory."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            r"""SELECT pid, backend_type, coalesce(application_name, ''), coalesce(state, ''),
                      left(regexp_replace(coalesce(query, ''), '\s+', ' ', 'g'), 90)
               FROM pg_stat_activity"""
        ).fetchall()
    out = [
        {"pid": r[0], "kind": r[1], "app": r[2], "state": r[3], "query": r[4], "pss_mib": round(pss_mib([r[0]]), 1)}
        for r in rows
    ]
    out.sort(key=lambda r: -r["pss_mib"])
    total = sum(r["pss_mib"] for r in out)
    print(f"postgres processes after the load: {len(out)}, PSS {total:.0f} MiB in all; the largest:")
    for r in out[:8]:
        print(f"  {r['pss_mib']:7.1f} MiB  {r['kind']:<16} {r['app'][:20]:<20} {r['state']:<6} {r['query'][:70]}")
    return out


def slow_statements(log_path: Path, threshold: float) -> list[dict[str, Any]]:
    """Statements the server logged as slower than the threshold, grouped by text: count, total and max ms."""
    import re

    pattern = re.compile(r"duration: ([\d.]+) ms\s+(?:statement|execute [^:]*|bind [^:]*|parse [^:]*): (.*)")
    groups: dict[str, list[float]] = {}
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    entries: list[str] = []
    for line in text.splitlines():  # a statement spans lines: continuation lines start with white space
        if entries and line[:1] in (" ", "\t"):
            entries[-1] += " " + line.strip()
        else:
            entries.append(line)
    for entry in entries:
        if m := pattern.search(entry):
            key = " ".join(m.group(2).split())[:120]
            groups.setdefault(key, []).append(float(m.group(1)))
    out = [
        {"statement": k, "count": len(v), "total_ms": round(sum(v)), "max_ms": round(max(v))} for k, v in groups.items()
    ]
    out.sort(key=lambda r: -r["total_ms"])
    print(f"statements slower than {threshold:g} ms (server log), by total time:")
    for r in out[:12]:
        print(f"  {r['count']:>5} x  total {r['total_ms']:>7} ms  max {r['max_ms']:>6} ms  {r['statement'][:90]}")
    return out


def progress(dsn: str) -> tuple[int, int, int]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            """SELECT count(*), count(*) FILTER (WHERE embedding_status = 'done'),
                      count(*) FILTER (WHERE matched_at IS NOT NULL) FROM items"""
        ).fetchone()
    return int(row[0]), int(row[1]), int(row[2])


BREAKDOWN = r"""
import json, os, resource, sys, time
import psutil
me = psutil.Process()
out = []
def step(name):
    import gc; gc.collect()
    info = me.memory_info()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.append((name, round(info.rss / 2**20, 1), round(peak, 1)))
step("python")
import numpy
step("+ numpy")
import aiohttp, asyncpg
step("+ aiohttp, asyncpg")
import procrastinate, psycopg
step("+ procrastinate, psycopg")
import feedparser
step("+ feedparser")
import infosentry.cli, infosentry.jobs, infosentry.api, infosentry.ingest.run, infosentry.embed, infosentry.match
import infosentry.decide, infosentry.push, infosentry.mail
step("+ infosentry (everything serve imports)")
from infosentry.embedders.local import LocalEmbedder
emb = LocalEmbedder()
emb.load()
w = emb._weights
def nbytes(obj, seen=None):
    import numpy as np
    seen = seen if seen is not None else set()
    if id(obj) in seen: return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray): return obj.nbytes
    if isinstance(obj, dict): return sum(nbytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)): return sum(nbytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__"): return nbytes(vars(obj), seen)
    if hasattr(obj, "__slots__"): return sum(nbytes(getattr(obj, s, None), seen) for s in obj.__slots__)
    return 0
weights_mib = nbytes(w) / 2**20
step("+ local model loaded (weights %.1f MiB as arrays)" % weights_mib)
texts = [l.strip() for l in open(sys.argv[1], encoding="utf-8")][:int(sys.argv[2])]
peak0 = me.memory_info().rss
emb.embed_sync(texts[:128])
step("+ one embed call of 128 texts")
emb.embed_sync(texts)
step("+ embed of %d texts" % len(texts))
import threading
t = threading.Thread(target=emb.embed_sync, args=(texts,))  # the worker embeds in asyncio.to_thread
t.start(); t.join()
step("+ the same embed in another thread (as the worker does)")
import ctypes
ctypes.CDLL("libc.so.6").malloc_trim(0)
step("+ malloc_trim(0)")
print(json.dumps({"steps": out, "weights_mib": round(weights_mib, 1),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def breakdown(n_texts: int) -> dict[str, Any]:
    from tests.bench.common import shared_data

    data = shared_data("ag_news_tuning.csv")
    tmp = Path(tempfile.mkdtemp(prefix="infosentry-bench-mem-"))
    try:
        lines = tmp / "texts.txt"
        if data.exists():
            import csv

            with data.open(encoding="utf-8") as fh:
                texts = [r["text"].replace("\n", " ") for r in csv.DictReader(fh)]
        else:
            texts = [f"Feed {n} headline: the quick brown fox jumps over the lazy dog, story {n}" for n in range(5000)]
        lines.write_text("\n".join(texts[:n_texts]))
        out = subprocess.run(
            [sys.executable, "-c", BREAKDOWN, str(lines), str(n_texts)], capture_output=True, text=True, timeout=600
        )
        if out.returncode != 0:
            return {"error": out.stderr[-2000:]}
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--feeds", type=int, default=100)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--goals-per-user", type=int, default=10)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of each idle phase")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on the load phase")
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--log-slow-ms", type=float, default=0, help="log statements slower than this (0: off)")
    parser.add_argument("--breakdown-texts", type=int, default=2000)
    parser.add_argument("--breakdown-only", action="store_true", help="only the step-by-step breakdown")
    results.add_argument(parser)
    args = parser.parse_args()
    with results.session("memory", args):
        run(args)


def run(args: argparse.Namespace) -> None:
    if not args.breakdown_only:
        run_serve(args)
    if not args.no_breakdown:
        report_breakdown(args)


def run_serve(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="infosentry-bench-mem-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SMTP_", "INFOSENTRY_", "DATABASE_"))}
    env.update(
        INFOSENTRY_DATA_DIR=str(data_dir),
        LOG_LEVEL="WARNING",
        LOG_FORMAT="json",
        FETCH_ALLOW_NETWORKS="127.0.0.0/8",
        EMBED_PROVIDER="local",
    )
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    feed_server = ctx.Process(target=serve, args=(args.feeds, args.items, child), daemon=True)
    feed_server.start()
    server = None
    sampler = None
    log = (data_dir / "serve.log").open("w") if data_dir.exists() else None
    try:
        ports = parent.recv()["ports"]
        urls = [f"http://{HOSTS[n % len(HOSTS)]}:{ports[n % len(HOSTS)]}/feed/{n}.xml" for n in range(args.feeds)]
        cli(env, "migrate")
        if args.log_slow_ms:
            # read when serve starts the server: every statement slower than this goes to pg/log
            with (data_dir / "pg" / "postgresql.auto.conf").open("a") as conf:
                conf.write(f"\nlog_min_duration_statement = {args.log_slow_ms}\n")
        port = free_port()
        log = (data_dir / "serve.log").open("w")
        server = subprocess.Popen(
            [sys.executable, "-m", "infosentry", "serve", "--role", "all", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        sampler = Sampler(server.pid, data_dir / "pg")
        sampler.start()
        started = time.time()
        wait_healthy(port)
        print(f"serve --role all healthy after {time.time() - started:.1f} s; idle for {args.idle:g} s", flush=True)
        sampler.phase = "idle"
        time.sleep(args.idle)
        dsn = cli(env, "db", "uri")
        sampler.phase = "load"
        load_started = time.time()
        seed(dsn, urls, args.users, args.goals_per_user)
        expected = args.feeds * args.items
        done = (0, 0, 0)
        while time.time() - load_started < args.timeout:
            done = progress(dsn)
            if done[2] >= expected:
                break
            time.sleep(1)
        took = time.time() - load_started
        print(
            f"load: {args.users * args.goals_per_user} goals, {done[0]} of {expected} items ingested, {done[1]} "
            f"embedded, {done[2]} matched in {took:.0f} s",
            flush=True,
        )
        results.record("load.seconds", took, "s")
        backends = postgres_backends(dsn)
        results.detail("postgres_backends_after_load", backends)
        results.record("load.items_matched", done[2], "items", better=None)
        sampler.phase = "after"
        time.sleep(args.idle)
        results.detail("postgres_backends_after_idle", postgres_backends(dsn))
        if args.log_slow_ms:
            results.detail("slow_statements", slow_statements(data_dir / "pg" / "log", args.log_slow_ms))
    finally:
        if sampler is not None:
            sampler.stop.set()
            sampler.join(5)
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
        if log is not None:
            log.close()
        parent.send("stop")
        feed_server.join(5)
        shutil.rmtree(data_dir, ignore_errors=True)

    keys = [
        "main",
        "forkserver",
        "parse worker (largest)",
        "parse workers (sum)",
        "parse workers (count)",
        "other",
        "serve tree (sum)",
        "serve tree PSS (sum)",
        "postgres PSS (sum)",
    ]
    print("\nRSS MiB by process role (peak / last) per phase:")
    print(f"  {'role':<24}" + "".join(f"{p:>18}" for p in ("idle", "load", "after")))
    for k in keys:
        cells = []
        for phase in ("idle", "load", "after"):
            peak = sampler.peaks.get(phase, {}).get(k) if sampler else None
            last = sampler.last.get(phase, {}).get(k) if sampler else None
            cells.append("-" if peak is None else f"{peak:.0f} / {last:.0f}")
            if peak is not None and k != "parse workers (count)":
                slug = k.replace(" (", "_").replace(")", "").replace(" ", "_")
                results.record(f"{phase}.peak_rss.{slug}", peak, "MiB")
        print(f"  {k:<24}" + "".join(f"{c:>18}" for c in cells))
    if sampler:
        results.detail("series", sampler.series)


def report_breakdown(args: argparse.Namespace) -> None:
    b = breakdown(args.breakdown_texts)
    results.detail("breakdown", b)
    if "steps" in b:
        print("\nwhat holds the memory (a process loading what the worker loads; RSS, peak RSS MiB after each step):")
        prev = 0.0
        for name, mib, peak in b["steps"]:
            print(f"  {mib:7.1f}  (+{mib - prev:6.1f})  peak {peak:7.1f}  {name}")
            prev = mib
        print(f"  model weights as arrays: {b['weights_mib']} MiB; peak RSS of that process {b['peak_rss_mib']} MiB")
        results.record("breakdown.weights", b["weights_mib"], "MiB")
        results.record("breakdown.peak_rss", b["peak_rss_mib"], "MiB")
    else:
        print(f"breakdown failed: {b.get('error')}")


if __name__ == "__main__":
    main()
