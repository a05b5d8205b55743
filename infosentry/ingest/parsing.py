"""Parsing fetched documents in a small pool of worker processes (feedparser is CPU-bound: both cores work),
and preparing the parsed items there (caps, NUL removal, URL and title fingerprints).

A document that kills or hangs a parser costs its own source a parse error, never the other parses.
Imports sources (the pure parse functions), fetch (FetchError), urls.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from infosentry.fetch import FetchError
from infosentry.sources import ParsedFeed
from infosentry.urls import canonical_url, title_key, url_hash

ITEMS_PER_FETCH = 200  # newest-first feeds: the rest of a huge archive is back catalogue anyway
PARSE_WORKERS = 2
PARSE_TIMEOUT = 30.0


@dataclass(slots=True)
class PreparedFeed(ParsedFeed):
    """A parsed feed plus, per item, (canonical_url, url_hash, title_key): computed in the parse worker."""

    keys: list[tuple[str, str, str]] = field(default_factory=list)


def nul_free(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text.replace("\x00", "")[:limit]


def prepare(feed: ParsedFeed) -> PreparedFeed:
    """Cap, sanitise (Postgres text refuses NUL; snippet ≤ 500) and fingerprint the items of a feed."""
    drafts, keys = [], []
    for draft in feed.items[:ITEMS_PER_FETCH]:
        url = nul_free(draft.url, 4096) or ""
        try:
            canon, digest = canonical_url(url), url_hash(url)
        except ValueError:  # a URL the parser accepted but urllib cannot split (bad IPv6 literal, ...)
            continue
        draft.url = url
        draft.title = nul_free(draft.title, 1000) or url
        draft.snippet = nul_free(draft.snippet, 500) or ""
        draft.guid = nul_free(draft.guid, 2048)
        draft.author = nul_free(draft.author, 200)
        draft.tags = [t.replace("\x00", "") for t in draft.tags[:20]]
        drafts.append(draft)
        keys.append((canon, digest, title_key(draft.title)))
    return PreparedFeed(items=drafts, title=feed.title, ttl_seconds=feed.ttl_seconds, link=feed.link, keys=keys)


def parse_and_prepare(parse: Callable[..., ParsedFeed], *args: Any) -> PreparedFeed:
    """Runs in a parse worker: a source type's pure parse function, then prepare()."""
    return prepare(parse(*args))


class ParsePool:
    """A lazily started pool of parse processes, shared by every run of this process.

    forkserver, not fork: the worker process has threads (resolver, database drivers) that a fork would copy
    mid-lock. A document that kills or hangs a parser costs its own source a parse error; parses that were in
    flight in the same pool are retried once on a fresh pool.
    """

    def __init__(self, workers: int = PARSE_WORKERS, timeout: float = PARSE_TIMEOUT) -> None:
        self.workers = workers
        self.timeout = timeout
        self._executor: ProcessPoolExecutor | None = None
        self._pid = 0

    def _get(self) -> ProcessPoolExecutor:
        if self._executor is None or self._pid != os.getpid():
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            if ctx.get_start_method() == "forkserver":
                ctx.set_forkserver_preload(["infosentry.ingest.parsing"])  # feedparser & co. imported once
            self._executor = ProcessPoolExecutor(self.workers, mp_context=ctx)
            self._pid = os.getpid()
        return self._executor

    def _discard(self, executor: ProcessPoolExecutor) -> None:
        if self._executor is executor:
            self._executor = None
        processes = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for proc in processes:  # a hung parser ignores shutdown; nothing else stops it
            with contextlib.suppress(Exception):
                proc.kill()

    async def run(self, fn: Callable[..., ParsedFeed], *args: Any) -> PreparedFeed:
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            executor = self._get()
            try:
                future = loop.run_in_executor(executor, parse_and_prepare, fn, *args)
                return await asyncio.wait_for(future, self.timeout)
            except TimeoutError:
                self._discard(executor)
                raise FetchError("parse", f"parsing took longer than {self.timeout:g} s; document refused") from None
            except BrokenProcessPool:
                self._discard(executor)
                if attempt == 2:
                    raise FetchError("parse", "the parser process died on this document") from None
        raise AssertionError("unreachable")

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def worker_pids(self) -> list[int]:
        executor = self._executor
        return [p.pid for p in (getattr(executor, "_processes", None) or {}).values() if p.pid] if executor else []


PARSE_POOL = ParsePool()


async def in_thread(fn: Callable[..., ParsedFeed], *args: Any) -> PreparedFeed:
    return await asyncio.to_thread(parse_and_prepare, fn, *args)
