"""Pipeline benchmark (bin/bench pipeline [--rate 100] [--seconds 30] [--feeds 10] [--goals 3] [--local]
[--smtp-session-setup 0.3]):
end-to-end latency from an item appearing on a local feed server to its IMMEDIATE email in the SMTP sink.

A fresh embedded database (or $BENCH_DATABASE_URL's server), one `infosentry worker` process (every queue, the
real jobs), local fake feeds publishing `rate` items/s for `seconds`, goals that every item is IMMEDIATE for
(coalescing 0), the fake OpenAI server for embeddings (`--local`: the local MiniLM model instead, which needs
CPU: ~70 items/s on 2 cores) and an SMTP sink (`--smtp-session-setup`: each of its sessions takes that long to
open, as a remote relay's would). Sources are made due every 0.5 s (polling is not what is being measured). For
every (goal, item) pair: latency from the first fetch that saw the item, and from its publication; p50/p95/p99,
plus the stage breakdown from the database and the sustained delivery rate. Target: p95 < 3 s after
the fetch at 100 items/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from infosentry import db, embed, jobs, migrate, queue
from infosentry.domain import admin
from infosentry.runtime import open_runtime
from infosentry.settings import load_settings
from infosentry.store import goals as goals_store
from infosentry.store import users as users_store
from tests.bench import results
from tests.conftest import follow, make_all_due
from tests.fakes.feeds import FakeFeedServer
from tests.fakes.openai import FakeOpenAI
from tests.fakes.smtp import SmtpSink

WORDS = ("NASA", "Mars", "rocket", "launch", "rover", "orbit", "space station", "astronauts", "probe", "moon")
WINDOW = 8.0  # seconds an item stays on its feed
_LINK = re.compile(r"/r/(\d+)\?goal_id=(\d+)")


class Feeds:
    """`n` feeds; item k lives in feed k % n for WINDOW seconds from its publication on."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.published: list[float] = []  # wall time of publication, by item number
        self.first_fetch: dict[int, float] = {}

    def publish(self) -> int:
        self.published.append(time.time())
        return len(self.published) - 1

    def body(self, feed: int) -> str:
        """The feed's items of the last WINDOW seconds (at most 100): a real feed shows its newest items, and
        re-parsing a long tail of known items on every 0.5 s poll would only measure the parser."""
        now = time.time()
        numbers = []
        for k in range(len(self.published) - 1, -1, -1):
            if now - self.published[k] > WINDOW or len(numbers) >= 100:
                break
            if k % self.n == feed:
                numbers.append(k)
        for k in numbers:
            self.first_fetch.setdefault(k, now)
        items = "".join(
            f"<item><title>Bench {k}: {WORDS[k % 10]} {WORDS[(k + 3) % 10]} news about the NASA Mars rocket</title>"
            f"<link>https://bench.example.com/item/{k}</link><guid>bench-{k}</guid>"
            f"<pubDate>{format_datetime(datetime.fromtimestamp(self.published[k], UTC))}</pubDate>"
            f"<description>NASA rocket launch {k}: the Mars rover mission and the space station crew, item {k}."
            "</description></item>"
            for k in numbers
        )
        return f'<?xml version="1.0"?><rss version="2.0"><channel><title>Bench {feed}</title>{items}</channel></rss>'


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def line(name: str, values: list[float]) -> str:
    if not values:
        return f"  {name:<34} (no data)"
    return (
        f"  {name:<34} p50 {pct(values, 50):6.2f} s   p95 {pct(values, 95):6.2f} s   p99 {pct(values, 99):6.2f} s"
        f"   max {max(values):6.2f} s   (n={len(values)})"
    )


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="infosentry-bench-pipeline-"))
    base = os.environ.get("BENCH_DATABASE_URL")
    if base:
        dsn = db.with_database(base, f"bench_pipeline_{os.getpid()}")
        import psycopg

        with psycopg.connect(db.with_database(base, "postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "bench_pipeline_{os.getpid()}"')
    else:
        dsn = db.embedded_server_uri(tmp, database="bench")
    async with db.plain_connection(dsn) as conn:
        await migrate.upgrade(conn)

    fake = FakeOpenAI().start()
    sink = SmtpSink(session_setup=args.smtp_session_setup).__enter__()
    feeds = Feeds(args.feeds)
    server = FakeFeedServer()
    await server.start()

    def route(n: int) -> Any:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=feeds.body(n), content_type="application/rss+xml")

        return handler

    for n in range(args.feeds):
        server.add_handler(f"/feed{n}.xml", route(n))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SMTP_", "INFOSENTRY_"))}
    env |= (
        fake.env()
        | sink.env()
        | {
            "DATABASE_URL": dsn,
            "INFOSENTRY_DATA_DIR": str(tmp),
            "FETCH_ALLOW_NETWORKS": "127.0.0.0/8",
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "text",
            "MAX_SOURCES_PER_USER": "100000",  # one user follows every bench feed
            "EMBED_PROVIDER": "local" if args.local else "openai",
            # the real model's size (1536 floats per item from the fake server); --embed-model bench-256 for less
            "OPENAI_EMBED_MODEL": args.embed_model,
        }
    )
    settings = replace(load_settings(env), data_dir=tmp)
    log = open(tmp / "worker.log", "w")
    proc: subprocess.Popen[bytes] | None = None
    try:
        async with open_runtime(settings) as rt:
            await admin.set_config(
                rt,
                {
                    "IMMEDIATE_COALESCE_MINUTES": 0,
                    "LLM_ENABLED": False,
                    "DIGEST_MIN_SCORE": 0.3,
                    "BATCH_THRESHOLD": 0.35,
                    "BOUNDARY_LOW": 0.4,
                    "IMMEDIATE_THRESHOLD": 0.4,
                    "EMBED_PER_MIN": 100000,
                    "DAILY_USD_BUDGET": 1000,
                    "IMMEDIATE_MAX_ITEMS": 10,
                },
                who="bench",
            )
            await rt.hot.reload()
            goal_ids = []
            for g in range(args.goals):
                user = await users_store.get_or_create_user(rt.pool, f"bench{g}@example.com")
                goal = await goals_store.create(
                    rt.pool,
                    user["id"],
                    {
                        "name": f"Space {g}",
                        "description": "NASA rocket launches, the Mars rover and the space station",
                        "priority_terms": ["NASA", "Mars", "rocket"],
                        "batch_windows": [],
                        "timezone": "UTC",
                    },
                )
                goal_ids.append(goal["id"])
                for n in range(args.feeds):
                    await follow(rt, user["id"], server.url(f"/feed{n}.xml"), name=f"Bench {n}")
            await embed.run(rt)  # goal vectors before the first item
            profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
            proc = subprocess.Popen(
                [sys.executable, *profile, "-m", "infosentry", "worker", "--concurrency", str(args.concurrency)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            deadline = time.time() + 60
            while not await rt.pool.fetchval("SELECT count(*) FROM worker_heartbeats WHERE role = 'worker'"):
                if time.time() > deadline or proc.poll() is not None:
                    raise SystemExit(f"the worker did not start; see {tmp / 'worker.log'}")
                await asyncio.sleep(0.2)
            source = "local model" if args.local else f"fake OpenAI server ({args.embed_model})"
            print(
                f"worker up; publishing {args.rate} items/s for {args.seconds} s on {args.feeds} feeds, "
                f"{args.goals} goals, embeddings: {source}"
            )

            arrivals: dict[tuple[int, int], float] = {}  # (db item id, goal id) -> wall time in the sink
            seen = 0

            async def watch_sink() -> None:
                nonlocal seen
                while True:
                    batch = sink.received[seen:]  # the sink's thread appends meanwhile: count what was read
                    now = time.time()
                    for mail in batch:
                        text = mail.message.get_body(("plain",)).get_content()
                        for item_id, goal_id in _LINK.findall(text):
                            arrivals.setdefault((int(item_id), int(goal_id)), now)
                    seen += len(batch)
                    await asyncio.sleep(0.02)

            async with queue.open_queue(dsn) as qapp:

                async def drive_fetches() -> None:
                    while True:
                        await make_all_due(rt)
                        await queue.nudge(qapp, jobs.ingest_due.name)  # jobs registers the task: its queue
                        await asyncio.sleep(0.5)

                watcher = asyncio.create_task(watch_sink())
                driver = asyncio.create_task(drive_fetches())
                started = time.time()
                total = int(args.rate * args.seconds)
                for k in range(total):
                    target = started + k / args.rate
                    if target > time.time():
                        await asyncio.sleep(target - time.time())
                    feeds.publish()
                publish_end = time.time()
                expected = total * args.goals
                deadline = time.time() + args.drain
                while len(arrivals) < expected and time.time() < deadline:
                    await asyncio.sleep(0.2)
                drained = time.time()
                driver.cancel()
                watcher.cancel()
            urls = {r["id"]: int(r["url"].rsplit("/", 1)[1]) for r in await rt.pool.fetch("SELECT id, url FROM items")}
            stages = await rt.pool.fetch(
                """SELECT extract(epoch FROM i.ingested_at) AS ingested, extract(epoch FROM i.embedded_at) AS embedded,
                          extract(epoch FROM d.decided_at) AS decided, extract(epoch FROM n.created_at) AS pushed,
                          extract(epoch FROM e.sent_at) AS sent, i.url
                   FROM notifications n JOIN items i ON i.id = n.item_id JOIN decisions d ON d.id = n.decision_id
                   JOIN emails e ON e.id = n.email_id"""
            )
            emails = await rt.pool.fetchval("SELECT count(*) FROM emails")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        await server.close()
        sink.__exit__()
        fake.stop()

    from_fetch, from_publish = [], []
    for (item_id, _goal_id), at in arrivals.items():
        k = urls.get(item_id)
        if k is None:
            continue
        from_fetch.append(at - feeds.first_fetch[k])
        from_publish.append(at - feeds.published[k])
    delivered_in_window = sum(1 for at in arrivals.values() if at <= publish_end)
    print(
        f"\n{len(arrivals)} of {expected} (goal, item) pushes delivered by email ({emails} emails); "
        f"all delivered {drained - publish_end:.1f} s after publishing stopped"
        if len(arrivals) == expected
        else f"\nONLY {len(arrivals)} of {expected} pushes delivered within {args.drain} s of the end"
    )
    print(line("fetch -> email in the sink", from_fetch))
    print(line("publish -> email in the sink", from_publish))
    if stages:
        f = lambda a, b: [float(r[b]) - float(r[a]) for r in stages if r[a] is not None and r[b] is not None]  # noqa: E731
        print("  stages (database clocks):")
        for a, b, name in [
            ("ingested", "embedded", "ingested -> embedded"),
            ("embedded", "decided", "embedded -> matched + decided"),
            ("decided", "pushed", "decided -> pushed (inbox + outbox)"),
            ("pushed", "sent", "pushed -> sent by SMTP"),
        ]:
            print("  " + line(name, f(a, b)))
            if f(a, b):
                results.record(f"stage.{a}_to_{b}.p95", pct(f(a, b), 95), "s")
    duration = publish_end - started
    mean = statistics.mean(from_fetch) if from_fetch else 0.0
    delivered_rate = delivered_in_window / args.goals / duration
    print(
        f"  published {total / duration:.1f} items/s; delivered {delivered_rate:.1f} items/s "
        f"(x{args.goals} goals) while publishing; mean fetch -> email {mean:.2f} s"
    )
    ok = len(arrivals) == expected and pct(from_fetch, 95) < 3.0
    results.record("pushes_expected", expected, "pushes", better=None)
    results.record("pushes_delivered_fraction", len(arrivals) / expected if expected else 0, "fraction", "higher")
    results.record("emails", emails, "emails", better=None)
    for p in (50, 95, 99):
        results.record(f"fetch_to_email.p{p}", pct(from_fetch, p), "s")
    results.record("publish_to_email.p95", pct(from_publish, 95), "s")
    results.record("published_items_per_s", total / duration, "items/s", better=None)
    results.record("delivered_items_per_s", delivered_rate, "items/s", better="higher")
    results.record("drain_after_publishing", drained - publish_end, "s")
    print(f"target p95 < 3 s after the fetch at {args.rate} items/s: {'MET' if ok else 'NOT MET'}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100.0, help="items published per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--feeds", type=int, default=10)
    parser.add_argument("--goals", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--drain", type=float, default=60.0, help="seconds to wait for the last emails")
    parser.add_argument(
        "--embed-model",
        default="bench-256",
        help="model name sent to the fake server (text-embedding-3-small: 1536 dims)",
    )
    parser.add_argument(
        "--smtp-session-setup",
        type=float,
        default=0.0,
        help="seconds the sink takes to open a session (a remote relay's TLS handshake, EHLO and login)",
    )
    parser.add_argument("--profile", default="", help="write a cProfile of the worker process to this file")
    parser.add_argument("--local", action="store_true", help="embed with the local model instead of the fake API")
    results.add_argument(parser)
    args = parser.parse_args()
    with results.session("pipeline", args):
        asyncio.run(main(args))
