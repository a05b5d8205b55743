"""Backup and restore of the whole database with pg_dump / pg_restore (custom format), plus a manifest.

Format: `pg_dump -Fc` (custom format: zlib/gzip-compressed inside, one file, listable with `pg_restore -l`,
restorable selectively) named `infosentry-YYYYmmddTHHMMSSZ.dump`, next to `infosentry-….json`, a manifest with
the row count of every table, the migration version and the file's sha256, all taken in the dump's own snapshot.
Restore wipes our objects (never extensions) and loads the archive in ONE transaction: it either completes or
leaves the database as it was. Imports db, migrate, errors, settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from infosentry import db, migrate
from infosentry.errors import Conflict, Invalid, Unavailable
from infosentry.settings import Settings
from infosentry.store import catalog as catalog_store

PREFIX = "infosentry-"
SUFFIX = ".dump"
_STAMP = "%Y%m%dT%H%M%SZ"
# A dump holds every password hash, token digest and private feed URL: readable by its owner only, whatever
# the umask of the cron job or shell that runs the backup.
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
_NAME_RE = re.compile(r"^infosentry-(\d{8}T\d{6}Z)(?:-(\d+))?\.dump$")
_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)")

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# --- the PostgreSQL client tools ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    """pg_dump, pg_restore and psql of one installation (bin_dir) and its major version."""

    bin_dir: Path
    major: int

    def __call__(self, name: str) -> str:
        return str(self.bin_dir / name)


def tool_major(pg_dump: Path) -> int | None:
    import subprocess

    try:
        out = subprocess.run([str(pg_dump), "--version"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return None
    match = _VERSION_RE.search(out)
    return int(match.group(1)) if match else None


def pick_tools(*, embedded: bool, server_major: int) -> Tools:
    """The embedded server's bundled binaries for the embedded server; otherwise the newer of the system's and
    the bundled ones (pg_dump must not be older than the server, and a newer pg_restore reads older archives)."""
    candidates: list[Tools] = []
    bundled = db.embedded_bin_dir()
    if bundled and (bundled / "pg_dump").exists():
        major = tool_major(bundled / "pg_dump")
        if major:
            candidates.append(Tools(bundled, major))
    if embedded and candidates:
        return candidates[0]
    system = shutil.which("pg_dump")
    if system:
        major = tool_major(Path(system))
        if major and all((Path(system).parent / t).exists() for t in ("pg_restore", "psql")):
            candidates.append(Tools(Path(system).parent, major))
    if not candidates:
        raise Unavailable("pg_dump not found: install the PostgreSQL client (postgresql-client)")
    best = max(candidates, key=lambda t: t.major)
    if best.major < server_major:
        raise Unavailable(
            f"pg_dump {best.major} is older than the database server ({server_major}); "
            f"install postgresql-client-{server_major}"
        )
    return best


async def _run(argv: list[str], env: dict[str, str], what: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise Unavailable(f"{what} failed: {_last_error(err.decode(errors='replace'))}")
    return out.decode(errors="replace")


def _last_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()]
    return (errors or lines or ["no output"])[-1][:500]


# --- catalog helpers ---------------------------------------------------------------------------------------


async def _migration_version(conn: asyncpg.Connection) -> int:
    return (await migrate.status(conn)).current


async def _server_major(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SHOW server_version_num")) // 10000


# --- backup ------------------------------------------------------------------------------------------------


@dataclass
class BackupResult:
    path: Path
    manifest_path: Path
    size: int
    seconds: float
    tables: dict[str, int]
    migration: int
    tools: str
    removed: list[Path] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "manifest": str(self.manifest_path),
            "bytes": self.size,
            "seconds": round(self.seconds, 2),
            "rows": sum(self.tables.values()),
            "tables": self.tables,
            "migration": self.migration,
            "pg_dump": self.tools,
            "removed": [str(p) for p in self.removed],
        }


def default_dir(settings: Settings) -> Path:
    return settings.data_dir / "backups"


def _new_path(out_dir: Path, now: datetime) -> Path:
    base = f"{PREFIX}{now.strftime(_STAMP)}"
    path = out_dir / f"{base}{SUFFIX}"
    n = 1
    while path.exists() or path.with_suffix(".dump.partial").exists():
        path = out_dir / f"{base}-{n}{SUFFIX}"
        n += 1
    return path


def _make_private_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents as 0700; a folder that already exists keeps its mode.

    Not mkdir(mode=...): the umask filters that mode, and parents=True ignores it altogether.
    """
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            continue
        folder.chmod(PRIVATE_DIR)


