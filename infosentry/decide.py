"""Decide: the tier of every new or re-scored match (gates, hot thresholds, the LLM boundary judge).

Pure rules first (`classify`, `conclude`: snapshot in, tier out — replay uses the same two functions),
then the set-based sweep `decide_pending`: a batch of candidate matches becomes one bulk insert of
decisions and their runs; boundary-band pairs go to the judge queue, worked by `judge_pending`, so
nothing rule-based ever waits for the LLM. Matches below DIGEST_MIN_SCORE get no decision row and no
run (they can never be pushed; a later re-score above it is picked up).
Imports budget, judge, store.decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

import asyncpg

from infosentry import budget, judge, metrics
from infosentry.errors import Invalid
from infosentry.runtime import Runtime
from infosentry.store import decisions as decisions_store

log = logging.getLogger(__name__)

ITEMS_PER_CHUNK = 500  # queued items per chunk (each with its matches against every goal)
DECISIONS_PER_WRITE = 1000  # decisions built and written per statement (bounds the snapshots held at once)
JUDGE_CONCURRENCY = 4
JUDGE_BATCH = 16  # boundary pairs read, judged and written per round of the judge job
JUDGE_TIME_BUDGET = 120.0  # seconds a judge job works before handing over to a new job (bounded jobs)
LOCK_WAIT_SECONDS = 30.0

PUSH_TIERS = ("IMMEDIATE", "BATCH", "DIGEST")


# --- the rules (pure) --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """Thresholds and switches a decision is made under (the hot config, or a snapshot's copy of it)."""

    immediate_threshold: float
    boundary_low: float
    batch_threshold: float
    digest_min: float
    immediate_enabled: bool = True
    llm_enabled: bool = True

    @classmethod
    def from_hot(cls, hot: Mapping[str, Any] | Any) -> Policy:
        return cls(
            immediate_threshold=float(hot["IMMEDIATE_THRESHOLD"]),
            boundary_low=float(hot["BOUNDARY_LOW"]),
            batch_threshold=float(hot["BATCH_THRESHOLD"]),
            digest_min=float(hot["DIGEST_MIN_SCORE"]),
            immediate_enabled=bool(hot["IMMEDIATE_ENABLED"]),
            llm_enabled=bool(hot["LLM_ENABLED"]),
        )

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any]) -> Policy:
        return cls.from_hot({**snapshot["thresholds"], **snapshot["switches"]})

    def thresholds(self) -> dict[str, float]:
        return {
            "IMMEDIATE_THRESHOLD": self.immediate_threshold,
            "BOUNDARY_LOW": self.boundary_low,
            "BATCH_THRESHOLD": self.batch_threshold,
            "DIGEST_MIN_SCORE": self.digest_min,
        }

    def switches(self) -> dict[str, bool]:
        return {"IMMEDIATE_ENABLED": self.immediate_enabled, "LLM_ENABLED": self.llm_enabled}


@dataclass(frozen=True)
class Prelim:
    """What the rules say before any LLM: a tier, or BOUNDARY (the judge decides IMMEDIATE or BATCH)."""

    tier: str  # IMMEDIATE | BOUNDARY | BATCH | DIGEST | IGNORE
    rule: str  # why, in words
    fallback_reason: str | None = None  # set when the rules had to stand in for the judge

    @property
    def needs_llm(self) -> bool:
        return self.tier == "BOUNDARY"


@dataclass(frozen=True)
class Outcome:
    tier: str
    status: str  # decision status: pending (to push) or skipped (IGNORE)
    run_status: str  # SUCCESS | FALLBACK | ERROR
    reason: str
    rule: str
    fallback_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "status": self.status,
            "run_status": self.run_status,
            "reason": self.reason,
            "rule": self.rule,
            "fallback_reason": self.fallback_reason,
        }


def _strict_miss(match: Mapping[str, Any]) -> bool:
    components = match.get("components") or {}
    return match.get("gate") == "strict_no_hit" or bool(
        isinstance(components, dict) and (components.get("strict_miss") or components.get("strict_no_hit"))
    )


