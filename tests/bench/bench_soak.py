"""The soak (issue 14): `bin/bench soak [--minutes 30] [--sources 1000] [--rate 20] [--keep-minutes 5]`;
`bin/bench soak --report RESULTS.json [--warmup M]` judges an earlier run's series again.

Steady load for `--minutes`: the scale scenario's sources (bench_scale: RSS, Atom, JSON Feed, hot lists, 5 %
failing) publish `--rate` items a second between them, evenly, for the whole run; the service runs as real
processes (`serve --role all`, or `--split`) against the embedded Postgres. Retention is compressed to match:
RETENTION_ITEMS_DAYS, RETENTION_INBOX_DAYS and RETENTION_LOGS_DAYS are set to `--keep-minutes` in the config
table, so items nobody needs, ingest logs, external calls, decision runs and sent emails are pruned while the
soak runs (the retention job runs every five minutes; procrastinate's finished jobs are deleted as they finish).

Each `--sample` seconds (a minute by default) it records the RSS of each process tree, the open connections
to the database, the size (table + indexes) and rows of each table, the database's size, the load average,
fetches in the last interval and sources overdue by more than a fetch interval. At the end it prints, per
series, the slope over the steady part of the run (after `--warmup`: by default a third of the run, and at least
`--keep-minutes` + 10, when two retention passes have pruned what aged past the horizon) as growth
per hour, and a verdict: a series is FLAT when it grew by less than 5 % of its mean over the steady part, or
by less than a small absolute amount (2 MiB of RSS or of a table, one connection, 1,000 rows); else GROWS.
Tables whose retention horizon is longer than any soak (clicks: 90 days, tombstones of pruned items: 90 days)
are reported apart as BOUNDED BY their horizon when they grow.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from infosentry import db, migrate
from tests.bench import results
from tests.bench.bench_scale import (
    FETCH_INTERVAL,
    Plan,
    seed,
    serve_feeds,
    service_env,
    start_processes,
    tree_rss_mib,
)
from tests.fakes.openai import FakeOpenAI
from tests.fakes.smtp import SmtpSink

# Tables kept for a horizon longer than any soak: they may grow during one, bounded by the horizon.
LONG_HORIZONS = {"clicks": "90 days", "item_tombstones": "90 days (TOMBSTONE_DAYS)"}
# Growth under these over the steady part counts as flat whatever the mean (noise and page-sized steps).
ABSOLUTE_TOLERANCE = {"MiB": 2.0, "connections": 1.0, "rows": 1000.0}


@dataclass
class Series:
    name: str
    unit: str  # MiB, connections, rows, load, per interval
    points: list[tuple[float, float]]  # (minutes since start, value)

    def steady(self, warmup_min: float) -> list[tuple[float, float]]:
        return [(t, v) for t, v in self.points if t >= warmup_min]

    def slope_per_hour(self, warmup_min: float) -> float | None:
        pts = self.steady(warmup_min)
        if len(pts) < 3:
            return None
        n = len(pts)
        mt = sum(t for t, _ in pts) / n
        mv = sum(v for _, v in pts) / n
        var = sum((t - mt) ** 2 for t, _ in pts)
        if var == 0:
            return None
        return sum((t - mt) * (v - mv) for t, v in pts) / var * 60

    def verdict(self, warmup_min: float) -> str:
        pts = self.steady(warmup_min)
        slope = self.slope_per_hour(warmup_min)
        if slope is None:
            return "too few samples"
        if self.unit not in ABSOLUTE_TOLERANCE:
            return "context"
        growth = slope / 60 * (pts[-1][0] - pts[0][0])  # fitted growth over the steady part
        mean = sum(v for _, v in pts) / len(pts)
        if growth < ABSOLUTE_TOLERANCE[self.unit] or growth < 0.05 * abs(mean):
            return "FLAT"
        table = self.name.split(" ", 1)[-1].split(".", 1)[0]
        if table in LONG_HORIZONS:
            return f"BOUNDED BY {LONG_HORIZONS[table]}"
        return "GROWS"


async def set_retention(pool: asyncpg.Pool, minutes: float) -> None:
    days = minutes / 1440
    for key in ("RETENTION_ITEMS_DAYS", "RETENTION_INBOX_DAYS", "RETENTION_LOGS_DAYS"):
        await pool.execute(
            """INSERT INTO config (key, value, updated_by) VALUES ($1, $2::jsonb, 'soak')
               ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value""",
            key,
            json.dumps(days),
        )


async def sample(pool: asyncpg.Pool, interval: float) -> dict[str, float]:
    tables = await pool.fetch(
        """SELECT c.relname AS name, pg_total_relation_size(c.oid) AS bytes
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind = 'r' AND n.nspname = 'public'"""
    )
    row = await pool.fetchrow(
        """SELECT (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()) AS connections,
                  pg_database_size(current_database()) AS db_bytes,
                  (SELECT count(*) FROM items) AS items,
                  (SELECT count(*) FROM procrastinate_jobs) AS jobs,
                  (SELECT count(*) FROM ingest_logs WHERE started_at > now() - make_interval(secs => $1)) AS fetches,
                  (SELECT count(*) FROM sources
                   WHERE enabled AND next_fetch_at < now() - make_interval(secs => $2)) AS overdue""",
        interval,
        FETCH_INTERVAL,
    )
    out = {f"size {r['name']}": r["bytes"] / 2**20 for r in tables}
    out |= {
        "connections": row["connections"],
        "size database": row["db_bytes"] / 2**20,
        "rows items": row["items"],
        "rows procrastinate_jobs": row["jobs"],
        "fetches per interval": row["fetches"],
        "overdue sources": row["overdue"],
        "load average (1 min)": os.getloadavg()[0],
    }
    return out


UNITS = {"size": "MiB", "rss": "MiB", "rows": "rows", "connections": "connections"}


def unit_of(name: str) -> str:
    return UNITS.get(name.split(" ", 1)[0], "context")


async def bench(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="infosentry-bench-soak-"))
    dsn = db.embedded_server_uri(data_dir)
    async with db.plain_connection(dsn) as conn:
        await migrate.upgrade(conn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    seconds = args.minutes * 60
    plan = Plan(args.sources, int(args.rate * seconds), start=0.0, seconds=seconds, topical=args.topical)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    fake = FakeOpenAI().__enter__()
    sink = SmtpSink().__enter__()
    processes: dict[str, Any] = {}
    feed_proc = None
    series: dict[str, Series] = {}
    try:
        feed_proc = ctx.Process(target=serve_feeds, args=(plan, child), daemon=True)
        feed_proc.start()
        ports = parent.recv()
        await seed(pool, args, ports, random.Random(7))
        await set_retention(pool, args.keep_minutes)
        plan.start = time.time() + 5
        parent.send(plan.start)
        started = time.time()
        processes = start_processes(service_env(dsn, data_dir, fake, sink, args.embed_model), args.split)
        print(
            f"soak: {args.sources} sources, {args.rate:g} items/s for {args.minutes:g} min, retention "
            f"{args.keep_minutes:g} min; sampling every {args.sample:g} s"
        )
        while time.time() < started + seconds:
            await asyncio.sleep(args.sample)
            t = (time.time() - started) / 60
            values = await sample(pool, args.sample)
            for name, proc in processes.items():
                if proc.poll() is not None:
                    raise SystemExit(f"{name} exited with {proc.returncode}")
                values[f"rss {name}"] = tree_rss_mib(proc)
            for key, value in values.items():
                series.setdefault(key, Series(key, unit_of(key), [])).points.append((t, float(value)))
            rss = " ".join(f"{k[4:]} {v:.0f}" for k, v in values.items() if k.startswith("rss "))
            print(
                f"  t={t:5.1f} min  rss MiB {rss}  connections {values['connections']:.0f}  "
                f"db {values['size database']:.0f} MiB  items {values['rows items']:.0f}  "
                f"fetches {values['fetches per interval']:.0f}  overdue {values['overdue sources']:.0f}  "
                f"load {values['load average (1 min)']:.2f}",
                flush=True,
            )
        pruned = await pool.fetchval("SELECT count(*) FROM item_tombstones")
        report(args, series, pruned)
    finally:
        for proc in processes.values():
            proc.send_signal(signal.SIGTERM)
        for proc in processes.values():
            try:
                proc.wait(timeout=20)
            except Exception:
                proc.kill()
        if feed_proc is not None:
            parent.send("stop")
            feed_proc.join(timeout=5)
        await pool.close()
        sink.__exit__(None, None, None)
        fake.__exit__(None, None, None)


def report(args: argparse.Namespace, series: dict[str, Series], pruned_items: int) -> None:
    # steady once items have aged past the horizon and two retention passes (every 5 minutes) have pruned them
    warmup = args.warmup if args.warmup is not None else max(args.minutes / 3, args.keep_minutes + 10)
    print(f"slopes over minutes {warmup:g}-{args.minutes:g} (growth per hour; {pruned_items} items pruned):")
    verdicts: dict[str, str] = {}
    for name in sorted(series, key=lambda k: (unit_of(k) == "context", k)):
        s = series[name]
        slope = s.slope_per_hour(warmup)
        pts = s.steady(warmup)
        if not pts or (s.unit == "MiB" and name.startswith("size ") and max(v for _, v in pts) < 0.1):
            continue  # empty tables say nothing
        verdict = s.verdict(warmup)
        verdicts[name] = verdict
        last = pts[-1][1]
        slope_text = "-" if slope is None else f"{slope:+.2f}/h"
        print(f"  {name:<38} last {last:>10.2f} {s.unit:<12} slope {slope_text:>12}  {verdict}")
        if slope is not None:
            metric = name.replace(" ", "_").replace("(", "").replace(")", "")
            results.record(f"slope.{metric}", round(slope, 3), f"{s.unit}/h")
            results.record(f"last.{metric}", round(last, 3), s.unit, None)
    growing = sorted(k for k, v in verdicts.items() if v == "GROWS")
    print(f"verdict: {'nothing grows without bound' if not growing else 'GROWS: ' + ', '.join(growing)}")
    results.record("growing_series", len(growing), "series")
    results.detail("series", {k: s.points for k, s in series.items()})
    results.detail("verdicts", verdicts)
    results.detail("pruned_items", pruned_items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--goals-per-user", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20.0, help="items published per second, all sources together")
    parser.add_argument("--keep-minutes", type=float, default=5.0, help="the retention horizons, compressed")
    parser.add_argument("--topical", type=float, default=0.1, help="share of items on a goal's topic")
    parser.add_argument("--split", action="store_true", help="api + a worker per queue group")
    parser.add_argument("--embed-model", default="bench-256")
    parser.add_argument("--sample", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=None, help="minutes left out of the slopes (a third)")
    parser.add_argument("--report", metavar="JSON", help="judge the series of an earlier run again (e.g. --warmup)")
    results.add_argument(parser)
    args = parser.parse_args()
    with results.session("soak", args):
        if args.report:
            earlier = results.load(args.report)
            for key in ("minutes", "keep_minutes"):
                setattr(args, key, earlier["params"][key])
            saved = earlier["details"]["series"]
            series = {k: Series(k, unit_of(k), [tuple(p) for p in v]) for k, v in saved.items()}
            report(args, series, earlier["details"].get("pruned_items", 0))
        else:
            asyncio.run(bench(args))


if __name__ == "__main__":
    main()
