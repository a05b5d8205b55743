"""Decision runs: a user's own runs (inputs, outputs, LLM use, fallbacks) and their replay.

Replay re-decides from the stored snapshot and changes nothing; a live replay (use_llm) is one paid judge call.
Imports decide, store.decisions, domain.fields.
"""

from __future__ import annotations

import time
from typing import Any

from infosentry import decide, metrics
from infosentry.domain import Actor
from infosentry.domain.fields import Fields
from infosentry.errors import BadRequest, NotFound, RateLimited
from infosentry.runtime import Runtime
from infosentry.store import decisions as decisions_store
from infosentry.store import rate_limits as rate_limits_store

STATUSES = ("SUCCESS", "FALLBACK", "ERROR")
TRIGGERS = ("match", "immediate_flush", "batch_window", "digest", "combined_digest")


async def runs(
    rt: Runtime,
    actor: Actor,
    *,
    goal_id: int | None = None,
    item_id: int | None = None,
    status: str | None = None,
    trigger: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    if status not in (None, *STATUSES):
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}")
    if trigger not in (None, *TRIGGERS):
        raise BadRequest(f"trigger must be one of {', '.join(TRIGGERS)}")
    return await decisions_store.list_runs(
        rt.pool,
        user_id=actor.user_id,
        goal_id=goal_id,
        item_id=item_id,
        status=status,
        trigger=trigger,
        before_id=before_id,
        limit=limit,
    )


async def run(rt: Runtime, actor: Actor, run_id: int) -> dict[str, Any]:
    """One run in full: input snapshot, output, LLM request and response, decision."""
    found = await decisions_store.get_run(rt.pool, user_id=actor.user_id, run_id=run_id)
    if found is None:
        raise NotFound("no such run")
    found["tier"] = (found.get("output") or {}).get("tier")
    return found


async def replay(rt: Runtime, actor: Actor, run_id: int, body: dict[str, Any]) -> dict[str, Any]:
    """Re-decide from the stored input under the current (or stored) thresholds; returns the differences.

    A live replay (use_llm) spends the shared LLM budget: a non-admin may run LIVE_REPLAYS_PER_HOUR of them;
    every replay is counted (metrics: infosentry_replays_total)."""
    f = Fields(body, {"use_llm", "thresholds"})
    use_llm = f.bool("use_llm", default=False)
    thresholds = f.str("thresholds", default="current", choices=("current", "stored"))
    f.done()
    found = await run(rt, actor, run_id)
    if use_llm and not actor.is_admin:
        limit = int(rt.hot["LIVE_REPLAYS_PER_HOUR"])
        if await rate_limits_store.hit_rate_limit(rt.pool, f"replay:{actor.user_id}", window_seconds=3600, limit=limit):
            raise RateLimited(
                f"at most {limit} live replays per hour (LIVE_REPLAYS_PER_HOUR); replay with the stored answer",
                retry_after=max(3600 - int(time.time()) % 3600, 1),
            )
    metrics.REPLAYS.labels("live" if use_llm else "stored").inc()
    return await decide.replay(rt, found, use_llm=use_llm, thresholds=thresholds)
