"""Embedding pipeline: goal vectors, batched item embeddings (with their context vectors), backfill of new or
edited goals, and the lexical matching that keeps pushes flowing while embedding is paused or failing.

Items wait in the table (embedding_status), so a lost job loses nothing: `run` re-reads its work, claims rows
with FOR UPDATE SKIP LOCKED and is bounded per call (the job re-nudges itself while work remains). Budget:
`budget.allow` before every call, `budget.charge` after it. Imports budget, match, store.matches, embedders.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from infosentry import budget, calibrate, match, metrics, tuning
from infosentry.embedders.base import EmbedResult
from infosentry.embedders.lexical import has_cjk
from infosentry.embedders.openai import EmbedError, OpenAIEmbedder
from infosentry.errors import Unavailable
from infosentry.store import calibration as calibration_store
from infosentry.store import goals as goals_store
from infosentry.store import items as items_store
from infosentry.store import matches as matches_store

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from infosentry.embedders.base import Embedder
    from infosentry.runtime import Runtime

log = logging.getLogger(__name__)

MAX_EMBED_ATTEMPTS = 3  # refused inputs become 'failed' (visible, still scored by keywords) after this many
MAX_BATCHES_PER_RUN = 20  # bounded job: the task re-nudges itself while work remains
GOALS_PER_REQUEST = 50  # goals embedded per call (each has ~10 parts)
GOAL_ROUNDS = 20  # at most 1,000 goal vectors per run
BACKFILL_GOALS_PER_RUN = 5
PRF_GOALS_PER_RUN = 20  # PRF vectors per run: cheap once the user's recent vectors are read (once per user)
BACKFILL_CHUNK = 1000
POOL_MAX = 5000  # recent vectors kept per process for context vectors (5000 x 1536 floats = 30 MB)
POOL_FULL_RELOAD_SECONDS = 600.0
REQUEUE_LIMIT = 5000
# Item rounds running at once in one process. More only queue on the CPU, and each holds a queue-worker slot
# that deciding and sending need: a run that finds them busy notes it and returns (see _ItemRounds).
ITEM_ROUNDS_PER_PROCESS = 2
# Items this recent are embedded oldest first (a burst is worked through in arrival order, so none of it waits
# for all the rest); an older backlog, newest first. A minute: a burst lasts seconds, an outage's backlog longer.
FIFO_SECONDS = 60.0

_local_lock = threading.Lock()
_local_embedders: dict[str, Any] = {}


def embedder(rt: Runtime) -> Embedder:
    """The process's embedder for rt: ONE local model per process (weights load once, shared by every
    Runtime), or rt's OpenAIEmbedder wired to the hot config (EMBED_PER_MIN) and external_calls."""
    if rt.settings.embed_provider == "local":
        key = rt.settings.local_embed_model
        with _local_lock:
            if key not in _local_embedders:
                from infosentry.embedders import make_embedder

                _local_embedders[key] = make_embedder(rt.settings)
            local = _local_embedders[key]
        rt._embedder = local  # so rt.embedder() hands out the same instance
        return local  # type: ignore[no-any-return]
    emb = rt.embedder()
    if isinstance(emb, OpenAIEmbedder) and emb.on_call is None:
        emb.use_client(rt.llm())  # closed with the Runtime; every request passes its own timeout
        emb.per_minute = lambda: int(rt.hot["EMBED_PER_MIN"])

        async def on_call(rec: Any) -> None:
            await budget.record_call(
                rt, "embed", ok=rec.ok, http_status=rec.http_status, error=rec.error, latency_ms=rec.latency_ms
            )

        emb.on_call = on_call
    return emb


def model_name(rt: Runtime) -> str:
    """The name stored with vectors of the current provider/model (no weights are loaded for this)."""
    return embedder(rt).name


def _requests(emb: Embedder, n: int) -> int:
    return max(1, math.ceil(n / max(1, int(getattr(emb, "batch_size", n) or n))))