def _open_private(path: Path, flags: int) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)  # the mode given to open() is filtered by the umask
    return fd


def manifest_of(path: Path) -> Path:
    return path.with_suffix(".json")


async def backup(
    settings: Settings, out_dir: Path | None = None, *, keep_days: int = 7, progress: Progress = _quiet
) -> BackupResult:
    """pg_dump the database into out_dir (default <data dir>/backups), write the manifest, prune old backups.

    Row counts are taken in the exported snapshot pg_dump then dumps, so the manifest describes exactly the
    archive's contents even while the service keeps writing.
    """
    if keep_days < 0:
        raise Invalid("--keep-days must be 0 (keep everything) or more")
    out_dir = (out_dir or default_dir(settings)).expanduser().resolve()
    _make_private_dirs(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # refuses a path that exists but is no folder
    dsn = db.resolve_dsn(settings)
    started = time.monotonic()
    now = datetime.now(UTC)
    path = _new_path(out_dir, now)
    partial = path.with_suffix(".dump.partial")
    async with db.plain_connection(dsn) as conn:
        tools = pick_tools(embedded=not settings.database_url, server_major=await _server_major(conn))
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            tables = await catalog_store.table_counts(conn)
            migration = await _migration_version(conn)
            database = await conn.fetchval("SELECT current_database()")
            server_version = await conn.fetchval("SHOW server_version")
            progress(
                f"backup: dumping {len(tables)} tables ({sum(tables.values())} rows, schema "
                f"{migration:04d}) of {database} with pg_dump {tools.major} to {path}"
            )
            try:
                # pg_dump truncates an existing file and keeps its mode: created private first, the dump
                # is never readable by others, not even while it is being written.
                os.close(_open_private(partial, os.O_EXCL))
                await _pg_dump(tools, dsn, snapshot, partial, len(tables), progress)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
    digest = _sha256(partial)
    partial.rename(path)
    size = path.stat().st_size
    manifest = {
        "format": "pg_dump custom (-Fc), restore with `infosentry restore FILE`",
        "file": path.name,
        "created_at": now.isoformat(),
        "database": database,
        "server_version": server_version,
        "pg_dump_major": tools.major,
        "migration": migration,
        "bytes": size,
        "sha256": digest,
        "tables": tables,
    }
    manifest_path = manifest_of(path)
    with os.fdopen(_open_private(manifest_path, os.O_TRUNC), "w", encoding="utf-8") as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    removed = prune(out_dir, keep_days, now=now, keep={path})
    return BackupResult(
        path,
        manifest_path,
        size,
        time.monotonic() - started,
        tables,
        migration,
        f"{tools('pg_dump')} ({tools.major})",
        removed,
    )


async def _pg_dump(tools: Tools, dsn: str, snapshot: str, target: Path, n_tables: int, progress: Progress) -> None:
    uri, env = db.libpq_env(dsn)
    argv = [
        tools("pg_dump"),
        "--format=custom",
        "--compress=6",
        "--verbose",
        f"--snapshot={snapshot}",
        "--lock-wait-timeout=60s",
        f"--file={target}",
        f"--dbname={uri}",
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    tail: list[str] = []
    done = 0
    tty = sys.stderr.isatty()
    try:
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            tail = [*tail[-20:], line]
            if "dumping contents of table" in line:
                done += 1
                name = line.rsplit("table", 1)[-1].strip().strip('"')
                size = target.stat().st_size if target.exists() else 0
                if tty:
                    print(
                        f"\r\033[Kbackup: table {done}/{n_tables} {name} ({_human(size)})",
                        end="",
                        file=sys.stderr,
                        flush=True,
                    )
        code = await proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    finally:
        if tty and done:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
    if code != 0:
        raise Unavailable(f"pg_dump failed: {_last_error(chr(10).join(tail))}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def backup_time(path: Path) -> datetime | None:
    """The UTC time in a backup's file name (not the mtime: copies keep their name, not their mtime)."""
    match = _NAME_RE.match(path.name)
    if not match:
        return None
    return datetime.strptime(match.group(1), _STAMP).replace(tzinfo=UTC)


def list_backups(out_dir: Path) -> list[Path]:
    """Backups in out_dir, oldest first."""
    if not out_dir.is_dir():
        return []
    found = []
    for path in out_dir.iterdir():
        match = _NAME_RE.match(path.name)
        if match and path.is_file():
            found.append((match.group(1), int(match.group(2) or 0), path))
    return [path for _, _, path in sorted(found)]


def prune(out_dir: Path, keep_days: int, *, now: datetime | None = None, keep: set[Path] | None = None) -> list[Path]:
    """Delete backups (and their manifests) older than keep_days, and stale partial files; 0 keeps all."""
    if keep_days <= 0:
        return []
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=keep_days)
    removed = []
    for path in list_backups(out_dir):
        stamp = backup_time(path)
        if stamp is not None and stamp < cutoff and path not in (keep or set()):
            path.unlink(missing_ok=True)
            manifest_of(path).unlink(missing_ok=True)
            removed.append(path)
    for partial in out_dir.glob(f"{PREFIX}*.dump.partial"):
        if datetime.fromtimestamp(partial.stat().st_mtime, UTC) < now - timedelta(days=1):
            partial.unlink(missing_ok=True)
    return removed


# --- restore -----------------------------------------------------------------------------------------------


# archive entries a non-owner cannot restore and that carry nothing of ours
_SKIP_TOC = re.compile(r"^\d+; \d+ \d+ COMMENT - EXTENSION ")


@dataclass
class RestoreResult:
    path: Path
    seconds: float
    tables: dict[str, int]
    expected: dict[str, int] | None
    migration: int
    head: int
    wiped: list[str]

    @property
    def mismatches(self) -> dict[str, tuple[int | None, int | None]]:
        if self.expected is None:
            return {}
        names = set(self.tables) | set(self.expected)
        return {
            n: (self.expected.get(n), self.tables.get(n))
            for n in sorted(names)
            if self.expected.get(n) != self.tables.get(n)
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "seconds": round(self.seconds, 2),
            "tables": self.tables,
            "expected": self.expected,
            "mismatches": {k: {"expected": e, "restored": r} for k, (e, r) in self.mismatches.items()},
            "migration": self.migration,
            "head": self.head,
            "replaced_nonempty_tables": self.wiped,
        }


def read_manifest(path: Path) -> dict[str, Any] | None:
    manifest = manifest_of(path)
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise Invalid(f"{manifest}: unreadable manifest ({exc}); move it away to restore without checks") from None
    return data if isinstance(data, dict) else None


async def restore(settings: Settings, path: Path, *, yes: bool = False, progress: Progress = _quiet) -> RestoreResult:
    """Replace the database's contents with the archive, atomically, then verify counts and schema version.

    Refuses a database whose tables hold any row unless yes=True (an empty, freshly migrated schema is fine).
    """
    path = path.expanduser().resolve()
    if not path.is_file():
        raise Invalid(f"{path}: no such backup file")
    manifest = read_manifest(path)
    if manifest is not None and manifest.get("sha256"):
        progress(f"restore: checking {path.name} against its manifest")
        if _sha256(path) != manifest["sha256"]:
            raise Invalid(f"{path}: content does not match its manifest (sha256): corrupt or truncated copy")
    started = time.monotonic()
    dsn = db.resolve_dsn(settings)
    async with db.plain_connection(dsn) as conn:
        tools = pick_tools(embedded=not settings.database_url, server_major=await _server_major(conn))
        filled = await catalog_store.nonempty_tables(conn)
        if filled and not yes:
            shown = ", ".join(filled[:6]) + (", ..." if len(filled) > 6 else "")
            raise Conflict(
                f"the database is not empty ({len(filled)} tables hold rows: {shown}); "
                "run again with --yes to replace its contents"
            )
        others = await catalog_store.other_connections(conn)
        if others:
            progress(
                f"restore: warning: {others} other connections to this database (stop the api and "
                "workers first; the restore waits for their locks)"
            )
    uri, env = db.libpq_env(dsn)
    progress(f"restore: reading {path.name} with pg_restore {tools.major}")
    toc = await _run([tools("pg_restore"), "--list", str(path)], env, "pg_restore --list (is this a backup?)")
    with tempfile.TemporaryDirectory(prefix="infosentry-restore-") as tmp:
        listing = Path(tmp) / "toc.list"
        listing.write_text("\n".join(ln for ln in toc.splitlines() if not _SKIP_TOC.match(ln)) + "\n")
        wipe = Path(tmp) / "wipe.sql"
        wipe.write_text(catalog_store.WIPE_SQL)
        progress(f"restore: replacing the contents of the database (one transaction) from {path.name}")
        await _restore_pipe(tools, uri, env, path, listing, wipe)
    async with db.plain_connection(dsn) as conn:
        progress("restore: analyzing and verifying")
        await conn.execute("ANALYZE")
        tables = await catalog_store.table_counts(conn)
        st = await migrate.status(conn)
    expected = manifest.get("tables") if manifest else None
    return RestoreResult(path, time.monotonic() - started, tables, expected, st.current, st.head, filled)


async def _restore_pipe(tools: Tools, uri: str, env: dict[str, str], archive: Path, listing: Path, wipe: Path) -> None:
    """pg_restore (archive -> SQL) relayed into psql --single-transaction (wipe + SQL): all or nothing.

    The relay, not a shell pipe, closes psql's input: only after pg_restore exited 0 does psql see the end of
    its script and commit; if pg_restore fails, psql is killed mid-transaction and the database is untouched.
    """
    producer = await asyncio.create_subprocess_exec(
        tools("pg_restore"),
        "--no-owner",
        "--no-privileges",
        f"--use-list={listing}",
        "--file=-",
        str(archive),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=1 << 20,
    )
    consumer = await asyncio.create_subprocess_exec(
        tools("psql"),
        "--no-psqlrc",
        "--quiet",
        "--set=ON_ERROR_STOP=1",
        "--single-transaction",
        f"--file={wipe}",
        "--file=-",
        f"--dbname={uri}",
        env={**env, "PGOPTIONS": "-c client_min_messages=warning"},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert producer.stdout and producer.stderr and consumer.stdin and consumer.stderr
    perr_task = asyncio.create_task(producer.stderr.read())
    cerr_task = asyncio.create_task(consumer.stderr.read())
    broken = False
    try:
        while chunk := await producer.stdout.read(1 << 16):
            try:
                consumer.stdin.write(chunk)
                await consumer.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                broken = True  # psql stopped on an error; its stderr says which
                break
        if broken:
            producer.kill()
        produced = await producer.wait()
        if produced != 0 and not broken:
            consumer.kill()  # before it sees EOF: the transaction is rolled back
        else:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                consumer.stdin.close()
        consumed = await consumer.wait()
    except BaseException:
        for proc in (producer, consumer):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        raise
    perr, cerr = (await perr_task).decode(errors="replace"), (await cerr_task).decode(errors="replace")
    if consumed != 0:
        reason = _last_error(cerr) if cerr.strip() else f"pg_restore failed: {_last_error(perr)}"
        raise Unavailable(f"restore failed and was rolled back, the database is unchanged: {reason}")
