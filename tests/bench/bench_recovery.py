"""Recovery after kill -9 (issue 12): `bin/bench recovery [--sources 6] [--items 4] [--delay 8]`.

A real `infosentry serve --role all` on an embedded Postgres fetches local feeds that answer slowly (`--delay`
seconds), so it is killed with SIGKILL while its fetches are in flight and their sources leased. It is started
again at once; the benchmark measures, from the restart, how long until every item is stored, decided and,
for the IMMEDIATE ones, emailed (SMTP_HOST=file:..., IMMEDIATE_COALESCE_MINUTES=0, the real lease settings).
Target: every item emailed ≤ 90 s after the restart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from infosentry import db
from tests.bench import results
from tests.fakes.feeds import FakeFeedServer

ROOT = Path(__file__).resolve().parents[2]
TERM = "sentinel"  # in every title and in the goal's priority terms: every item is on topic


def rss(n: int, items: int) -> str:
    entries = "".join(
        f"<item><title>Sentinel report {n}-{k}: reactor maintenance</title>"
        f"<link>https://news.example.com/{n}/{k}</link><description>Sentinel crews report on reactor {n}-{k}."
        f"</description><pubDate>{time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}</pubDate></item>"
        for k in range(items)
    )
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>Feed {n}</title>{entries}</channel></rss>'


def env_for(data_dir: Path, mail_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    env.update(
        INFOSENTRY_DATA_DIR=str(data_dir),
        SMTP_HOST=f"file:{mail_dir}",
        FETCH_ALLOW_NETWORKS="127.0.0.0/8",
        LOG_LEVEL="WARNING",
        IMMEDIATE_COALESCE_MINUTES="0",
        LLM_ENABLED="false",
        # low thresholds: the point is recovery, not relevance; every on-topic item is IMMEDIATE
        IMMEDIATE_THRESHOLD="0.2",
        BOUNDARY_LOW="0.2",
        BATCH_THRESHOLD="0.1",
        DIGEST_MIN_SCORE="0.05",
        IMMEDIATE_MAX_ITEMS="50",
    )
    return env


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "infosentry", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise SystemExit(f"infosentry {' '.join(args)} failed: {done.stderr[-500:]}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(env: dict[str, str]) -> subprocess.Popen[bytes]:
    port = str(free_port())
    return subprocess.Popen(
        [sys.executable, "-m", "infosentry", "serve", "--role", "all", "--port", port],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def state(pool: asyncpg.Pool) -> dict[str, int]:
    row = await pool.fetchrow(
        """SELECT (SELECT count(*) FROM items) AS items,
                  (SELECT count(*) FROM decisions) AS decided,
                  (SELECT count(*) FROM decisions WHERE tier = 'IMMEDIATE') AS immediate,
                  (SELECT count(*) FROM notifications n JOIN emails e ON e.id = n.email_id
                   WHERE n.tier = 'IMMEDIATE' AND e.status = 'sent') AS emailed,
                  (SELECT count(*) FROM sources WHERE lease_until > now()) AS leased"""
    )
    return dict(row)


async def bench(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="infosentry-bench-recovery-"))
    mail_dir = data_dir / "mail"
    env = env_for(data_dir, mail_dir)
    feeds = await FakeFeedServer().start()
    total = args.sources * args.items
    # this process holds the embedded server for the whole run (the last process out would stop it)
    dsn = db.embedded_server_uri(data_dir)
    try:
        cli(env, "migrate")
        cli(env, "user", "create", "--email", "ops@example.com", "--admin")
        cli(env, "goal", "add", "--name", "Sentinel", "--description", "Sentinel reactor reports", "--term", TERM)
        for n in range(args.sources):
            feeds.add(f"/feed{n}.xml", rss(n, args.items), delay=args.delay)
            cli(env, "source", "add", feeds.url(f"/feed{n}.xml"), "--no-discover")
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        assert pool is not None
        first = start_serve(env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (await state(pool))["leased"] < args.sources:
            await asyncio.sleep(0.2)
        leased = (await state(pool))["leased"]
        first.send_signal(signal.SIGKILL)  # mid-ingest: every source leased, no result written
        first.wait()
        print(f"killed serve (pid {first.pid}) with {leased} of {args.sources} sources leased, fetches in flight")
        restarted = time.monotonic()
        second = start_serve(env)
        marks: dict[str, float] = {}
        try:
            while time.monotonic() - restarted < args.timeout:
                s = await state(pool)
                elapsed = time.monotonic() - restarted
                if s["items"] >= total:
                    marks.setdefault("stored", elapsed)
                if s["items"] >= total and s["decided"] >= total:
                    marks.setdefault("decided", elapsed)
                if s["items"] >= total and s["immediate"] and s["emailed"] >= s["immediate"]:
                    marks.setdefault("emailed", elapsed)
                    break
                await asyncio.sleep(0.5)
            final = await state(pool)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
        await pool.close()
        print(f"after the restart ({total} items, {final['immediate']} IMMEDIATE, real lease settings):")
        for name in ("stored", "decided", "emailed"):
            value = marks.get(name)
            print(f"  every item {name}: {f'{value:.1f} s' if value is not None else 'NOT within the timeout'}")
            results.record(f"recovery.{name}", value, "s")
        emailed = marks.get("emailed")
        ok = emailed is not None and emailed <= 90
        print(f"target: every item emailed ≤ 90 s after the restart: {'met' if ok else 'NOT met'}")
        results.detail("final_state", final)
    finally:
        await feeds.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=6)
    parser.add_argument("--items", type=int, default=4)
    parser.add_argument("--delay", type=float, default=8.0, help="seconds each feed takes to answer")
    parser.add_argument("--timeout", type=float, default=300.0)
    results.add_argument(parser)
    args = parser.parse_args()
    with results.session("recovery", args):
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
