"""Component health: one report for GET /api/v1/admin/health, `infosentry status` and /metrics.

Components: database (latency), queues (depth, oldest ready job, stalled), workers (heartbeats), budget,
sources (failing), SMTP (failure streak, outbox), LLM (calls and errors in the last hour), plus the
active alerts. A component's status is the worst of its alerts; the overall status is the worst of all:
critical → "critical", warning → "degraded", notice or nothing → "ok".
Imports runtime, store and alerts (alerts also gives the live budget state).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from infosentry import alerts
from infosentry.runtime import Runtime
from infosentry.store import monitoring as monitoring_store
from infosentry.store import workers as workers_store

log = logging.getLogger(__name__)

STATUS_OF = {"critical": "critical", "warning": "degraded"}
EXIT_CODE = {"ok": 0, "degraded": 1, "critical": 2}
COMPONENT_OF = {
    "queue_backlog": "queues",
    "worker_heartbeat": "workers",
    "budget_breaker_open": "budget",
    "source_failing": "sources",
    "smtp_failures": "smtp",
    "llm_errors": "llm",
}
COMPONENTS = ("database", "queues", "workers", "budget", "sources", "smtp", "llm")


def status_of(severity: str | None) -> str:
    return STATUS_OF.get(severity or "", "ok")


async def report(rt: Runtime) -> dict[str, Any]:
    """The full health report; never raises for a broken component (the database down is 'critical')."""
    checked_at = datetime.now(UTC)
    try:
        async with asyncio.timeout(5):
            latency = await monitoring_store.ping(rt.pool)
    except Exception as exc:  # unreachable database: nothing else can be known
        log.warning("health: database unreachable: %s", exc, extra={"action": "health_db_down"})
        return {
            "status": "critical",
            "checked_at": checked_at,
            "components": {"database": {"status": "critical", "error": str(exc) or type(exc).__name__}},
            "alerts": [
                {
                    "alert": "database_unreachable",
                    "severity": "critical",
                    "subject": "",
                    "detail": f"database unreachable: {exc}",
                    "value": None,
                    "threshold": None,
                    "since": None,
                }
            ],
        }
    pool = rt.pool
    queues = await monitoring_store.queue_depth(pool)
    workers = await workers_store.workers(pool)
    failing_total, failing = await monitoring_store.failing_sources(pool)
    smtp = await monitoring_store.smtp_state(pool)
    outbox = await monitoring_store.outbox_counts(pool)
    llm = await monitoring_store.llm_last_hour(pool)
    budget = await alerts.budget_status(rt)
    active = await alerts.active(rt)

    by_component: dict[str, list[dict[str, Any]]] = {c: [] for c in COMPONENTS}
    for a in active:
        by_component[COMPONENT_OF.get(a["alert"], "database")].append(a)

    def comp(name: str, **data: Any) -> dict[str, Any]:
        return {"status": status_of(alerts.worst(by_component[name])), **data}

    live_queues = {q for w in workers if not w["stale"] for q in w["queues"]}
    components = {
        "database": comp("database", latency_ms=round(latency, 2)),
        "queues": comp("queues", queues=queues),
        "workers": comp(
            "workers",
            workers=workers,
            live=sum(1 for w in workers if not w["stale"]),
            stale=sum(1 for w in workers if w["stale"]),
            queues_without_worker=sorted({q["queue"] for q in queues} - live_queues),
        ),
        "budget": comp("budget", **budget),
        "sources": comp("sources", failing_count=failing_total, failing=failing),
        "smtp": comp("smtp", **smtp, outbox=outbox),
        "llm": comp(
            "llm",
            **llm,
            error_rate=round(llm["errors"] / llm["calls"], 4) if llm["calls"] else 0.0,
        ),
    }
    return {
        "status": status_of(alerts.worst(active)),
        "checked_at": checked_at,
        "components": components,
        "alerts": active,
    }


def exit_code(report_: dict[str, Any]) -> int:
    return EXIT_CODE[report_["status"]]
