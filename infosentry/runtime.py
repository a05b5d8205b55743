"""Runtime: what one process opens once and hands to every step (settings, pool, hot config, clients).

`open_runtime` opens and closes them in one place; the fetcher, the embedder, the LLM client and the
job queue binding are created on first use. Steps and domain actions take `rt: Runtime` first.
Imports settings, db, migrate, hotconfig, queue, store.config, and the infrastructure clients lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import procrastinate

from infosentry import db, migrate, queue
from infosentry.hotconfig import HotConfig
from infosentry.settings import Settings
from infosentry.store import config as config_store

if TYPE_CHECKING:
    from infosentry.embedders.base import Embedder
    from infosentry.fetch import Fetcher
    from infosentry.mail import SmtpConfig, SmtpSender

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    dsn: str
    pool: asyncpg.Pool
    hot: HotConfig
    role: str = "cli"
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    _fetcher: Fetcher | None = None
    _embedder: Embedder | None = None
    _llm: Any = None
    _smtp: SmtpSender | None = None
    _queue: procrastinate.App | None = None
    _queue_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _exits: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    extras: dict[str, Any] = field(default_factory=dict)  # per-process caches owned by steps
    read_pool: asyncpg.Pool | None = None  # DATABASE_READ_URL: a replica for the list routes

    @property
    def reader(self) -> asyncpg.Pool:
        """The pool for list routes that may lag the primary by a moment (a read replica when one is set)."""
        return self.read_pool or self.pool

    @property
    def worker_id(self) -> str:
        return f"{self.host}:{self.pid}"

    async def fetcher(self) -> Fetcher:
        if self._fetcher is None:
            from infosentry.fetch import Fetcher

            fetcher = Fetcher(
                allow_networks=list(self.settings.fetch_allow_networks),
                user_agent=self.settings.fetch_user_agent,
            )
            await fetcher.start()
            self._fetcher = fetcher
        return self._fetcher

    def embedder(self) -> Embedder:
        if self._embedder is None:
            from infosentry.embedders import make_embedder

            self._embedder = make_embedder(self.settings)
        return self._embedder

    def llm(self) -> Any:
        """The AsyncOpenAI client for the judge (and the openai embedder)."""
        if self._llm is None:
            from infosentry.embedders.openai import make_client

            self._llm = make_client(self.settings, timeout=30)
        return self._llm

    def smtp_sender(self, cfg: SmtpConfig, connections: int) -> SmtpSender:
        """This process's SMTP sender: its connections stay open from one send job to the next (a relay's TLS
        handshake, EHLO and login once per connection, not once per job), and are closed with the runtime. The
        settings are fixed for a process's life, so the first call's `cfg` is the one."""
        if self._smtp is None:
            from infosentry.mail import SmtpSender

            self._smtp = SmtpSender(cfg, connections)
        return self._smtp

    async def queue(self, *, max_size: int = 2) -> procrastinate.App:
        """The task app bound to this process's database (bound on first use, unbound by aclose)."""
        async with self._queue_lock:
            if self._queue is None:
                self._queue = await self._exits.enter_async_context(queue.open_queue(self.dsn, max_size=max_size))
        return self._queue

    async def nudge(self, task: str) -> None:
        """Ask for `task` to run soon. Best effort: the periodic sweeps find the work in its tables anyway, so
        a queue that is down only delays it."""
        try:
            await queue.nudge(await self.queue(), task)
        except Exception as exc:
            log.warning("could not nudge %s: %s", task, exc, extra={"action": "nudge_failed", "task": task})

    def on_close(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` when the runtime closes, before its pools do (later registrations run first)."""
        self._exits.push_async_callback(callback)

    async def aclose(self) -> None:
        await self._exits.aclose()
        self._queue = None
        if self._fetcher is not None:
            await self._fetcher.close()
            self._fetcher = None
        if self._llm is not None:
            with contextlib.suppress(Exception):
                await self._llm.close()
            self._llm = None
        if self._smtp is not None:
            await self._smtp.aclose()
            self._smtp = None


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings, *, role: str = "cli", check_schema: bool = True, live_config: bool = True, pool_size: int = 10
) -> AsyncIterator[Runtime]:
    """Open the database (embedded or external), check the schema, start the hot config."""
    dsn = db.resolve_dsn(settings)
    if check_schema:
        async with db.plain_connection(dsn) as conn:
            await migrate.check_current(conn)
    pool = await db.create_pool(dsn, max_size=pool_size)
    hot = HotConfig(settings.hot_defaults)
    rt = Runtime(settings=settings, dsn=dsn, pool=pool, hot=hot, role=role)
    try:
        if settings.database_read_url:
            rt.read_pool = await db.create_pool(settings.database_read_url, max_size=pool_size)
        await hot.start(lambda: config_store.values(pool), dsn, live=live_config)
        yield rt
    finally:
        await hot.stop()
        await rt.aclose()
        await pool.close()
        if rt.read_pool is not None:
            await rt.read_pool.close()