class ContextPool:
    """Recent raw vectors of one model (newest POOL_MAX within RECENT_HOURS), refreshed incrementally from
    the table; the neighbours `match.context_vectors` blends into a new item's context vector.

    The vectors sit in one array: room for a batch, then a ring of POOL_MAX slots filled from the front. A batch
    is copied in just before the ring, so it is scored against the pool and itself in place, and expired or
    duplicate rows are masked instead of dropped: copying the 30 MB pool (to append, expire and join a batch)
    was a third of the context step's time."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.loaded_at = 0.0
        self._reset(0, 0)

    def _reset(self, dims: int, room: int) -> None:
        self.room = room  # rows before the ring, for a batch
        self.vectors = np.zeros((room + POOL_MAX, dims), dtype=np.float32)
        self.ids = np.full(POOL_MAX, -1, dtype=np.int64)
        self.ts = np.full(POOL_MAX, -np.inf)
        self.size = 0  # ring slots filled
        self.next = 0  # the slot the next vector goes to

    async def refresh(self, rt: Runtime) -> None:
        full = time.monotonic() - self.loaded_at > POOL_FULL_RELOAD_SECONDS
        after = 0 if full else max(0, int(self.ids.max()))
        rows = await items_store.pool_vectors(
            rt.pool, self.model, after_id=after, hours=match.RECENT_HOURS, limit=POOL_MAX
        )
        if full:
            self._reset(self.vectors.shape[1], self.room)
            self.loaded_at = time.monotonic()
        newest = int(self.ids.max())
        rows = [r for r in rows if r["id"] > newest]  # another round of this process may have added them
        if rows:
            rows.reverse()  # oldest first: the newest overwrite the oldest last
            self.add(
                np.array([r["id"] for r in rows], dtype=np.int64),
                np.array([float(r["ts"]) for r in rows]),
                np.stack([match._vec(r["embedding"]) for r in rows]).astype(np.float32),
            )

    def add(self, ids: np.ndarray, ts: np.ndarray, vectors: np.ndarray) -> None:
        """Put vectors (oldest first) into the ring, replacing the oldest; a new model's dimensions empty it."""
        if not len(ids):
            return
        if vectors.shape[1] != self.vectors.shape[1]:
            self._reset(vectors.shape[1], self.room)
        ids, ts, vectors = ids[-POOL_MAX:], ts[-POOL_MAX:], vectors[-POOL_MAX:]
        slots = (self.next + np.arange(len(ids))) % POOL_MAX
        self.vectors[self.room + slots] = vectors
        self.ids[slots], self.ts[slots] = ids, ts
        self.next = int(slots[-1] + 1) % POOL_MAX
        self.size = min(POOL_MAX, self.size + len(ids))

    def contexts(self, ids: list[int], vectors: np.ndarray) -> np.ndarray:
        """Context vectors for a new batch: neighbours from the pool and from the batch itself."""
        n = len(ids)
        if vectors.shape[1] != self.vectors.shape[1] or self.size == 0:
            return match.context_vectors(vectors, vectors, self_index=np.arange(n))
        if n > self.room:  # a larger batch than before: make room once
            grown = np.zeros((n + POOL_MAX, self.vectors.shape[1]), dtype=np.float32)
            grown[n:] = self.vectors[self.room :]
            self.vectors, self.room = grown, n
        start = self.room - n
        self.vectors[start : self.room] = vectors
        ring = slice(0, self.size)
        usable = (self.ts[ring] > time.time() - match.RECENT_HOURS * 3600) & ~np.isin(self.ids[ring], ids)
        return match.context_vectors(
            vectors,
            self.vectors[start : self.room + self.size],
            self_index=np.arange(n),
            valid=np.concatenate([np.ones(n, dtype=bool), usable]),
        )


def _pool(rt: Runtime, model: str) -> ContextPool:
    pools: dict[str, ContextPool] = rt.extras.setdefault("context_pools", {})
    if model not in pools:
        pools[model] = ContextPool(model)
    return pools[model]


@dataclass
class RunReport:
    goals_embedded: int = 0
    goals_backfilled: int = 0
    goals_refreshed: int = 0  # goals given a new PRF vector
    embedded: int = 0
    failed: int = 0
    lexical_matched: int = 0
    match: match.MatchStats = field(default_factory=match.MatchStats)
    paused: str | None = None  # why embedding did not run (switch, breaker, outage)
    more: bool = False  # work remains: run again

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _ItemRounds:
    """A process's item rounds. A run that finds every slot taken records that it missed and returns at once
    rather than wait (a waiting job would hold its worker slot); the next round to finish reports `more`, so the
    job runs again and the items that arrived meanwhile are not left to the sweep."""

    slots: asyncio.Semaphore
    missed: bool = False


