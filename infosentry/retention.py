"""Retention: what is kept how long, so that nothing grows without bound. One hourly pass (jobs.retention):
ingest logs 7 days, clicks 90 days (source trust reads recent clicks), login links and rate-limit windows a
day. Every delete runs in bounded batches. Imports store only.
"""

from __future__ import annotations

from dataclasses import dataclass

from infosentry.runtime import Runtime
from infosentry.store import logins as logins_store
from infosentry.store import notifications as notifications_store
from infosentry.store import sources as sources_store

INGEST_LOG_DAYS = 7
CLICK_DAYS = 90


@dataclass
class Pruned:
    ingest_logs: int = 0
    clicks: int = 0


async def prune(rt: Runtime) -> Pruned:
    pruned = Pruned(
        ingest_logs=await sources_store.prune_logs(rt.pool, older_than_days=INGEST_LOG_DAYS),
        clicks=await notifications_store.prune_clicks(rt.pool, older_than_days=CLICK_DAYS),
    )
    await logins_store.prune(rt.pool)
    return pruned
