"""The hot ingest statements at realistic table sizes: `bin/bench ingest_sql [--sources 10000] [--items 300000]
[--logs 1000000] [--batch 64] [--per-feed 20] [--new-share 0.1] [--rounds 5] [--plans]`.

A fresh embedded database, migrated, seeded with generate_series: `sources` sources (one user per 100, each
source followed once; 5 % due now), `items` items spread over the last 72 h (one item_sources row each, 5 % with
an alias), `logs` ingest log rows. Then, for one writer flush of `batch` fetches × `per-feed` items of which a
share `new-share` is new (the steady state; --new-share 1 is a first pass), the statements infosentry's ingest
sends, with the very SQL of infosentry.store (called through its functions), each inside a transaction that is
rolled back, `rounds` times with fresh random parameters: claim_due, ids_by_hash, title_candidates,
insert_items, link_sources, record_results. Prints the median time of each statement (EXPLAIN ANALYZE's
execution time, and the wall time seen by the client) and, with --plans, one EXPLAIN (ANALYZE, BUFFERS) plan of
each.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.bench import results


async def seed(conn: Any, sources: int, items: int, logs: int) -> None:
    started = time.perf_counter()
    await conn.execute(
        "INSERT INTO users (email) SELECT 'u' || g || '@bench.example' FROM generate_series(1, $1) g",
        max(1, sources // 100),
    )
    await conn.execute(
        """INSERT INTO sources (type, url, name, fetch_interval_sec, next_fetch_at, last_success_at, etag, created_at)
           SELECT 'rss', 'https://site' || g || '.example/feed.xml', 'Site ' || g, 900,
                  CASE WHEN g % 20 = 0 THEN now() - interval '1 minute'
                       ELSE now() + (g % 900) * interval '1 second' END,
                  now() - interval '15 minutes', '"etag-' || g || '"', now() - interval '30 days'
           FROM generate_series(1, $1) g""",
        sources,
    )
    await conn.execute(
        """INSERT INTO subscriptions (user_id, source_id)
           SELECT 1 + (s.id - 1) % (SELECT count(*) FROM users), s.id FROM sources s"""
    )
    await conn.execute(
        """INSERT INTO items (url, canonical_url, url_hash, title, snippet, published_at, ingested_at, source_id,
                              title_key, embedding_status, matched_at, tags)
           SELECT 'https://site' || s || '.example/posts/' || g, 'https://site' || s || '.example/posts/' || g,
                  substr(md5('item' || g), 1, 32), 'Headline number ' || g || ' about topic ' || (g % 997),
                  repeat('Snippet text of a realistic length for item ' || g || '. ', 6),
                  now() - (g % 259200) * interval '1 second', now() - (g % 259200) * interval '1 second', s,
                  substr(md5('title' || g), 1, 16), 'done', now(), '{news,world}'
           FROM generate_series(1, $1) g, LATERAL (SELECT 1 + g % $2 AS s) x""",
        items,
        sources,
    )
    await conn.execute(
        """INSERT INTO item_sources (item_id, source_id, url, first_seen_at, url_hash)
           SELECT id, source_id, url, ingested_at, CASE WHEN id % 20 = 0 THEN substr(md5('alias' || id), 1, 32) END
           FROM items"""
    )
    await conn.execute(
        """INSERT INTO ingest_logs (source_id, started_at, duration_ms, status, http_status, fetched, new, duplicate)
           SELECT 1 + g % $2, now() - (g % 604800) * interval '1 second', 120,
                  CASE WHEN g % 2 = 0 THEN 'not_modified' ELSE 'ok' END, 200, 20, 1, 19
           FROM generate_series(1, $1) g""",
        logs,
        sources,
    )
    await conn.execute("VACUUM ANALYZE")
    took = time.perf_counter() - started
    sizes = await conn.fetch(
        """SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) AS size FROM pg_class
           WHERE relname IN ('items', 'item_sources', 'sources', 'ingest_logs') ORDER BY relname"""
    )
    print(f"seeded in {took:.0f} s: " + ", ".join(f"{r['relname']} {r['size']}" for r in sizes), flush=True)


class Capture:
    """Wraps a connection: runs each statement under EXPLAIN (ANALYZE, BUFFERS) and keeps the plan, then
    runs nothing else (the store function's result parsing gets an empty answer)."""

    def __init__(self, conn: Any, want: str) -> None:
        self.conn, self.want = conn, want
        self.plans: list[tuple[str, str, float]] = []

    async def _explain(self, query: str, *args: Any) -> list[Any]:
        started = time.perf_counter()
        rows = await self.conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {query}", *args)
        wall = time.perf_counter() - started
        # the parameter arrays are spelled out in the plan: cut them to keep it readable
        plan = "\n".join(r[0] if len(r[0]) <= 240 else r[0][:240] + "...}" for r in rows)
        self.plans.append((" ".join(query.split())[:60], plan, wall))
        return []

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        return await self._explain(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        await self._explain(query, *args)
        return "UPDATE 0"


def execution_ms(plan: str) -> float:
    for line in plan.splitlines()[::-1]:
        if line.strip().startswith("Execution Time:"):
            return float(line.split(":")[1].split()[0])
    return float("nan")


def planning_ms(plan: str) -> float:
    for line in plan.splitlines():
        if line.strip().startswith("Planning Time:"):
            return float(line.split(":")[1].split()[0])
    return float("nan")


async def one_round(conn: Any, args: argparse.Namespace, rng: random.Random) -> dict[str, tuple[float, float, str]]:
    from infosentry.models import FetchResult, NewItem
    from infosentry.store import items as items_store
    from infosentry.store import sources as sources_store

    n = args.batch * args.per_feed
    n_new = round(n * args.new_share)
    known = [rng.randrange(1, args.items + 1) for _ in range(n - n_new)]
    stamp = rng.randrange(10**12)
    new_ids = [f"new{stamp}-{k}" for k in range(n_new)]
    hashes = [hashlib.md5(f"item{g}".encode()).hexdigest()[:32] for g in known]
    hashes += [hashlib.sha256(x.encode()).hexdigest()[:32] for x in new_ids]
    new_keys = [hashlib.md5(f"t{x}".encode()).hexdigest()[:16] for x in new_ids]
    # a few new titles collide with recent items (the cross-source dedupe path)
    new_keys[: n_new // 20] = [hashlib.md5(f"title{rng.randrange(1, args.items)}".encode()).hexdigest()[:16]] * (
        n_new // 20
    )
    source_ids = [rng.randrange(1, args.sources + 1) for _ in range(args.batch)]
    now = datetime.now(UTC)
    out: dict[str, tuple[float, float, str]] = {}

    async def run(name: str, call: Any, names: tuple[str, ...] = ()) -> None:
        tx = conn.transaction()
        await tx.start()
        try:
            cap = Capture(conn, name)
            await call(cap)
        finally:
            await tx.rollback()
        for i, (_, plan, wall) in enumerate(cap.plans):
            out[names[i] if i < len(names) else name] = (execution_ms(plan) + planning_ms(plan), wall * 1000, plan)

    await run("claim_due", lambda c: sources_store.claim_due(c, limit=2 * args.batch, lease_seconds=300))
    await run("ids_by_hash", lambda c: items_store.ids_by_hash(c, hashes))
    await run("title_candidates", lambda c: items_store.title_candidates(c, new_keys, hours=72))
    rows = [
        NewItem(
            **{
                "url": f"https://new.example/{x}",
                "canonical_url": f"https://new.example/{x}",
                "url_hash": hashlib.sha256(x.encode()).hexdigest()[:32],
                "guid": x,
                "title": f"New headline {x}",
                "snippet": "A new snippet of realistic length. " * 8,
                "author": "Writer",
                "tags": ["news", "world"],
                "published_at": now - timedelta(minutes=rng.randrange(600)),
                "source_id": source_ids[k % len(source_ids)],
                "title_key": new_keys[k],
                "is_backfill": False,
            }
        )
        for k, x in enumerate(new_ids)
    ]
    rows.sort(key=lambda r: r.url_hash)
    await run("insert_items", lambda c: items_store.insert_items(c, rows))
    # links: known items seen again in another source (the new items' links need their ids: measured as
    # the same number of rows on existing items)
    links = sorted({(rng.randrange(1, args.items + 1), source_ids[k % len(source_ids)]) for k in range(max(n_new, 1))})
    await run(
        "link_sources",
        lambda c: items_store.link_sources(c, [(i, s, f"https://x.example/{i}", None) for i, s in links]),
    )
    results_rows = [
        FetchResult(
            **{
                "source_id": s,
                "ok": True,
                "not_modified": False,
                "started_at": now,
                "duration_ms": 100,
                "http_status": 200,
                "fetched": args.per_feed,
                "new": 2,
                "duplicate": 18,
                "error_kind": None,
                "error": None,
                "next_fetch_at": now + timedelta(minutes=15),
                "interval": 900,
                "etag": '"x"',
                "last_modified": None,
                "title": None,
                "placeholder_name": "x",
            }
        )
        for s in sorted(set(source_ids))
    ]

    async def record_both(c: Any) -> None:
        await sources_store.record_results(c, results_rows)

    await run("record_results", record_both, ("record_results.sources", "record_results.ingest_logs"))
    return out


async def bench(args: argparse.Namespace) -> None:
    from infosentry import db, migrate

    data_dir = Path(tempfile.mkdtemp(prefix="infosentry-bench-sql-"))
    try:
        dsn = db.embedded_server_uri(data_dir)
        async with db.plain_connection(dsn) as conn:
            await migrate.upgrade(conn)
            await seed(conn, args.sources, args.items, args.logs)
        rng = random.Random(7)
        pool = await db.create_pool(dsn, min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                rounds = [await one_round(conn, args, rng) for _ in range(args.rounds)]
        finally:
            await pool.close()
        n = args.batch * args.per_feed
        print(
            f"one flush of {args.batch} fetches × {args.per_feed} items ({n} hashes, "
            f"{round(n * args.new_share)} new), median of {args.rounds} rounds:"
        )
        print(f"  {'statement':<28} {'server ms':>10} {'client ms':>10}   (server = planning + execution)")
        for name in rounds[0]:
            server = statistics.median(r[name][0] for r in rounds)
            client = statistics.median(r[name][1] for r in rounds)
            print(f"  {name:<28} {server:>10.2f} {client:>10.2f}")
            results.record(f"{name}.server", server, "ms")
            results.record(f"{name}.client", client, "ms")
        results.detail("plans", {name: plan for name, (_, _, plan) in rounds[-1].items()})
        if args.plans:
            for name, (_, _, plan) in rounds[-1].items():
                print(f"\n--- {name}\n{plan}")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=300_000)
    parser.add_argument("--logs", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=64, help="fetches per writer flush (FLUSH_MAX is 64)")
    parser.add_argument("--per-feed", type=int, default=20)
    parser.add_argument("--new-share", type=float, default=0.1, help="share of new items (1: a first pass)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--plans", action="store_true", help="print one EXPLAIN (ANALYZE, BUFFERS) of each")
    results.add_argument(parser)
    args = parser.parse_args()
    with results.session("ingest_sql", args):
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