def classify(snapshot: Mapping[str, Any], policy: Policy) -> Prelim:
    """The tier by the rules of CONTRACT §5.3: gates, then thresholds; backfill, a STRICT miss and
    IMMEDIATE_ENABLED=false cap at BATCH; the boundary band needs the judge unless the LLM is switched off."""
    match = snapshot["match"]
    score = float(match["score"])
    gate = match.get("gate")
    if snapshot.get("blocked_source") or gate == "blocked_source":
        return Prelim("IGNORE", "the item's source is blocked for this goal")
    if gate == "negative_term":
        return Prelim("IGNORE", "a negative term of the goal matched")
    if score >= policy.boundary_low:
        band = "IMMEDIATE" if score >= policy.immediate_threshold else "BOUNDARY"
        where = (
            f"score {score:.3f} >= IMMEDIATE_THRESHOLD {policy.immediate_threshold:.2f}"
            if band == "IMMEDIATE"
            else f"score {score:.3f} in the boundary band [{policy.boundary_low:.2f}, {policy.immediate_threshold:.2f})"
        )
        backfill = bool(match.get("is_backfill") or snapshot["item"].get("is_backfill"))
        if backfill:
            return Prelim("BATCH", f"{where}, but backfill items are never IMMEDIATE")
        if _strict_miss(match):
            return Prelim("BATCH", f"{where}, but a STRICT goal without a priority-term hit is never IMMEDIATE")
        if match.get("lexical_only"):
            return Prelim("BATCH", f"{where}, but a score from keywords alone (no embedding) is never IMMEDIATE")
        if not policy.immediate_enabled:
            return Prelim("BATCH", f"{where}, but IMMEDIATE_ENABLED is false")
        if band == "BOUNDARY" and not policy.llm_enabled:
            return Prelim("BATCH", f"{where}; the LLM judge is off", fallback_reason="LLM_ENABLED is false")
        return Prelim(band, where)
    if score >= policy.batch_threshold:
        return Prelim("BATCH", f"score {score:.3f} >= BATCH_THRESHOLD {policy.batch_threshold:.2f}")
    if score >= policy.digest_min:
        return Prelim("DIGEST", f"score {score:.3f} >= DIGEST_MIN_SCORE {policy.digest_min:.2f}")
    return Prelim("IGNORE", f"score {score:.3f} < DIGEST_MIN_SCORE {policy.digest_min:.2f}")


def match_reasons(reasons: Any, limit: int = 3) -> str:
    """The matcher's human-readable reasons as one line."""
    if isinstance(reasons, str):
        return reasons
    texts: list[str] = []
    for r in reasons or []:
        if isinstance(r, str):
            texts.append(r)
        elif isinstance(r, dict):
            text = r.get("text") or r.get("detail") or r.get("reason") or r.get("message")
            if text:
                texts.append(str(text))
    return "; ".join(texts[:limit])


def conclude(prelim: Prelim, judgment: Mapping[str, Any] | None, reasons: Any = None) -> Outcome:
    """The final decision from the rules and, for the boundary band, the judge's answer (a Judgment summary:
    label/confidence/reason/fallback_reason/unexpected). No usable answer means BATCH, marked FALLBACK.

    `reason` is what a reader sees in the inbox and emails: the matcher's reasons (in the goal's language) and,
    for a judged item, the judge's own words. The rule that fired, with its thresholds, is `rule`, kept in the
    run's output; only an IGNORE (never shown to a reader) carries it in `reason`, to answer "why not pushed"."""
    evidence = match_reasons(reasons)
    if not prelim.needs_llm:
        status = "skipped" if prelim.tier == "IGNORE" else "pending"
        run_status = "FALLBACK" if prelim.fallback_reason else "SUCCESS"
        if prelim.tier == "IGNORE":
            reason = _rule_text(prelim) + (f". {evidence}" if evidence else "")
        else:
            reason = evidence
        return Outcome(prelim.tier, status, run_status, reason[:500], prelim.rule, prelim.fallback_reason)
    label = (judgment or {}).get("label")
    fallback = (judgment or {}).get("fallback_reason")
    if label in judge.LABELS and not fallback:
        said = str((judgment or {}).get("reason") or "").strip()
        reason = "; ".join(part for part in (said, evidence) if part)
        return Outcome(label, "pending", "SUCCESS", reason[:500], prelim.rule)
    fallback = fallback or "the LLM gave no answer"
    run_status = "ERROR" if (judgment or {}).get("unexpected") else "FALLBACK"
    return Outcome("BATCH", "pending", run_status, evidence[:500], prelim.rule, fallback)


def _rule_text(prelim: Prelim) -> str:
    text = prelim.rule
    return text[0].upper() + text[1:] if text else text


