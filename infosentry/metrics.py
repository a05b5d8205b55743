"""Prometheus metrics of this process (prometheus-client); /metrics renders them with live gauges.

Counters and histograms are incremented where the work happens, e.g.
`metrics.FETCHES.labels("ok").inc()`, `metrics.DECISIONS.labels("BATCH").inc()`,
`metrics.PUSH_LATENCY.labels("IMMEDIATE").observe(seconds)`. They count what *this process* did.
Live gauges (queue depth, budget, alerts, workers...) are read from the database at scrape time, so they
are the same whichever process is scraped: `render(snapshot)` takes a health report.
Leaf module: imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

HTTP_REQUESTS = Counter(
    "infosentry_http_requests_total",
    "HTTP requests by route and status",
    ["route", "method", "status"],
    registry=REGISTRY,
)
JOB_SECONDS = Histogram(
    "infosentry_job_seconds",
    "Job run time by task",
    ["task"],
    registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

# --- pipeline counters (incremented by the steps) -----------------------------------------------------------

FETCHES = Counter(
    "infosentry_fetches_total",
    "Source fetches by outcome: ok, not_modified, or the error kind (dns, timeout...)",
    ["outcome"],
    registry=REGISTRY,
)
ITEMS_INGESTED = Counter("infosentry_items_ingested_total", "New items stored", registry=REGISTRY)
EMBEDDINGS = Counter(
    "infosentry_embeddings_total", "Texts embedded by what they are (item or goal)", ["kind"], registry=REGISTRY
)
LLM_CALLS = Counter(
    "infosentry_llm_calls_total",
    "Calls to the embedding/LLM endpoint by kind (embed, judge) and outcome "
    "(ok, rate_limited, server_error, timeout, invalid, error)",
    ["kind", "outcome"],
    registry=REGISTRY,
)
LLM_TOKENS = Counter(
    "infosentry_llm_tokens_total",
    "Tokens billed by kind (embed, judge) and direction (prompt, completion)",
    ["kind", "direction"],
    registry=REGISTRY,
)
LLM_USD = Counter(
    "infosentry_llm_usd_total", "Estimated spend in USD by kind (embed, judge)", ["kind"], registry=REGISTRY
)
REPLAYS = Counter(
    "infosentry_replays_total",
    "Decision replays by mode (live: a paid LLM call; stored: the recorded answer)",
    ["mode"],
    registry=REGISTRY,
)
DECISIONS = Counter(
    "infosentry_decisions_total",
    "Push decisions by tier (IMMEDIATE, BATCH, DIGEST, IGNORE)",
    ["tier"],
    registry=REGISTRY,
)
EMAILS = Counter(
    "infosentry_emails_total",
    "Email send attempts by kind (immediate, batch, digest, login, alert) and outcome "
    "(sent, retry, failed, suppressed)",
    ["kind", "outcome"],
    registry=REGISTRY,
)
PUSH_LATENCY = Histogram(
    "infosentry_push_latency_seconds",
    "From item ingested to pushed (email sent or inbox), by tier",
    ["tier"],
    registry=REGISTRY,
    buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 43200, 86400, 172800),
)
ALERT_NOTIFICATIONS = Counter(
    "infosentry_alert_notifications_total",
    "Alert notifications by channel (email, webhook) and outcome",
    ["channel", "outcome"],
    registry=REGISTRY,
)


# --- live gauges (from a health report, at scrape time) -----------------------------------------------------

ALERT_NAMES = (
    "queue_backlog",
    "smtp_failures",
    "llm_errors",
    "budget_breaker_open",
    "source_failing",
    "worker_heartbeat",
)
ALERT_SEVERITY = {
    "queue_backlog": "warning",
    "smtp_failures": "warning",
    "llm_errors": "warning",
    "budget_breaker_open": "notice",
    "source_failing": "warning",
    "worker_heartbeat": "critical",
}
_STATUS_VALUE = {"ok": 0, "degraded": 1, "critical": 2}


class _Live(Collector):
    """Yields the gauges of the last snapshot handed to render(); nothing before the first scrape."""

    def __init__(self) -> None:
        self.snapshot: Mapping[str, Any] | None = None

    def describe(self) -> list[Metric]:
        return []  # dynamic: never checked for duplicates at registration

    def collect(self) -> Iterator[Metric]:
        if self.snapshot is not None:
            yield from live_gauges(self.snapshot)


_LIVE = _Live()
REGISTRY.register(_LIVE)


def _num(value: Any) -> float:
    try:
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


def live_gauges(report: Mapping[str, Any]) -> Iterator[Metric]:
    """Gauges from a health report (see infosentry.health.report)."""
    status = GaugeMetricFamily("infosentry_health_status", "Overall health: 0 ok, 1 degraded, 2 critical")
    status.add_metric([], _STATUS_VALUE.get(report.get("status", "critical"), 2))
    yield status

    alert = GaugeMetricFamily(
        "infosentry_alert",
        "Active alerts by name and severity (count of subjects, 0 when clear)",
        labels=["name", "severity"],
    )
    counts: dict[tuple[str, str], int] = {(n, s): 0 for n, s in ALERT_SEVERITY.items()}
    for a in report.get("alerts", []):
        key = (str(a["alert"]), str(a["severity"]))
        counts[key] = counts.get(key, 0) + 1
    for (name, severity), n in sorted(counts.items()):
        alert.add_metric([name, severity], n)
    yield alert

    components = report.get("components", {})
    db = components.get("database", {})
    up = GaugeMetricFamily("infosentry_database_up", "1 when the database answers")
    up.add_metric([], 0 if db.get("status") == "critical" else 1)
    yield up
    if "latency_ms" in db:
        lat = GaugeMetricFamily("infosentry_database_latency_seconds", "Round trip of SELECT 1")
        lat.add_metric([], _num(db["latency_ms"]) / 1000)
        yield lat

    queues = components.get("queues", {}).get("queues", [])
    if queues:
        jobs = GaugeMetricFamily("infosentry_queue_jobs", "Jobs per queue and state", labels=["queue", "state"])
        oldest = GaugeMetricFamily(
            "infosentry_queue_oldest_todo_seconds", "Age of the oldest job ready to run", labels=["queue"]
        )
        for q in queues:
            for state in ("todo", "scheduled", "doing", "failed", "stalled"):
                jobs.add_metric([q["queue"], state], _num(q.get(state)))
            oldest.add_metric([q["queue"]], _num(q.get("oldest_todo_age_s")))
        yield jobs
        yield oldest

    workers = components.get("workers", {}).get("workers")
    if workers is not None:
        w = GaugeMetricFamily(
            "infosentry_workers", "Processes with a heartbeat, by role and state", labels=["role", "state"]
        )
        tally: dict[tuple[str, str], int] = {}
        for row in workers:
            key = (str(row["role"]), "stale" if row["stale"] else "live")
            tally[key] = tally.get(key, 0) + 1
        for (role, state), n in sorted(tally.items()):
            w.add_metric([role, state], n)
        yield w

    budget = components.get("budget", {})
    for key, name, help_ in (
        ("usd_total", "spent_usd", "Spend of the budget day, USD"),
        ("cap", "cap_usd", "Daily spend cap (DAILY_USD_BUDGET), USD"),
        ("remaining_usd", "remaining_usd", "USD left before the breaker opens"),
        ("llm_calls", "llm_calls", "LLM judge calls of the budget day"),
        ("judge_cap", "llm_calls_cap", "LLM judge calls allowed per day (JUDGE_PER_DAY)"),
        ("embed_tokens", "embed_tokens", "Embedding tokens of the budget day"),
    ):
        if key in budget:
            g = GaugeMetricFamily(f"infosentry_budget_{name}", help_)
            g.add_metric([], _num(budget[key]))
            yield g
    if "breaker_open" in budget:
        g = GaugeMetricFamily("infosentry_budget_breaker_open", "1 while the budget breaker is open")
        g.add_metric([], 1 if budget["breaker_open"] else 0)
        yield g

    sources = components.get("sources", {})
    if "failing_count" in sources:
        g = GaugeMetricFamily("infosentry_sources_failing", "Enabled sources with error_streak > 5")
        g.add_metric([], _num(sources["failing_count"]))
        yield g

    smtp = components.get("smtp", {})
    if "consecutive_failures" in smtp:
        g = GaugeMetricFamily("infosentry_smtp_consecutive_failures", "SMTP failures since the last success")
        g.add_metric([], _num(smtp["consecutive_failures"]))
        yield g
    if smtp.get("outbox"):
        g = GaugeMetricFamily("infosentry_outbox_emails", "Emails in the outbox by status", labels=["status"])
        for st, n in sorted(smtp["outbox"].items()):
            g.add_metric([st], _num(n))
        yield g

    llm = components.get("llm", {})
    if "calls" in llm:
        g = GaugeMetricFamily(
            "infosentry_llm_calls_last_hour", "Embedding/LLM calls in the last hour by outcome", labels=["outcome"]
        )
        g.add_metric(["all"], _num(llm["calls"]))
        g.add_metric(["error"], _num(llm["errors"]))
        g.add_metric(["rate_limited"], _num(llm["rate_limited"]))
        g.add_metric(["server_error"], _num(llm["server_errors"]))
        yield g


def render(report: Mapping[str, Any] | None) -> bytes:
    """The Prometheus text exposition of this process's metrics plus the live gauges of `report`."""
    _LIVE.snapshot = report
    return generate_latest(REGISTRY)
