"""The scale scenario (issue 14): `bin/bench scale [--sources 10000] [--users 100] [--goals-per-user 10]
[--items 100000] [--minutes 10] [--split]`.

A simulated day, time compressed into `--minutes`: `--sources` local sources (RSS, Atom, JSON Feed and hot
lists in turn, on 64 loopback addresses; 5 % failing in varied ways: HTTP 500, 404, malformed XML, a reset
connection, an answer slower than the fetch timeout; the others answer 304 when nothing new was published)
publish `--items` items between them, spread over the run; one in ten (`--topical`) is on one of the goals'
topics, the rest is general news no goal tracks, as in real feeds. `--users` users follow three sources each
per hundred (every source has ~3 followers) and own `--goals-per-user` goals. Embeddings and the LLM judge
come from the fake OpenAI-compatible server, emails go to an SMTP sink (in a process of its own, as a mail server
would be), IMMEDIATE_COALESCE_MINUTES=0. Before the day, each feed already shows BACKLOG items, and a warm-up
waits until every source was fetched once and those items were handled (a running service's steady state); the
day's numbers leave the warm-up out.

The service runs as real processes against the embedded Postgres reached by DATABASE_URL: `serve --role all`,
or with `--split` one `serve --role api` and two workers on different queues (ingest / embed + agent + email;
`--embed-apart`: three, ingest / embed / agent + email),
which is the scale-out check (no duplicate decision or email).

Reports: ingest throughput and CPU per fetch; embed, match and decide throughput (best 30 s window and overall);
IMMEDIATE latency after the fetch p50/p95/p99 (email sent - item stored); emails; queue depth over time (max,
and whether it drains); procrastinate jobs per item; database size per 10,000 items; peak RSS per process.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from aiohttp import web

from infosentry import db, migrate
from tests.bench import results
from tests.bench.common import SinkProcess, postgres_cpu
from tests.fakes.openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
FETCH_INTERVAL = 60  # seconds: every source is due again a minute after its fetch
# Items each feed already shows before the day (a real feed is never empty): the warm-up stores them before the
# day starts. Without them a feed's second fetch saw one or two items, which the adaptive schedule reads as a
# quiet feed (4x the interval), and those sources came back together in a wave at the end of the day.
BACKLOG = 3
HOSTS = [f"127.0.0.{i}" for i in range(1, 65)]  # many hosts, as real feeds are: the fetch caps each host
KINDS = ("rss", "atom", "json", "hotlist")
FAILURES = ("500", "404", "malformed", "reset", "slow")
TOPICS = [
    ("space", "NASA rocket launches, Mars rovers and the space station", ["NASA", "rocket", "Mars"]),
    ("energy", "Crude oil prices, OPEC output and the energy markets", ["oil", "OPEC", "crude"]),
    ("chips", "Semiconductor makers, chip exports and AI accelerators", ["chip", "semiconductor", "GPU"]),
    ("football", "Football matches, transfers and league tables", ["football", "goal", "league"]),
    ("climate", "Climate change, heat records and emissions policy", ["climate", "emissions", "heat"]),
    ("elections", "Elections, polls and campaign news", ["election", "vote", "poll"]),
    ("markets", "Stock markets, earnings reports and central banks", ["stocks", "earnings", "rates"]),
    ("health", "Vaccines, hospitals and public health", ["vaccine", "hospital", "health"]),
    ("cars", "Electric cars, batteries and car makers", ["electric car", "battery", "EV"]),
    ("games", "Video games, consoles and esports", ["game", "console", "esports"]),
]
FILLER = "officials said on monday that the plan would be reviewed again after talks with several partners"
# Most items are about nothing a given goal tracks (as in real feeds): general news from these words.
PLACES = ["Lisbon", "Osaka", "Nairobi", "Quito", "Tromso", "Adelaide", "Porto", "Leeds", "Lyon", "Cusco"]
EVENTS = [
    "council approves a new library budget",
    "bakery wins the regional bread award",
    "museum reopens its renovated wing",
    "bridge closes for weekend repairs",
    "school choir tours the northern towns",
    "zoo welcomes a pair of red pandas",
    "farmers market moves to the old square",
    "festival adds a second stage for jazz",
]


# --- the feed server (its own process) -----------------------------------------------------------------------


@dataclass
class Plan:
    sources: int
    items: int
    start: float  # wall time the day starts
    seconds: float  # the day, compressed
    topical: float  # share of the items on one of the goals' topics

    def published(self, n: int, now: float) -> int:
        """How many items source n has published by `now`: its BACKLOG, then its share of the day's items spread
        evenly over the day (none before the day starts: `start` 0)."""
        total = self.items // self.sources + (1 if n < self.items % self.sources else 0)
        if total == 0 or not self.start or now < self.start:
            return BACKLOG
        if self.seconds <= 0:
            return BACKLOG + total
        phase = (n * 7919 % 1000) / 1000  # sources publish out of step
        elapsed = (now - self.start) / self.seconds
        return BACKLOG + max(0, min(total, int(elapsed * total + phase)))


def kind_of(n: int) -> str:
    return KINDS[n % len(KINDS)]


def failure_of(n: int) -> str | None:
    return FAILURES[(n // 20) % len(FAILURES)] if n % 20 == 7 else None  # 5 % of the sources


def item_text(n: int, j: int, topical: float) -> tuple[str, str]:
    """Item j of source n: on one of the goals' topics (a `topical` share of the items), else general news."""
    if (n * 7919 + j * 104729) % 1000 >= topical * 1000:
        title = f"{PLACES[(n + j) % len(PLACES)]} {EVENTS[(n * 3 + j) % len(EVENTS)]} ({n}-{j})"
        return title, f"{title}. {FILLER} ({n}/{j})."
    topic = TOPICS[(n * 31 + j * 17) % len(TOPICS)]
    title = f"{topic[2][j % len(topic[2])].title()} update {n}-{j}: {topic[1].split(',')[0]}"
    return title, f"{title}. {FILLER} ({n}/{j})."