# --- snapshots ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _iso(value: datetime | date | None) -> str | None:
    # cached: a batch's snapshots repeat an item's times for each of its goals and one computed_at for all, and
    # isoformat with a UTC offset costs microseconds (a tenth of deciding's own CPU in bench match)
    return value.isoformat() if value is not None else None


def snapshot_of(
    row: Mapping[str, Any], policy: Policy, budget_state: Mapping[str, Any] | None, llm_configured: bool
) -> dict[str, Any]:
    """The full input of one decision: enough to re-decide it later without reading anything else."""
    previous = None
    if row["decision_id"] is not None:
        previous = {
            "decision_id": row["decision_id"],
            "tier": row["prev_tier"],
            "status": row["prev_status"],
            "score": row["prev_score"],
        }
    return {
        "trigger": "match",
        "goal": {
            "id": row["goal_id"],
            "user_id": row["user_id"],
            "version": row["goal_version"],
            "name": row["goal_name"],
            "description": row["description"],
            "priority_terms": list(row["priority_terms"] or []),
            "negative_terms": list(row["negative_terms"] or []),
            "priority_mode": row["priority_mode"],
            "timezone": row["goal_timezone"],
        },
        "item": {
            "id": row["item_id"],
            "title": row["title"],
            "url": row["url"],
            "snippet": row["snippet"],
            "source_id": row["source_id"],
            "source_name": row["source_name"],
            "published_at": _iso(row["published_at"]),
            "ingested_at": _iso(row["ingested_at"]),
            "is_backfill": row["item_backfill"],
        },
        "match": {
            "score": round(float(row["score"]), 6),  # a real (float4): no spurious digits in the snapshot
            "components": row["components"],
            "reasons": row["reasons"],
            "gate": row["gate"],
            "lexical_only": row["lexical_only"],
            "is_backfill": row["match_backfill"],
            "computed_at": _iso(row["computed_at"]),
        },
        "blocked_source": row["blocked"],
        "previous": previous,
        "thresholds": policy.thresholds(),  # small dicts, built per run so no two runs share an object
        "switches": policy.switches(),
        "llm_configured": llm_configured,
        "budget": dict(budget_state) if budget_state is not None else None,
    }


BUDGET_FIELDS = ("day", "breaker_open", "reason", "llm_calls", "usd_total", "remaining_usd", "remaining_judge_calls")


def budget_snapshot(status: Mapping[str, Any]) -> dict[str, Any]:
    """What a decision needs to know of the budget day (the breaker, what is left): a compact copy, because it
    is stored with every run."""
    return _jsonable({k: status.get(k) for k in BUDGET_FIELDS})


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)  # Decimal and friends


def _llm_response(judgment: judge.Judgment | None) -> dict[str, Any] | None:
    if judgment is None or not (judgment.called or judgment.cached):
        return None
    return _jsonable(judgment.response or {"attempts": judgment.attempts})


def _row(
    snapshot: dict[str, Any],
    prelim: Prelim,
    outcome: Outcome,
    computed_at: datetime,
    judgment: judge.Judgment | None,
    latency_ms: int,
) -> dict[str, Any]:
    output: dict[str, Any] = {**outcome.as_dict(), "prelim": prelim.tier}
    if judgment is not None:
        output["judge"] = judgment.summary()
    called = judgment is not None and judgment.called
    return {
        "goal_id": snapshot["goal"]["id"],
        "item_id": snapshot["item"]["id"],
        "trigger": "match",
        "run_status": outcome.run_status,
        "input": snapshot,
        "output": output,
        "llm_used": called,
        "llm_model": judgment.model if judgment is not None and (called or judgment.cached) else None,
        "llm_request": _jsonable(judgment.request) if called and judgment is not None else None,
        "llm_response": _llm_response(judgment),
        "fallback_reason": outcome.fallback_reason,
        "prompt_tokens": judgment.prompt_tokens if judgment is not None else 0,
        "completion_tokens": judgment.completion_tokens if judgment is not None else 0,
        "usd": judgment.usd if judgment is not None else 0.0,
        "latency_ms": latency_ms,
        "tier": outcome.tier,
        "status": outcome.status,
        "score": snapshot["match"]["score"],
        "reason": outcome.reason,
        "match_computed_at": computed_at,
    }


# --- the sweep ---------------------------------------------------------------------------------------------


