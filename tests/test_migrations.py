"""Release and rollback of the schema: every migration's down part exactly undoes its up part (the whole catalog
is compared, as pg_dump --schema-only prints it), `migrate history`/`status` tell where the schema is, and every
role refuses to start on a schema that is behind, with one line that says what to do."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from infosentry import db, migrate
from infosentry.cli import main
from infosentry.ops import backup

_VOLATILE = re.compile(r"^(\\restrict|\\unrestrict|-- Dumped (from|by))")
# 0001's down part keeps the vector extension on purpose (it may predate us, and only a superuser can create
# it again); the comparison below is about our objects, the extension is checked separately.
_EXTENSION = re.compile(r"^(CREATE EXTENSION|COMMENT ON EXTENSION|-- Name: (vector|EXTENSION vector))")


def schema_dump(dsn: str) -> str:
    """The catalog as text: tables, columns, defaults, constraints, indexes, views, functions, triggers, types."""
    tools = backup.pick_tools(embedded=True, server_major=0)
    uri, env = db.libpq_env(dsn)
    out = subprocess.run(
        [tools("pg_dump"), "--schema-only", "--no-owner", "--no-privileges", f"--dbname={uri}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    lines = [
        ln
        for ln in out.splitlines()
        if ln.strip() not in ("", "--") and not _VOLATILE.match(ln) and not _EXTENSION.match(ln)
    ]
    return "\n".join(lines)


def has_vector(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'").fetchone()[0] == 1


async def _step(dsn: str, *, up: int | None = None, down: int | None = None) -> None:
    """Upgrade to `up` or downgrade to `down` (up=-1: head)."""
    async with db.plain_connection(dsn) as conn:
        if up is not None:
            await migrate.upgrade(conn, None if up < 0 else up)
        if down is not None:
            await migrate.downgrade(conn, down)


def _version(dsn: str) -> int:
    async def get() -> int:
        async with db.plain_connection(dsn) as conn:
            return (await migrate.status(conn)).current

    return asyncio.run(get())


@pytest.fixture
def blank(pg_base_uri: str) -> str:
    """An empty database (no schema at all)."""
    name = f"mig_{os.getpid()}"
    with psycopg.connect(db.with_database(pg_base_uri, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield db.with_database(pg_base_uri, name)
    with psycopg.connect(db.with_database(pg_base_uri, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_every_down_undoes_its_up(dsn: str, blank: str) -> None:
    head = len(migrate.load_migrations())
    assert head >= 1
    # reference catalogs: a fresh database taken up one migration at a time
    reference = {}
    for n in range(head + 1):
        asyncio.run(_step(blank, up=n))
        reference[n] = schema_dump(blank)
    assert len(set(reference.values())) >= 2  # the comparison can see a difference

    # the test database is at head: walk down one migration at a time, and back up each time
    assert _version(dsn) == head
    assert schema_dump(dsn) == reference[head]
    for n in range(head, 0, -1):
        asyncio.run(_step(dsn, down=n - 1))
        assert _version(dsn) == n - 1
        assert schema_dump(dsn) == reference[n - 1], (
            f"down from {n:04d} to {n - 1:04d} differs from a fresh {n - 1:04d}"
        )
        asyncio.run(_step(dsn, up=n))
        assert schema_dump(dsn) == reference[n], f"{n:04d}: down then up does not give the same schema"
        asyncio.run(_step(dsn, down=n - 1))
    assert _version(dsn) == 0 and has_vector(dsn)
    # and all the way up again in one go
    asyncio.run(_step(dsn, up=-1))
    assert _version(dsn) == head and schema_dump(dsn) == reference[head]


def _cli(dsn: str, *args: str) -> tuple[int, str, str]:
    runner = CliRunner()
    result = runner.invoke(main, list(args), env={"DATABASE_URL": dsn, "LOG_LEVEL": "WARNING"})
    return result.exit_code, result.stdout, result.stderr


def test_history_status_and_down_to(dsn: str) -> None:
    head = len(migrate.load_migrations())
    names = [m.name for m in migrate.load_migrations()]
    code, out, _ = _cli(dsn, "migrate", "status")
    assert code == 0 and f"schema at {head:04d}, head {head:04d} (current)" in out
    code, out, _ = _cli(dsn, "migrate", "history")
    assert code == 0 and len(out.splitlines()) == head
    assert all("applied" in line for line in out.splitlines()) and names[0] in out

    code, out, _ = _cli(dsn, "migrate", "down", "--to", "1")
    assert code == 0 and f"reverted {head:04d}_{names[-1]}" in out and "schema at 0001" in out
    code, out, _ = _cli(dsn, "migrate", "status")
    assert code == 1 and f"schema at 0001, head {head:04d} (behind)" in out
    code, out, _ = _cli(dsn, "migrate", "history")
    lines = out.splitlines()
    assert "applied" in lines[0] and all(line.endswith("pending") for line in lines[1:])

    code, _, err = _cli(dsn, "migrate", "down", "--to", str(head + 1))
    assert code != 0 and err.strip() == f"error: no migration {head + 1}; head is {head}"
    code, out, _ = _cli(dsn, "migrate")
    assert code == 0 and f"schema at {head:04d} (head {head:04d})" in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "role", [["serve", "--role", "api"], ["serve", "--role", "all"], ["worker", "--queue", "email"]]
)
def test_roles_refuse_a_schema_that_is_behind(dsn: str, role: list[str], tmp_path: Path) -> None:
    asyncio.run(_step(dsn, down=1))
    env = {**os.environ, "DATABASE_URL": dsn, "LOG_LEVEL": "WARNING", "INFOSENTRY_DATA_DIR": str(tmp_path)}
    args = [*role, "--port", str(_free_port())] if role[0] == "serve" else role
    proc = subprocess.run(
        [sys.executable, "-m", "infosentry", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "listening on" not in ln]
    assert lines == [
        f"error: database schema is at 0001, code needs {len(migrate.load_migrations()):04d}: run 'infosentry migrate'"
    ], proc.stderr
