"""The daily budget (CONTRACT §6): spend accounting, the sticky breaker, and the embed/judge gate.

One budget day in settings TZ. Counters are atomic upserts in Postgres; the breaker opens when the spend
since the day's last admin reset reaches DAILY_USD_BUDGET or the judge calls reach JUDGE_PER_DAY, stays open
for the rest of the day, and closes on a new day or `reset`. Callers check `allow` before every paid call
and `charge` after it, so spend overshoots a cap by at most the one call (batch) in flight per worker.
DAILY_USD_BUDGET=0 therefore stops all embedding and LLM calls at once. Imports settings, store.budget.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from infosentry import metrics
from infosentry.store import budget as store

if TYPE_CHECKING:
    import asyncpg

    from infosentry.runtime import Runtime

log = logging.getLogger(__name__)

KINDS = ("embed", "judge")
_SWITCH = {"embed": "EMBEDDING_ENABLED", "judge": "LLM_ENABLED"}


def today(rt: Runtime, now: datetime | None = None) -> date:
    """The budget day: the calendar date in settings TZ."""
    tz = ZoneInfo(rt.settings.tz)
    return (now.astimezone(tz) if now else datetime.now(tz)).date()


def usd_for(rt: Runtime, kind: str, *, tokens: int = 0, prompt_tokens: int = 0, completion_tokens: int = 0) -> float:
    """Estimated price of a call. The local embedder is free; OpenAI prices come from settings."""
    s = rt.settings
    if kind == "embed":
        return 0.0 if s.embed_provider == "local" else tokens * s.embed_usd_per_mtok / 1e6
    return (prompt_tokens * s.judge_usd_per_mtok_in + completion_tokens * s.judge_usd_per_mtok_out) / 1e6


def _f(value: Any) -> float:
    return float(value) if isinstance(value, Decimal) else float(value or 0)


def _view(rt: Runtime, day: date, row: asyncpg.Record | None) -> dict[str, Any]:
    cap = float(rt.hot["DAILY_USD_BUDGET"])
    judge_cap = int(rt.hot["JUDGE_PER_DAY"])
    get = lambda k, d=0: row[k] if row is not None and row[k] is not None else d  # noqa: E731
    embed_usd, llm_usd = _f(get("embed_usd")), _f(get("llm_usd"))
    total = embed_usd + llm_usd
    since_reset = total - _f(get("usd_at_reset"))
    calls_since_reset = int(get("llm_calls")) - int(get("llm_calls_at_reset"))
    return {
        "day": day.isoformat(),
        "tz": rt.settings.tz,
        "embed_requests": int(get("embed_requests")),
        "embed_tokens": int(get("embed_tokens")),
        "embed_usd": round(embed_usd, 6),
        "llm_calls": int(get("llm_calls")),
        "llm_prompt_tokens": int(get("llm_prompt_tokens")),
        "llm_completion_tokens": int(get("llm_completion_tokens")),
        "llm_usd": round(llm_usd, 6),
        "usd_total": round(total, 6),
        "cap": cap,
        "judge_cap": judge_cap,
        "remaining_usd": round(max(0.0, cap - since_reset), 6),
        "remaining_judge_calls": max(0, judge_cap - calls_since_reset),
        "breaker_open": bool(get("breaker_open", False)),
        "reason": get("breaker_reason", None),
        "opened_at": get("opened_at", None),
        "reset_at": get("reset_at", None),
        "embedding_enabled": bool(rt.hot["EMBEDDING_ENABLED"]),
        "llm_enabled": bool(rt.hot["LLM_ENABLED"]),
    }


async def status(rt: Runtime) -> dict[str, Any]:
    """Today's counters, caps, remaining money and calls, and the breaker state (live numbers)."""
    day = today(rt)
    return _view(rt, day, await store.get_day(rt.pool, day))


async def allow(rt: Runtime, kind: str) -> tuple[bool, str | None]:
    """May a paid call of `kind` ("embed" or "judge") start now? (False, reason) when its switch is off or
    the breaker is open; a cap reached without a charge (e.g. the cap was lowered) opens the breaker here."""
    if kind not in KINDS:
        raise ValueError(f"unknown budget kind {kind!r}")
    switch = _SWITCH[kind]
    if not rt.hot[switch]:
        return False, f"{switch} is false"
    day = today(rt)
    row = await store.get_day(rt.pool, day)
    if row is None or not row["breaker_open"]:
        view = _view(rt, day, row)
        if view["remaining_usd"] <= 0 or view["remaining_judge_calls"] <= 0:
            if row is None:
                await store.add(rt.pool, day, rt.settings.tz)
            opened = await store.open_if_over(rt.pool, day, usd_cap=view["cap"], judge_cap=view["judge_cap"])
            _log_open(opened)
            row = opened or await store.get_day(rt.pool, day)
    if row is not None and row["breaker_open"]:
        return False, f"budget breaker open: {row['breaker_reason']}"
    return True, None