@dataclass
class DecideReport:
    items: int = 0
    candidates: int = 0
    written: int = 0
    tiers: dict[str, int] = field(default_factory=dict)
    to_judge: int = 0  # boundary pairs handed to the judge queue
    judged: int = 0
    llm_calls: int = 0
    fallbacks: int = 0
    errors: int = 0
    more: bool = False  # the judge queue still has work (a new job should continue)
    busy: bool = False
    seconds: float = 0.0

    @property
    def pushable(self) -> int:
        return sum(n for t, n in self.tiers.items() if t in PUSH_TIERS)

    def count(self, rows: list[asyncpg.Record]) -> None:
        self.written += len(rows)
        for r in rows:
            self.tiers[r["tier"]] = self.tiers.get(r["tier"], 0) + 1
            metrics.DECISIONS.labels(r["tier"]).inc()


@contextlib.asynccontextmanager
async def _decide_lock(rt: Runtime, wait: float, *, key: int = decisions_store.DECIDE_LOCK) -> AsyncIterator[bool]:
    """Hold an advisory lock on a dedicated pooled connection (released if the process dies)."""
    conn = await rt.pool.acquire()
    got = False
    try:
        deadline = time.monotonic() + wait
        while True:
            got = await decisions_store.try_session_lock(conn, key)
            if got or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
        yield got
    finally:
        try:
            if got:
                await decisions_store.session_unlock(conn, key)
        except Exception:
            conn.terminate()  # never hand a connection that may still hold the lock back to the pool
        except BaseException:  # cancelled while unlocking: the same, and the cancellation goes on
            conn.terminate()
            raise
        finally:
            await rt.pool.release(conn)


OnImmediate = Callable[[], Awaitable[None]]


async def _immediate_written(report: DecideReport, before: int, on_immediate: OnImmediate | None) -> None:
    """Hands a committed chunk's IMMEDIATE decisions on at once: a round can take seconds under load, and an
    instant alert should not wait for the rest of it."""
    if on_immediate is not None and report.tiers.get("IMMEDIATE", 0) > before:
        try:
            await on_immediate()
        except Exception as exc:  # the periodic flush finds the decisions anyway
            log.warning("could not flush instant alerts: %s", exc, extra={"action": "decide_flush_failed"})


async def decide_pending(
    rt: Runtime,
    *,
    items_per_chunk: int = ITEMS_PER_CHUNK,
    lock_wait: float = LOCK_WAIT_SECONDS,
    on_immediate: OnImmediate | None = None,
) -> DecideReport:
    """Decide every queued item's matches that need it (new, or re-scored while not yet pushed), by the rules.

    Chunk by chunk: candidates are tiered and written in one statement, boundary-band pairs are handed to the
    judge queue, and the chunk's items leave the decide queue — all in one transaction, so a crash loses nothing
    and duplicates nothing. The LLM is never called here: IMMEDIATE items never wait for it (`judge_pending`).
    `on_immediate` is awaited after each chunk that wrote IMMEDIATE decisions.
    """
    started = time.perf_counter()
    report = DecideReport()
    if not await decisions_store.queued(rt.pool, limit=1, exclude=[]):
        return report
    async with _decide_lock(rt, lock_wait) as got:
        if not got:
            report.busy = True
            return report
        policy = Policy.from_hot(rt.hot)
        budget_state = budget_snapshot(await budget.status(rt))
        llm_configured = bool(rt.settings.openai_api_key)
        left: set[int] = set()
        while True:
            queue = await decisions_store.queued(rt.pool, limit=items_per_chunk, exclude=list(left))
            if not queue:
                break
            rows = await decisions_store.candidates(
                rt.pool, [q["item_id"] for q in queue], digest_min=policy.digest_min
            )
            report.candidates += len(rows)
            boundary: list[tuple[int, int]] = []
            immediate = report.tiers.get("IMMEDIATE", 0)
            async with rt.pool.acquire() as conn, conn.transaction():
                # written slice by slice: a decision's snapshot is a few KB, and an item can have a hundred
                for start in range(0, len(rows), DECISIONS_PER_WRITE):
                    fast: list[dict[str, Any]] = []
                    for row in rows[start : start + DECISIONS_PER_WRITE]:
                        snapshot = snapshot_of(row, policy, budget_state, llm_configured)
                        prelim = classify(snapshot, policy)
                        if prelim.needs_llm:
                            boundary.append((row["goal_id"], row["item_id"]))
                            continue
                        outcome = conclude(prelim, None, snapshot["match"]["reasons"])
                        report.fallbacks += outcome.run_status == "FALLBACK"
                        fast.append(_row(snapshot, prelim, outcome, row["computed_at"], None, 0))
                    report.count(await decisions_store.write(conn, fast))
                await decisions_store.enqueue_judge(conn, boundary)
                # one left in the queue is decided again by the next job, after the change that kept it there
                left |= await decisions_store.dequeue(conn, [(q["item_id"], q["version"]) for q in queue])
            await _immediate_written(report, immediate, on_immediate)
            report.to_judge += len(boundary)
            report.items += len(queue)
            if len(queue) < items_per_chunk:
                break
    report.seconds = time.perf_counter() - started
    if report.candidates:
        log.info(
            "decided %d of %d candidates in %.2f s (%d for the judge)",
            report.written,
            report.candidates,
            report.seconds,
            report.to_judge,
            extra={"action": "decide_done", "tiers": report.tiers, "fallbacks": report.fallbacks},
        )
    return report


