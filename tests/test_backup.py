"""Backup and restore: a round trip gives back every row of every table (compared by content, not only by
count), restore refuses a non-empty database without --yes and is all-or-nothing, retention prunes old files,
and the cron wrappers work on the embedded server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import psycopg
import pytest

from infosentry import db
from infosentry.domain import admin
from infosentry.errors import Conflict, Invalid, Unavailable
from infosentry.ops import backup
from infosentry.runtime import Runtime
from infosentry.settings import Settings
from infosentry.store import catalog as catalog_store
from tests.conftest import make_user

ROOT = Path(__file__).resolve().parents[1]


async def populate(rt: Runtime) -> None:
    """A little of everything: goals, sources, items with embeddings, matches, decisions, the push ledger,
    config overrides, budget and heartbeats (SQL, so this test does not depend on the pipeline's modules)."""
    uid, _ = await make_user(rt, "owner@example.com", admin=True)
    await admin.set_config(rt, {"LLM_ENABLED": False, "IMMEDIATE_THRESHOLD": 0.95}, who="test")
    async with rt.pool.acquire() as conn, conn.transaction():
        src = await conn.fetchval(
            """INSERT INTO sources (type, url, name, fetch_interval_sec, config)
               VALUES ('rss', 'http://127.0.0.1:9/feed.xml', 'Feed ✓ 中文', 600, '{"k": [1, 2]}') RETURNING id"""
        )
        await conn.execute("INSERT INTO subscriptions (user_id, source_id) VALUES ($1, $2)", uid, src)
        goal = await conn.fetchval(
            """INSERT INTO goals (user_id, name, description, priority_terms, embedding, embedding_model)
               VALUES ($1, 'Rust', 'Rust releases and async runtimes', '{rust,tokio}',
                       '[0.25,-0.5,0.125]'::vector, 'test') RETURNING id""",
            uid,
        )
        items = await conn.fetch(
            """INSERT INTO items (url, canonical_url, url_hash, title, snippet, source_id, title_key,
                                  embedding, embedding_model, embedding_status, published_at)
               SELECT 'http://127.0.0.1/' || i, 'http://127.0.0.1/' || i, md5(i::text), 'Item ' || i,
                      repeat('x', i), $1, 'item ' || i,
                      CASE WHEN i % 3 = 0 THEN NULL
                           ELSE format('[%s,%s,%s]', i / 7.0, -i / 3.0, 1.0 / i)::vector END,
                      CASE WHEN i % 3 = 0 THEN NULL ELSE 'test' END,
                      CASE WHEN i % 3 = 0 THEN 'pending' ELSE 'done' END,
                      now() - make_interval(hours => i)
               FROM generate_series(1, 40) i RETURNING id""",
            src,
        )
        ids = [r["id"] for r in items]
        await conn.execute("""INSERT INTO item_sources (item_id, source_id, url) SELECT id, $1, url FROM items""", src)
        await conn.execute(
            """INSERT INTO matches (goal_id, item_id, score, components, reasons)
               SELECT $1, id, (id % 10) / 10.0, jsonb_build_object('cos', id / 100.0), '["because"]'
               FROM items WHERE id = ANY($2)""",
            goal,
            ids,
        )
        run = await conn.fetchval(
            """INSERT INTO agent_runs (goal_id, item_id, trigger, status, input, fallback_reason)
               VALUES ($1, $2, 'test', 'FALLBACK', '{"snapshot": true}', 'llm_disabled') RETURNING id""",
            goal,
            ids[0],
        )
        await conn.execute(
            """INSERT INTO decisions (goal_id, item_id, tier, status, score, reason, run_id)
               SELECT $1, id, CASE WHEN id % 2 = 0 THEN 'BATCH' ELSE 'DIGEST' END,
                      CASE WHEN id % 4 = 0 THEN 'pushed' ELSE 'pending' END, 0.8, 'r', $2
               FROM items WHERE id = ANY($3)""",
            goal,
            run,
            ids[:20],
        )
        email = await conn.fetchval(
            """INSERT INTO emails (dedupe_key, kind, user_id, goal_id, to_addr, subject, body_text, body_html)
               VALUES ('batch:1', 'batch', $1, $2, 'owner@example.com', 'S', 'T', '<p>T</p>') RETURNING id""",
            uid,
            goal,
        )
        await conn.execute(
            """INSERT INTO notifications (user_id, goal_id, item_id, decision_id, tier, score, email_id)
               SELECT $1, d.goal_id, d.item_id, d.id, d.tier, d.score, $2 FROM decisions d WHERE d.status = 'pushed'""",
            uid,
            email,
        )
        await conn.execute(
            """INSERT INTO budget_days (day, embed_requests, embed_usd, llm_calls, llm_usd, breaker_open)
               VALUES (current_date, 3, 0.0001, 2, 0.002, true)"""
        )
        await conn.execute(
            """INSERT INTO worker_heartbeats (id, role, queues, pid, host, started_at, last_seen_at)
               VALUES ('h:1', 'worker', '{embed}', 1, 'h', now(), now())"""
        )


async def fingerprint(dsn: str) -> dict[str, str]:
    """md5 over every row of every table (rows in a canonical order) and every sequence position."""
    conn = await asyncpg.connect(dsn)
    try:
        prints = {}
        for table in await catalog_store.list_tables(conn):
            prints[table] = await conn.fetchval(
                f"SELECT count(*) || ':' || md5(coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), '')) "
                f'FROM public."{table}" r'
            )
        for seq in await conn.fetch("SELECT schemaname, sequencename FROM pg_sequences WHERE schemaname = 'public'"):
            row = await conn.fetchrow(f'SELECT last_value, is_called FROM public."{seq["sequencename"]}"')
            prints[f"seq:{seq['sequencename']}"] = f"{row['last_value']}/{row['is_called']}"
        return prints
    finally:
        await conn.close()


def _admin(base: str) -> psycopg.Connection:
    return psycopg.connect(db.with_database(base, "postgres"), autocommit=True)


@pytest.fixture
def empty_db(pg_base_uri: str) -> str:
    """A brand-new database without any schema or extension (a fresh server after a disaster)."""
    name = f"restore_{os.getpid()}_{datetime.now(UTC).strftime('%H%M%S%f')}"
    with _admin(pg_base_uri) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield db.with_database(pg_base_uri, name)
    with _admin(pg_base_uri) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_round_trip_restores_every_row(rt: Runtime, settings: Settings, tmp_path: Path, empty_db: str) -> None:
    await populate(rt)
    original = await fingerprint(rt.dsn)
    assert {"goals", "sources", "items", "decisions", "config", "procrastinate_jobs"} <= set(original)

    out = tmp_path / "backups"
    result = await backup.backup(settings, out)
    assert result.path.parent == out and result.path.name.startswith("infosentry-") and result.path.suffix == ".dump"
    assert result.size == result.path.stat().st_size > 0
    assert "pginstall" in result.tools  # DATABASE_URL on an 18 server, system pg_dump 15: the bundled one
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["tables"]["items"] == 40 and manifest["tables"]["decisions"] == 20
    assert manifest["migration"] == result.migration >= 1
    assert manifest["sha256"] and manifest["bytes"] == result.size

    # 1) disaster: a brand-new empty database (no schema, no extension)
    fresh = replace(settings, database_url=empty_db)
    restored = await backup.restore(fresh, result.path)
    assert restored.mismatches == {} and restored.tables == manifest["tables"]
    assert restored.migration == restored.head == manifest["migration"]
    assert await fingerprint(empty_db) == original

    # 2) a bad change after the backup: restore refuses, then --yes puts every row back as it was
    async with rt.pool.acquire() as conn:
        await conn.execute("DELETE FROM decisions WHERE id % 2 = 0")
        await conn.execute("UPDATE goals SET name = 'changed', embedding = '[1,1,1]'")
        await conn.execute("UPDATE items SET embedding = NULL, embedding_status = 'pending'")
        await conn.execute("INSERT INTO config (key, value) VALUES ('EMAIL_ENABLED', 'false')")
        await conn.execute("CREATE TABLE stray (x int)")  # an object the backup does not know
    assert await fingerprint(rt.dsn) != original
    with pytest.raises(Conflict, match=r"not empty .* --yes"):
        await backup.restore(settings, result.path)
    restored = await backup.restore(settings, result.path, yes=True)
    assert "decisions" in restored.wiped and restored.mismatches == {}
    after = await fingerprint(rt.dsn)
    assert after == original
    # the sequences continue where they were: new rows do not collide with restored ones
    async with rt.pool.acquire() as conn:
        top = await conn.fetchval("SELECT max(id) FROM decisions")
        new_id = await conn.fetchval(
            "INSERT INTO decisions (goal_id, item_id, tier, score) SELECT goal_id, item_id, 'BATCH', 0.8 "
            "FROM matches WHERE (goal_id, item_id) NOT IN (SELECT goal_id, item_id FROM decisions) LIMIT 1 "
            "RETURNING id"
        )
        assert new_id > top


async def test_restore_is_all_or_nothing(rt: Runtime, settings: Settings, tmp_path: Path, monkeypatch) -> None:
    await populate(rt)
    result = await backup.backup(settings, tmp_path)
    before = await fingerprint(rt.dsn)

    # a truncated copy: the manifest's checksum catches it before anything is touched; without the manifest,
    # pg_restore cannot read it
    broken = tmp_path / "copy" / result.path.name
    broken.parent.mkdir()
    broken.write_bytes(result.path.read_bytes()[: result.size // 2])
    shutil.copy(result.manifest_path, backup.manifest_of(broken))
    with pytest.raises(Invalid, match="does not match its manifest"):
        await backup.restore(settings, broken, yes=True)
    backup.manifest_of(broken).unlink()
    with pytest.raises(Unavailable, match="is this a backup"):
        await backup.restore(settings, broken, yes=True)

    # pg_restore dies half-way through (after the wipe and part of the data went in): psql is stopped before
    # it sees the end of its script, so the transaction never commits
    real = backup.pick_tools(embedded=True, server_major=0)
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "psql").symlink_to(real("psql"))
    (fake / "pg_restore").write_text(
        "#!/bin/bash\n"
        f'for a in "$@"; do [ "$a" = --list ] && exec {real("pg_restore")} "$@"; done\n'
        f'{real("pg_restore")} "$@" | head -n 400\n'
        "echo 'pg_restore: error: could not uncompress data: invalid block' >&2; exit 1\n"
    )
    (fake / "pg_restore").chmod(0o755)
    monkeypatch.setattr(backup, "pick_tools", lambda **_: backup.Tools(fake, real.major))
    with pytest.raises(Unavailable, match=r"rolled back, the database is unchanged.*could not uncompress"):
        await backup.restore(settings, result.path, yes=True)
    assert await fingerprint(rt.dsn) == before
    monkeypatch.undo()

    # not a backup at all
    junk = tmp_path / "junk.dump"
    junk.write_text("hello")
    with pytest.raises(Unavailable, match="is this a backup"):
        await backup.restore(settings, junk, yes=True)
    with pytest.raises(Invalid, match="no such backup"):
        await backup.restore(settings, tmp_path / "missing.dump", yes=True)
    assert await fingerprint(rt.dsn) == before


async def test_retention_and_names(rt: Runtime, settings: Settings, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    old = [tmp_path / f"infosentry-{(now - timedelta(days=d)).strftime('%Y%m%dT%H%M%SZ')}.dump" for d in (8, 30)]
    young = tmp_path / f"infosentry-{(now - timedelta(days=6)).strftime('%Y%m%dT%H%M%SZ')}.dump"
    other = tmp_path / "notes.dump"  # not ours: never touched
    for path in [*old, young, other]:
        path.write_bytes(b"x")
        backup.manifest_of(path).write_text("{}")
    first = await backup.backup(settings, tmp_path, keep_days=0)
    assert first.removed == [] and all(p.exists() for p in old)
    second = await backup.backup(settings, tmp_path)  # default 7 days
    assert sorted(second.removed) == sorted(old)
    assert not any(p.exists() or backup.manifest_of(p).exists() for p in old)
    assert young.exists() and other.exists() and first.path.exists() and second.path.exists()
    assert first.path != second.path  # same second: a distinct name, nothing overwritten
    assert backup.list_backups(tmp_path) == [young, first.path, second.path]  # oldest first
    with pytest.raises(Invalid):
        await backup.backup(settings, tmp_path, keep_days=-1)


async def test_backups_are_private_whatever_the_umask(rt: Runtime, settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "new" / "backups"  # both folders are created by the backup
    old_umask = os.umask(0)
    try:
        result = await backup.backup(settings, out)
    finally:
        os.umask(old_umask)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in (result.path, result.manifest_path)} == {
        result.path.name: "0o600",
        result.manifest_path.name: "0o600",
    }
    assert oct(out.stat().st_mode & 0o777) == "0o700" and oct(out.parent.stat().st_mode & 0o777) == "0o700"


def test_tool_choice() -> None:
    bundled = backup.pick_tools(embedded=True, server_major=18)
    assert "pginstall" in str(bundled.bin_dir) and bundled.major >= 18
    assert backup.pick_tools(embedded=False, server_major=16).major >= 16
    with pytest.raises(Unavailable, match="older than the database server"):
        backup.pick_tools(embedded=False, server_major=99)
    uri, env = db.libpq_env("postgresql://app:s%40cret@127.0.0.1:5432/infosentry?sslmode=disable")
    assert "s%40cret" not in uri and "secret" not in uri and env["PGPASSWORD"] == "s@cret"
    assert uri == "postgresql://app@127.0.0.1:5432/infosentry?sslmode=disable"


def _fake_checkout(tmp_path: Path) -> Path:
    """bin/backup and bin/restore in a throwaway checkout whose .venv points at ours (stamped as installed),
    so the wrappers run exactly as under cron without reinstalling anything."""
    root = tmp_path / "checkout"
    (root / "bin").mkdir(parents=True)
    for name in ("_venv.sh", "backup", "restore"):
        shutil.copy2(ROOT / "bin" / name, root / "bin" / name)
    shutil.copy2(ROOT / "pyproject.toml", root / "pyproject.toml")
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    (venv_bin / "infosentry").symlink_to(Path(sys.executable).parent / "infosentry")
    digest = subprocess.run(["sha256sum", str(root / "pyproject.toml")], capture_output=True, text=True)
    (root / ".venv" / ".installed").write_text(digest.stdout.split()[0] + "\n")
    return root


@pytest.mark.slow
def test_cron_wrappers_on_the_embedded_server(tmp_path: Path) -> None:
    root = _fake_checkout(tmp_path)
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(INFOSENTRY_DATA_DIR=str(data), LOG_LEVEL="WARNING")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "infosentry", *args], env=env, capture_output=True, text=True, timeout=60
        )

    def wrapper(name: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(root / "bin" / name), *args], env=env, capture_output=True, text=True, timeout=60)

    assert cli("migrate").returncode == 0
    assert cli("user", "create", "--email", "cron@example.com").returncode == 0
    assert cli("config", "set", "EMAIL_ENABLED", "false").returncode == 0

    made = wrapper("backup")
    assert made.returncode == 0, made.stderr
    file = Path(made.stdout.split()[0])
    assert file.parent == data / "backups" and file.is_file()
    assert re.search(r"\d KB .* schema \d{4}", made.stdout), made.stdout

    assert cli("config", "set", "EMAIL_ENABLED", "true").returncode == 0
    refused = wrapper("restore", str(file))
    assert refused.returncode != 0 and "--yes" in refused.stderr and "Traceback" not in refused.stderr
    done = wrapper("restore", str(file), "--yes")
    assert done.returncode == 0, done.stderr
    assert "users" in done.stdout and "ok" in done.stdout and "schema at" in done.stdout
    value = cli("config", "get", "EMAIL_ENABLED")
    assert value.stdout.strip() == "false"

    as_json = wrapper("backup", "--json", "--keep-days", "0")
    data_out = json.loads(as_json.stdout)
    assert data_out["tables"]["users"] == 1 and Path(data_out["file"]).is_file()


def test_backup_reports_a_missing_database(tmp_path: Path, settings: Settings) -> None:
    gone = replace(settings, database_url=db.with_database(settings.database_url, "nope"))
    with pytest.raises(Unavailable):
        asyncio.run(backup.backup(gone, tmp_path))
