"""Bare baselines for ingest (issue 14): `bin/bench ingest_baseline [--feeds N] [--items M] [--repeat R]
[--loops bare,storing,app]`.

The same N local feeds × M items as bench_ingest (its generator and feed server process, 8 loopback addresses,
an ETag per feed), fetched by the simplest loops that do the job, each in a fresh process of its own:

  bare     aiohttp (32 fetches in flight, at most 2 per host, like infosentry's Fetcher) + feedparser in a pool of
           2 processes (like infosentry's parse pool, same feedparser flags: no sanitising, no relative-URI
           resolution); each entry becomes (link, sha256 of the link, title, summary[:500], published); nothing
           is stored.
  storing  the same loop, plus per feed one `INSERT ... SELECT FROM unnest(...) ON CONFLICT (url_hash) DO NOTHING`
           into a plain items table and one UPDATE of the feed's row (ETag, last fetch), on its own fresh
           embedded Postgres, through an asyncpg pool of 10.
  app      infosentry's ingest: `bench_ingest` (run_due until nothing is due) in its own process.

Each loop runs a first pass (every feed new) and a second pass with the ETags (every feed answers 304).
Measured per pass: wall seconds; CPU seconds of the loop's process plus its parse workers (/proc), of Postgres
(psutil over the postmaster, its children and the children it reaped); peak RSS of the main process and of the
largest parse worker. `--repeat R` alternates the loops R times (bare, storing, app, bare, ...) and reports the
median of each figure, then the ratios app/storing and app/bare of the medians (CPU per feed = app + Postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.bench import results
from tests.bench.bench_ingest import HOSTS, serve
from tests.bench.common import postgres_cpu, proc_cpu, proc_hwm_mib, self_cpu, self_peak_rss_mib

LOOPS = ("bare", "storing", "app")
CONCURRENCY = 32
PER_HOST = 2
PARSE_WORKERS = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS feeds (
    id bigint PRIMARY KEY, url text NOT NULL, etag text, last_modified text, last_fetch_at timestamptz,
    http_status int);
CREATE TABLE IF NOT EXISTS items (
    id bigserial PRIMARY KEY, feed_id bigint NOT NULL REFERENCES feeds (id), url text NOT NULL,
    url_hash text NOT NULL UNIQUE, title text, snippet text, published_at timestamptz,
    ingested_at timestamptz NOT NULL DEFAULT now());
"""


# --- the parse worker -----------------------------------------------------------------------------------------


def parse_feed(body: bytes, url: str) -> list[tuple[str, str, str, str, datetime | None]]:
    """feedparser with infosentry's flags; (link, url_hash, title, summary, published) per entry with a link.

    Like infosentry, no base URI for feedparser (it would re-resolve the base at every element): each link is
    resolved against the feed's URL instead."""
    import io
    from urllib.parse import urljoin

    import feedparser

    doc = feedparser.parse(
        io.BytesIO(body),
        response_headers={"content-type": "application/rss+xml"},
        sanitize_html=False,
        resolve_relative_uris=False,
    )
    out = []
    for e in doc.entries:
        link = e.get("link")
        if not link:
            continue
        link = urljoin(url, link)
        p = e.get("published_parsed")
        published = datetime(*p[:6], tzinfo=UTC) if p else None
        digest = hashlib.sha256(link.encode()).hexdigest()[:32]
        out.append((link, digest, e.get("title") or link, (e.get("summary") or "")[:500], published))
    return out


def _warm() -> int:
    import feedparser  # noqa: F401

    return os.getpid()


# --- one loop, in this process ----------------------------------------------------------------------------------


class LoopMeter:
    def __init__(self, pool: ProcessPoolExecutor, pgdata: Path | None) -> None:
        self.pool, self.pgdata = pool, pgdata

    def workers(self) -> list[int]:
        return [p.pid for p in (getattr(self.pool, "_processes", None) or {}).values() if p.pid]

    def snap(self) -> dict[str, float]:
        return {
            "wall": time.perf_counter(),
            "main": self_cpu(),
            "workers": sum(proc_cpu(p) for p in self.workers()),
            "postgres": postgres_cpu(self.pgdata) if self.pgdata else 0.0,
        }