def render(n: int, count: int, topical: float) -> tuple[bytes, str]:
    """The newest (up to 20) items of source n, in its format."""
    kind = kind_of(n)
    first = max(0, count - 20)
    entries = []
    for j in range(count - 1, first - 1, -1):
        title, text = item_text(n, j, topical)
        url = f"https://s{n}.example/{j}"
        entries.append((j, title, text, url))
    when = format_datetime(datetime.now(UTC), usegmt=True)
    if kind == "json":
        import json

        body = {
            "version": "https://jsonfeed.org/version/1.1",
            "title": f"Source {n}",
            "items": [
                {"id": url, "url": url, "title": t, "content_text": x, "date_published": datetime.now(UTC).isoformat()}
                for _, t, x, url in entries
            ],
        }
        return json.dumps(body).encode(), "application/feed+json"
    if kind == "hotlist":
        import json

        body = {
            "status": "success",
            "id": str(n),
            "items": [{"id": url, "title": t, "url": url} for _, t, _, url in entries],
        }
        return json.dumps(body).encode(), "application/json"
    if kind == "atom":
        parts = [f'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>Source {n}</title>']
        for _, t, x, url in entries:
            parts.append(
                f'<entry><id>{url}</id><title>{t}</title><link href="{url}"/>'
                f"<updated>{datetime.now(UTC).isoformat()}</updated><summary>{x}</summary></entry>"
            )
        parts.append("</feed>")
        return "".join(parts).encode(), "application/atom+xml"
    parts = [f'<?xml version="1.0"?><rss version="2.0"><channel><title>Source {n}</title>']
    for _, t, x, url in entries:
        parts.append(
            f"<item><title>{t}</title><link>{url}</link><description>{x}</description><pubDate>{when}</pubDate></item>"
        )
    parts.append("</channel></rss>")
    return "".join(parts).encode(), "application/rss+xml"


def serve_feeds(plan: Plan, conn: Any) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"] if "n" in request.match_info else request.query.get("id", "0"))
        failure = failure_of(n)
        if failure == "500":
            return web.Response(status=500, text="upstream exploded")
        if failure == "404":
            return web.Response(status=404, text="gone")
        if failure == "slow":
            await asyncio.sleep(30)  # past the fetcher's 20 s timeout
        if failure == "reset":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=200)
        count = plan.published(n, time.time())
        etag = f'"{n}-{count}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        if failure == "malformed":
            return web.Response(body=b"<rss><channel><item><title>broken", content_type="application/rss+xml")
        body, ctype = render(n, count, plan.topical)
        return web.Response(body=body, content_type=ctype.split(";")[0], headers={"ETag": etag})

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/f/{n}", handle)
        app.router.add_get("/api/s", handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1, handler_cancellation=True)
        await runner.setup()
        ports = []
        for host in HOSTS:
            site = web.TCPSite(runner, host, 0)
            await site.start()
            ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        conn.send(ports)
        while not conn.poll():  # the parent seeds the database with our ports, then says when the day starts
            await asyncio.sleep(0.05)
        plan.start = conn.recv()
        while not conn.poll():
            await asyncio.sleep(0.2)
        await runner.cleanup()

    asyncio.run(main())


