"""The matches listing's exact scan at growing sizes, and what an ANN index would change:
`bin/bench tail [--sizes 10000,50000,200000] [--dims 512] [--rounds 5]`.

A goal's matches listing (`GET /api/v1/goals/{id}/matches`, the goal page) ranks the goal's stored pairs (an
index scan) and then every other item the goal's owner sees through a subscription (no stored pair), ranked
at read time (store.matches.unstored_matches: an exact cosine scan over those items, no ANN index). Its cost
grows with the items one user sees within the retention, which is what decides when vectors would need an
ANN index. A fresh embedded database gets one user following one source, one goal, and `--sizes` items
(random vectors of `--dims` dimensions around 200 topic centres: the default model's 512, OpenAI's 1536), grown
step by step; at each size it times the very query infosentry sends (through its function), median of
`--rounds`, with its EXPLAIN ANALYZE execution time; then the same top 50 through an HNSW index (pgvector,
cosine, on the fixed-dimension cast that an index needs: `(embedding::vector(D))`) with its build time and
recall against the exact scan.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from infosentry import db, migrate
from infosentry.store import matches as matches_store
from tests.bench import results

PARAMS = {"m": 0.3, "s": 0.1, "z0": 0.0, "ceiling": 0.6, "min_score": 0.0}
CLUSTERS = 200  # topics: real embeddings cluster (uniform random vectors would be a worst case no index meets)


def clustered(cluster: str, dims: int, noise: float) -> str:
    """SQL for a vector near the centre of `cluster` (an SQL expression): the centre's coordinates come from a
    hash of (cluster, dimension), uniform in [-0.5, 0.5); the noise is uniform, `noise` wide."""
    h = f"sin(({cluster}) * 12.9898 + d * 78.233) * 43758.5453"
    return (
        f"(SELECT array_agg(({h}) - floor({h}) - 0.5 + (random() - 0.5) * {noise})::vector "
        f"FROM generate_series(1, {dims}) d WHERE ({cluster}) IS NOT NULL)"  # correlated: one vector per row
    )


async def setup(conn: Any, dims: int) -> int:
    user = await conn.fetchval("INSERT INTO users (email) VALUES ('tail@bench.example') RETURNING id")
    source = await conn.fetchval(
        """INSERT INTO sources (type, url, name, fetch_interval_sec)
           VALUES ('rss', 'https://tail.example/feed', 'Tail', 900) RETURNING id"""
    )
    await conn.execute("INSERT INTO subscriptions (user_id, source_id) VALUES ($1, $2)", user, source)
    return int(
        await conn.fetchval(
            f"""INSERT INTO goals (user_id, name, description, embedding, embedding_model)
                VALUES ($1, 'tail', 'tail goal', {clustered("0", dims, 0.5)}, 'bench')
                RETURNING id""",
            user,
        )
    )


async def grow(conn: Any, start: int, stop: int, dims: int) -> None:
    await conn.execute(
        f"""WITH v AS (SELECT g, {clustered(f"g % {CLUSTERS}", dims, 1.0)} AS e
                       FROM generate_series($1::int, $2::int - 1) g)
            INSERT INTO items (url, canonical_url, url_hash, title, title_key, source_id, embedding,
                               embedding_model, embedding_status, embedded_at, matched_at)
            SELECT 'https://tail.example/' || g, 'https://tail.example/' || g, md5('tail' || g), 'Item ' || g,
                   'item ' || g, (SELECT id FROM sources LIMIT 1), e, 'bench', 'done', now(), now()
            FROM v""",
        start,
        stop,
    )
    await conn.execute(
        """INSERT INTO item_sources (item_id, source_id, url)
           SELECT i.id, i.source_id, i.url FROM items i
           WHERE NOT EXISTS (SELECT 1 FROM item_sources x WHERE x.item_id = i.id)"""
    )
    await conn.execute("ANALYZE")


async def exact(conn: Any, goal: int, rounds: int) -> tuple[float, list[int]]:
    times, ids = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        rows = await matches_store.unstored_matches(conn, goal, signal="bench", limit=50, after=None, **PARAMS)
        times.append((time.perf_counter() - t) * 1000)
        ids = [r["item_id"] for r in rows]
    return statistics.median(times), ids


async def hnsw(conn: Any, goal: int, dims: int, rounds: int) -> tuple[float, float, list[int]]:
    t = time.perf_counter()
    await conn.execute(
        f"CREATE INDEX items_tail_hnsw ON items USING hnsw ((embedding::vector({dims})) vector_cosine_ops)"
    )
    build = time.perf_counter() - t
    await conn.execute("SET hnsw.ef_search = 200")  # the default (40) returns fewer rows than the listing's 50
    times, ids = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        rows = await conn.fetch(
            f"""SELECT i.id FROM items i
                WHERE i.source_id IN (SELECT source_id FROM subscriptions s JOIN goals g ON g.user_id = s.user_id
                                      WHERE g.id = $1)
                ORDER BY i.embedding::vector({dims}) <=> (SELECT embedding::vector({dims}) FROM goals WHERE id = $1)
                LIMIT 50""",
            goal,
        )
        times.append((time.perf_counter() - t) * 1000)
        ids = [r["id"] for r in rows]
    await conn.execute("DROP INDEX items_tail_hnsw")
    return build, statistics.median(times), ids


async def bench(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="infosentry-bench-tail-"))
    try:
        dsn = db.embedded_server_uri(data_dir)
        async with db.plain_connection(dsn) as conn:
            await migrate.upgrade(conn)
            goal = await setup(conn, args.dims)
            print(f"tail ranking, {args.dims} dims: items | exact ms (EXPLAIN ms) | HNSW build s, query ms, recall@50")
            done = 0
            for size in args.sizes:
                await grow(conn, done, size, args.dims)
                done = size
                ms, exact_ids = await exact(conn, goal, args.rounds)
                plan = await conn.fetchval(
                    "EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM items i, goals g "
                    "WHERE g.id = $1 AND 1 - (i.embedding <=> g.embedding) > -2",
                    goal,
                )
                scan_ms = float(json.loads(plan)[0]["Execution Time"])
                build, ann_ms, ann_ids = await hnsw(conn, goal, args.dims, args.rounds)
                recall = len(set(ann_ids) & set(exact_ids)) / max(1, len(exact_ids))
                print(
                    f"  {size:>8,} | {ms:8.1f} ({scan_ms:7.1f} for the bare cosine scan) | "
                    f"{build:6.1f} s, {ann_ms:6.1f} ms, {recall:.2f}",
                    flush=True,
                )
                results.record(f"exact_ms.{size}", round(ms, 1), "ms")
                results.record(f"cosine_scan_ms.{size}", round(scan_ms, 1), "ms")
                results.record(f"hnsw_ms.{size}", round(ann_ms, 1), "ms")
                results.record(f"hnsw_build_s.{size}", round(build, 1), "s")
                results.record(f"hnsw_recall.{size}", round(recall, 2), "", "higher")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[10_000, 50_000, 200_000])
    parser.add_argument("--dims", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    results.add_argument(parser)
    args = parser.parse_args()
    with results.session("tail", args):
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
