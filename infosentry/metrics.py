"""Prometheus metrics of this process (prometheus-client); /metrics renders them with live gauges.

Leaf module: imports nothing of ours.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "infosentry_http_requests_total", "HTTP requests by route and status", ["route", "method", "status"],
    registry=REGISTRY,
)  # fmt: skip
JOB_SECONDS = Histogram(
    "infosentry_job_seconds", "Job run time by task", ["task"], registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)  # fmt: skip