def source_url(n: int, ports: list[int]) -> tuple[str, str]:
    host, port = HOSTS[n % len(HOSTS)], ports[n % len(HOSTS)]
    if kind_of(n) == "hotlist":
        return "hotlist", f"http://{host}:{port}/api/s?id={n}"
    return "rss", f"http://{host}:{port}/f/{n}"


# --- the run ----------------------------------------------------------------------------------------------------


@dataclass
class Samples:
    rows: list[dict[str, Any]] = field(default_factory=list)
    rss: dict[str, float] = field(default_factory=dict)


# A successful job is deleted with its events (delete_jobs="successful"), so the bench keeps its own copy of
# every event, and of the deletion that stands for success, to time each task: queue wait (deferred -> started)
# and run time (started -> deleted or failed).
JOB_LOG = """
CREATE TABLE bench_job_log (job_id bigint, task_name text, type text, at timestamptz);
CREATE FUNCTION bench_log_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO bench_job_log
  SELECT NEW.job_id, j.task_name, NEW.type::text, NEW.at FROM procrastinate_jobs j WHERE j.id = NEW.job_id;
  RETURN NEW;
END $$;
CREATE TRIGGER bench_log_job_event AFTER INSERT ON procrastinate_events
FOR EACH ROW EXECUTE FUNCTION bench_log_job_event();
CREATE FUNCTION bench_log_job_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO bench_job_log VALUES (OLD.id, OLD.task_name, 'deleted', clock_timestamp());
  RETURN OLD;
END $$;
CREATE TRIGGER bench_log_job_deleted AFTER DELETE ON procrastinate_jobs
FOR EACH ROW EXECUTE FUNCTION bench_log_job_deleted();
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def seed(pool: asyncpg.Pool, args: argparse.Namespace, ports: list[int], rng: random.Random) -> None:
    """Users, goals and sources as rows (the setup is not what is measured; the service's own write paths are)."""
    users = await pool.fetch(
        "INSERT INTO users (email, timezone) SELECT 'user' || g || '@bench.example', 'UTC' "
        "FROM generate_series(1, $1) g RETURNING id",
        args.users,
    )
    user_ids = [r["id"] for r in users]
    rows = [source_url(n, ports) for n in range(args.sources)]
    source_ids = [
        r["id"]
        for r in await pool.fetch(
            """INSERT INTO sources (type, url, name, fetch_interval_sec, config)
               SELECT t, u, 'Source ' || ord, $3,
                      CASE WHEN t = 'hotlist' THEN jsonb_build_object('base_url', split_part(u, '/api/s', 1),
                                                                     'source_id', split_part(u, 'id=', 2))
                           ELSE '{}'::jsonb END
               FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS v(t, u, ord) ORDER BY ord RETURNING id""",
            [t for t, _ in rows],
            [u for _, u in rows],
            FETCH_INTERVAL,
        )
    ]
    subs = {(rng.choice(user_ids), s) for s in source_ids for _ in range(3)}
    await pool.execute(
        "INSERT INTO subscriptions (user_id, source_id) SELECT * FROM unnest($1::bigint[], $2::bigint[])",
        [u for u, _ in subs],
        [s for _, s in subs],
    )
    for user_id in user_ids:
        for g in range(args.goals_per_user):
            topic = TOPICS[(user_id + g) % len(TOPICS)]
            await pool.execute(
                """INSERT INTO goals (user_id, name, description, priority_terms, batch_windows, digest_time,
                                      timezone)
                   VALUES ($1, $2, $3, $4, '{}', '23:59', 'UTC')""",
                user_id,
                f"{topic[0]} {g}",
                topic[1],
                topic[2],
            )


def service_env(
    dsn: str, data_dir: Path, fake: FakeOpenAI, sink: SinkProcess, embed_model: str, embed_batch: int | None = None
) -> dict[str, str]:
    """The service's environment: this database, the fake OpenAI server and SMTP sink, budgets out of the way."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SMTP_", "INFOSENTRY_"))}
    return (
        env
        | fake.env()
        | sink.env()
        | {
            "DATABASE_URL": dsn,
            "INFOSENTRY_DATA_DIR": str(data_dir),
            "FETCH_ALLOW_NETWORKS": "127.0.0.0/8",
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "text",
            "OPENAI_EMBED_MODEL": embed_model,
            "IMMEDIATE_COALESCE_MINUTES": "0",
            "EMBED_PER_MIN": "1000000",
            "DAILY_USD_BUDGET": "10000",
            "JUDGE_PER_DAY": "1000000",
        }
        | ({"EMBED_BATCH_SIZE": str(embed_batch)} if embed_batch else {})
    )


def start_processes(env: dict[str, str], split: bool, embed_apart: bool = False) -> dict[str, subprocess.Popen[bytes]]:
    def spawn(*args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "infosentry", *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=None,
        )

    if not split:
        return {"serve": spawn("serve", "--role", "all", "--port", str(free_port()))}
    processes = {
        "api": spawn("serve", "--role", "api", "--port", str(free_port())),
        "worker-ingest": spawn("worker", "--queue", "ingest"),
    }
    if embed_apart:  # matching is CPU-bound: deciding and sending no longer wait behind it in one event loop
        processes["worker-embed"] = spawn("worker", "--queue", "embed")
        processes["worker-push"] = spawn("worker", "--queue", "agent", "--queue", "email")
    else:
        processes["worker-pipeline"] = spawn("worker", "--queue", "embed", "--queue", "agent", "--queue", "email")
    return processes


def tree_rss_mib(proc: subprocess.Popen[bytes]) -> float:
    try:
        root = psutil.Process(proc.pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
    except psutil.Error:
        return 0.0


def harness_cpu(pids: list[int]) -> float:
    """CPU seconds of the harness's own processes (this one, with the fake OpenAI server's thread; the feed
    server; the SMTP sink), children not included (Postgres is this process's child and is counted apart)."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def tree_cpu(proc: subprocess.Popen[bytes]) -> float:
    try:
        root = psutil.Process(proc.pid)
        total = 0.0
        for p in [root, *root.children(recursive=True)]:
            t = p.cpu_times()
            total += t.user + t.system
        return total
    except psutil.Error:
        return 0.0


async def snapshot(pool: asyncpg.Pool) -> dict[str, Any]:
    # One scan per table (a count per column, FILTER): the harness shares the 2 cores with the service, and four
    # scans of a 100,000-row items table every few seconds cost Postgres a tenth of a core.
    row = await pool.fetchrow(
        """SELECT i.items, i.embedded, i.matched,
                  -- an item is through decide once matched and out of the decide queue (most items get no
                  -- decision at all: nothing scored above DIGEST_MIN_SCORE, so counting decided items undercounts)
                  i.matched - q.decide_backlog AS decided_items, q.decide_backlog,
                  d.decisions, d.unflushed, e.emails_sent, e.unsent,
                  (SELECT count(*) FROM ingest_logs) AS fetches,
                  (SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')) AS queued,
                  -- successful jobs are deleted: the id sequence counts every job ever deferred
                  (SELECT last_value FROM procrastinate_jobs_id_seq) AS job_seq,
                  (SELECT count(*) FROM judge_queue) AS judge_backlog,
                  -- a new goal re-scores its owner's recent items once (its backfill): warm-up work, not the day's
                  (SELECT count(*) FROM goals
                   WHERE status = 'active' AND matched_version IS DISTINCT FROM version) AS goals_to_backfill
           FROM (SELECT count(*) AS items,
                        count(*) FILTER (WHERE embedding_status = 'done') AS embedded,
                        count(*) FILTER (WHERE matched_at IS NOT NULL) AS matched
                 FROM items) i,
                (SELECT count(*) AS decide_backlog FROM decide_queue) q,
                (SELECT count(*) AS decisions,
                        count(*) FILTER (WHERE status = 'pending' AND tier = 'IMMEDIATE') AS unflushed
                 FROM decisions) d,
                (SELECT count(*) FILTER (WHERE status = 'sent') AS emails_sent,
                        count(*) FILTER (WHERE status IN ('pending', 'sending')) AS unsent
                 FROM emails) e"""
    )
    return dict(row)


def best_rate(rows: list[dict[str, Any]], key: str, window: float = 30.0) -> float:
    best = 0.0
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            if b["t"] - a["t"] >= window:
                best = max(best, (b[key] - a[key]) / (b["t"] - a["t"]))
                break
    return best


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


async def warm_up(
    pool: asyncpg.Pool, args: argparse.Namespace, processes: dict[str, subprocess.Popen[bytes]], samples: Samples
) -> dict[str, float]:
    """Wait until every source was fetched once and its BACKLOG stored, matched, decided and emailed, and every
    goal's backfill done: the day then measures a running service's steady work, not a first fetch of every
    source at once (nor 1,000 new goals re-scoring their owners' items, which ran into the day when the rest of
    the warm-up finished first, doubling Postgres' CPU and pushing re-scored items minutes late)."""
    t0 = time.time()
    while time.time() < t0 + args.drain:
        await asyncio.sleep(1.0)
        for name, proc in processes.items():
            samples.rss[name] = max(samples.rss.get(name, 0.0), tree_rss_mib(proc))
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with {proc.returncode} during the warm-up")
        fetched = await pool.fetchval("SELECT count(DISTINCT source_id) FROM ingest_logs")
        snap = await snapshot(pool)
        if (
            fetched >= args.sources
            and snap["matched"] >= snap["items"]
            and not any(
                snap[k] for k in ("decide_backlog", "judge_backlog", "unflushed", "unsent", "goals_to_backfill")
            )
        ):
            return {"seconds": time.time() - t0, "items": snap["items"]}
    raise SystemExit(f"the warm-up did not finish within {args.drain:.0f} s")


async def bench(args: argparse.Namespace) -> None:
    rng = random.Random(7)
    data_dir = Path(tempfile.mkdtemp(prefix="infosentry-bench-scale-"))
    dsn = db.embedded_server_uri(data_dir)  # this process holds the server; the service reaches it by URL
    async with db.plain_connection(dsn) as conn:
        await migrate.upgrade(conn)
        await conn.execute(JOB_LOG)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3)
    assert pool is not None
    plan = Plan(args.sources, args.items, start=0.0, seconds=args.minutes * 60, topical=args.topical)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    fake = FakeOpenAI().__enter__()
    sink = SinkProcess().__enter__()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    feed_proc = None
    try:
        feed_proc = ctx.Process(target=serve_feeds, args=(plan, child), daemon=True)
        feed_proc.start()
        ports = parent.recv()
        await seed(pool, args, ports, rng)
        processes = start_processes(
            service_env(dsn, data_dir, fake, sink, args.embed_model, args.embed_batch),
            args.split or args.embed_apart,
            args.embed_apart,
        )
        samples = Samples()
        warm = await warm_up(pool, args, processes, samples)
        plan.start = time.time() + 1  # the day starts once every source was fetched and its backlog handled
        parent.send(plan.start)
        started = time.time()
        cpu0 = {name: tree_cpu(p) for name, p in processes.items()}
        pg_cpu0 = postgres_cpu(data_dir / "pg")
        harness = [os.getpid(), feed_proc.pid or 0, sink.proc.pid or 0]
        harness_cpu0 = harness_cpu(harness)
        first = await snapshot(pool)
        deadline = plan.start + plan.seconds + args.drain
        while time.time() < deadline:
            await asyncio.sleep(args.sample)
            snap = await snapshot(pool)
            snap["t"] = time.time() - started
            samples.rows.append(snap)
            for name, proc in processes.items():
                samples.rss[name] = max(samples.rss.get(name, 0.0), tree_rss_mib(proc))
                if proc.poll() is not None:
                    raise SystemExit(f"{name} exited with {proc.returncode}")
            if args.verbose:
                print(
                    f"t={snap['t']:6.0f}s items {snap['items']:>7} embedded {snap['embedded']:>7} decided "
                    f"{snap['decided_items']:>7} emails {snap['emails_sent']:>6} queued {snap['queued']:>5}"
                )
            # every source fetched once more after its last item was published
            day_over = time.time() > plan.start + plan.seconds + FETCH_INTERVAL + 2 * args.sample
            idle = snap["matched"] >= snap["items"] and not (
                snap["decide_backlog"] or snap["unflushed"] or snap["unsent"]
            )
            if day_over and idle and len(samples.rows) > 1 and samples.rows[-2]["items"] == snap["items"]:
                break
        wall = time.time() - started
        # overall throughput up to the moment the last item left decide (not the idle drain after it)
        last_decide_t = next(
            (r["t"] for r in samples.rows if r["decided_items"] >= samples.rows[-1]["decided_items"]), wall
        )
        cpu = {name: tree_cpu(p) - cpu0[name] for name, p in processes.items()}
        pg_cpu = postgres_cpu(data_dir / "pg") - pg_cpu0
        harness_s = harness_cpu(harness) - harness_cpu0
        last = await snapshot(pool)
        latency = [
            r["s"]
            for r in await pool.fetch(
                """SELECT extract(epoch FROM e.sent_at - i.ingested_at) AS s
                   FROM notifications n JOIN emails e ON e.id = n.email_id JOIN items i ON i.id = n.item_id
                   WHERE n.tier = 'IMMEDIATE' AND e.status = 'sent' AND i.ingested_at >= to_timestamp($1)""",
                plan.start,
            )
        ]
        stages = await pool.fetch(
            """WITH t AS (
                   SELECT r.llm_used AS judged,
                          extract(epoch FROM i.embedded_at - i.ingested_at) AS embed,
                          extract(epoch FROM m.computed_at - i.embedded_at) AS match,
                          extract(epoch FROM d.decided_at - m.computed_at) AS decide,
                          extract(epoch FROM n.created_at - d.decided_at) AS push,
                          extract(epoch FROM e.sent_at - n.created_at) AS send,
                          extract(epoch FROM e.sent_at - i.ingested_at) AS total
                   FROM notifications n JOIN emails e ON e.id = n.email_id JOIN items i ON i.id = n.item_id
                   JOIN decisions d ON d.goal_id = n.goal_id AND d.item_id = n.item_id
                   JOIN matches m ON m.goal_id = n.goal_id AND m.item_id = n.item_id
                   LEFT JOIN agent_runs r ON r.id = d.run_id
                   WHERE n.tier = 'IMMEDIATE' AND e.status = 'sent' AND i.ingested_at >= to_timestamp($1))
               SELECT CASE WHEN judged THEN 'judged' ELSE 'rule' END AS path, count(*) AS n, q,
                      percentile_cont(q) WITHIN GROUP (ORDER BY embed) AS embed,
                      percentile_cont(q) WITHIN GROUP (ORDER BY match) AS match,
                      percentile_cont(q) WITHIN GROUP (ORDER BY decide) AS decide,
                      percentile_cont(q) WITHIN GROUP (ORDER BY push) AS push,
                      percentile_cont(q) WITHIN GROUP (ORDER BY send) AS send,
                      percentile_cont(q) WITHIN GROUP (ORDER BY total) AS total
               FROM t, unnest(ARRAY[0.5, 0.95]) AS q
               GROUP BY 1, q ORDER BY 1 DESC, q""",
            plan.start,
        )
        arrivals = await pool.fetch(
            """SELECT floor(extract(epoch FROM ingested_at - to_timestamp($1)) / 10)::int * 10 AS t, count(*) AS n
               FROM items WHERE ingested_at >= to_timestamp($1) GROUP BY 1 ORDER BY 1""",
            plan.start,
        )
        by_minute = await pool.fetch(
            """SELECT floor(extract(epoch FROM i.ingested_at - to_timestamp($1)) / 60)::int AS minute, count(*) AS n,
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM e.sent_at - i.ingested_at)) AS p50,
                      percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM e.sent_at - i.ingested_at)) AS p95
               FROM notifications n JOIN emails e ON e.id = n.email_id JOIN items i ON i.id = n.item_id
               WHERE n.tier = 'IMMEDIATE' AND e.status = 'sent' AND i.ingested_at >= to_timestamp($1)
               GROUP BY 1 ORDER BY 1""",
            plan.start,
        )
        job_times = await pool.fetch(
            """SELECT j.task_name AS task, count(*) AS runs,
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM s.at - d.at)) AS wait_p50,
                      percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM s.at - d.at)) AS wait_p95,
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM f.at - s.at)) AS run_p50,
                      percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM f.at - s.at)) AS run_p95,
                      max(extract(epoch FROM f.at - s.at)) AS run_max
               FROM bench_job_log j
               JOIN bench_job_log d ON d.job_id = j.job_id AND d.type = 'deferred'
               JOIN bench_job_log s ON s.job_id = j.job_id AND s.type = 'started'
               JOIN bench_job_log f ON f.job_id = j.job_id AND f.type IN ('deleted', 'failed')
               WHERE j.type = 'deferred' AND j.at >= to_timestamp($1)
               GROUP BY j.task_name ORDER BY sum(extract(epoch FROM f.at - s.at)) DESC""",
            plan.start,
        )
        failed_jobs = await pool.fetch(
            "SELECT task_name, count(*) AS n FROM bench_job_log WHERE type = 'failed' GROUP BY 1 ORDER BY 1"
        )
        dup = await pool.fetchrow(
            """SELECT (SELECT count(*) - count(DISTINCT (goal_id, item_id)) FROM decisions) AS decisions,
                      (SELECT count(*) - count(DISTINCT (goal_id, item_id)) FROM notifications) AS notifications,
                      (SELECT count(*) - count(DISTINCT dedupe_key) FROM emails) AS emails"""
        )
        size = await pool.fetchval("SELECT pg_database_size(current_database())")
        fetch_counts = await pool.fetchrow(
            """SELECT count(*) FILTER (WHERE status <> 'error') AS ok,
                      count(*) FILTER (WHERE status = 'error') AS failed,
                      count(*) FILTER (WHERE status = 'not_modified') AS not_modified
               FROM ingest_logs WHERE started_at >= to_timestamp($1)""",
            plan.start,
        )
        day = {k: last[k] - first[k] for k in ("items", "fetches", "decided_items", "emails_sent", "decisions")}
        jobs = last["job_seq"] - first["job_seq"]
        items = max(day["items"], 1)
        total_cpu = sum(cpu.values())
        report = {
            "wall": wall,
            "warm_up_s": warm["seconds"],
            "warm_up_items": warm["items"],
            "items": day["items"],
            "fetches": day["fetches"],
            "fetch_ok": fetch_counts["ok"],
            "fetch_304": fetch_counts["not_modified"],
            "fetch_failed": fetch_counts["failed"],
            "ingest_items_per_s_best": best_rate(samples.rows, "items"),
            "embed_items_per_s_best": best_rate(samples.rows, "embedded"),
            "match_items_per_s_best": best_rate(samples.rows, "matched"),
            "decide_items_per_s_best": best_rate(samples.rows, "decided_items"),
            "pipeline_items_per_s": day["decided_items"] / max(last_decide_t, 1.0),
            "cpu_service_s": total_cpu,
            "cpu_postgres_s": pg_cpu,
            "cpu_harness_s": harness_s,
            "cpu_ms_per_fetch": 1000 * (total_cpu + pg_cpu) / max(day["fetches"], 1),
            "immediate_p50": pct(latency, 50),
            "immediate_p95": pct(latency, 95),
            "immediate_p99": pct(latency, 99),
            "immediate_emailed": len(latency),
            "emails_sent": day["emails_sent"],
            "decisions": day["decisions"],
            "queue_max": max((r["queued"] for r in samples.rows), default=0),
            "queue_final": last["queued"],
            "jobs_per_item": jobs / items,
            "db_mib_per_10k_items": size / 2**20 / max(last["items"], 1) * 10_000,  # the backlog's items too
            "duplicates": dict(dup),
            "stages": [{k: round(v, 2) if isinstance(v, float) else v for k, v in dict(r).items()} for r in stages],
            "immediate_by_minute": [(r["minute"], r["n"], round(r["p50"], 1), round(r["p95"], 1)) for r in by_minute],
            "arrivals_per_10s": [(r["t"], r["n"]) for r in arrivals],
            "failed_jobs": {r["task_name"]: r["n"] for r in failed_jobs},
            "job_times": [
                {k: round(float(v), 3) if isinstance(v, float) else v for k, v in dict(r).items()} for r in job_times
            ],
        }
        print_report(args, report, samples, cpu)
        for key, value in report.items():
            if isinstance(value, (int, float)):
                better = "higher" if key.endswith(("per_s", "per_s_best")) else ("lower" if key != "items" else None)
                results.record(key, value, "", better=better)
        for name, mib in samples.rss.items():
            results.record(f"peak_rss.{name}", mib, "MiB")
        results.detail("queue_depth", [(round(r["t"]), r["queued"]) for r in samples.rows])
        results.detail("duplicates", dict(dup))
        results.detail("failed_jobs", report["failed_jobs"])
        results.detail("job_times", report["job_times"])
        results.detail("stages", report["stages"])
        results.detail("immediate_by_minute", report["immediate_by_minute"])
        results.detail("arrivals_per_10s", report["arrivals_per_10s"])
        results.detail("progress", [{k: v for k, v in r.items()} for r in samples.rows])
    finally:
        for proc in processes.values():
            proc.send_signal(signal.SIGTERM)
        for proc in processes.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        parent.send("stop")
        if feed_proc is not None:
            feed_proc.join(5)
        await pool.close()
        sink.__exit__(None)
        fake.__exit__(None, None, None)