async def charge(
    rt: Runtime, kind: str, *, tokens: int = 0, prompt_tokens: int = 0, completion_tokens: int = 0, calls: int = 1
) -> dict[str, Any]:
    """Record a finished call's usage (atomically) and open the breaker if a cap is now reached.

    embed: `tokens` (billed input tokens), `calls` HTTP requests; judge: `prompt_tokens`, `completion_tokens`,
    `calls` LLM calls. Returns the status after the charge.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown budget kind {kind!r}")
    usd = usd_for(rt, kind, tokens=tokens, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    day = today(rt)
    metrics.LLM_USD.labels(kind).inc(usd)
    if kind == "embed":
        metrics.LLM_TOKENS.labels(kind, "prompt").inc(tokens)
        row = await store.add(rt.pool, day, rt.settings.tz, embed_requests=calls, embed_tokens=tokens, embed_usd=usd)
    else:
        metrics.LLM_TOKENS.labels(kind, "prompt").inc(prompt_tokens)
        metrics.LLM_TOKENS.labels(kind, "completion").inc(completion_tokens)
        row = await store.add(
            rt.pool,
            day,
            rt.settings.tz,
            llm_calls=calls,
            llm_prompt_tokens=prompt_tokens,
            llm_completion_tokens=completion_tokens,
            llm_usd=usd,
        )
    usd_cap, judge_cap = float(rt.hot["DAILY_USD_BUDGET"]), int(rt.hot["JUDGE_PER_DAY"])
    if not row["breaker_open"] and _may_have_reached_a_cap(row, usd_cap, judge_cap):
        opened = await store.open_if_over(rt.pool, day, usd_cap=usd_cap, judge_cap=judge_cap)
        if opened is not None:
            _log_open(opened)
            row = opened
    return _view(rt, day, row)


def _may_have_reached_a_cap(row: Mapping[str, Any], usd_cap: float, judge_cap: int) -> bool:
    """Whether the counters just returned may have reached a cap; only then is the breaker's atomic check run
    (it decides, in SQL, against the row as it is then), so a call well under both caps costs one statement."""
    spent = float(row["embed_usd"] + row["llm_usd"] - row["usd_at_reset"])
    return spent >= round(usd_cap, 6) - 1e-9 or int(row["llm_calls"] - row["llm_calls_at_reset"]) >= judge_cap


async def reset(rt: Runtime, who: str) -> dict[str, Any]:
    """Admin reset: close today's breaker; the caps then count the spend from now on (a fresh allowance)."""
    day = today(rt)
    row = await store.reset(rt.pool, day, rt.settings.tz)
    log.warning("budget breaker reset by %s", who, extra={"action": "budget_reset", "who": who})
    return _view(rt, day, row)


async def force_open(rt: Runtime, reason: str) -> dict[str, Any]:
    """Open today's breaker now (operator drill: `chaos budget`); closes like any other opening."""
    day = today(rt)
    row = await store.force_open(rt.pool, day, rt.settings.tz, reason)
    _log_open(row)
    return _view(rt, day, row)


async def record_call(
    rt: Runtime, kind: str, *, ok: bool, http_status: int | None = None, error: str | None = None, latency_ms: int = 0
) -> None:
    """One row in external_calls per HTTP attempt to an embedding or LLM endpoint (error-rate alert)."""
    if kind not in KINDS:
        raise ValueError(f"unknown budget kind {kind!r}")
    metrics.LLM_CALLS.labels(kind, _outcome(ok, http_status, error)).inc()
    await store.record_call(rt.pool, kind, ok=ok, http_status=http_status, error=error, latency_ms=latency_ms)


def _outcome(ok: bool, http_status: int | None, error: str | None) -> str:
    if ok:
        return "ok"
    if http_status == 429:
        return "rate_limited"
    if http_status is not None and http_status >= 500:
        return "server_error"
    if error and "timeout" in error.lower():
        return "timeout"
    return "error"


def _log_open(row: asyncpg.Record | None) -> None:
    if row is not None and row["breaker_open"]:
        log.warning(
            "budget breaker open: %s",
            row["breaker_reason"],
            extra={"action": "budget_breaker_open", "reason": row["breaker_reason"]},
        )