def _item_rounds(rt: Runtime) -> _ItemRounds:
    rounds: _ItemRounds = rt.extras.setdefault(
        "embed_item_rounds", _ItemRounds(asyncio.Semaphore(ITEM_ROUNDS_PER_PROCESS))
    )
    return rounds


async def run(
    rt: Runtime,
    *,
    max_batches: int = MAX_BATCHES_PER_RUN,
    on_matched: Callable[[], Awaitable[None]] | None = None,
) -> RunReport:
    """One bounded round: goal vectors, goal backfills, item batches, then lexical matching of whatever is
    still unmatched (all of it, pending items included, when embedding is paused or failing). `on_matched` is
    awaited after each committed batch that stored matches (it nudges deciding: a batch's items are not held
    back until the whole round ends). The item part runs in at most ITEM_ROUNDS_PER_PROCESS calls at once."""
    report = RunReport()

    async def matched_since(stored: int) -> None:
        if on_matched is not None and report.match.stored > stored:
            try:
                await on_matched()
            except Exception as exc:  # the periodic decide sweep finds the items anyway
                log.warning("could not nudge deciding: %s", exc, extra={"action": "embed_nudge_failed"})

    emb = embedder(rt)
    await embed_goals(rt, emb, report)
    if report.paused is None:
        allowed, why = await budget.allow(rt, "embed")
        report.paused = None if allowed else why
    await backfill_goals(rt, emb, report)
    rounds = _item_rounds(rt)
    if rounds.slots.locked():
        rounds.missed = True
        return report
    try:
        async with rounds.slots:  # free, so entered without waiting
            await _item_round(rt, emb, report, max_batches=max_batches, matched_since=matched_since)
        tuning.release_free_heap()
    finally:
        if rounds.missed:
            rounds.missed = False
            report.more = True
    if report.paused:
        log.info("embedding paused: %s", report.paused, extra={"action": "embed_paused", "reason": report.paused})
    return report


async def _item_round(
    rt: Runtime,
    emb: Embedder,
    report: RunReport,
    *,
    max_batches: int,
    matched_since: Callable[[int], Awaitable[None]],
) -> None:
    """Item batches, lexical matching of what is still unmatched, then the PRF vectors now due."""
    model = emb.name
    goals_left = report.more
    batches = 0
    while batches < max_batches and report.paused is None:
        allowed, why = await budget.allow(rt, "embed")
        if not allowed:
            report.paused = why
            break
        stored = report.match.stored
        done = await embed_batch(rt, emb, report)
        await matched_since(stored)
        batches += 1
        if done == 0:
            break
    else:
        report.more = report.paused is None and batches >= max_batches
    remaining = max_batches
    while remaining > 0:
        stored = report.match.stored
        n = await match_unmatched(rt, model, include_pending=report.paused is not None, report=report)
        await matched_since(stored)
        remaining -= 1
        if n == 0:
            break
    else:
        report.more = True
    report.more = report.more or goals_left
    if report.paused is None:  # after the batches: a goal that just reached its count gets its vector now
        report.goals_refreshed = await refresh_prf(rt, emb)


async def embed_goals(rt: Runtime, emb: Embedder, report: RunReport, *, rounds: int = GOAL_ROUNDS) -> None:
    """Vectors for goals whose scored text changed (version) or that lack one of the current model, in
    requests of GOALS_PER_REQUEST goals; `report.more` when some are left after `rounds`."""
    for _ in range(rounds):
        if not await _embed_goal_batch(rt, emb, report):
            return
    report.more = bool(await goals_store.goals_to_embed(rt.pool, emb.name, 1))


