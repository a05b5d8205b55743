"""API load check: `serve --role api` on an embedded database with seeded data, then 50 concurrent connections
for 30 s per route from a local aiohttp load generator (a separate process): GET /health, authenticated
GET /api/v1/notifications and GET /api/v1/goals/{id}/matches. Prints req/s, p50/p99 latency and errors.

    bin/bench api [--seconds 30] [--concurrency 50] [--log-level INFO] [--routes health,notifications,matches]

Targets (2 cores): >= 1,500 req/s for /health, >= 500 req/s for the list routes, zero errors.
Traffic stays on 127.0.0.1; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from infosentry import auth
from tests.bench import results as bench_results

TARGETS = {"health": 1500, "notifications": 500, "matches": 500, "me": 500}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "infosentry", *args], env=env, capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        raise SystemExit(f"infosentry {' '.join(args)} failed: {out.stderr}")
    return out.stdout.strip()


def seed(dsn: str, *, items: int = 1000) -> tuple[str, int]:
    """One user with a token, a source, `items` items, one goal with a match per item, 300 inbox entries."""
    token = auth.new_token()
    with psycopg.connect(dsn, autocommit=True) as conn:
        uid = conn.execute("INSERT INTO users (email) VALUES ('bench@example.com') RETURNING id").fetchone()[0]
        conn.execute(
            "INSERT INTO api_tokens (user_id, token_hash, prefix, scopes) VALUES (%s, %s, %s, %s)",
            (uid, auth.hash_token(token), token[:10], list(auth.USER_SCOPES)),
        )
        sid = conn.execute(
            "INSERT INTO sources (type, url, name, fetch_interval_sec, created_by)"
            " VALUES ('rss', 'https://bench.example/feed', 'Bench', 900, %s) RETURNING id",
            (uid,),
        ).fetchone()[0]
        conn.execute("INSERT INTO subscriptions (user_id, source_id) VALUES (%s, %s)", (uid, sid))
        gid = conn.execute(
            "INSERT INTO goals (user_id, name, description) VALUES (%s, 'Bench goal', 'Load testing') RETURNING id",
            (uid,),
        ).fetchone()[0]
        conn.execute(
            """INSERT INTO items (url, canonical_url, url_hash, title, snippet, source_id, title_key, published_at)
               SELECT 'https://bench.example/' || i, 'https://bench.example/' || i, md5('bench' || i),
                      'Item number ' || i, repeat('text ', 60), %s, 'item number ' || i, now() - i * interval '1 min'
               FROM generate_series(1, %s) i""",
            (sid, items),
        )
        conn.execute(
            """INSERT INTO item_sources (item_id, source_id, url) SELECT id, source_id, url FROM items""",
        )
        conn.execute(
            """INSERT INTO matches (goal_id, item_id, score, components, reasons)
               SELECT %s, id, 0.5 + (id %% 50) / 100.0, '{"semantic": 0.5}', '["bench"]' FROM items""",
            (gid,),
        )
        conn.execute(
            """INSERT INTO decisions (goal_id, item_id, tier, status, score, reason)
               SELECT goal_id, item_id, 'BATCH', 'pushed', score, 'bench' FROM matches"""
        )
        conn.execute(
            """INSERT INTO notifications (user_id, goal_id, item_id, decision_id, tier, score, reason)
               SELECT %s, d.goal_id, d.item_id, d.id, 'BATCH', d.score, 'bench' FROM decisions d
               ORDER BY d.item_id LIMIT 300""",
            (uid,),
        )
        conn.execute("ANALYZE")
    return token, gid


async def load(url: str, headers: dict[str, str], seconds: float, concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        # warm up the connections and the server's caches
        for _ in range(concurrency):
            async with session.get(url) as resp:
                await resp.read()
        deadline = time.perf_counter() + seconds

        async def one_connection() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    async with session.get(url) as resp:
                        await resp.read()
                        if resp.status != 200:
                            errors[str(resp.status)] = errors.get(str(resp.status), 0) + 1
                            continue
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(one_connection() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000 if latencies else float("nan")

    return {
        "requests": len(latencies),
        "req_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(pct(0.50), 2),
        "p99_ms": round(pct(0.99), 2),
        "errors": errors,
    }


def load_in_subprocess(url: str, token: str | None, seconds: float, concurrency: int) -> dict[str, Any]:
    """The load generator runs in its own process so it does not share an event loop with anything else."""
    code = (
        "import asyncio, json, sys; from tests.bench.bench_api import load; "
        "a = json.loads(sys.argv[1]); "
        "print(json.dumps(asyncio.run(load(a['url'], a['headers'], a['seconds'], a['concurrency']))))"
    )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    arg = json.dumps({"url": url, "headers": headers, "seconds": seconds, "concurrency": concurrency})
    out = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise SystemExit(f"load generator failed: {out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def wait_healthy(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the API did not become healthy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--log-level", default="INFO", help="LOG_LEVEL of the API process (INFO logs every request)")
    parser.add_argument("--routes", default="health,notifications,matches")
    bench_results.add_argument(parser)
    args = parser.parse_args()
    with bench_results.session("api", args):
        run(args)


def record_route(name: str, r: dict[str, Any]) -> None:
    bench_results.record(f"{name}.req_per_s", r["req_per_s"], "req/s", better="higher")
    bench_results.record(f"{name}.p50", r["p50_ms"], "ms")
    bench_results.record(f"{name}.p99", r["p99_ms"], "ms")
    bench_results.record(f"{name}.errors", sum(r["errors"].values()), "errors")


def run(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="infosentry-bench-"))
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(INFOSENTRY_DATA_DIR=str(data_dir), LOG_LEVEL=args.log_level, LOG_FORMAT="json")
    cli(env, "migrate")
    port = free_port()
    # the embedded server lives as long as a process uses it: start the API first, then seed through it
    server = subprocess.Popen(
        [sys.executable, "-m", "infosentry", "serve", "--role", "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    results: dict[str, Any] = {}
    try:
        wait_healthy(port)
        token, goal_id = seed(cli(env, "db", "uri"))
        routes = {
            "health": (f"{base}/health", None),
            "notifications": (f"{base}/api/v1/notifications", token),
            "matches": (f"{base}/api/v1/goals/{goal_id}/matches", token),
            "me": (f"{base}/api/v1/users/me", token),  # the cost of authentication alone
        }
        for name in args.routes.split(","):
            url, tok = routes[name]
            results[name] = load_in_subprocess(url, tok, args.seconds, args.concurrency)
            r = results[name]
            record_route(name, r)
            verdict = "ok" if r["req_per_s"] >= TARGETS[name] and not r["errors"] else "BELOW TARGET"
            print(
                f"{name:<14} {r['req_per_s']:>8.1f} req/s  p50 {r['p50_ms']:>7.2f} ms  p99 {r['p99_ms']:>7.2f} ms  "
                f"requests {r['requests']:>7}  errors {r['errors'] or 0}  (target {TARGETS[name]} req/s: {verdict})",
                flush=True,
            )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        shutil.rmtree(data_dir, ignore_errors=True)
    print(
        json.dumps(
            {"concurrency": args.concurrency, "seconds": args.seconds, "log_level": args.log_level, "results": results}
        )
    )


if __name__ == "__main__":
    main()
