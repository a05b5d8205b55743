"""Property-based API fuzzing: schemathesis against the served /api/v1/openapi.json of a real `serve --role api`
on a fresh embedded database, authenticated with an admin token (every scope), a few objects seeded so that
generated ids sometimes hit real rows. Fails (exit 1) on any 5xx, undocumented status, wrong content type or
response that does not match its schema. Prints the number of generated requests.

    bin/bench fuzz [--examples 50] [--seed N] [--include-path-regex REGEX]

Needs schemathesis in .venv (`.venv/bin/pip install schemathesis`). Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from infosentry import auth
from tests.bench import results
from tests.bench.bench_api import cli, free_port, wait_healthy

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def seed(dsn: str) -> tuple[str, str]:
    """An admin with two tokens (the second is for the pass that may revoke tokens), and a small object of
    each kind (ids 1-3) so fuzzed ids can hit real rows."""
    token, spare = auth.new_token(), auth.new_token()
    with psycopg.connect(dsn, autocommit=True) as conn:
        uid = conn.execute(
            "INSERT INTO users (email, is_admin) VALUES ('fuzz@example.com', true) RETURNING id"
        ).fetchone()[0]
        conn.execute("INSERT INTO users (email) VALUES ('other@example.com')")
        conn.execute(
            # a far-away id: DELETE /api/v1/tokens/{id} with a fuzzed small id must not revoke the fuzzer itself
            "INSERT INTO api_tokens (id, user_id, token_hash, prefix, scopes) VALUES (%s, %s, %s, %s, %s)",
            (2**52 + 4711, uid, auth.hash_token(token), token[:10], list(auth.ALL_SCOPES)),
        )
        conn.execute(
            "INSERT INTO api_tokens (user_id, token_hash, prefix, scopes) VALUES (%s, %s, %s, %s)",
            (uid, auth.hash_token(spare), spare[:10], list(auth.ALL_SCOPES)),
        )
        for i in (1, 2, 3):
            sid = conn.execute(
                "INSERT INTO sources (type, url, name, fetch_interval_sec, created_by, next_fetch_at)"
                " VALUES ('rss', %s, %s, 900, %s, now() + interval '1 day') RETURNING id",
                (f"https://fuzz.example/{i}.xml", f"Fuzz {i}", uid),
            ).fetchone()[0]
            conn.execute("INSERT INTO subscriptions (user_id, source_id) VALUES (%s, %s)", (uid, sid))
            gid = conn.execute(
                "INSERT INTO goals (user_id, name, description, priority_terms) VALUES (%s, %s, 'fuzzing', '{ai}')"
                " RETURNING id",
                (uid, f"Goal {i}"),
            ).fetchone()[0]
            iid = conn.execute(
                "INSERT INTO items (url, canonical_url, url_hash, title, source_id, title_key)"
                " VALUES (%s, %s, md5(%s), %s, %s, %s) RETURNING id",
                (f"https://fuzz.example/a{i}", f"https://fuzz.example/a{i}", f"a{i}", f"Item {i}", sid, f"item {i}"),
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO matches (goal_id, item_id, score, components) VALUES (%s, %s, 0.8, '{}')", (gid, iid)
            )
            did = conn.execute(
                "INSERT INTO decisions (goal_id, item_id, tier, status, score) VALUES (%s, %s, 'BATCH', 'pushed', 0.8)"
                " RETURNING id",
                (gid, iid),
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO notifications (user_id, goal_id, item_id, decision_id, tier, score)"
                " VALUES (%s, %s, %s, %s, 'BATCH', 0.8)",
                (uid, gid, iid, did),
            )
            conn.execute(
                "INSERT INTO agent_runs (goal_id, item_id, trigger, status, input)"
                " VALUES (%s, %s, 'match', 'SUCCESS', '{}')",
                (gid, iid),
            )
    return token, spare


# schemathesis feeds ids it saw in responses (GET /api/v1/tokens) to other operations: revoking tokens runs
# last, in its own pass, with a token of its own
REVOKE = "^/api/v1/tokens/{id}$"


def run_schemathesis(command: list[str], cwd: Path) -> tuple[int, int]:
    """(exit code, generated requests) of one schemathesis run, its output passed through."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)
    assert proc.stdout is not None
    generated = 0
    for line in proc.stdout:
        sys.stdout.write(line)
        if match := re.search(r"(\d+) generated", line):
            generated = int(match.group(1))
    return proc.wait(), generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=50, help="max generated examples per operation")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--include-path-regex", default=None)
    parser.add_argument("--checks", default=CHECKS)
    parser.add_argument("--phases", default="examples,coverage,fuzzing")
    results.add_argument(parser)
    args = parser.parse_args()
    with results.session("fuzz", args):
        code = run(args)
        results.record("failures", 0 if code == 0 else 1, "runs failed")
    sys.exit(code)