async def _embed_goal_batch(rt: Runtime, emb: Embedder, report: RunReport) -> bool:
    goals = await goals_store.goals_to_embed(rt.pool, emb.name, GOALS_PER_REQUEST)
    if not goals:
        return False
    allowed, why = await budget.allow(rt, "embed")
    if not allowed:
        report.paused = why
        return False
    facets = [match.goal_facets(g["name"], g["description"], list(g["priority_terms"])) for g in goals]
    flat = [f for fs in facets for f in fs]
    try:
        result = await emb.embed(flat)
    except (EmbedError, Unavailable) as exc:
        report.paused = f"embedding unavailable: {exc}"
        log.warning("goal embedding failed: %s", exc, extra={"action": "goal_embed_failed"})
        return False
    await budget.charge(rt, "embed", tokens=result.tokens, calls=_requests(emb, len(flat)))
    metrics.EMBEDDINGS.labels("goal").inc(len(flat))
    vectors, start = [], 0
    for fs in facets:
        vectors.append(match.goal_vector(np.stack(result.vectors[start : start + len(fs)])))
        start += len(fs)
    priors, neighbours = await _goal_priors(rt, emb, goals, vectors)
    async with rt.pool.acquire() as conn, conn.transaction():
        await matches_store.lock_for_write(conn)  # the calibration rows are matching's too: one writer at a time
        ids, versions = [g["id"] for g in goals], [g["version"] for g in goals]
        await goals_store.store_goal_vectors(conn, ids, versions, vectors, emb.name)
        await calibration_store.reset(conn, emb.name, ids, versions, priors, neighbours)
    report.goals_embedded += len(goals)
    return len(goals) == GOALS_PER_REQUEST


@dataclass(frozen=True)
class _Background:
    vectors: np.ndarray  # context vectors of the corpus
    neighbour: float | None  # the model's feedback neighbour threshold, measured on them


async def _background(rt: Runtime, emb: Embedder, language: str) -> _Background | None:
    """Context vectors of the calibration background corpus (calibrate.background) under this model, embedded
    once per process and model (a few thousand tokens: a fraction of a cent for a paid model), and the neighbour
    threshold they give. None when the model cannot embed it now; the goals then calibrate on their own
    windows."""
    cache: dict[tuple[str, str], _Background] = rt.extras.setdefault("calibration_background", {})
    lock: asyncio.Lock = rt.extras.setdefault("calibration_background_lock", asyncio.Lock())
    key = (emb.name, language)
    async with lock:  # concurrent runs of one process embed it once
        if key not in cache:
            allowed, _ = await budget.allow(rt, "embed")
            if not allowed:
                return None
            texts = list(calibrate.background(language))
            try:
                result = await emb.embed(texts)
            except (EmbedError, Unavailable) as exc:
                log.warning("calibration background not embedded: %s", exc, extra={"action": "background_failed"})
                return None
            await budget.charge(rt, "embed", tokens=result.tokens, calls=_requests(emb, len(texts)))
            raw = np.stack(result.vectors).astype(np.float32)
            # scored items are context vectors; the corpus plays "the recent items" for its own contexts
            ctx = match.context_vectors(raw, raw, self_index=np.arange(len(raw)))
            cache[key] = _Background(ctx, calibrate.neighbour_threshold(ctx))
    return cache[key]


async def _goal_priors(
    rt: Runtime, emb: Embedder, goals: list[Any], vectors: list[np.ndarray]
) -> tuple[list[tuple[float, float] | None], list[float | None]]:
    """Each goal's calibration prior (its similarity to the background corpus of its language: location and
    spread, calibrate.background_prior) and the model's feedback neighbour threshold."""
    priors: list[tuple[float, float] | None] = []
    neighbours: list[float | None] = []
    for g, vec in zip(goals, vectors, strict=True):
        text = match.goal_text(g["name"], g["description"], list(g["priority_terms"]))
        bg = await _background(rt, emb, "zh" if has_cjk(text) else "en")
        if bg is None or bg.vectors.shape[1] != vec.shape[0]:
            priors.append(None)
            neighbours.append(None)
            continue
        priors.append(calibrate.background_prior(bg.vectors @ vec))
        neighbours.append(bg.neighbour)
    return priors, neighbours


async def backfill_goals(rt: Runtime, emb: Embedder, report: RunReport) -> None:
    """Score new, edited or resumed goals against the last RECENT_HOURS of their owner's items (is_backfill),
    first giving each its PRF vector when it has enough recent items (match.PRF_MIN_ITEMS)."""
    model = emb.name
    due = await goals_store.goals_to_backfill(rt.pool, BACKFILL_GOALS_PER_RUN + 1)
    report.more = report.more or len(due) > BACKFILL_GOALS_PER_RUN
    recent: dict[int, np.ndarray] = {}
    for g in due[:BACKFILL_GOALS_PER_RUN]:
        if report.paused is None:
            await _refresh_prf(rt, emb, g["id"], backfill=True, recent_by_user=recent)
        after = 0
        while True:
            ids = await items_store.recent_visible_items(
                rt.pool, g["user_id"], hours=match.RECENT_HOURS, after_id=after, limit=BACKFILL_CHUNK
            )
            if not ids:
                break
            stats = await match.match_items(
                rt,
                ids,
                model=model,
                goal_ids=[g["id"]],
                backfill_before=g["updated_at"],
                lexical_fallback=report.paused is not None,
            )
            report.match.add(stats)
            after = ids[-1]
        if await goals_store.set_matched_version(rt.pool, g["id"], g["version"]):
            report.goals_backfilled += 1


