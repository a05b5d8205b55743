"""Test harness: one embedded Postgres (pgvector) per session, a template database migrated once,
and a fresh database cloned from it for every test; app, runtime and account helpers on top.

Fake external servers live in tests/fakes/ (feeds, OpenAI-compatible, SMTP sink), all on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from infosentry import auth, db, migrate
from infosentry.domain import Actor, sources
from infosentry.runtime import Runtime, open_runtime
from infosentry.settings import Settings, load_settings
from infosentry.store import tokens as tokens_store
from infosentry.store import users as users_store

pytest_plugins = ["tests.fakes.fixtures", "tests.fakes.smtp", "tests.browser"]

TEMPLATE = "infosentry_template"
_counter = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    # A suite started in the background (`bin/test &`) inherits SIGINT as ignored, and so would every process it
    # starts: the tests that press Ctrl-C on a child would wait for ever. Children inherit the default again.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def pg_base_uri() -> Iterator[str]:
    """The session's embedded server (a URI without a database name)."""
    existing = os.environ.get("INFOSENTRY_TEST_PG")  # reuse an external server if given
    if existing:
        yield existing
        return
    data_dir = Path(tempfile.mkdtemp(prefix="infosentry-test-"))

    def stop() -> None:
        # explicitly, whoever else touched the server: processes the tests SIGKILLed stay in its handle list
        # and would keep it running after the suite (also when the run is interrupted: atexit)
        db.stop_embedded(data_dir / "pg")
        shutil.rmtree(data_dir, ignore_errors=True)

    atexit.register(stop)
    # a SIGTERM (CI timeout, a supervisor) would end the run without atexit: make it an interrupt, which runs it
    signal.signal(signal.SIGTERM, _interrupt)
    uri = db.embedded_server_uri(data_dir, database="postgres")
    try:
        yield uri
    finally:
        stop()
        atexit.unregister(stop)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _admin(uri: str) -> psycopg.Connection:
    return psycopg.connect(db.with_database(uri, "postgres"), autocommit=True)


@pytest.fixture(scope="session")
def template_dsn(pg_base_uri: str) -> str:
    with _admin(pg_base_uri) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
        conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
    dsn = db.with_database(pg_base_uri, TEMPLATE)

    async def up() -> None:
        async with db.plain_connection(dsn) as conn:
            await migrate.upgrade(conn)

    asyncio.run(up())
    return dsn


@pytest.fixture
def dsn(pg_base_uri: str, template_dsn: str) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    name = f"t{os.getpid()}_{next(_counter)}"
    with _admin(pg_base_uri) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}" STRATEGY FILE_COPY')
    yield db.with_database(pg_base_uri, name)
    with _admin(pg_base_uri) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(dsn: str, tmp_path: Path) -> Settings:
    base = load_settings({})
    return replace(
        base,
        database_url=dsn,
        data_dir=tmp_path,
        public_url="http://127.0.0.1:8000",
        fetch_allow_networks=("127.0.0.1/32",),
        log_format="text",
        smtp_host="",
    )


@pytest.fixture
async def rt(settings: Settings) -> AsyncIterator[Runtime]:
    async with open_runtime(settings) as runtime:
        yield runtime


async def make_user(
    rt: Runtime, email: str, *, admin: bool = False, scopes: list[str] | None = None
) -> tuple[int, str]:
    """Create a user and a token; returns (user_id, token)."""
    row = await users_store.create_user(rt.pool, email, is_admin=admin)
    token = auth.new_token()
    await tokens_store.insert_token(
        rt.pool,
        user_id=row["id"],
        token_hash=auth.hash_token(token),
        prefix=token[:10],
        scopes=auth.expand_scopes(scopes or [], is_admin=admin),
    )
    return row["id"], token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def follow(
    rt: Runtime,
    user_id: int,
    url: str,
    *,
    type: str = "rss",
    interval: int | None = None,
    config: dict[str, Any] | None = None,
    name: str | None = None,
) -> int:
    """Subscribe a user to a source the way the API does (no discovery); returns the source id."""
    body = {"url": url, "type": type, "fetch_interval_sec": interval, "config": config, "name": name}
    followed = await sources.follow(rt, Actor(user_id=user_id, email=""), {k: v for k, v in body.items() if v})
    return int(followed.source["id"])


async def source_row(rt: Runtime, source_id: int) -> dict[str, Any]:
    row = await rt.pool.fetchrow("SELECT * FROM sources WHERE id = $1", source_id)
    assert row is not None
    return dict(row)


async def due_count(rt: Runtime) -> int:
    """Sources due now that somebody follows (what the next ingest run would fetch)."""
    return int(
        await rt.pool.fetchval(
            """SELECT count(*) FROM sources s
               WHERE s.enabled AND s.next_fetch_at <= now()
                 AND EXISTS (SELECT 1 FROM subscriptions sub WHERE sub.source_id = s.id AND sub.enabled)"""
        )
    )


async def make_all_due(rt: Runtime) -> None:
    """Every source due now (a time jump for tests and benchmarks); leases are kept."""
    await rt.pool.execute("UPDATE sources SET next_fetch_at = now() WHERE lease_until IS NULL")