async def judge_pending(
    rt: Runtime,
    *,
    batch: int = JUDGE_BATCH,
    time_budget: float = JUDGE_TIME_BUDGET,
    lock_wait: float = 0.0,
    on_immediate: OnImmediate | None = None,
) -> DecideReport:
    """Judge the boundary pairs in the judge queue (JUDGE_CONCURRENCY calls at once) and write their decisions.

    Each pair is re-read first: a pair re-scored out of the band (or whose thresholds or switches changed) is
    decided by the rules instead. A pair leaves the queue only after its decision is written, so a job killed in
    the middle of a call leaves it queued for the retry. Bounded by `time_budget`: `report.more` asks for another
    job (answers already paid for are written batch by batch).
    """
    started = time.perf_counter()
    report = DecideReport()
    if not await decisions_store.judge_batch(rt.pool, 1):
        return report
    async with _decide_lock(rt, lock_wait, key=decisions_store.JUDGE_LOCK) as got:
        if not got:
            report.busy = True
            return report
        while time.perf_counter() - started < time_budget:
            entries = await decisions_store.judge_batch(rt.pool, batch)
            if not entries:
                break
            policy = Policy.from_hot(rt.hot)
            budget_state = budget_snapshot(await budget.status(rt))
            llm_configured = bool(rt.settings.openai_api_key)
            rows = await decisions_store.pair_candidates(
                rt.pool, [(e["goal_id"], e["item_id"]) for e in entries], digest_min=policy.digest_min
            )
            report.candidates += len(rows)
            immediate = report.tiers.get("IMMEDIATE", 0)
            judged: list[tuple[dict[str, Any], Prelim, datetime]] = []
            plain: list[dict[str, Any]] = []
            for row in rows:
                snapshot = snapshot_of(row, policy, budget_state, llm_configured)
                prelim = classify(snapshot, policy)
                if prelim.needs_llm:
                    judged.append((snapshot, prelim, row["computed_at"]))
                else:
                    plain.append(
                        _row(
                            snapshot,
                            prelim,
                            conclude(prelim, None, snapshot["match"]["reasons"]),
                            row["computed_at"],
                            None,
                            0,
                        )
                    )
            report.count(await decisions_store.write(rt.pool, plain))
            if judged:
                await _judge_and_write(rt, judged, report)
            # written (or no longer a candidate: decided meanwhile, gone): out of the queue
            await decisions_store.dequeue_judge(rt.pool, [(e["goal_id"], e["item_id"], e["version"]) for e in entries])
            await _immediate_written(report, immediate, on_immediate)
            report.items += len(entries)
        report.more = bool(await decisions_store.judge_batch(rt.pool, 1))
    report.seconds = time.perf_counter() - started
    if report.candidates:
        log.info(
            "judged %d boundary pairs (%d LLM calls, %d fallbacks) in %.2f s",
            report.judged,
            report.llm_calls,
            report.fallbacks,
            report.seconds,
            extra={"action": "judge_done", "tiers": report.tiers, "errors": report.errors},
        )
    return report