async def refresh_prf(rt: Runtime, emb: Embedder) -> int:
    """Goals due a (new) PRF vector: after their first match.PRF_MIN_ITEMS items, then every
    match.PRF_EVERY, so the vector follows what the goal's feeds carry. Returns how many were refreshed."""
    due = await goals_store.goals_to_refresh_prf(
        rt.pool, emb.name, first=match.PRF_MIN_ITEMS, every=match.PRF_EVERY, limit=PRF_GOALS_PER_RUN
    )
    recent: dict[int, np.ndarray] = {}  # by user: a user's goals all learn from the same recent items
    for goal_id in due:
        await _refresh_prf(rt, emb, goal_id, backfill=False, recent_by_user=recent)
    return len(due)


async def _recent_vectors(rt: Runtime, model: str, user_id: int, dims: int) -> np.ndarray:
    rows = await items_store.recent_visible_vectors(rt.pool, user_id, model, hours=match.RECENT_HOURS, limit=POOL_MAX)
    return np.stack([match._vec(v) for v in rows]).astype(np.float32) if rows else np.zeros((0, dims), np.float32)


async def _refresh_prf(
    rt: Runtime, emb: Embedder, goal_id: int, *, backfill: bool, recent_by_user: dict[int, np.ndarray] | None = None
) -> None:
    """Compute the goal's PRF vector (match.prf_vector) from its owner's recent items, the calibration prior
    under it, and its window: the newest calibrate.WINDOW recent items' cosines under it, or empty when a
    backfill follows (it scores those items and fills the window). Before a backfill with too few items,
    nothing is recorded (refresh_prf tries again later); otherwise a failed attempt is recorded and the goal
    keeps its own vector."""
    g = await goals_store.base_vector(rt.pool, goal_id)
    if g is None or g["embedding"] is None or g["embedding_model"] != emb.name or g["embedded_version"] != g["version"]:
        return
    base = match._vec(g["embedding"])
    assert base is not None
    recent_by_user = {} if recent_by_user is None else recent_by_user
    if g["user_id"] not in recent_by_user:
        recent_by_user.clear()  # one user's at a time (up to POOL_MAX vectors): due goals come grouped by user
        recent_by_user[g["user_id"]] = await _recent_vectors(rt, emb.name, g["user_id"], base.size)
    recent = recent_by_user[g["user_id"]]
    vector = match.prf_vector(base, recent)
    if vector is None and backfill:
        return
    prior, window = None, None
    if vector is not None:
        text = match.goal_text(g["name"], g["description"], list(g["priority_terms"]))
        bg = await _background(rt, emb, "zh" if has_cjk(text) else "en")
        if bg is not None and bg.vectors.shape[1] == vector.size:
            prior = calibrate.background_prior(bg.vectors @ vector)
        if not backfill:  # newest first from the store; the window is oldest first
            window = (recent[: calibrate.WINDOW] @ vector)[::-1].tolist()
    await calibration_store.set_prf(rt.pool, emb.name, goal_id, g["version"], vector, prior, window)


