"""Ingest: refresh due sources and manage the source list.

A run claims due sources in bounded batches with a lease (store.sources.claim_due), fetches them concurrently
(per-host caps live in the Fetcher), parses in a small process pool (feedparser is CPU-bound; both cores work),
and one writer stores the results of many fetches per transaction: items deduplicated by canonical URL and,
across sources, by title fingerprint plus near-identical text; the sources' health, adaptive schedule and
backoff; one ingest log row per fetch. A failing source never loses the other sources' work.
Also: validating and adding sources (API, CLI), OPML import/export, the hot-list catalog.
Imports sources, fetch, urls, opml, store.sources, store.items, errors, runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import multiprocessing
import os
import pickle
import random
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from infosentry import metrics, opml
from infosentry.errors import Invalid, NotFound
from infosentry.fetch import FetchError
from infosentry.runtime import Runtime
from infosentry.sources import DEFAULT_INTERVALS, SOURCE_TYPES, ParsedFeed
from infosentry.sources import hotlist as hotlist_type
from infosentry.store import items as items_store
from infosentry.store import sources as sources_store
from infosentry.urls import canonical_url, title_key, url_hash

log = logging.getLogger(__name__)

# --- tunables (documented in the README's ingest section) ---------------------------------------------------
LEASE_SECONDS = 300  # a claimed source is someone else's again after this (crash recovery)
FETCH_CONCURRENCY = 32  # fetches in flight per run (the Fetcher also caps each host at 2)
RUN_BUDGET_SECONDS = 120.0  # one ingest_due job stops claiming after this; the next tick continues
FLUSH_MAX = 64  # fetch results written per transaction
MIN_INTERVAL = 300  # adaptive scheduling never polls faster than 5 min (unless the user's base is lower)
MAX_INTERVAL = 86400  # ... nor slower than 24 h; backoff and server hints are capped at 24 h too
JITTER = 0.10  # ±10 % on every delay, so sources drift apart instead of fetching in bursts
BACKFILL_GRACE = timedelta(hours=1)
DEDUPE_WINDOW = timedelta(hours=72)
ITEMS_PER_FETCH = 200  # newest-first feeds: the rest of a huge archive is back catalogue anyway
PARSE_WORKERS = 2
PARSE_TIMEOUT = 30.0
LOG_RETENTION_DAYS = 7
MAX_ERROR_CHARS = 1000
TITLE_ONLY_MIN_CHARS = 12  # two sources' identical titles without text to compare merge only if this long
TEXT_SIMILARITY = 0.85


# --- parsing in a process pool ------------------------------------------------------------------------------


@dataclass(slots=True)
class PreparedFeed(ParsedFeed):
    """A parsed feed plus, per item, (canonical_url, url_hash, title_key): computed in the parse worker."""

    keys: list[tuple[str, str, str]] = field(default_factory=list)


def _nul_free(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text.replace("\x00", "")[:limit]


def prepare(feed: ParsedFeed) -> PreparedFeed:
    """Cap, sanitise (Postgres text refuses NUL; snippet ≤ 500) and fingerprint the items of a feed."""
    drafts, keys = [], []
    for draft in feed.items[:ITEMS_PER_FETCH]:
        url = _nul_free(draft.url, 4096) or ""
        try:
            canon, digest = canonical_url(url), url_hash(url)
        except ValueError:  # a URL the parser accepted but urllib cannot split (bad IPv6 literal, ...)
            continue
        draft.url = url
        draft.title = _nul_free(draft.title, 1000) or url
        draft.snippet = _nul_free(draft.snippet, 500) or ""
        draft.guid = _nul_free(draft.guid, 2048)
        draft.author = _nul_free(draft.author, 200)
        draft.tags = [t.replace("\x00", "") for t in draft.tags[:20]]
        drafts.append(draft)
        keys.append((canon, digest, title_key(draft.title)))
    return PreparedFeed(items=drafts, title=feed.title, ttl_seconds=feed.ttl_seconds, link=feed.link, keys=keys)


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
            ctx.set_forkserver_preload(["infosentry.ingest"])  # feedparser & co. imported once
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


async def _in_thread(fn: Callable[..., ParsedFeed], *args: Any) -> PreparedFeed:
    return await asyncio.to_thread(parse_and_prepare, fn, *args)


# --- scheduling (pure) ---------------------------------------------------------------------------------------


def base_interval(row: Mapping[str, Any]) -> int:
    return int(row["fetch_interval_sec"] or DEFAULT_INTERVALS.get(row["type"], 1800))


def interval_bounds(base: int) -> tuple[int, int]:
    """The adaptive range around the user's interval: ×¼ to ×4, clipped to 5 min – 24 h; a base the user set
    below 5 min is itself the floor (adaptation never polls faster than asked, nor slower than 24 h)."""
    return min(base, max(MIN_INTERVAL, base // 4)), max(base, min(MAX_INTERVAL, base * 4))


def learn_interval(base: int, published: Sequence[datetime | None], now: datetime) -> int | None:
    """Polling interval from how often the feed publishes (about two polls per new item); None = no signal.

    Rate = items of the last 7 days over the time they span (a feed capped at 20 items that all appeared
    today is busy, not quiet). A feed with dated items but none this week slows to the upper bound.
    """
    dated = sorted(d for d in published if d is not None and d <= now)
    if not dated:
        return None
    low, high = interval_bounds(base)
    week = timedelta(days=7)
    recent = [d for d in dated if now - d <= week]
    if not recent:
        return high
    span = week if len(recent) < 3 else max(now - recent[0], timedelta(minutes=1))
    gap = span.total_seconds() / len(recent)
    return int(min(max(gap / 2, low), high))


def jittered(seconds: float, rng: random.Random | None = None) -> float:
    return seconds * (1 + (rng or random).uniform(-JITTER, JITTER))


def _hint_at(
    now: datetime, *, retry_after: datetime | None = None, max_age: int | None = None, ttl: int | None = None
) -> datetime | None:
    """The earliest next fetch the server asked for (Retry-After, Cache-Control max-age, feed TTL), capped at
    24 h so a wrong header cannot silence a source."""
    hints = [h for h in (retry_after,) if h is not None]
    hints += [now + timedelta(seconds=s) for s in (max_age, ttl) if s]
    if not hints:
        return None
    return min(max(hints), now + timedelta(seconds=MAX_INTERVAL))


def next_after_success(
    interval: int, now: datetime, hint: datetime | None, rng: random.Random | None = None
) -> datetime:
    planned = now + timedelta(seconds=jittered(interval, rng))
    return max(planned, hint) if hint else planned


def backoff_delay(base: int, streak: int) -> float:
    """Failure number `streak` (1, 2, ...) waits base, 2×base, 4×base ... capped at 24 h."""
    return float(min(base * 2 ** min(max(streak - 1, 0), 20), MAX_INTERVAL))


def next_after_failure(
    base: int, streak: int, now: datetime, retry_after: datetime | None, rng: random.Random | None = None
) -> datetime:
    delay = min(jittered(backoff_delay(base, streak), rng), MAX_INTERVAL)
    planned = now + timedelta(seconds=delay)
    hint = _hint_at(now, retry_after=retry_after)
    return max(planned, hint) if hint else planned


# --- near-duplicate text (pure) -----------------------------------------------------------------------------


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text or "").casefold()
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] not in "PS")  # also drops "…"
    return " ".join(text.split())


def same_story_text(snippet_a: str, snippet_b: str, title: str) -> bool:
    """Whether two items with the same title fingerprint (from different sources) tell the same story.

    Both texts present: equal, one a truncation of the other, or ≥ 85 % similar. A text missing on either
    side (hot lists carry none): the title alone decides, and only when it is long enough to be specific.
    """
    a, b = _norm(snippet_a), _norm(snippet_b)
    if not a or not b:
        return len(_norm(title).replace(" ", "")) >= TITLE_ONLY_MIN_CHARS
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    if len(short) >= 40 and long.startswith(short):
        return True
    matcher = difflib.SequenceMatcher(None, a[:400], b[:400], autojunk=False)
    return matcher.quick_ratio() >= TEXT_SIMILARITY and matcher.ratio() >= TEXT_SIMILARITY


@dataclass
class _Candidate:
    """An item that a draft from another source may be the same story as."""

    target: int | str  # item id, or the url_hash of an item inserted in this batch
    snippet: str
    published_at: datetime | None
    source_ids: set[int]


def _match(
    cands: list[_Candidate] | None, source_id: int, snippet: str, title: str, published: datetime | None
) -> _Candidate | None:
    for cand in cands or ():
        if source_id in cand.source_ids:
            continue  # never merge two items of one source on title alone
        if published and cand.published_at and abs(published - cand.published_at) > DEDUPE_WINDOW:
            continue
        if same_story_text(cand.snippet, snippet, title):
            return cand
    return None


# --- one run ------------------------------------------------------------------------------------------------


@dataclass
class Fetched:
    """One fetch attempt, before it is written."""

    row: asyncpg.Record
    started_at: datetime
    duration_ms: int
    feed: PreparedFeed | None = None
    not_modified: bool = False
    http_status: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    hint: datetime | None = None
    error: FetchError | None = None
    error_kind: str | None = None
    new: int = 0
    duplicate: int = 0


@dataclass
class RunSummary:
    sources: int = 0
    ok: int = 0
    not_modified: int = 0
    failed: int = 0
    fetched: int = 0
    new_items: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    results: dict[int, dict[str, Any]] = field(default_factory=dict)  # per source (kept for single refreshes)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "results"}


def placeholder_name(url: str) -> str:
    """The name a source gets when none is given (replaced by the feed's own title at the first fetch)."""
    parts = urlsplit(url)
    host = (parts.hostname or url).removeprefix("www.")
    path = parts.path.rstrip("/")
    return (host + path)[:200] or url[:200]


class _Run:
    """Fetch tasks feed a queue; one writer drains it in transactions of up to FLUSH_MAX results."""

    def __init__(self, rt: Runtime, *, concurrency: int, use_pool: bool = True, keep_results: bool = False) -> None:
        self.rt = rt
        self.sem = asyncio.Semaphore(concurrency)
        self.queue: asyncio.Queue[Fetched | None] = asyncio.Queue()
        self.summary = RunSummary()
        self.keep_results = keep_results
        self.runner = PARSE_POOL.run if use_pool else _in_thread
        self.rng = random.Random()
        self.started: set[int] = set()  # sources whose fetch began (the others can be released on cancel)
        self._writer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _Run:
        self._writer = asyncio.create_task(self._write_loop(), name="ingest-writer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._writer is not None
        self.queue.put_nowait(None)
        await self._writer

    async def fetch(self, row: asyncpg.Record) -> None:
        async with self.sem:
            self.started.add(row["id"])
            fetched = await self._fetch(row)
        self.queue.put_nowait(fetched)

    async def _fetch(self, row: asyncpg.Record) -> Fetched:
        started_at = datetime.now(UTC)
        t0 = time.monotonic()
        result = Fetched(row=row, started_at=started_at, duration_ms=0)
        try:
            module = SOURCE_TYPES[row["type"]]
            fetcher = await self.rt.fetcher()
            outcome = await module.fetch(
                fetcher, row["url"], row["config"] or {}, row["etag"], row["last_modified"], parse_runner=self.runner
            )
        except FetchError as exc:
            result.error, result.error_kind, result.http_status = exc, exc.kind, exc.status
        except ValueError as exc:  # the stored config no longer validates (edited by hand, type module changed)
            result.error, result.error_kind = FetchError("invalid_url", f"invalid source settings: {exc}"), "config"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must cost one source one fetch, never the run
            log.exception("fetch crashed", extra={"action": "ingest_fetch_crashed", "source_id": row["id"]})
            result.error = FetchError("parse", f"internal error: {type(exc).__name__}: {exc}")
            result.error_kind = "internal"
        else:
            result.not_modified = outcome.not_modified
            result.http_status = outcome.http_status
            result.etag, result.last_modified = outcome.etag, outcome.last_modified
            feed = outcome.feed
            if feed is not None and not isinstance(feed, PreparedFeed):
                feed = prepare(feed)  # a type that parsed without the runner
            result.feed = feed
            now = datetime.now(UTC)
            result.hint = _hint_at(
                now, retry_after=outcome.retry_after_at, max_age=outcome.max_age, ttl=feed.ttl_seconds if feed else None
            )
        result.duration_ms = int((time.monotonic() - t0) * 1000)
        return result

    # -- writing --

    async def _write_loop(self) -> None:
        done = False
        while not done:
            first = await self.queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < FLUSH_MAX and not self.queue.empty():
                nxt = self.queue.get_nowait()
                if nxt is None:
                    done = True
                    break
                batch.append(nxt)
            await self._flush(batch)

    async def _flush(self, batch: list[Fetched]) -> None:
        try:
            async with self.rt.pool.acquire() as conn, conn.transaction():
                results = await self._write(conn, batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if len(batch) > 1:
                log.warning("batch write failed, writing one by one: %s", exc, extra={"action": "ingest_batch_retry"})
                for one in batch:
                    await self._flush(_reset_counts([one]))
                return
            await self._write_failure(batch[0], exc)
            return
        self._tally(results)

    async def _write_failure(self, fetched: Fetched, exc: Exception) -> None:
        """The results of one source could not be stored: record that as its failure (its lease runs out if
        even this fails, and it is fetched again)."""
        log.error(
            "storing fetch results failed: %s",
            exc,
            extra={"action": "ingest_store_failed", "source_id": fetched.row["id"]},
        )
        fetched.feed, fetched.new, fetched.duplicate = None, 0, 0
        fetched.error = FetchError("parse", f"internal error while storing items: {type(exc).__name__}: {exc}")
        fetched.error_kind = "internal"
        try:
            async with self.rt.pool.acquire() as conn, conn.transaction():
                results = [self._result(fetched, datetime.now(UTC))]
                await sources_store.record_results(conn, results)
        except Exception as again:
            log.error("recording the failure failed too: %s", again, extra={"action": "ingest_record_failed"})
            return
        self._tally(results)

    def _tally(self, results: list[dict[str, Any]]) -> None:
        s = self.summary
        for r in results:
            s.sources += 1
            if not r["ok"]:
                s.failed += 1
                outcome = r.get("error_kind") or "error"
            elif r["not_modified"]:
                s.not_modified += 1
                outcome = "not_modified"
            else:
                s.ok += 1
                outcome = "ok"
            metrics.FETCHES.labels(outcome).inc()
            metrics.ITEMS_INGESTED.inc(r["new"])
            s.fetched += r["fetched"]
            s.new_items += r["new"]
            s.duplicates += r["duplicate"]
            if self.keep_results:
                s.results[r["source_id"]] = r

    async def _write(self, conn: asyncpg.Connection, batch: list[Fetched]) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        await self._store_items(conn, [f for f in batch if f.feed is not None and f.feed.items], now)
        results = [self._result(f, now) for f in batch]
        await sources_store.record_results(conn, results)
        return results

    async def _store_items(self, conn: asyncpg.Connection, fetches: list[Fetched], now: datetime) -> None:
        """Deduplicate the items of several fetches against the database and each other, insert the new
        stories and link every story to every source it was seen in. Set-based: five statements in all."""
        if not fetches:
            return
        all_hashes = [key[1] for f in fetches for key in f.feed.keys]  # type: ignore[union-attr]
        existing = await items_store.ids_by_hash(conn, all_hashes)
        fresh_keys = {key[2] for f in fetches for key in f.feed.keys if key[1] not in existing}  # type: ignore[union-attr]
        by_title: dict[str, list[_Candidate]] = {}
        for c in await items_store.title_candidates(conn, fresh_keys, hours=int(DEDUPE_WINDOW.total_seconds() // 3600)):
            by_title.setdefault(c["title_key"], []).append(
                _Candidate(c["id"], c["snippet"], c["published_at"], set(c["source_ids"]))
            )
        new_rows: list[dict[str, Any]] = []
        pending: dict[str, dict[str, Any]] = {}  # url_hash -> new row (first source to report it creates it)
        # (item id or pending url_hash, source id, url, alias): the alias hash is stored for every link but the
        # one that created the item, so a merged story's own URL finds its item at the next fetch
        links: list[tuple[int | str, int, str, str | None]] = []
        for f in fetches:
            row, feed = f.row, f.feed
            assert feed is not None
            source_id = row["id"]
            first_fetch = row["last_success_at"] is None
            cutoff = row["created_at"] - BACKFILL_GRACE
            seen: set[str] = set()
            for draft, (canon, digest, tkey) in zip(feed.items, feed.keys, strict=True):
                if digest in seen:
                    f.duplicate += 1
                    continue
                seen.add(digest)
                published = min(draft.published_at, now) if draft.published_at else None
                target: int | str | None = existing.get(digest)
                if target is None and digest in pending:
                    target = digest
                if target is None:
                    cand = _match(by_title.get(tkey), source_id, draft.snippet, draft.title, published)
                    if cand is not None:
                        target = cand.target
                        cand.source_ids.add(source_id)
                if target is not None:
                    f.duplicate += 1
                    links.append((target, source_id, draft.url, digest))
                    continue
                new = {
                    "url": draft.url,
                    "canonical_url": canon,
                    "url_hash": digest,
                    "guid": draft.guid,
                    "title": draft.title,
                    "snippet": draft.snippet,
                    "author": draft.author,
                    "tags": draft.tags,
                    "published_at": published,
                    "source_id": source_id,
                    "title_key": tkey,
                    "is_backfill": bool((published and published < cutoff) or (first_fetch and published is None)),
                    "_fetch": f,
                }
                new_rows.append(new)
                pending[digest] = new
                by_title.setdefault(tkey, []).append(_Candidate(digest, draft.snippet, published, {source_id}))
                links.append((digest, source_id, draft.url, None))
        # sorted: concurrent writers (other worker processes) then take index locks in one order, never deadlock
        inserted = await items_store.insert_items(conn, sorted(new_rows, key=lambda r: r["url_hash"]))
        lost = [h for h in pending if h not in inserted]  # a concurrent writer stored the same story first
        if lost:
            inserted_elsewhere = await items_store.ids_by_hash(conn, lost)
        else:
            inserted_elsewhere = {}
        for digest, new in pending.items():
            fetch = new["_fetch"]
            if digest in inserted:
                fetch.new += 1
            else:
                fetch.duplicate += 1
        ids = {**inserted, **inserted_elsewhere}
        resolved = []
        for target, source_id, url, alias in links:
            item_id = ids.get(target) if isinstance(target, str) else target
            if item_id is not None:
                resolved.append((item_id, source_id, url, alias))
        await items_store.link_sources(conn, sorted(resolved, key=lambda link: (link[0], link[1])))

    def _result(self, f: Fetched, now: datetime) -> dict[str, Any]:
        row = f.row
        base = base_interval(row)
        result: dict[str, Any] = {
            "source_id": row["id"],
            "started_at": f.started_at,
            "duration_ms": f.duration_ms,
            "http_status": f.http_status,
            "fetched": 0,
            "new": f.new,
            "duplicate": f.duplicate,
            "etag": None,
            "last_modified": None,
            "interval": None,
            "title": None,
            "placeholder_name": placeholder_name(row["url"]),
            "not_modified": f.not_modified,
        }
        if f.error is not None:
            streak = row["error_streak"] + 1
            result.update(
                ok=False,
                error_kind=f.error_kind or f.error.kind,
                error=_nul_free(str(f.error), MAX_ERROR_CHARS),
                next_fetch_at=next_after_failure(base, streak, now, f.error.retry_after, self.rng),
            )
            return result
        result.update(ok=True, error_kind=None, error=None, etag=f.etag, last_modified=f.last_modified)
        interval = row["current_interval_sec"] or base
        if f.feed is not None:
            result["fetched"] = len(f.feed.items)
            learned = learn_interval(base, [d.published_at for d in f.feed.items], now)
            if learned is not None:
                interval = result["interval"] = learned
            if f.feed.title:
                result["title"] = _nul_free(f.feed.title, 200)
        result["next_fetch_at"] = next_after_success(interval, now, f.hint, self.rng)
        return result


def _reset_counts(batch: list[Fetched]) -> list[Fetched]:
    for f in batch:
        f.new = f.duplicate = 0
    return batch


async def run_due(
    rt: Runtime,
    *,
    concurrency: int = FETCH_CONCURRENCY,
    budget: float = RUN_BUDGET_SECONDS,
    lease_seconds: int = LEASE_SECONDS,
    use_pool: bool = True,
) -> RunSummary:
    """Fetch every due source (bounded batches, bounded concurrency) until none is due or the time budget is
    spent. Safe to run in several processes at once: claims never overlap."""
    started = time.monotonic()
    deadline = started + budget
    tasks: set[asyncio.Task[None]] = set()
    claimed: list[int] = []
    await sources_store.park_unfollowed(rt.pool)
    async with _Run(rt, concurrency=concurrency, use_pool=use_pool) as run:
        try:
            while time.monotonic() < deadline:
                # keep about two batches in hand: enough to keep every slot busy, few leases waiting
                while len(tasks) > concurrency:
                    _, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                rows = await sources_store.claim_due(
                    rt.pool, limit=2 * concurrency - len(tasks), lease_seconds=lease_seconds
                )
                if not rows:
                    break
                claimed.extend(row["id"] for row in rows)
                tasks.update(asyncio.create_task(run.fetch(row)) for row in rows)
            if tasks:
                await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await _release_unstarted(rt, [sid for sid in claimed if sid not in run.started])
            raise
    run.summary.seconds = round(time.monotonic() - started, 3)
    if run.summary.sources:
        log.info("ingest run: %s", run.summary.as_dict(), extra={"action": "ingest_run", **run.summary.as_dict()})
    return run.summary


async def _release_unstarted(rt: Runtime, source_ids: list[int]) -> None:
    """A cancelled run (worker shutdown) hands back what it never started, so those sources are not late by a
    whole lease; the ones in flight keep their lease and come back when it runs out."""
    if not source_ids:
        return
    try:
        await asyncio.shield(sources_store.release(rt.pool, source_ids))
    except (asyncio.CancelledError, Exception) as exc:
        log.warning("could not release leases: %s", exc, extra={"action": "ingest_release_failed"})


async def refresh_source(rt: Runtime, source_id: int, *, use_pool: bool = False) -> dict[str, Any]:
    """Fetch one source now (due or not, enabled or not) and return its result with the new schedule.

    Raises NotFound for an unknown id and Invalid when a worker is fetching it at this moment.
    """
    row, reason = await sources_store.claim_one(rt.pool, source_id, lease_seconds=LEASE_SECONDS)
    if row is None:
        if reason == "missing":
            raise NotFound(f"no source with id {source_id}")
        raise Invalid(f"source {source_id} is being fetched right now; try again in a minute")
    async with _Run(rt, concurrency=1, use_pool=use_pool, keep_results=True) as run:
        await run.fetch(row)
    result = dict(
        run.summary.results.get(source_id)
        or {"source_id": source_id, "ok": False, "error": "result could not be stored"}
    )
    result["status"] = ("not_modified" if result.get("not_modified") else "ok") if result.get("ok") else "error"
    return result


async def prune_logs(rt: Runtime, *, older_than_days: int = LOG_RETENTION_DAYS) -> int:
    return await sources_store.prune_logs(rt.pool, older_than_days=older_than_days)


# --- managing sources -----------------------------------------------------------------------------------------


@dataclass
class SourceSpec:
    """A validated source definition, ready to insert."""

    type: str
    url: str
    name: str
    fetch_interval_sec: int
    config: dict[str, Any]


def normalise_source_url(url: str) -> str:
    """Light normalisation so trivially different spellings are one source: lowercase scheme and host, no
    fragment. Path and query are kept as they are (feeds depend on them), and so is any user info."""
    parts = urlsplit(url.strip())
    userinfo, at, hostport = parts.netloc.rpartition("@")
    return urlunsplit((parts.scheme.lower(), f"{userinfo}{at}{hostport.lower()}", parts.path, parts.query, ""))


def validate_source(
    *, type: str | None, url: Any, name: Any = None, interval: Any = None, config: Any = None
) -> SourceSpec:
    """Check a source definition (as given by the API, the CLI or an OPML file); one Invalid listing every
    bad field. No network access: feed discovery is the CLI's job (see `infosentry source add`)."""
    errors: list[dict[str, str]] = []

    def bad(name_: str, message: str) -> None:
        errors.append({"field": name_, "message": message})

    kind = (type or "rss").strip().lower() if isinstance(type, str) or type is None else None
    if kind not in SOURCE_TYPES:
        bad("type", f"must be one of {', '.join(SOURCE_TYPES)}")
    if not isinstance(url, str) or not re.match(r"(?i)^https?://[^\s/]", url.strip()) or len(url) > 2048:
        bad("url", "must be an absolute http(s) URL of at most 2048 characters")
    if name is not None and (not isinstance(name, str) or not 1 <= len(name.strip()) <= 200):
        bad("name", "must be 1 to 200 characters")
    if interval is not None and (
        isinstance(interval, bool) or not isinstance(interval, int) or not 60 <= interval <= 86400
    ):
        bad("fetch_interval_sec", "must be an integer between 60 and 86400")
    if config is not None and not isinstance(config, dict):
        bad("config", "must be a JSON object")
    if errors:
        raise Invalid("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)
    assert kind is not None and isinstance(url, str)
    url = normalise_source_url(url)
    try:
        clean = SOURCE_TYPES[kind].validate_config(url, config or {})
    except ValueError as exc:
        field_name = "url" if str(exc).startswith("url:") else "config"
        raise Invalid(f"{field_name}: {exc}", errors=[{"field": field_name, "message": str(exc)}]) from None
    if kind == "hotlist":
        url = hotlist_type.api_url(clean)  # one source per hot list, however the user spelled it
    return SourceSpec(
        type=kind,
        url=url,
        name=(name.strip() if isinstance(name, str) else "") or placeholder_name(url),
        fetch_interval_sec=interval or DEFAULT_INTERVALS[kind],
        config=clean,
    )


async def add_source(
    conn: asyncpg.Pool | asyncpg.Connection, user_id: int, spec: SourceSpec, *, enabled: bool = True
) -> tuple[asyncpg.Record, bool, bool]:
    """Create the source (or find the existing one with the same type and URL) and subscribe the user.

    Returns (the source as the user sees it, source_created, subscription_created). A source is fetched once
    however many users follow it; the existing source's settings are kept.
    """

    async def body(c: asyncpg.Connection) -> tuple[asyncpg.Record, bool, bool]:
        row, created = await sources_store.insert_source(
            c,
            type=spec.type,
            url=spec.url,
            name=spec.name,
            config=spec.config,
            fetch_interval_sec=spec.fetch_interval_sec,
            created_by=user_id,
        )
        subscribed = await sources_store.subscribe(c, user_id, row["id"], enabled=enabled)
        seen = await sources_store.user_source(c, user_id, row["id"])
        assert seen is not None
        return seen, created, subscribed

    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as c, c.transaction():
            return await body(c)
    async with conn.transaction():
        return await body(conn)


async def import_opml(pool: asyncpg.Pool, user_id: int, data: bytes | str) -> dict[str, list[dict[str, Any]]]:
    """Subscribe a user to every feed of an OPML document. Report: added (new subscriptions), skipped
    (already followed, or listed twice), invalid (with the reason). Raises Invalid for an unreadable file."""
    try:
        doc = opml.parse_opml(data)
    except ValueError as exc:
        raise Invalid(f"OPML: {exc}") from None
    report: dict[str, list[dict[str, Any]]] = {"added": [], "skipped": [], "invalid": list(doc.invalid)}
    followed = await sources_store.subscribed_keys(pool, user_id)
    for entry in doc.entries:
        try:
            spec = validate_source(
                type=entry.type, url=entry.url, name=entry.name or None, interval=entry.interval, config=entry.config
            )
        except Invalid as exc:
            report["invalid"].append({"url": entry.url, "name": entry.name, "reason": exc.detail})
            continue
        if (spec.type, spec.url) in followed:
            report["skipped"].append({"url": spec.url, "name": spec.name, "reason": "already subscribed"})
            continue
        row, created, _ = await add_source(pool, user_id, spec)
        followed.add((spec.type, spec.url))
        report["added"].append(
            {"id": row["id"], "url": spec.url, "name": row["name"], "type": spec.type, "new_source": created}
        )
    return report


async def export_opml(pool: asyncpg.Pool, user_id: int) -> str:
    rows, after = [], 0
    while True:
        page = await sources_store.user_sources(pool, user_id, limit=1000, after_id=after)
        rows.extend(page)
        if len(page) < 1000:
            break
        after = page[-1]["id"]
    return opml.emit_opml(
        {
            "type": r["type"],
            "url": r["url"],
            "name": r["name"],
            "fetch_interval_sec": r["fetch_interval_sec"],
            "config": r["config"] if r["type"] != "rss" else {},
        }
        for r in rows
    )


def catalog() -> list[dict[str, Any]]:
    return hotlist_type.load_catalog()


async def import_catalog(
    pool: asyncpg.Pool, user_id: int, base_url: str, *, enabled: bool = False
) -> dict[str, list[dict[str, Any]]]:
    """Add every hot list of the bundled catalog on `base_url` (a newsnow-style server). Subscriptions are
    disabled unless `enabled`: these need the internet; enable the ones you want."""
    report: dict[str, list[dict[str, Any]]] = {"added": [], "skipped": [], "invalid": []}
    followed = await sources_store.subscribed_keys(pool, user_id)
    for entry in catalog():
        name = f"{entry['name']} · {entry['title']}" if entry.get("title") else entry["name"]
        interval = min(max(int(entry.get("interval") or 1800), 60), 86400)
        try:
            spec = validate_source(
                type="hotlist",
                url=base_url,
                name=name,
                interval=interval,
                config={"base_url": base_url, "source_id": entry["id"]},
            )
        except Invalid as exc:
            report["invalid"].append({"url": base_url, "name": name, "reason": exc.detail})
            continue
        if (spec.type, spec.url) in followed:
            report["skipped"].append({"url": spec.url, "name": name, "reason": "already subscribed"})
            continue
        row, created, _ = await add_source(pool, user_id, spec, enabled=enabled)
        report["added"].append(
            {
                "id": row["id"],
                "url": spec.url,
                "name": row["name"],
                "type": "hotlist",
                "new_source": created,
                "enabled": row["enabled"],
            }
        )
    return report


async def discover(rt: Runtime, url: str) -> tuple[str, str]:
    """(type, feed URL) for a URL a user pasted: the URL itself when it serves a feed, else the feed its HTML
    page advertises. Network I/O (CLI only). Raises FetchError."""
    from infosentry.sources.discover import discover_feed

    return await discover_feed(await rt.fetcher(), url)


__all__ = [
    "PARSE_POOL",
    "RunSummary",
    "SourceSpec",
    "add_source",
    "catalog",
    "discover",
    "export_opml",
    "import_catalog",
    "import_opml",
    "learn_interval",
    "prune_logs",
    "refresh_source",
    "run_due",
    "validate_source",
]