def run(args: argparse.Namespace) -> int:
    exe = Path(sys.executable).with_name("schemathesis")
    if not exe.exists():
        raise SystemExit("schemathesis is not installed: .venv/bin/pip install schemathesis")

    data_dir = Path(tempfile.mkdtemp(prefix="infosentry-fuzz-"))
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(INFOSENTRY_DATA_DIR=str(data_dir), LOG_LEVEL="WARNING", LOG_FORMAT="json")
    cli(env, "migrate")
    port = free_port()
    log_path = data_dir / "server.log"
    log = log_path.open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "infosentry", "serve", "--role", "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    code = 1
    try:
        wait_healthy(port)
        token, spare = seed(cli(env, "db", "uri"))

        def command(bearer: str) -> list[str]:
            cmd = [
                str(exe),
                "run",
                f"http://127.0.0.1:{port}/api/v1/openapi.json",
                "--header",
                f"Authorization: Bearer {bearer}",
                "--checks",
                args.checks,
                "--phases",
                args.phases,
                "--max-examples",
                str(args.examples),
                "--workers",
                "2",
                "--request-timeout",
                "10",
                "--max-redirects",
                "0",
                "--no-color",
            ]
            return cmd + (["--seed", str(args.seed)] if args.seed is not None else [])

        started = time.monotonic()
        main_pass = [*command(token), "--exclude-path-regex", REVOKE]
        if args.include_path_regex:
            main_pass += ["--include-path-regex", args.include_path_regex]
        code, generated = run_schemathesis(main_pass, data_dir)
        if not args.include_path_regex:
            code2, generated2 = run_schemathesis([*command(spare), "--include-path-regex", REVOKE], data_dir)
            code, generated = max(code, code2), generated + generated2
        took = time.monotonic() - started
        print(f"fuzz: {generated} generated requests in {took:.0f} s, exit {code}", flush=True)
        results.record("generated_requests", generated, "requests", better=None)
        results.record("requests_per_s", generated / took if took else 0, "req/s", better="higher")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        log.close()
        # aiohttp's HTTP parser logs the 400 it answers to a malformed request (a NUL in a header) as an error
        errors = [
            line
            for line in log_path.read_text().splitlines()
            if '"level": "error"' in line and "BadHttpMessage" not in line
        ]
        causes: dict[str, int] = {}
        for line in errors:
            record = json.loads(line)
            exc = record.get("exc", record.get("msg", "")).strip().splitlines()
            where = [x.strip() for x in exc if x.strip().startswith('File "/') and "/infosentry/" in x]
            key = f"{exc[-1] if exc else '?'} at {where[-1] if where else '?'}"
            causes[key] = causes.get(key, 0) + 1
        for cause, n in causes.items():
            print(f"server error x{n}: {cause}")
        results.record("server_errors", len(errors), "log lines")
        shutil.rmtree(data_dir, ignore_errors=True)
    return code


if __name__ == "__main__":
    main()
