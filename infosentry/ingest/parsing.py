"""Parsing fetched documents in a small pool of worker processes (feedparser is CPU-bound: both cores work),
and preparing the parsed items there (caps, NUL removal, URL and title fingerprints).

A document that kills or hangs a parser costs its own source a parse error, never the other parses.
Imports sources (the pure parse functions), fetch_errors, urls: no HTTP stack or database driver, so each
parse process stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import pickle
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, NamedTuple

from infosentry.fetch_errors import FetchError
from infosentry.sources import ParsedFeed
from infosentry.urls import canonical_hash, canonical_url, title_key

ITEMS_PER_FETCH = 200  # newest-first feeds: the rest of a huge archive is back catalogue anyway
PARSE_WORKERS = 2
PARSE_TIMEOUT = 30.0


class PreparedItem(NamedTuple):
    """One item ready to store: capped, NUL-free, fingerprinted. A tuple, because thousands cross the pipe from
    the parse workers each minute and tuples pickle far smaller and faster than dataclass instances."""

    url: str
    title: str
    snippet: str
    published_at: datetime | None
    guid: str | None
    author: str | None
    tags: list[str]
    canonical_url: str
    url_hash: str
    title_key: str


@dataclass(slots=True)
class PreparedFeed:
    items: list[PreparedItem]
    title: str | None = None
    ttl_seconds: int | None = None
    link: str | None = None


def nul_free(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text.replace("\x00", "")[:limit]


def prepare(feed: ParsedFeed) -> PreparedFeed:
    """Cap, sanitise (Postgres text refuses NUL; snippet ≤ 500) and fingerprint the items of a feed."""
    items = []
    for draft in feed.items[:ITEMS_PER_FETCH]:
        url = nul_free(draft.url, 4096) or ""
        try:
            canon = canonical_url(url)
        except ValueError:  # a URL the parser accepted but urllib cannot split (bad IPv6 literal, ...)
            continue
        title = nul_free(draft.title, 1000) or url
        items.append(
            PreparedItem(
                url=url,
                title=title,
                snippet=nul_free(draft.snippet, 500) or "",
                published_at=draft.published_at,
                guid=nul_free(draft.guid, 2048),
                author=nul_free(draft.author, 200),
                tags=[t.replace("\x00", "") for t in draft.tags[:20]],
                canonical_url=canon,
                url_hash=canonical_hash(canon),
                title_key=title_key(title),
            )
        )
    return PreparedFeed(items=items, title=feed.title, ttl_seconds=feed.ttl_seconds, link=feed.link)


def parse_and_prepare(parse: Callable[..., ParsedFeed], *args: Any) -> PreparedFeed:
    """Runs in a parse worker: a source type's pure parse function, then prepare()."""
    return prepare(parse(*args))


