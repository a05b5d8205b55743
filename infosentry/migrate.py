"""Schema migrations: plain SQL files in sql/migrations, each with an up and a down part.

`NNNN_name.sql` holds `-- migrate:up` then `-- migrate:down`; applied versions are recorded in
schema_migrations; each step runs in its own transaction under an advisory lock, so two
`migrate` calls never interleave. procrastinate's own schema is applied once, before ours.
Imports paths, errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from infosentry.errors import Invalid, SchemaBehind
from infosentry.paths import sql_dir

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_MARKER_RE = re.compile(r"^-- migrate:(up|down)[ \t]*$", re.MULTILINE)
_LOCK_ID = 0x1F05E7  # advisory lock key for migrations


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: str
    down: str


@dataclass(frozen=True)
class Status:
    current: int
    head: int
    applied: list[tuple[int, str, datetime]]

    @property
    def pending(self) -> int:
        return self.head - self.current


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or sql_dir() / "migrations"
    migrations = []
    for path in sorted(directory.iterdir()):
        match = _FILE_RE.match(path.name)
        if not match:
            continue
        text = path.read_text(encoding="utf-8")
        parts = _MARKER_RE.split(text)
        # parts: [header, 'up', up_sql, 'down', down_sql]
        if len(parts) != 5 or parts[1] != "up" or parts[3] != "down":
            raise Invalid(f"{path.name}: needs a '-- migrate:up' line, then a '-- migrate:down' line")
        migrations.append(Migration(int(match.group(1)), match.group(2), parts[2].strip(), parts[4].strip()))
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise Invalid(f"migrations must be numbered 0001, 0002, ... without gaps; found {versions}")
    return migrations


async def _ensure_bookkeeping(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version    integer PRIMARY KEY,
               name       text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )


async def _ensure_procrastinate(conn: asyncpg.Connection) -> bool:
    if await conn.fetchval("SELECT to_regclass('procrastinate_jobs') IS NOT NULL"):
        return False
    from procrastinate.schema import SchemaManager

    await conn.execute(SchemaManager.get_schema())
    return True


async def status(conn: asyncpg.Connection) -> Status:
    head = len(load_migrations())
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    rows = []
    if exists:
        rows = await conn.fetch("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
    applied = [(r["version"], r["name"], r["applied_at"]) for r in rows]
    current = applied[-1][0] if applied else 0
    return Status(current=current, head=head, applied=applied)


async def upgrade(conn: asyncpg.Connection, to: int | None = None) -> list[Migration]:
    """Apply pending migrations up to `to` (default head); return what was applied."""
    migrations = load_migrations()
    target = len(migrations) if to is None else to
    if not 0 <= target <= len(migrations):
        raise Invalid(f"no migration {target}; head is {len(migrations)}")
    done = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        await _ensure_bookkeeping(conn)
        await _ensure_procrastinate(conn)
        current = (await status(conn)).current
        for migration in migrations[current:target]:
            async with conn.transaction():
                await conn.execute(migration.up)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            done.append(migration)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return done


async def downgrade(conn: asyncpg.Connection, to: int) -> list[Migration]:
    """Revert applied migrations above `to` (0 reverts everything of ours)."""
    migrations = load_migrations()
    if not 0 <= to <= len(migrations):
        raise Invalid(f"no migration {to}; head is {len(migrations)}")
    done = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        await _ensure_bookkeeping(conn)
        current = (await status(conn)).current
        for migration in reversed(migrations[to:current]):
            async with conn.transaction():
                await conn.execute(migration.down)
                await conn.execute("DELETE FROM schema_migrations WHERE version = $1", migration.version)
            done.append(migration)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return done


async def check_current(conn: asyncpg.Connection) -> None:
    """Raise SchemaBehind with a one-line message unless the schema is at head."""
    st = await status(conn)
    if st.current < st.head:
        raise SchemaBehind(
            f"database schema is at {st.current:04d}, code needs {st.head:04d}: run 'infosentry migrate'"
        )
    if st.current > st.head:
        raise SchemaBehind(
            f"database schema {st.current:04d} is newer than this code ({st.head:04d}): "
            "upgrade the code or run 'infosentry migrate down' with the newer release"
        )
