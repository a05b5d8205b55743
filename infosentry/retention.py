"""Retention: what is kept how long, so that nothing grows without bound. One pass every five minutes
(jobs.retention), each delete in bounded batches, the horizons in the config table (hot):

- items nobody was sent or rated: RETENTION_ITEMS_DAYS (30), with their matches, decisions and runs;
- items in an inbox or rated: RETENTION_INBOX_DAYS (180);
- ingest logs, external calls, decision runs, finished emails, closed alert episodes: RETENTION_LOGS_DAYS (7);
- clicks: 90 days (source trust reads recent clicks); fired push slots: 4 days; login links: a day;
- tombstones of pruned items (their URL hashes, so a feed still listing one does not bring it back as news):
  TOMBSTONE_DAYS (90) after the prune. Ingest also skips dated entries older than RETENTION_ITEMS_DAYS.
Finished jobs are procrastinate's (jobs.maintenance). Imports store only.
"""

from __future__ import annotations

from dataclasses import dataclass

from infosentry.runtime import Runtime
from infosentry.store import budget as budget_store
from infosentry.store import decisions as decisions_store
from infosentry.store import emails as emails_store
from infosentry.store import items as items_store
from infosentry.store import logins as logins_store
from infosentry.store import monitoring as monitoring_store
from infosentry.store import notifications as notifications_store
from infosentry.store import slots as slots_store
from infosentry.store import sources as sources_store

CLICK_DAYS = 90.0
TOMBSTONE_DAYS = 90.0


@dataclass
class Pruned:
    items: int = 0
    tombstones: int = 0
    ingest_logs: int = 0
    clicks: int = 0
    external_calls: int = 0
    runs: int = 0
    emails: int = 0
    slots: int = 0
    episodes: int = 0


async def prune(rt: Runtime) -> Pruned:
    items_days = float(rt.hot["RETENTION_ITEMS_DAYS"])
    inbox_days = max(float(rt.hot["RETENTION_INBOX_DAYS"]), items_days)
    logs_days = float(rt.hot["RETENTION_LOGS_DAYS"])
    pool = rt.pool
    pruned = Pruned(
        items=await items_store.prune_unneeded(pool, older_than_days=items_days)
        + await items_store.prune_kept(pool, older_than_days=inbox_days),
        tombstones=await items_store.prune_tombstones(pool, older_than_days=TOMBSTONE_DAYS),
        ingest_logs=await sources_store.prune_logs(pool, older_than_days=logs_days),
        clicks=await notifications_store.prune_clicks(pool, older_than_days=CLICK_DAYS),
        external_calls=await budget_store.prune_calls(pool, older_than_days=logs_days),
        runs=await decisions_store.prune_runs(pool, older_than_days=logs_days),
        emails=await emails_store.prune(pool, older_than_days=logs_days),
        slots=await slots_store.prune(pool, older_than_days=logs_days),
        episodes=await monitoring_store.prune_episodes(pool, older_than_days=logs_days),
    )
    await logins_store.prune(pool)
    return pruned