async def embed_batch(rt: Runtime, emb: Embedder, report: RunReport) -> int:
    """Claim up to EMBED_BATCH_SIZE pending items, embed title + snippet, store vectors + context vectors in
    one UPDATE, charge the budget, then score the items. Returns how many items were claimed."""
    size = int(rt.hot["EMBED_BATCH_SIZE"])
    pool = _pool(rt, emb.name)
    await pool.refresh(rt)
    embedded: list[int] = []
    async with rt.pool.acquire() as conn, conn.transaction():
        rows = await items_store.claim_pending(conn, size, fifo_seconds=FIFO_SECONDS)
        if not rows:
            return 0
        ids = [r["id"] for r in rows]
        texts = [match.item_text(r["title"], r["snippet"]) or "(untitled)" for r in rows]
        vectors, tokens, calls, refused, outage = await _embed_isolating(emb, texts)
        if calls:
            await budget.charge(rt, "embed", tokens=tokens, calls=calls)
        good = [k for k, v in enumerate(vectors) if v is not None]
        metrics.EMBEDDINGS.labels("item").inc(len(good))
        if good:
            vecs = np.stack([vectors[k] for k in good]).astype(np.float32)
            contexts = pool.contexts([ids[k] for k in good], vecs)
            embedded = [ids[k] for k in good]
            await items_store.store_embeddings(conn, embedded, list(vecs), list(contexts), emb.name)
        if refused:
            failed = await items_store.record_embed_failure(
                conn, [ids[k] for k in refused], max_attempts=MAX_EMBED_ATTEMPTS
            )
            report.failed += len(failed)
            if failed:
                log.warning("items failed embedding for good", extra={"action": "embed_failed", "items": failed})
        if embedded:
            # scored in the claim transaction: the rows stay locked, so no other worker scores them meanwhile,
            # and vectors and matches commit together
            report.match.add(await match.match_items(rt, embedded, model=emb.name, conn=conn))
    if outage is not None:
        report.paused = f"embedding unavailable: {outage}"
        log.warning("embedding unavailable: %s", outage, extra={"action": "embed_unavailable"})
    report.embedded += len(embedded)
    return len(rows)


async def _embed_isolating(
    emb: Embedder, texts: list[str]
) -> tuple[list[np.ndarray | None], int, int, list[int], str | None]:
    """Embed texts; when the server refuses the input itself, split the batch in halves to isolate the bad
    texts. Returns (vectors or None per text, tokens, successful requests, refused indexes, outage reason)."""
    out: list[np.ndarray | None] = [None] * len(texts)
    refused: list[int] = []
    tokens = calls = 0
    outage: str | None = None

    async def go(lo: int, hi: int) -> None:
        nonlocal tokens, calls, outage
        if outage is not None or lo >= hi:
            return
        try:
            result: EmbedResult = await emb.embed(texts[lo:hi])
        except EmbedError as exc:
            if exc.input_fault and hi - lo > 1:
                mid = (lo + hi) // 2
                await go(lo, mid)
                await go(mid, hi)
            elif exc.input_fault:
                refused.append(lo)
            else:
                outage = str(exc)
            return
        except Unavailable as exc:  # the local model is not installed
            outage = exc.detail
            return
        tokens += result.tokens
        calls += _requests(emb, hi - lo)
        for k, v in enumerate(result.vectors):
            out[lo + k] = np.asarray(v, dtype=np.float32)

    await go(0, len(texts))
    return out, tokens, calls, refused, outage


async def match_unmatched(rt: Runtime, model: str, *, include_pending: bool, report: RunReport) -> int:
    """Score items never matched: with their vectors when they have one; by keywords (capped at BATCH) when
    embedding is off, failing or over budget (include_pending) or an item has waited longer than
    match.PENDING_WAIT_SECONDS. Returns how many items were matched."""
    size = int(rt.hot["EMBED_BATCH_SIZE"])
    async with rt.pool.acquire() as conn, conn.transaction():
        ids = await items_store.claim_unmatched(
            conn, size, include_pending=include_pending, pending_wait=match.PENDING_WAIT_SECONDS
        )
        if not ids:
            return 0
        stats = await match.match_items(rt, ids, model=model, conn=conn, lexical_fallback=include_pending)
    report.match.add(stats)
    report.lexical_matched += len(ids)
    return len(ids)


async def sweep(rt: Runtime) -> dict[str, Any]:
    """Periodic safety net: re-queue items of another model still needed for matching, and say whether the
    embed job has work (pending or unmatched items, goals to embed or backfill) so lost nudges are repaired."""
    model = model_name(rt)
    requeued = await items_store.requeue_other_model(rt.pool, model, hours=match.RECENT_HOURS, limit=REQUEUE_LIMIT)
    if requeued:
        log.info("re-embedding %d items for model %s", requeued, model, extra={"action": "embed_requeue"})
    waiting = await items_store.work_waiting(rt.pool, model, prf_first=match.PRF_MIN_ITEMS, prf_every=match.PRF_EVERY)
    return {"requeued": requeued, **waiting, "work": any(waiting.values()) or requeued > 0}