async def _judge_and_write(
    rt: Runtime, boundary: list[tuple[dict[str, Any], Prelim, datetime]], report: DecideReport
) -> None:
    gate = asyncio.Semaphore(JUDGE_CONCURRENCY)

    async def one(snapshot: dict[str, Any], prelim: Prelim, computed_at: datetime) -> dict[str, Any]:
        async with gate:
            t0 = time.perf_counter()
            judgment = await judge.judge(rt, snapshot)
            latency = int((time.perf_counter() - t0) * 1000)
        outcome = conclude(
            prelim, judgment.summary() | {"unexpected": judgment.unexpected}, snapshot["match"]["reasons"]
        )
        return _row(snapshot, prelim, outcome, computed_at, judgment, latency)

    rows = await asyncio.gather(*(one(*b) for b in boundary))
    for row in rows:
        report.judged += 1
        report.llm_calls += bool(row["llm_used"])
        report.fallbacks += row["run_status"] == "FALLBACK"
        report.errors += row["run_status"] == "ERROR"
    report.count(await decisions_store.write(rt.pool, list(rows)))


async def requeue_lost(rt: Runtime, *, limit: int = 10_000) -> int:
    """Reconciliation: items of the last two days with a match that needs a decision but is not queued go back
    in the queue (the matcher's triggers make this impossible; this proves it and repairs a manual edit)."""
    now = datetime.now(UTC)
    lost = await decisions_store.undecided_items(
        rt.pool,
        since=now - timedelta(days=2),
        settle=now - timedelta(minutes=2),
        digest_min=float(rt.hot["DIGEST_MIN_SCORE"]),
        limit=limit,
    )
    if lost:
        log.warning(
            "re-queued %d items with undecided matches",
            len(lost),
            extra={"action": "decide_requeued", "items": len(lost)},
        )
        await decisions_store.enqueue(rt.pool, lost)
    return len(lost)


async def queued_items(rt: Runtime) -> int:
    depth, _ = await decisions_store.queue_depth(rt.pool)
    return depth


async def judge_queue_depth(rt: Runtime) -> int:
    return await decisions_store.judge_depth(rt.pool)


# --- replay ------------------------------------------------------------------------------------------------

COMPARED = ("tier", "status", "run_status", "fallback_reason", "prelim")


async def replay(rt: Runtime, run: Mapping[str, Any], *, use_llm: bool, thresholds: str = "current") -> dict[str, Any]:
    """Re-decide a stored run from its input snapshot and report what differs. Writes nothing (a live LLM call
    is still recorded in the budget and external_calls: it was paid)."""
    snapshot = run["input"]
    if not isinstance(snapshot, dict) or snapshot.get("trigger") != "match":
        raise Invalid("only decision runs (trigger 'match') can be replayed")
    if thresholds not in ("current", "stored"):
        raise Invalid("thresholds must be 'current' or 'stored'")
    stored_policy = Policy.from_snapshot(snapshot)
    policy = Policy.from_hot(rt.hot) if thresholds == "current" else stored_policy
    prelim = classify(snapshot, policy)
    judgment: dict[str, Any] | None = None
    llm: dict[str, Any] = {"needed": prelim.needs_llm, "source": None}
    if prelim.needs_llm:
        if use_llm:
            fresh = await judge.judge(
                rt, snapshot, use_cache=False, write_cache=False, max_attempts=1, attempt_timeout=15.0
            )
            judgment = fresh.summary() | {"unexpected": fresh.unexpected}
            llm |= {
                "source": "live",
                "answer": fresh.summary(),
                "response": _jsonable(fresh.response),
                "prompt_tokens": fresh.prompt_tokens,
                "completion_tokens": fresh.completion_tokens,
            }
        else:
            stored = (run.get("output") or {}).get("judge")
            if stored:
                judgment = dict(stored)
                llm |= {"source": "stored", "answer": stored}
            else:
                judgment = {"fallback_reason": "no stored LLM answer: the original run did not reach the judge"}
                llm |= {"source": "none"}
    outcome = conclude(prelim, judgment, snapshot["match"].get("reasons"))
    original_out = run.get("output") or {}
    original = {k: original_out.get(k) for k in ("tier", "status", "reason", "fallback_reason", "prelim")}
    original["run_status"] = run.get("status")
    replayed = {**outcome.as_dict(), "prelim": prelim.tier}
    replayed.pop("rule", None)
    differences = [
        {"field": k, "original": original.get(k), "replayed": replayed.get(k)}
        for k in COMPARED
        if original.get(k) != replayed.get(k)
    ]
    return {
        "run_id": run["id"],
        "use_llm": use_llm,
        "thresholds": thresholds,
        "policy": {**policy.thresholds(), **policy.switches()},
        "stored_policy": {**stored_policy.thresholds(), **stored_policy.switches()},
        "original": original,
        "replayed": replayed,
        "llm": llm,
        "differences": differences,
        "changed": bool(differences),
    }