async def run_loop(loop_name: str, feeds: int, items: int) -> None:
    import aiohttp
    import asyncpg

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=serve, args=(feeds, items, child), daemon=True)
    server.start()
    data_dir = Path(tempfile.mkdtemp(prefix=f"infosentry-bench-{loop_name}-"))
    pool = ProcessPoolExecutor(PARSE_WORKERS, mp_context=multiprocessing.get_context("forkserver"))
    db = None
    try:
        ports = parent.recv()["ports"]
        urls = [f"http://{HOSTS[n % len(HOSTS)]}:{ports[n % len(HOSTS)]}/feed/{n}.xml" for n in range(feeds)]
        pgdata = None
        if loop_name == "storing":
            from infosentry import db as infosentry_db  # only to start the same embedded server the app uses

            dsn = infosentry_db.embedded_server_uri(data_dir, database="baseline")
            pgdata = data_dir / "pg"
            db = await asyncpg.create_pool(dsn, min_size=10, max_size=10)
            await db.execute(SCHEMA)
            await db.executemany("INSERT INTO feeds (id, url) VALUES ($1, $2)", list(enumerate(urls)))
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(pool, _warm) for _ in range(PARSE_WORKERS * 2)))
        meter = LoopMeter(pool, pgdata)
        etags: dict[int, str] = {}
        sem = asyncio.Semaphore(CONCURRENCY)
        connector = aiohttp.TCPConnector(limit=CONCURRENCY, limit_per_host=PER_HOST)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(n: int) -> int:
                async with sem:
                    headers = {"If-None-Match": etags[n]} if n in etags else {}
                    async with session.get(urls[n], headers=headers) as resp:
                        body = await resp.read()
                        status = resp.status
                        etag = resp.headers.get("ETag")
                if status == 304:
                    if db is not None:
                        await db.execute("UPDATE feeds SET last_fetch_at = now(), http_status = 304 WHERE id = $1", n)
                    return 0
                if etag:
                    etags[n] = etag
                rows = await loop.run_in_executor(pool, parse_feed, body, urls[n])
                if db is not None:
                    async with db.acquire() as conn:
                        await conn.execute(
                            """INSERT INTO items (feed_id, url, url_hash, title, snippet, published_at)
                               SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[],
                                                        $6::timestamptz[])
                               ON CONFLICT (url_hash) DO NOTHING""",
                            n,
                            [r[0] for r in rows],
                            [r[1] for r in rows],
                            [r[2] for r in rows],
                            [r[3] for r in rows],
                            [r[4] for r in rows],
                        )
                        await conn.execute(
                            "UPDATE feeds SET etag = $2, last_fetch_at = now(), http_status = $3 WHERE id = $1",
                            n,
                            etag,
                            status,
                        )
                return len(rows)

            for key in ("first_pass", "second_pass"):
                before = meter.snap()
                counts = await asyncio.gather(*(one(n) for n in range(feeds)))
                after = meter.snap()
                wall = after["wall"] - before["wall"]
                app = (after["main"] - before["main"]) + (after["workers"] - before["workers"])
                pg = after["postgres"] - before["postgres"]
                n_items = sum(counts)
                print(
                    f"{loop_name} {key}: {wall:.2f} s, {n_items} items, CPU s: loop {app:.2f} (main "
                    f"{after['main'] - before['main']:.2f}, parse workers {after['workers'] - before['workers']:.2f})"
                    f", postgres {pg:.2f}; {(app + pg) / feeds * 1000:.2f} ms CPU per feed",
                    flush=True,
                )
                results.record(f"{key}.wall", wall, "s")
                results.record(f"{key}.cpu_app", app, "s")
                results.record(f"{key}.cpu_main", after["main"] - before["main"], "s")
                results.record(f"{key}.cpu_parse_workers", after["workers"] - before["workers"], "s")
                results.record(f"{key}.cpu_postgres", pg, "s")
                results.record(f"{key}.cpu_per_feed", (app + pg) / feeds * 1000, "ms")
                if n_items:
                    results.record(f"{key}.items_per_s", n_items / wall, "items/s", better="higher")
        if db is not None:
            stored = await db.fetchval("SELECT count(*) FROM items")
            results.record("items_stored", stored, "items", better=None)
        workers_hwm = max([proc_hwm_mib(p) for p in meter.workers()] or [0.0])
        results.record("peak_rss_main", self_peak_rss_mib(), "MiB")
        results.record("peak_rss_parse_worker", workers_hwm, "MiB")
        print(f"{loop_name}: peak RSS MiB main {self_peak_rss_mib():.0f}, largest parse worker {workers_hwm:.0f}")
    finally:
        if db is not None:
            await db.close()
        pool.shutdown(wait=True)
        parent.send("stop")
        server.join(5)
        if server.is_alive():
            server.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


# --- the orchestrator --------------------------------------------------------------------------------------------

