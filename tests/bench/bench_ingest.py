"""Ingest benchmark (bin/bench ingest [--feeds N] [--items M]): N local feeds × M items from the fake feed server,
a fresh embedded database, one user subscribed to all; the ingest step runs until every source is fetched.

Prints, for a first pass (every feed new) and a second pass (every source due again, all answered 304): seconds
until all items are stored, items/s, peak RSS and CPU seconds (this process + its parse workers + waited
children), plus — for context — the CPU of the Postgres server and of the feed server (a separate process).
The feeds are spread over 8 loopback addresses, so the Fetcher's per-host cap (2) allows 16 fetches at once.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from tests.bench import results
from tests.bench.common import (  # noqa: F401 -- postgres_pids and proc_cpu are imported from here by others
    postgres_cpu,
    postgres_pids,
    proc_cpu,
    proc_hwm_mib,
    self_cpu,
    self_peak_rss_mib,
)

HOSTS = [f"127.0.0.{i}" for i in range(1, 9)]


# --- the feeds (generated in the server process) -------------------------------------------------------------


def make_feed(n: int, items: int, now: datetime) -> bytes:
    """About 1.2 KiB of RSS per item, with the HTML descriptions real feeds carry."""
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0" '
        'xmlns:content="http://purl.org/rss/1.0/modules/content/">\n<channel>\n'
        f"<title>Bench feed {n}</title>\n<link>https://site{n}.example/</link>\n"
        f"<description>Feed number {n} for the ingest benchmark</description>\n"
    ]
    for j in range(items):
        pub = format_datetime(now - timedelta(minutes=37 * j + n % 30), usegmt=True)
        desc = (
            f"<p>Story <b>{j}</b> of feed {n}: the quick brown fox jumps over the lazy dog while the "
            f"committee &amp; its advisers debate item {n * 1000 + j} at length.</p>"
            f'<p>Read more at <a href="https://site{n}.example/posts/{j}?utm_source=rss">the site</a>, or '
            f'see <img src="https://cdn.example/{n}/{j}.png" alt="picture"/> the picture.</p>'
            "<ul><li>First point about the matter</li><li>Second point, with &quot;quotes&quot;</li>"
            "<li>Third point &#8212; an em dash</li></ul>"
            f"<p>{'Filler sentence that makes the description as long as a real one. ' * 6}</p>"
        )
        parts.append(
            f"<item>\n<title>Feed {n} headline {j}: something happened in place {(n * 7 + j) % 97}</title>\n"
            f"<link>https://site{n}.example/posts/{j}?utm_source=rss&amp;utm_medium=feed</link>\n"
            f'<guid isPermaLink="false">feed-{n}-item-{j}</guid>\n<pubDate>{pub}</pubDate>\n'
            f"<author>writer{j}@site{n}.example (Writer {j})</author>\n"
            f"<category>Category {j % 5}</category><category>Topic {n % 11}</category>\n"
            f"<description><![CDATA[{desc}]]></description>\n</item>\n"
        )
    parts.append("</channel>\n</rss>\n")
    return "".join(parts).encode()


def serve(feeds: int, items: int, conn: Any) -> None:
    """The feed server process: 8 loopback sites sharing one route table, each feed with an ETag."""
    from tests.fakes.feeds import FakeFeedServer

    async def main() -> None:
        now = datetime.now(UTC)
        servers = [await FakeFeedServer(host=host).start() for host in HOSTS]
        routes = servers[0].routes
        for s in servers[1:]:
            s.routes = routes  # one table: any host serves any path
        size = 0
        for n in range(feeds):
            body = make_feed(n, items, now)
            size += len(body)
            servers[0].add(f"/feed/{n}.xml", body, etag=f'"feed-{n}-v1"')
        conn.send({"ports": [s.port for s in servers], "avg_bytes": size // max(feeds, 1)})
        while not conn.poll():
            await asyncio.sleep(0.2)

    asyncio.run(main())


# --- measuring -----------------------------------------------------------------------------------------------


class Meter:
    """CPU seconds of this process, its parse workers and waited children; Postgres and the feed server apart."""

    def __init__(self, pgdata: Path, server_pid: int) -> None:
        self.pgdata, self.server_pid = pgdata, server_pid

    def snapshot(self) -> dict[str, float]:
        from infosentry.ingest import parsing

        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        workers = parsing.PARSE_POOL.worker_pids()
        return {
            "self": self_cpu(),
            "children": kids.ru_utime + kids.ru_stime,  # the feed server is reaped after the last snapshot
            "workers": sum(proc_cpu(p) for p in workers),
            "postgres": postgres_cpu(self.pgdata),
            "feed_server": proc_cpu(self.server_pid),
            "wall": time.perf_counter(),
        }

    def peak_rss_mib(self) -> tuple[float, float]:
        from infosentry.ingest import parsing

        workers = max([proc_hwm_mib(p) for p in parsing.PARSE_POOL.worker_pids()] or [0.0])
        return self_peak_rss_mib(), workers


def report(
    label: str,
    key: str,
    before: dict[str, float],
    after: dict[str, float],
    items: int,
    feeds: int,
    meter: Meter,
    target: float,
) -> None:
    wall = after["wall"] - before["wall"]
    main_cpu = after["self"] - before["self"]
    workers = after["workers"] - before["workers"]
    ours = main_cpu + workers + after["children"] - before["children"]
    pg = after["postgres"] - before["postgres"]
    rss_self, rss_workers = meter.peak_rss_mib()
    verdict = "ok" if wall <= target else "MISSED"
    print(
        f"{label}: {wall:.2f} s (target ≤ {target:g} s: {verdict}), {items} items stored, "
        f"{items / wall if wall else 0:.0f} items/s"
    )
    print(
        f"  CPU s: ingest {ours:.2f} (main {main_cpu:.2f}, parse workers {workers:.2f}), postgres {pg:.2f}, "
        f"feed server {after['feed_server'] - before['feed_server']:.2f}; "
        f"{(ours + pg) / feeds * 1000:.2f} ms CPU per feed (app + postgres)"
    )
    print(f"  peak RSS MiB: main {rss_self:.0f}, largest parse worker {rss_workers:.0f}")
    results.record(f"{key}.wall", wall, "s")
    if items:
        results.record(f"{key}.items_per_s", items / wall if wall else 0, "items/s", better="higher")
    results.record(f"{key}.cpu_app", ours, "s")
    results.record(f"{key}.cpu_main", main_cpu, "s")
    results.record(f"{key}.cpu_parse_workers", workers, "s")
    results.record(f"{key}.cpu_postgres", pg, "s")
    results.record(f"{key}.cpu_per_feed", (ours + pg) / feeds * 1000, "ms")
    results.record("peak_rss_main", rss_self, "MiB")
    results.record("peak_rss_parse_worker", rss_workers, "MiB")


class QueryCounter:
    """Counts the statements every asyncpg connection sends (a query logger on each new connection)."""

    def __init__(self) -> None:
        self.by_query: dict[str, list[float]] = {}
        self.enabled = False

    def install(self) -> None:
        import asyncpg.connection

        original = asyncpg.connection.Connection.__init__
        counter = self

        def init(conn: Any, *args: Any, **kwargs: Any) -> None:
            original(conn, *args, **kwargs)
            conn.add_query_logger(counter)

        asyncpg.connection.Connection.__init__ = init  # type: ignore[method-assign]
        self.enabled = True

    def __call__(self, record: Any) -> None:
        key = " ".join(record.query.split())[:160]
        entry = self.by_query.setdefault(key, [0, 0.0])
        entry[0] += 1
        entry[1] += record.elapsed

    def take(self) -> dict[str, list[float]]:
        taken, self.by_query = self.by_query, {}
        return taken


def report_queries(key: str, counts: dict[str, list[float]], feeds: int) -> None:
    total = sum(int(c) for c, _ in counts.values())
    seconds = sum(s for _, s in counts.values())
    print(f"  {total} statements ({total / feeds:.2f} per feed), {seconds:.2f} s waiting on them in all:")
    for query, (n, s) in sorted(counts.items(), key=lambda kv: -kv[1][0])[:12]:
        print(f"    {int(n):>6} x {s * 1000 / n:7.2f} ms  {query[:100]}")
    results.record(f"{key}.queries_per_feed", total / feeds, "queries")
    results.detail(f"{key}.queries", {q: {"count": int(n), "seconds": round(s, 4)} for q, (n, s) in counts.items()})


# --- the run -------------------------------------------------------------------------------------------------


async def bench(
    feeds: int,
    items: int,
    keep: bool,
    threads: bool,
    queries: QueryCounter | None = None,
    cprofile: str = "",
) -> None:
    from infosentry import (
        db,
        jobs,  # noqa: F401  registers the task that following a source nudges (ingest_due)
        migrate,
    )
    from infosentry.ingest import parsing
    from infosentry.ingest import run as ingest
    from infosentry.runtime import open_runtime
    from infosentry.settings import load_settings
    from infosentry.store import users as users_store
    from tests.conftest import due_count, follow, make_all_due

    data_dir = Path(tempfile.mkdtemp(prefix="infosentry-bench-"))
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=serve, args=(feeds, items, child), daemon=True)
    server.start()
    try:
        info = parent.recv()
        ports = info["ports"]
        print(
            f"{feeds} feeds × {items} items, {info['avg_bytes'] / 1024:.1f} KiB each, on {len(HOSTS)} loopback "
            f"addresses; {os.cpu_count()} CPUs"
        )
        dsn = db.embedded_server_uri(data_dir)
        async with db.plain_connection(dsn) as conn:
            await migrate.upgrade(conn)
        settings = replace(
            load_settings({"MAX_SOURCES_PER_USER": "100000"}),  # one user follows every bench feed
            database_url=dsn,
            data_dir=data_dir,
            fetch_allow_networks=("127.0.0.0/8",),
            log_format="text",
            log_level="WARNING",
        )
        async with open_runtime(settings, live_config=False) as rt:
            user = await users_store.create_user(rt.pool, "bench@example.com", is_admin=True)
            for n in range(feeds):
                host = HOSTS[n % len(HOSTS)]
                url = f"http://{host}:{ports[n % len(HOSTS)]}/feed/{n}.xml"
                await follow(rt, user["id"], url, name=f"feed {n}")
            await parsing.PARSE_POOL.run(_warm)  # a worker's parse processes start once, not per pass
            meter = Meter(data_dir / "pg", server.pid or 0)

            if queries:
                queries.take()
            profiler = start_profile(cprofile)
            before = meter.snapshot()
            while await due_count(rt):
                await ingest.run_due(rt, use_pool=not threads)
            after = meter.snapshot()
            stop_profile(profiler, cprofile)
            counted = queries.take() if queries else None
            stored = await rt.pool.fetchval("SELECT count(*) FROM items")
            report("first pass", "first_pass", before, after, stored, feeds, meter, 16)
            if counted is not None:
                report_queries("first_pass", counted, feeds)
            failed = await rt.pool.fetchval("SELECT count(*) FROM sources WHERE error_streak > 0")
            if failed:
                print(
                    f"  {failed} sources failed: "
                    + str(await rt.pool.fetchval("SELECT last_error FROM sources WHERE error_streak > 0 LIMIT 1"))
                )

            await make_all_due(rt)
            if queries:
                queries.take()
            before = meter.snapshot()
            while await due_count(rt):
                await ingest.run_due(rt)
            after = meter.snapshot()
            counted = queries.take() if queries else None
            not_modified = await rt.pool.fetchval("SELECT count(*) FROM ingest_logs WHERE status = 'not_modified'")
            report("second pass (304)", "second_pass", before, after, 0, feeds, meter, 1)
            print(f"  {not_modified} of {feeds} answered 304")
            if counted is not None:
                report_queries("second_pass", counted, feeds)
            results.record("items_stored", stored, "items", better=None)
            results.record("second_pass.not_modified", not_modified, "feeds", better=None)
            parsing.PARSE_POOL.shutdown()
    finally:
        parent.send("stop")
        server.join(5)
        if server.is_alive():
            server.kill()
        if keep:
            print(f"data dir kept: {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


def start_profile(path: str) -> Any:
    """cProfile of this (the main) process over the first pass: deterministic, so it slows that pass down, but it
    counts calls; the parse workers are not in it (py-spy --subprocesses sees them)."""
    if not path:
        return None
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def stop_profile(profiler: Any, path: str) -> None:
    if profiler is None:
        return
    import io
    import pstats

    profiler.disable()
    profiler.dump_stats(path)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(60)
    Path(path).with_suffix(".txt").write_text(out.getvalue())
    print(f"  cProfile of the main process over the first pass: {path} (top functions in .txt beside it)")


def _warm() -> Any:
    from infosentry.sources import ParsedFeed

    return ParsedFeed(items=[])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the data dir (inspect with psql)")
    parser.add_argument("--threads", action="store_true", help="parse in threads instead of the process pool")
    parser.add_argument(
        "--count-queries", action="store_true", help="count the statements sent per pass (adds a little CPU)"
    )
    parser.add_argument("--cprofile", default="", metavar="PATH", help="cProfile the main process over the first pass")
    results.add_argument(parser)
    args = parser.parse_args()
    queries = None
    if args.count_queries:
        queries = QueryCounter()
        queries.install()
    with results.session("ingest", args):
        asyncio.run(bench(args.feeds, args.items, args.keep, args.threads, queries, args.cprofile))


if __name__ == "__main__":
    main()
