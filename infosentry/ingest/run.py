"""An ingest run: claim due sources in bounded batches with a lease, fetch them concurrently (per-host caps
live in the Fetcher), parse in the parse pool, and let one writer store the results of many fetches per
transaction: the items (ingest.items), the sources' health and schedule, one ingest log row per fetch.
A failing source never loses the other sources' work.

Imports fetch, sources, ingest.{parsing, items, schedule}, models, metrics, store.sources, runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from yarl import URL

from infosentry import db, metrics
from infosentry.errors import Invalid, NotFound
from infosentry.fetch_errors import FetchError
from infosentry.ingest import schedule
from infosentry.ingest.items import FeedItems, store_items
from infosentry.ingest.parsing import PARSE_POOL, PreparedFeed, in_thread, nul_free, prepare
from infosentry.models import FetchResult, RunSummary
from infosentry.runtime import Runtime
from infosentry.sources import SOURCE_TYPES
from infosentry.store import sources as sources_store
from infosentry.urls import placeholder_name

log = logging.getLogger(__name__)

# A claimed source is leased for LEASE_SECONDS and the lease renewed every LEASE_RENEW_SECONDS while its
# fetch and write are in flight, however slow: a crashed worker's sources are due again within half a minute.
# (A lease that lapses under a stalled database at worst lets two workers fetch one source: the items are
# unique, so that costs a fetch, never a duplicate.)
LEASE_SECONDS = 30
LEASE_RENEW_SECONDS = 10.0
FETCH_CONCURRENCY = 32  # fetches in flight per run (the Fetcher also caps each host at 2)
RUN_BUDGET_SECONDS = 120.0  # one ingest_due job stops claiming after this; the next tick continues
# A run holds at most this many claimed sources per slot, most of them waiting for a busy host (their leases
# renewed); beyond that it claims again only as fetches finish, CLAIM_BATCH at a time (one claim per finished fetch
# cost a statement per source when the hosts, not the slots, held the run back).
CLAIMED_PER_SLOT = 8
CLAIM_BATCH = 16
IDLE_CLAIM_SECONDS = 1.0  # while fetches are in flight and nothing is due, look again this often
FLUSH_MAX = 64  # fetch results written per transaction
FLUSH_LINGER = 0.2  # seconds the writer waits for more results before writing (bigger, fewer transactions)
MAX_ERROR_CHARS = 1000


@dataclass(slots=True)
class Attempt:
    """One fetch of one source, before it is written."""

    source: asyncpg.Record
    started_at: datetime
    duration_ms: int = 0
    feed: PreparedFeed | None = None
    not_modified: bool = False
    http_status: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    hint: datetime | None = None  # the earliest next fetch the server asked for
    error: FetchError | None = None
    error_kind: str | None = None


class Run:
    """Fetch tasks feed a queue; one writer drains it in transactions of up to FLUSH_MAX attempts."""

    def __init__(
        self,
        rt: Runtime,
        *,
        concurrency: int,
        use_pool: bool = True,
        keep_results: bool = False,
        lease_seconds: int = LEASE_SECONDS,
        on_new_items: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.rt = rt
        self.on_new_items = on_new_items  # awaited after each write that stored new items (nudges embedding)
        self.lease_seconds = lease_seconds
        self.sem = asyncio.Semaphore(concurrency)
        self.queue: asyncio.Queue[Attempt | None] = asyncio.Queue()
        self.summary = RunSummary()
        self.keep_results = keep_results
        self.runner = PARSE_POOL.run if use_pool else in_thread
        self.rng = random.Random()
        self.started: set[int] = set()  # sources whose fetch began (the others can be released on cancel)
        self.leased: set[int] = set()  # claimed by this run, result not written yet: their leases are renewed
        self.hosts: dict[str, asyncio.Semaphore] = {}  # this run's fetches per host, as many as the Fetcher allows
        self.waiting_for_host = 0  # claimed sources waiting while their host serves this run's other fetches
        self._writer: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> Run:
        self._writer = asyncio.create_task(self._write_loop(), name="ingest-writer")
        self._renewer = asyncio.create_task(self._renew_loop(), name="ingest-lease-renewer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._writer is not None and self._renewer is not None
        self.queue.put_nowait(None)
        try:
            await self._writer
        finally:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(min(LEASE_RENEW_SECONDS, self.lease_seconds / 3))
            if not self.leased:
                continue
            try:
                await sources_store.renew_leases(self.rt.pool, list(self.leased), lease_seconds=self.lease_seconds)
            except Exception as exc:  # the next renewal (or the lease running out) settles it
                log.warning("lease renewal failed: %s", exc, extra={"action": "ingest_lease_renew_failed"})

    async def fetch(self, source: asyncpg.Record) -> None:
        self.leased.add(source["id"])
        # Wait for the host before taking a run slot: fetches queued behind a slow host (up to the fetch
        # timeout each) held every slot, and the run fetched nothing else until they were through.
        host = await self._host_slot(source["url"])
        self.waiting_for_host += 1
        try:
            await host.acquire()
        finally:
            self.waiting_for_host -= 1
        try:
            async with self.sem:
                self.started.add(source["id"])
                attempt = await self._fetch(source)
        finally:
            host.release()
        self.queue.put_nowait(attempt)

    async def _host_slot(self, url: str) -> asyncio.Semaphore:
        try:
            host = URL(url).host or ""
        except (TypeError, ValueError):
            host = ""  # the fetch itself reports the invalid URL
        slot = self.hosts.get(host)
        if slot is None:
            slot = self.hosts[host] = asyncio.Semaphore((await self.rt.fetcher()).per_host_limit)
        return slot

    async def _fetch(self, source: asyncpg.Record) -> Attempt:
        attempt = Attempt(source=source, started_at=datetime.now(UTC))
        t0 = time.monotonic()
        try:
            module = SOURCE_TYPES[source["type"]]
            fetcher = await self.rt.fetcher()
            outcome = await module.fetch(
                fetcher,
                source["url"],
                source["config"] or {},
                source["etag"],
                source["last_modified"],
                parse_runner=self.runner,
            )
        except FetchError as exc:
            attempt.error, attempt.error_kind, attempt.http_status = exc, exc.kind, exc.status
        except ValueError as exc:  # the stored config no longer validates (edited by hand, type module changed)
            attempt.error = FetchError("invalid_url", f"invalid source settings: {exc}")
            attempt.error_kind = "config"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must cost one source one fetch, never the run
            log.exception("fetch crashed", extra={"action": "ingest_fetch_crashed", "source_id": source["id"]})
            attempt.error = FetchError("parse", f"internal error: {type(exc).__name__}: {exc}")
            attempt.error_kind = "internal"
        else:
            attempt.not_modified = outcome.not_modified
            attempt.http_status = outcome.http_status
            attempt.etag, attempt.last_modified = outcome.etag, outcome.last_modified
            feed = outcome.feed
            if feed is not None and not isinstance(feed, PreparedFeed):
                feed = prepare(feed)  # a type that parsed without the runner
            attempt.feed = feed
            attempt.hint = schedule.hint_at(
                datetime.now(UTC),
                retry_after=outcome.retry_after_at,
                max_age=outcome.max_age,
                ttl=feed.ttl_seconds if feed else None,
            )
        attempt.duration_ms = int((time.monotonic() - t0) * 1000)
        return attempt

    # -- writing --

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        done = False
        try:
            while not done:
                first = await self.queue.get()
                if first is None:
                    break
                batch = [first]
                deadline = loop.time() + FLUSH_LINGER
                while len(batch) < FLUSH_MAX and (wait := deadline - loop.time()) > 0:
                    try:
                        nxt = await asyncio.wait_for(self.queue.get(), wait)
                    except TimeoutError:
                        break
                    if nxt is None:
                        done = True
                        break
                    batch.append(nxt)
                await self._flush(batch)
        finally:
            await self._release()

    async def _connection(self) -> asyncpg.Connection:
        """One connection for the whole run: no pool round trip and reset per transaction."""
        if self._conn is None:
            self._conn = await self.rt.pool.acquire()
        return self._conn

    async def _release(self, *, broken: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if broken:
            conn.terminate()  # it may be mid-transaction or dead: never back into the pool as it is
        with contextlib.suppress(Exception):
            await self.rt.pool.release(conn)

    async def _flush(self, batch: list[Attempt]) -> None:
        try:
            conn = await self._connection()
            async with conn.transaction():
                await db.relax_commit(conn)  # a crash loses a few results: their sources are fetched again
                results = await self._write(conn, batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError)):
                await self._release(broken=True)
            if len(batch) > 1:
                log.warning("batch write failed, writing one by one: %s", exc, extra={"action": "ingest_batch_retry"})
                for one in batch:
                    await self._flush([one])
                return
            await self._write_failure(batch[0], exc)
            return
        self._tally(results)
        if self.on_new_items is not None and any(r.new for r in results):
            try:
                await self.on_new_items()
            except Exception as exc:  # the embed sweep finds the items anyway
                log.warning("could not nudge embedding: %s", exc, extra={"action": "ingest_nudge_failed"})

    async def _write(self, conn: asyncpg.Connection, batch: list[Attempt]) -> list[FetchResult]:
        now = datetime.now(UTC)
        parsed = {id(a): FeedItems(a.source, a.feed) for a in batch if a.feed is not None and a.feed.items}
        max_age = timedelta(days=float(self.rt.hot["RETENTION_ITEMS_DAYS"]))
        await store_items(conn, list(parsed.values()), now, max_age=max_age)
        results = [self._result(a, parsed.get(id(a)), now) for a in batch]
        await sources_store.record_results(conn, results)
        return results

    async def _write_failure(self, attempt: Attempt, exc: Exception) -> None:
        """The results of one source could not be stored: record that as its failure (its lease runs out if
        even this fails, and it is fetched again)."""
        log.error(
            "storing fetch results failed: %s",
            exc,
            extra={"action": "ingest_store_failed", "source_id": attempt.source["id"]},
        )
        attempt.feed = None
        attempt.error = FetchError("parse", f"internal error while storing items: {type(exc).__name__}: {exc}")
        attempt.error_kind = "internal"
        results = [self._result(attempt, None, datetime.now(UTC))]
        try:
            conn = await self._connection()
            async with conn.transaction():
                await sources_store.record_results(conn, results)
        except Exception as again:
            await self._release(broken=True)
            log.error("recording the failure failed too: %s", again, extra={"action": "ingest_record_failed"})
            return
        self._tally(results)

    def _result(self, a: Attempt, items: FeedItems | None, now: datetime) -> FetchResult:
        source = a.source
        base = schedule.base_interval(source)
        common = {
            "source_id": source["id"],
            "started_at": a.started_at,
            "duration_ms": a.duration_ms,
            "http_status": a.http_status,
            "placeholder_name": placeholder_name(source["url"]),
            "not_modified": a.not_modified,
        }
        if a.error is not None:
            streak = source["error_streak"] + 1
            return FetchResult(
                **common,
                ok=False,
                error_kind=a.error_kind or a.error.kind,
                error=nul_free(str(a.error), MAX_ERROR_CHARS),
                next_fetch_at=schedule.next_after_failure(base, streak, now, a.error.retry_after, self.rng),
            )
        interval = previous = source["current_interval_sec"] or base
        learned, title = None, None
        if a.feed is not None:
            learned = schedule.learn_interval(base, [d.published_at for d in a.feed.items], now)
            interval = learned or interval
            title = nul_free(a.feed.title, 200) if a.feed.title else None
        return FetchResult(
            **common,
            ok=True,
            etag=a.etag,
            last_modified=a.last_modified,
            fetched=len(a.feed.items) if a.feed is not None else 0,
            new=items.new if items else 0,
            duplicate=items.duplicate if items else 0,
            interval=learned,
            title=title,
            next_fetch_at=schedule.next_after_success(
                interval, now, a.hint, schedule.phase_of(source["id"]), settled=interval == previous
            ),
        )

    def _tally(self, results: list[FetchResult]) -> None:
        s = self.summary
        for r in results:
            self.leased.discard(r.source_id)  # written: record_results released the lease
            s.sources += 1
            if not r.ok:
                s.failed += 1
            elif r.not_modified:
                s.not_modified += 1
            else:
                s.ok += 1
            metrics.FETCHES.labels(r.status if r.ok else (r.error_kind or "error")).inc()
            metrics.ITEMS_INGESTED.inc(r.new)
            s.fetched += r.fetched
            s.new_items += r.new
            s.duplicates += r.duplicate
            if self.keep_results:
                s.results[r.source_id] = r


async def run_due(
    rt: Runtime,
    *,
    concurrency: int = FETCH_CONCURRENCY,
    budget: float = RUN_BUDGET_SECONDS,
    lease_seconds: int = LEASE_SECONDS,
    use_pool: bool = True,
    on_new_items: Callable[[], Awaitable[None]] | None = None,
) -> RunSummary:
    """Fetch every due source (bounded batches, bounded concurrency) until none is due and none is in flight, or
    the time budget is spent; `on_new_items` is awaited after each write that stored new items. Safe to run in
    several processes at once: claims never overlap.

    One run per process claims at a time (a second call returns an empty summary at once: the claiming run takes
    what comes due). While fetches are in flight it keeps claiming what comes due, so one slow fetch (up to the
    fetch timeout) does not hold back every source due meanwhile, to be fetched together later as a wave. Past
    the budget it stops claiming and lets the next run claim while its last fetches finish.
    """
    claiming: asyncio.Lock = rt.extras.setdefault("ingest_claiming", asyncio.Lock())
    if claiming.locked():
        return RunSummary()
    started = time.monotonic()
    deadline = started + budget
    tasks: set[asyncio.Task[None]] = set()
    claimed: list[int] = []
    max_claimed = CLAIMED_PER_SLOT * concurrency
    claim_at = max_claimed - min(CLAIM_BATCH, concurrency)  # holding at most this many, a whole batch fits
    await sources_store.park_unfollowed(rt.pool)
    async with Run(
        rt, concurrency=concurrency, use_pool=use_pool, lease_seconds=lease_seconds, on_new_items=on_new_items
    ) as run:
        try:
            async with claiming:
                while time.monotonic() < deadline:
                    # keep about two batches in hand beyond those waiting for a busy host: enough to keep every
                    # slot busy, few leases waiting, and other hosts fetched while one is slow
                    while (ready := len(tasks) - run.waiting_for_host) > concurrency or len(tasks) > claim_at:
                        _, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    rows = await sources_store.claim_due(
                        rt.pool,
                        limit=min(2 * concurrency - ready, max_claimed - len(tasks)),
                        lease_seconds=lease_seconds,
                    )
                    if not rows:
                        if not tasks:
                            break
                        idle = min(IDLE_CLAIM_SECONDS, deadline - time.monotonic())
                        _, tasks = await asyncio.wait(tasks, timeout=max(idle, 0.0))
                        continue
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


async def refresh_source(rt: Runtime, source_id: int, *, use_pool: bool = False) -> FetchResult | None:
    """Fetch one source now (due or not, enabled or not); its result with the new schedule (None when even
    storing the result failed).

    Raises NotFound for an unknown id and Invalid when a worker is fetching it at this moment.
    """
    row, reason = await sources_store.claim_one(rt.pool, source_id, lease_seconds=LEASE_SECONDS)
    if row is None:
        if reason == "missing":
            raise NotFound(f"no source with id {source_id}")
        raise Invalid(f"source {source_id} is being fetched right now; try again in a minute")
    async with Run(rt, concurrency=1, use_pool=use_pool, keep_results=True) as run:
        await run.fetch(row)
    return run.summary.results.get(source_id)