FIGURES = [
    ("first_pass.wall", "s"),
    ("first_pass.cpu_app", "s"),
    ("first_pass.cpu_postgres", "s"),
    ("first_pass.cpu_per_feed", "ms"),
    ("second_pass.wall", "s"),
    ("second_pass.cpu_app", "s"),
    ("second_pass.cpu_postgres", "s"),
    ("second_pass.cpu_per_feed", "ms"),
    ("peak_rss_main", "MiB"),
    ("peak_rss_parse_worker", "MiB"),
]


def run_child(loop_name: str, feeds: int, items: int, out: Path) -> dict[str, Any]:
    if loop_name == "app":
        cmd = [sys.executable, "-m", "tests.bench.bench_ingest"]
    else:
        cmd = [sys.executable, "-m", "tests.bench.bench_ingest_baseline", "--one", loop_name]
    cmd += ["--feeds", str(feeds), "--items", str(items), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"{loop_name} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    if loop_name == "app":
        print("\n".join("app " + line for line in proc.stdout.splitlines() if line.strip()), flush=True)
    else:
        print(proc.stdout.rstrip(), flush=True)
    return {k: v["value"] for k, v in json.loads(out.read_text())["metrics"].items()}


def orchestrate(args: argparse.Namespace) -> None:
    loops = [x for x in args.loops.split(",") if x]
    unknown = [x for x in loops if x not in LOOPS]
    if unknown:
        raise SystemExit(f"unknown loop(s) {unknown}; known: {', '.join(LOOPS)}")
    print(
        f"{args.feeds} feeds × {args.items} items; loops {', '.join(loops)}; {args.repeat} round(s); "
        f"{os.cpu_count()} CPUs"
    )
    runs: dict[str, list[dict[str, Any]]] = {x: [] for x in loops}
    tmp = Path(tempfile.mkdtemp(prefix="infosentry-bench-baseline-"))
    try:
        for r in range(args.repeat):
            for loop_name in loops:
                runs[loop_name].append(run_child(loop_name, args.feeds, args.items, tmp / f"{loop_name}-{r}.json"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med: dict[str, dict[str, float]] = {}
    print(f"\nmedians of {args.repeat} round(s):")
    print(f"{'figure':<28}" + "".join(f"{x:>12}" for x in loops))
    for fig, unit in FIGURES:
        row = {}
        for loop_name in loops:
            values = [m[fig] for m in runs[loop_name] if m.get(fig) is not None]
            if values:
                row[loop_name] = statistics.median(values)
                med.setdefault(loop_name, {})[fig] = row[loop_name]
                results.record(f"{loop_name}.{fig}", row[loop_name], unit)
        print(f"{fig + ' (' + unit + ')':<28}" + "".join(f"{row.get(x, float('nan')):>12.2f}" for x in loops))
    results.detail("runs", runs)
    for a, b in (("app", "storing"), ("app", "bare"), ("storing", "bare")):
        if a in med and b in med:
            for fig in ("first_pass.cpu_per_feed", "first_pass.wall", "first_pass.cpu_app", "second_pass.cpu_per_feed"):
                if med[b].get(fig):
                    ratio = med[a][fig] / med[b][fig]
                    results.record(f"ratio.{a}_vs_{b}.{fig}", ratio, "x")
            r1 = med[a]["first_pass.cpu_per_feed"] / med[b]["first_pass.cpu_per_feed"]
            r2 = med[a]["first_pass.wall"] / med[b]["first_pass.wall"]
            print(f"{a} / {b}: CPU per feed (app + postgres) ×{r1:.2f}, first pass wall ×{r2:.2f}")
    if "app" in med and "storing" in med:
        r = med["app"]["first_pass.cpu_per_feed"] / med["storing"]["first_pass.cpu_per_feed"]
        print(f"target: ingest CPU per feed ≤ 1.2× the storing loop's: ×{r:.2f} ({'met' if r <= 1.2 else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the loops, alternating")
    parser.add_argument("--loops", default="bare,storing,app", help=f"comma-separated, of {', '.join(LOOPS)}")
    parser.add_argument("--one", choices=["bare", "storing"], help=argparse.SUPPRESS)  # a child: one loop
    results.add_argument(parser)
    args = parser.parse_args()
    if args.one:
        with results.session(f"ingest_baseline_{args.one}", args):
            asyncio.run(run_loop(args.one, args.feeds, args.items))
        return
    with results.session("ingest_baseline", args):
        orchestrate(args)


if __name__ == "__main__":
    main()