def print_report(args: argparse.Namespace, r: dict[str, Any], samples: Samples, cpu: dict[str, float]) -> None:
    mode = (
        "api + 3 workers (--embed-apart)"
        if args.embed_apart
        else ("api + 2 workers (--split)" if args.split else "serve --role all")
    )
    print(
        f"scale: {args.sources} sources, {args.users} users × {args.goals_per_user} goals, {args.items} items "
        f"over {args.minutes} min; {mode}; {r['wall']:.0f} s after a warm-up of {r['warm_up_s']:.0f} s "
        f"({r['warm_up_items']} backlog items)"
    )
    print(
        f"  fetches {r['fetches']} (ok {r['fetch_ok']}, of which 304 {r['fetch_304']}; failed {r['fetch_failed']}), "
        f"items {r['items']}"
    )
    print(
        f"  best 30 s: ingest {r['ingest_items_per_s_best']:.0f} items/s, embed {r['embed_items_per_s_best']:.0f}, "
        f"match {r['match_items_per_s_best']:.0f}, decide {r['decide_items_per_s_best']:.0f}; "
        f"overall {r['pipeline_items_per_s']:.0f} items/s decided"
    )
    busiest = sorted(r["arrivals_per_10s"], key=lambda a: -a[1])[:3]
    print("  arrivals: busiest 10 s " + ", ".join(f"t={t}: {n / 10:.0f} items/s" for t, n in busiest))
    print(
        f"  CPU: service {r['cpu_service_s']:.0f} s ({', '.join(f'{k} {v:.0f}' for k, v in cpu.items())}), "
        f"postgres {r['cpu_postgres_s']:.0f} s; {r['cpu_ms_per_fetch']:.1f} ms per fetch; the harness (feeds, "
        f"fake OpenAI, SMTP sink, sampling) {r['cpu_harness_s']:.0f} s"
    )
    fmt = lambda v: "-" if v is None else f"{v:.2f} s"  # noqa: E731
    print(
        f"  IMMEDIATE after the fetch: p50 {fmt(r['immediate_p50'])}, p95 {fmt(r['immediate_p95'])}, "
        f"p99 {fmt(r['immediate_p99'])} ({r['immediate_emailed']} items); emails sent {r['emails_sent']}"
    )
    print(
        f"  queue depth max {r['queue_max']}, at the end {r['queue_final']}; jobs per item {r['jobs_per_item']:.3f}; "
        f"database {r['db_mib_per_10k_items']:.0f} MiB per 10,000 items"
    )
    print(
        "  IMMEDIATE by minute of the day (minute: items, p50 / p95 s): "
        + ", ".join(f"{m}: {n}, {p50:.0f}/{p95:.0f}" for m, n, p50, p95 in r["immediate_by_minute"])
    )
    print("  IMMEDIATE stages (s): path, items, quantile, embed / match / decide / push / send, total")
    for st in r["stages"]:
        parts = " / ".join(f"{st[k]:.2f}" for k in ("embed", "match", "decide", "push", "send"))
        print(f"    {st['path']:<7} {st['n']:>6}  p{round(st['q'] * 100):<3} {parts}   {st['total']:.2f}")
    print("  jobs (seconds): task, runs, queue wait p50/p95, run p50/p95/max")
    for j in r["job_times"]:
        print(
            f"    {j['task']:<16} {j['runs']:>5}  wait {j['wait_p50']:.2f}/{j['wait_p95']:.2f}  "
            f"run {j['run_p50']:.2f}/{j['run_p95']:.2f}/{j['run_max']:.2f}"
        )
    print(f"  jobs failed (warm-up included): {r['failed_jobs'] or 'none'}")
    print(f"  peak RSS MiB: {', '.join(f'{k} {v:.0f}' for k, v in samples.rss.items())}")
    print(f"  duplicates (decisions, notifications, emails): {r['duplicates']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--goals-per-user", type=int, default=10)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=10.0, help="the simulated day, compressed")
    parser.add_argument("--drain", type=float, default=600.0, help="seconds allowed after the day to catch up")
    parser.add_argument("--topical", type=float, default=0.1, help="share of items on a goal's topic")
    parser.add_argument("--split", action="store_true", help="api + a worker per queue group (scale-out)")
    parser.add_argument(
        "--embed-apart", action="store_true", help="--split with the embed queue in a worker of its own (3 workers)"
    )
    parser.add_argument("--embed-batch", type=int, default=None, help="EMBED_BATCH_SIZE (default: the service's)")
    parser.add_argument("--embed-model", default="bench-256", help="fake embedding model (size 256 unless known)")
    parser.add_argument("--sample", type=float, default=5.0)
    parser.add_argument("--verbose", action="store_true")
    results.add_argument(parser)
    args = parser.parse_args()
    with results.session("scale", args):
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
