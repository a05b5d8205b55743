"""Embed and match throughput: `bin/bench match [--items N] [--goals 100,1000] [--local-items N] [--batch N]`.

A fresh embedded database; 100 users with 10 goals each (topics and terms drawn from a list), 50 sources, every
user subscribed to 10 of them; ag_news snippets as items, each from one source (so an item is seen by ~20% of
the goals). With the fake OpenAI server (text-embedding-3-small size: 1536 dims, in its own process):
  1. embed: the production pipeline (embed.run until idle): embedding, context vectors, storing, matching;
  2. match alone: the same items scored again from their stored vectors (match.match_items per batch), with
     100 and with 1,000 active goals;
  3. decide: infosentry.decide.decide_pending over the matches written in 2 (when decide.py exists).
With the local model: embedding throughput and the pipeline on --local-items items.
Prints items/s, stored matches, CPU seconds (this process, Postgres, fake server) and peak RSS. The process is
tuned as `serve` and `worker` are (one BLAS thread: set OPENBLAS_NUM_THREADS to compare).
Target: match + decide of 10,000 new items against 1,000 goals in under 20 s on 2 cores (fake OpenAI).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import multiprocessing
import os
import random
import resource
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tests.bench import results
from tests.bench.common import postgres_cpu, proc_cpu, shared_data

DATA = shared_data("ag_news_tuning.csv")
TOPICS = [
    ("AI chips", "New AI accelerator chips and GPUs from Nvidia, AMD and startups", ["Nvidia", "GPU", "AMD"]),
    ("Electric cars", "Electric vehicles, batteries and their makers", ["Tesla", "battery", "EV"]),
    ("Oil markets", "Crude oil prices, OPEC decisions and energy markets", ["oil", "OPEC", "crude"]),
    ("Football", "Soccer and NFL results, transfers and coaches", ["football", "soccer", "NFL"]),
    ("Elections", "Elections, campaigns and votes around the world", ["election", "vote", "campaign"]),
    ("Space", "Space missions, NASA, rockets and astronomy", ["NASA", "rocket", "space"]),
    ("Stock markets", "Wall Street, stocks, shares and market moves", ["stocks", "Wall Street", "shares"]),
    ("Middle East", "Conflicts and diplomacy in Iraq, Israel and the Middle East", ["Iraq", "Israel", "Gaza"]),
    ("Software", "Software releases, Microsoft, Linux and open source", ["Microsoft", "Linux", "software"]),
    ("Tennis and golf", "Tennis and golf tournaments and players", ["tennis", "golf", "Open"]),
    ("Mergers", "Company mergers, acquisitions and takeover deals", ["merger", "acquisition", "deal"]),
    ("Internet", "The web, search engines, Google and online services", ["Google", "internet", "web"]),
    ("Health research", "Medical research, drugs, vaccines and disease", ["vaccine", "drug", "cancer"]),
    ("Airlines", "Airlines, air travel and aircraft makers", ["airline", "Boeing", "Airbus"]),
    ("Baseball", "Major league baseball games, pitchers and the World Series", ["baseball", "Yankees", "Red Sox"]),
    ("Security", "Computer security, viruses, hackers and spam", ["virus", "hacker", "spam"]),
]
USERS, GOALS_PER_USER, SOURCES, SUBS_PER_USER = 100, 10, 50, 10


def serve_fake(port: int, conn: Any) -> None:
    from tests.fakes.openai import FakeOpenAI

    fake = FakeOpenAI(port=port).start()
    conn.send("up")
    conn.recv()
    fake.stop()


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Meter:
    def __init__(self, pgdata: Path, fake_pid: int | None) -> None:
        self.pgdata, self.fake_pid = pgdata, fake_pid

    def snap(self) -> dict[str, float]:
        me = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "wall": time.perf_counter(),
            "self": me.ru_utime + me.ru_stime,
            "postgres": postgres_cpu(self.pgdata),
            "fake": proc_cpu(self.fake_pid) if self.fake_pid else 0.0,
        }

    def line(self, label: str, before: dict[str, float], items: int, extra: str = "", key: str = "") -> float:
        """Print one measured step; with `key`, record its figures as `key.*`."""
        after = self.snap()
        wall = after["wall"] - before["wall"]
        cpu = {k: after[k] - before[k] for k in ("self", "postgres", "fake")}
        print(
            f"  {label}: {wall:.2f} s, {items / wall if wall else 0:.0f} items/s{extra}; CPU s: ours "
            f"{cpu['self']:.1f}, postgres {cpu['postgres']:.1f}, fake server {cpu['fake']:.1f}; "
            f"peak RSS {rss_mib():.0f} MiB"
        )
        if key:
            results.record(f"{key}.wall", wall, "s")
            results.record(f"{key}.items_per_s", items / wall if wall else 0, "items/s", better="higher")
            results.record(f"{key}.cpu_app", cpu["self"], "s")
            results.record(f"{key}.cpu_postgres", cpu["postgres"], "s")
            results.record("peak_rss", rss_mib(), "MiB")
        return wall


async def seed(rt: Any, n_items: int, rng: random.Random) -> None:
    from infosentry.store import users as users_store

    with DATA.open(encoding="utf-8") as fh:
        texts = [r["text"] for r in csv.DictReader(fh)]
    source_ids = [
        await rt.pool.fetchval(
            "INSERT INTO sources (type, url, name, fetch_interval_sec) VALUES ('rss', $1, $2, 900) RETURNING id",
            f"http://127.0.0.1:9/bench{s}.xml",
            f"bench source {s}",
        )
        for s in range(SOURCES)
    ]
    subs, goals = [], []
    for u in range(USERS):
        user = await users_store.create_user(rt.pool, f"user{u}@bench.example")
        subs += [(user["id"], s) for s in rng.sample(source_ids, SUBS_PER_USER)]
        for g in range(GOALS_PER_USER):
            name, desc, terms = TOPICS[(u + g * 7) % len(TOPICS)]
            goals.append((user["id"], f"{name} {g}", desc, rng.sample(terms, 2)))
    await rt.pool.executemany("INSERT INTO subscriptions (user_id, source_id) VALUES ($1, $2)", subs)
    await rt.pool.executemany(
        "INSERT INTO goals (user_id, name, description, priority_terms) VALUES ($1, $2, $3, $4)", goals
    )
    rows = []
    for i in range(n_items):
        text = texts[i % len(texts)]
        url = f"https://bench.example/{i}"
        rows.append((url, f"{i:032x}", text[:90], text[90:590], rng.choice(source_ids), f"k{i}"))
    await rt.pool.executemany(
        """INSERT INTO items (url, canonical_url, url_hash, title, snippet, source_id, title_key)
           VALUES ($1, $1, $2, $3, $4, $5, $6)""",
        rows,
    )
    await rt.pool.execute("INSERT INTO item_sources (item_id, source_id, url) SELECT id, source_id, url FROM items")


async def set_active_goals(rt: Any, n: int) -> None:
    await rt.pool.execute("UPDATE goals SET status = CASE WHEN id <= $1 THEN 'active' ELSE 'paused' END", n)
    # active goals count as backfilled: this measures the item path, not the goal backfill
    await rt.pool.execute("UPDATE goals SET matched_version = version")


async def run_pipeline(rt: Any, meter: Meter, label: str, n_items: int, key: str) -> None:
    from infosentry import embed

    before = meter.snap()
    stored = embedded = 0
    while True:
        report = await embed.run(rt, max_batches=1000)
        stored += report.match.stored
        embedded += report.embedded
        if not report.more:
            break
    goals = await rt.pool.fetchval("SELECT count(*) FROM goals WHERE status = 'active'")
    meter.line(
        f"{label}: embed + context + match of {embedded} items vs {goals} goals",
        before,
        n_items,
        f", {stored} matches stored",
        key=key,
    )


async def match_alone(rt: Any, meter: Meter, n_goals: int, batch: int, prefix: str) -> None:
    from infosentry import embed, match

    await set_active_goals(rt, n_goals)
    await rt.pool.execute("TRUNCATE matches")
    if await rt.pool.fetchval("SELECT to_regclass('decide_queue') IS NOT NULL"):
        await rt.pool.execute("TRUNCATE decide_queue")
    ids = [r["id"] for r in await rt.pool.fetch("SELECT id FROM items ORDER BY id")]
    model = embed.model_name(rt)
    before = meter.snap()
    stats = match.MatchStats()
    for start in range(0, len(ids), batch):
        stats.add(await match.match_items(rt, ids[start : start + batch], model=model))
    meter.line(
        f"match alone, {n_goals} active goals (batches of {batch})",
        before,
        len(ids),
        f", {stats.pairs} pairs scored, {stats.stored} stored",
        key=f"{prefix}.match_{n_goals}_goals",
    )
    if n_goals >= 1000:
        await decide_after(rt, meter, len(ids), before, prefix)


async def decide_after(rt: Any, meter: Meter, n_items: int, match_started: dict[str, float], prefix: str) -> None:
    try:
        from infosentry import decide
    except ImportError:
        print("  decide: infosentry/decide.py not present; skipped")
        return
    before = meter.snap()
    report = await decide.decide_pending(rt)
    meter.line(
        f"decide ({report.written} decisions, {report.llm_calls} LLM calls)", before, n_items, key=f"{prefix}.decide"
    )
    meter.line("match + decide together", match_started, n_items, key=f"{prefix}.match_decide")


async def bench(args: argparse.Namespace) -> None:
    from infosentry import db, embed, migrate
    from infosentry.domain import admin
    from infosentry.runtime import open_runtime
    from infosentry.settings import load_settings
    from infosentry.store import config as config_store

    rng = random.Random(1)
    goal_counts = [int(x) for x in args.goals.split(",")]
    data_dir = Path(tempfile.mkdtemp(prefix="infosentry-bench-match-"))
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    port = 18000 + os.getpid() % 1000
    fake = ctx.Process(target=serve_fake, args=(port, child), daemon=True)
    fake.start()
    try:
        parent.recv()
        dsn = db.embedded_server_uri(data_dir)
        async with db.plain_connection(dsn) as conn:
            await migrate.upgrade(conn)
        base = replace(load_settings({}), database_url=dsn, data_dir=data_dir, log_format="text", log_level="WARNING")
        fake_settings = replace(
            base,
            openai_base_url=f"http://127.0.0.1:{port}/v1",
            openai_api_key="sk-fake",
            embed_provider="openai",
            openai_embed_model="text-embedding-3-small",
        )
        meter = Meter(data_dir / "pg", fake.pid)
        print(
            f"{os.cpu_count()} CPUs; {USERS} users x {GOALS_PER_USER} goals, {SOURCES} sources, "
            f"{SUBS_PER_USER} subscriptions per user"
        )
        async with open_runtime(fake_settings, live_config=False) as rt:
            await admin.set_config(
                rt,
                {
                    "EMBED_BATCH_SIZE": args.batch,
                    "EMBED_PER_MIN": 100000,
                    "DAILY_USD_BUDGET": 100,
                    "JUDGE_PER_DAY": 1_000_000,
                },
                who="bench",
            )
            rt.hot.apply_rows(await config_store.values(rt.pool))
            await seed(rt, args.items, rng)
            print(f"fake OpenAI (text-embedding-3-small, 1536 dims), {args.items} items:")
            await set_active_goals(rt, max(goal_counts))
            # goal vectors first (not part of the item throughput)
            await embed.embed_goals(rt, embed.embedder(rt), embed.RunReport())
            await rt.pool.execute("UPDATE goals SET matched_version = version")
            await run_pipeline(rt, meter, "pipeline", args.items, "fake.pipeline")
            for n in goal_counts:
                await match_alone(rt, meter, n, args.batch, "fake")

        if args.local_items:
            async with open_runtime(base, live_config=False) as rt:
                print(f"local model ({embed.model_name(rt)}), {args.local_items} items:")
                await rt.pool.execute("TRUNCATE matches, decisions, agent_runs CASCADE")
                await rt.pool.execute("DELETE FROM items WHERE id > $1", args.local_items)
                await rt.pool.execute(
                    "UPDATE items SET embedding_status = 'pending', matched_at = NULL, "
                    "embedding = NULL, context_embedding = NULL, embedding_model = NULL"
                )
                emb = embed.embedder(rt)
                texts = [r["t"] for r in await rt.pool.fetch("SELECT title || '. ' || snippet AS t FROM items")]
                before = meter.snap()
                await asyncio.to_thread(emb.embed_sync, texts)
                meter.line("embedding alone", before, len(texts), key="local.embed_alone")
                await set_active_goals(rt, max(goal_counts))
                await embed.embed_goals(rt, emb, embed.RunReport())
                await rt.pool.execute("UPDATE goals SET matched_version = version")
                await run_pipeline(rt, meter, "pipeline", len(texts), "local.pipeline")
                for n in goal_counts:
                    await match_alone(rt, meter, n, args.batch, "local")
    finally:
        parent.send("stop")
        fake.join(5)
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--goals", default="100,1000", help="active goal counts to measure matching with")
    parser.add_argument("--local-items", type=int, default=1000, help="items for the local model (0: skip)")
    parser.add_argument("--batch", type=int, default=128, help="EMBED_BATCH_SIZE")
    parser.add_argument("--keep", action="store_true", help="keep the database directory")
    results.add_argument(parser)
    args = parser.parse_args()
    from infosentry.tuning import tune_process

    tune_process()
    with results.session("match", args):
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
