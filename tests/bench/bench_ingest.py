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

HOSTS = [f"127.0.0.{i}" for i in range(1, 9)]
CLK = os.sysconf("SC_CLK_TCK")


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


def proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def proc_hwm_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def postgres_pids(pgdata: Path) -> list[int]:
    try:
        master = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    pids = [master]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == master:
                pids.append(int(entry.name))
    return pids


class Meter:
    """CPU seconds of this process, its parse workers and waited children; Postgres and the feed server apart."""

    def __init__(self, pgdata: Path, server_pid: int) -> None:
        self.pgdata, self.server_pid = pgdata, server_pid

    def snapshot(self) -> dict[str, float]:
        from infosentry.ingest import parsing

        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        workers = parsing.PARSE_POOL.worker_pids()
        return {
            "self": me.ru_utime + me.ru_stime,
            "children": kids.ru_utime + kids.ru_stime,  # the feed server is reaped after the last snapshot
            "workers": sum(proc_cpu(p) for p in workers),
            "postgres": sum(proc_cpu(p) for p in postgres_pids(self.pgdata)),
            "feed_server": proc_cpu(self.server_pid),
            "wall": time.perf_counter(),
        }

    def peak_rss_mib(self) -> tuple[float, float]:
        from infosentry.ingest import parsing

        me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        workers = max([proc_hwm_mib(p) for p in parsing.PARSE_POOL.worker_pids()] or [0.0])
        return me, workers


def report(
    label: str, before: dict[str, float], after: dict[str, float], items: int, meter: Meter, target: float
) -> None:
    wall = after["wall"] - before["wall"]
    ours = sum(after[k] - before[k] for k in ("self", "children", "workers"))
    rss_self, rss_workers = meter.peak_rss_mib()
    verdict = "ok" if wall <= target else "MISSED"
    print(
        f"{label}: {wall:.2f} s (target ≤ {target:g} s: {verdict}), {items} items stored, "
        f"{items / wall if wall else 0:.0f} items/s"
    )
    print(
        f"  CPU s: ingest {ours:.2f} (main {after['self'] - before['self']:.2f}, parse workers "
        f"{after['workers'] - before['workers']:.2f}), postgres {after['postgres'] - before['postgres']:.2f}, "
        f"feed server {after['feed_server'] - before['feed_server']:.2f}"
    )
    print(f"  peak RSS MiB: main {rss_self:.0f}, largest parse worker {rss_workers:.0f}")


# --- the run -------------------------------------------------------------------------------------------------


async def bench(feeds: int, items: int, keep: bool, threads: bool) -> None:
    from infosentry import db, migrate
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
            load_settings({}),
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

            before = meter.snapshot()
            while await due_count(rt):
                await ingest.run_due(rt, use_pool=not threads)
            after = meter.snapshot()
            stored = await rt.pool.fetchval("SELECT count(*) FROM items")
            report("first pass", before, after, stored, meter, 16)
            failed = await rt.pool.fetchval("SELECT count(*) FROM sources WHERE error_streak > 0")
            if failed:
                print(
                    f"  {failed} sources failed: "
                    + str(await rt.pool.fetchval("SELECT last_error FROM sources WHERE error_streak > 0 LIMIT 1"))
                )

            await make_all_due(rt)
            before = meter.snapshot()
            while await due_count(rt):
                await ingest.run_due(rt)
            after = meter.snapshot()
            not_modified = await rt.pool.fetchval("SELECT count(*) FROM ingest_logs WHERE status = 'not_modified'")
            report("second pass (304)", before, after, 0, meter, 1)
            print(f"  {not_modified} of {feeds} answered 304")
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


def _warm() -> Any:
    from infosentry.sources import ParsedFeed

    return ParsedFeed(items=[])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the data dir (inspect with psql)")
    parser.add_argument("--threads", action="store_true", help="parse in threads instead of the process pool")
    args = parser.parse_args()
    asyncio.run(bench(args.feeds, args.items, args.keep, args.threads))


if __name__ == "__main__":
    main()