class ParsePool:
    """Parse processes shared by every run of this process; each parse has a worker to itself.

    forkserver, not fork: the worker process has threads (resolver, database drivers) that a fork would copy
    mid-lock. One thread per worker sends a document and waits for its result with the parse's own timeout,
    so the clock starts when the parse does, not while it queues. A document that hangs or kills its parser
    costs only its own source a parse error: that one process is killed and replaced, and the parses of other
    documents in flight never notice (a process pool can only be discarded whole, failing all of them).
    """

    def __init__(self, workers: int = PARSE_WORKERS, timeout: float = PARSE_TIMEOUT) -> None:
        self.workers = workers
        self.timeout = timeout
        self._threads: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._idle: list[tuple[BaseProcess, Connection]] = []
        self._busy: set[tuple[BaseProcess, Connection]] = set()
        self._pid = 0

    def _get(self) -> ThreadPoolExecutor:
        if self._threads is None or self._pid != os.getpid():
            if self._pid != os.getpid():  # a forked child: the processes are the parent's, not ours
                self._lock, self._idle, self._busy = threading.Lock(), [], set()
            self._threads = ThreadPoolExecutor(self.workers, thread_name_prefix="parse")
            self._pid = os.getpid()
        return self._threads

    @staticmethod
    def _serve(conn: Connection) -> None:
        """The worker's loop: one (fn, args) in, one (ok, result or exception) out, until EOF or None."""
        # Ctrl-C in a terminal reaches the whole process group; the parent decides when its parsers stop
        # (None, EOF or a kill), so a worker neither dies mid-parse nor prints a KeyboardInterrupt traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                return  # the parent is gone
            try:
                task = pickle.loads(data)
                if task is None:
                    return
                reply: tuple[bool, Any] = (True, parse_and_prepare(task[0], *task[1]))
            except Exception as exc:
                reply = (False, exc)
            try:
                conn.send(reply)
            except Exception as exc:  # an unpicklable exception must not leave the parent waiting forever
                conn.send((False, RuntimeError(f"parse failed: {reply[1]!r} ({exc})")))

    def _start(self) -> tuple[BaseProcess, Connection]:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if ctx.get_start_method() == "forkserver":
            ctx.set_forkserver_preload(["infosentry.ingest.parsing"])  # feedparser & co. imported once
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=ParsePool._serve, args=(theirs,), name="infosentry-parse", daemon=True)
        proc.start()
        theirs.close()
        return proc, ours

    def _checkout(self) -> tuple[BaseProcess, Connection]:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker[0].is_alive():
                    self._busy.add(worker)
                    return worker
                self._stop(worker)
        worker = self._start()
        with self._lock:
            self._busy.add(worker)
        return worker

    def _checkin(self, worker: tuple[BaseProcess, Connection]) -> None:
        with self._lock:
            self._busy.discard(worker)
            self._idle.append(worker)

    def _kill(self, worker: tuple[BaseProcess, Connection]) -> None:
        with self._lock:
            self._busy.discard(worker)
        with contextlib.suppress(Exception):
            worker[0].kill()  # a hung parser would ignore anything gentler
        self._stop(worker)

    @staticmethod
    def _stop(worker: tuple[BaseProcess, Connection], grace: float = 0.0) -> None:
        proc, conn = worker
        with contextlib.suppress(Exception):
            if grace and proc.is_alive():
                conn.send(None)
                proc.join(grace)
            if proc.is_alive():
                proc.kill()
            proc.join(5)
        conn.close()

    def _call(self, fn: Callable[..., ParsedFeed], args: tuple[Any, ...]) -> PreparedFeed:
        """Runs in one of the pool's threads, so at most ``workers`` parses (and processes) at a time."""
        for attempt in (1, 2):
            worker = self._checkout()
            conn = worker[1]
            try:
                conn.send((fn, args))
            except OSError:  # the idle worker had died (OOM killer, operator): no fault of this document
                self._kill(worker)
                continue
            except BaseException:  # unpicklable arguments: nothing was sent, the worker is fine
                self._checkin(worker)
                raise
            try:
                if not conn.poll(self.timeout):
                    self._kill(worker)
                    raise FetchError("parse", f"parsing took longer than {self.timeout:g} s; document refused")
                ok, value = conn.recv()
            except (EOFError, OSError):
                self._kill(worker)
                # Once may be bad luck (the process was killed from outside); twice is this document.
                if attempt == 2:
                    raise FetchError("parse", "the parser process died on this document") from None
                continue
            self._checkin(worker)
            if ok:
                return value
            raise value
        raise FetchError("parse", "the parser process died on this document")

    async def run(self, fn: Callable[..., ParsedFeed], *args: Any) -> PreparedFeed:
        return await asyncio.get_running_loop().run_in_executor(self._get(), self._call, fn, args)

    def shutdown(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)  # parses in flight end (or time out) first
            self._threads = None
        with self._lock:
            workers, self._idle = self._idle + list(self._busy), []
            self._busy.clear()
        for worker in workers:
            self._stop(worker, grace=2.0)

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [proc.pid for proc, _ in [*self._idle, *self._busy] if proc.pid]


PARSE_POOL = ParsePool()


async def in_thread(fn: Callable[..., ParsedFeed], *args: Any) -> PreparedFeed:
    return await asyncio.to_thread(parse_and_prepare, fn, *args)
