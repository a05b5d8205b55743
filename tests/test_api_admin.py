"""Admin API: the role and scope, hot config (validation, all-or-nothing, audit), live budget, health and
alerts, and /metrics with its access rule."""

from __future__ import annotations

from typing import Any

import pytest

from infosentry import budget, hotconfig, metrics
from infosentry.api.http import RT
from tests.conftest import bearer, make_user

ADMIN_ROUTES = [
    ("GET", "/api/v1/admin/config"),
    ("POST", "/api/v1/admin/config"),
    ("GET", "/api/v1/admin/config/audit"),
    ("GET", "/api/v1/admin/budget"),
    ("POST", "/api/v1/admin/budget/reset"),
    ("GET", "/api/v1/admin/health"),
    ("GET", "/api/v1/admin/alerts"),
]


@pytest.fixture
async def admin(api: Any) -> str:
    return (await make_user(api.app[RT], "admin@example.com", admin=True))[1]


async def test_admin_routes_need_the_admin_role_and_scope(api: Any, admin: str) -> None:
    rt = api.app[RT]
    _, user = await make_user(rt, "user@example.com")
    _, reader = await make_user(rt, "reader@example.com", admin=True, scopes=["admin:read"])
    for method, path in ADMIN_ROUTES:
        assert (await api.request(method, path)).status == 401, path
        resp = await api.request(method, path, headers=bearer(user), json={})
        assert resp.status == 403, path
        if method == "POST":
            assert (await api.request(method, path, headers=bearer(reader), json={})).status == 403, path
    # admin is a role: a demoted admin's token loses the admin scope at once
    assert (await api.get("/api/v1/admin/config", headers=bearer(admin))).status == 200
    await rt.pool.execute("UPDATE users SET is_admin = false WHERE email = 'admin@example.com'")
    assert (await api.get("/api/v1/admin/config", headers=bearer(admin))).status == 403


async def test_get_config_lists_every_key_with_default_source_and_help(api: Any, admin: str) -> None:
    resp = await api.get("/api/v1/admin/config", headers=bearer(admin))
    items = {e["key"]: e for e in (await resp.json())["items"]}
    assert len(items) == len(hotconfig.KEYS) >= 23
    e = items["IMMEDIATE_THRESHOLD"]
    assert e["value"] == 0.93 and e["default"] == 0.93 and e["source"] == "default" and e["help"]
    assert e["type"] == "number" and e["min"] == 0 and e["max"] == 1 and e["updated_by"] is None
    assert items["LLM_ENABLED"]["type"] == "boolean" and items["DEFAULT_BATCH_WINDOWS"]["value"] == "12:30,18:30"


async def test_post_config_changes_audits_and_reads_back(api: Any, admin: str) -> None:
    rt = api.app[RT]
    resp = await api.post(
        "/api/v1/admin/config",
        json={"IMMEDIATE_ENABLED": False, "immediate_threshold": 0.95, "DEFAULT_BATCH_WINDOWS": "8:00, 20:30"},
        headers=bearer(admin),
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    changed = {c["key"]: c for c in body["changed"]}
    assert changed["IMMEDIATE_ENABLED"] == {"key": "IMMEDIATE_ENABLED", "old": True, "new": False}
    assert changed["IMMEDIATE_THRESHOLD"]["new"] == 0.95
    assert changed["DEFAULT_BATCH_WINDOWS"]["new"] == "08:00,20:30"
    items = {e["key"]: e for e in body["items"]}
    assert items["IMMEDIATE_ENABLED"]["value"] is False and items["IMMEDIATE_ENABLED"]["source"] == "table"
    assert items["IMMEDIATE_ENABLED"]["updated_by"] == "admin@example.com"
    assert rt.hot["IMMEDIATE_THRESHOLD"] == 0.95  # this process sees it at once
    audit = await (await api.get("/api/v1/admin/config/audit", headers=bearer(admin))).json()
    rows = {r["key"]: r for r in audit["items"]}
    assert set(rows) == {"IMMEDIATE_ENABLED", "IMMEDIATE_THRESHOLD", "DEFAULT_BATCH_WINDOWS"}
    assert rows["IMMEDIATE_ENABLED"]["old_value"] is None and rows["IMMEDIATE_ENABLED"]["new_value"] is False
    assert all(r["changed_by"] == "admin@example.com" for r in audit["items"])
    # a second change records old -> new
    await api.post("/api/v1/admin/config", json={"IMMEDIATE_ENABLED": True}, headers=bearer(admin))
    audit = await (await api.get("/api/v1/admin/config/audit?limit=1", headers=bearer(admin))).json()
    assert audit["items"][0]["old_value"] is False and audit["items"][0]["new_value"] is True
    assert audit["next_cursor"]
    page2 = await api.get(f"/api/v1/admin/config/audit?limit=10&cursor={audit['next_cursor']}", headers=bearer(admin))
    ids = [r["id"] for r in (await page2.json())["items"]]
    assert len(ids) == 3 and ids == sorted(ids, reverse=True) and audit["items"][0]["id"] > ids[0]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"NO_SUCH_KEY": 1, "IMMEDIATE_ENABLED": False}, {"NO_SUCH_KEY"}),
        (
            {"IMMEDIATE_ENABLED": "perhaps", "JUDGE_PER_DAY": 2.5, "DAILY_USD_BUDGET": -1},
            {"IMMEDIATE_ENABLED", "JUDGE_PER_DAY", "DAILY_USD_BUDGET"},
        ),
        ({"IMMEDIATE_THRESHOLD": 1.5}, {"IMMEDIATE_THRESHOLD"}),
        ({"BATCH_THRESHOLD": 0.9}, {"BATCH_THRESHOLD"}),  # above BOUNDARY_LOW 0.88: threshold order
        ({"BOUNDARY_LOW": 0.95, "IMMEDIATE_THRESHOLD": 0.94}, {"BOUNDARY_LOW"}),
        ({"DEFAULT_BATCH_WINDOWS": "25:00"}, {"DEFAULT_BATCH_WINDOWS"}),
        ({"DEFAULT_BATCH_WINDOWS": "08:00,09:00,10:00,11:00"}, {"DEFAULT_BATCH_WINDOWS"}),
        ({"DEFAULT_DIGEST_TIME": "9am"}, {"DEFAULT_DIGEST_TIME"}),
        ({"EMBED_BATCH_SIZE": None}, {"EMBED_BATCH_SIZE"}),
        ({}, {"(body)"}),
    ],
)
async def test_bad_config_is_rejected_whole(api: Any, admin: str, body: dict, fields: set[str]) -> None:
    rt = api.app[RT]
    resp = await api.post("/api/v1/admin/config", json=body, headers=bearer(admin))
    assert resp.status == 422, await resp.text()
    problem = await resp.json()
    assert resp.content_type == "application/problem+json"
    assert {e["field"] for e in problem["errors"]} == fields
    assert await rt.pool.fetchval("SELECT count(*) FROM config") == 0
    assert await rt.pool.fetchval("SELECT count(*) FROM config_audit") == 0


async def test_post_config_needs_an_object(api: Any, admin: str) -> None:
    resp = await api.post("/api/v1/admin/config", json=["IMMEDIATE_ENABLED"], headers=bearer(admin))
    assert resp.status == 400


async def test_budget_is_live_and_resettable(api: Any, admin: str) -> None:
    rt = api.app[RT]
    got = await (await api.get("/api/v1/admin/budget", headers=bearer(admin))).json()
    assert got["breaker_open"] is False and got["llm_calls"] == 0 and got["cap"] == 0.33
    await budget.charge(rt, "judge", prompt_tokens=2000, completion_tokens=500)
    await budget.force_open(rt, "drill")
    got = await (await api.get("/api/v1/admin/budget", headers=bearer(admin))).json()
    assert got["breaker_open"] is True and got["llm_calls"] == 1 and got["reason"] == "drill"  # no hourly copy
    resp = await api.post("/api/v1/admin/budget/reset", headers=bearer(admin))
    assert resp.status == 200
    got = await resp.json()
    assert got["breaker_open"] is False and got["remaining_usd"] == 0.33 and got["reset_at"]
    assert (await budget.allow(rt, "judge"))[0] is True


async def test_health_and_alerts(api: Any, admin: str) -> None:
    rt = api.app[RT]
    health = await (await api.get("/api/v1/admin/health", headers=bearer(admin))).json()
    # this test app runs no worker: that is critical
    assert health["status"] == "critical"
    assert health["components"]["workers"]["status"] == "critical"
    assert health["components"]["database"]["status"] == "ok"
    # the API process itself writes a heartbeat (role api, no queues)
    assert [w["role"] for w in health["components"]["workers"]["workers"]] == ["api"]
    await rt.pool.execute(
        "INSERT INTO worker_heartbeats (id, role, queues, pid, host, started_at, last_seen_at)"
        " VALUES ('w:1', 'worker', '{ingest,embed,agent,email}', 1, 'w', now(), now())"
    )
    await rt.pool.execute(
        "INSERT INTO sources (type, url, name, fetch_interval_sec, error_streak)"
        " VALUES ('rss', 'https://x.example/', 'X', 900, 6)"
    )
    health = await (await api.get("/api/v1/admin/health", headers=bearer(admin))).json()
    assert health["status"] == "degraded" and health["components"]["sources"]["status"] == "degraded"
    assert [a["alert"] for a in health["alerts"]] == ["source_failing"]
    alerts = await (await api.get("/api/v1/admin/alerts", headers=bearer(admin))).json()
    assert [(a["alert"], a["severity"]) for a in alerts["items"]] == [("source_failing", "warning")]


async def test_metrics_access_rule(api: Any, admin: str) -> None:
    _, user = await make_user(api.app[RT], "user@example.com")
    # loopback, no proxy header: open (a local Prometheus)
    resp = await api.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    # through a proxy (every request then comes from loopback): a token is required, and it must be an admin's
    for header in ("X-Forwarded-For", "X-Real-IP", "Forwarded"):
        assert (await api.get("/metrics", headers={header: "198.51.100.4"})).status == 401
    proxied = {"X-Forwarded-For": "198.51.100.4"}
    assert (await api.get("/metrics", headers={**proxied, **bearer(user)})).status == 403
    assert (await api.get("/metrics", headers={**proxied, **bearer("isk_bogus")})).status == 401
    assert (await api.get("/metrics", headers={**proxied, **bearer(admin)})).status == 200


async def test_metrics_content(api: Any, admin: str) -> None:
    rt = api.app[RT]
    await rt.pool.execute("INSERT INTO procrastinate_jobs (queue_name, task_name) VALUES ('ingest', 'x')")
    await rt.pool.execute("INSERT INTO delivery_state (channel, consecutive_failures) VALUES ('smtp', 2)")
    metrics.FETCHES.labels("ok").inc()
    metrics.DECISIONS.labels("BATCH").inc()
    metrics.PUSH_LATENCY.labels("IMMEDIATE").observe(42)
    await api.get("/health")
    text = await (await api.get("/metrics")).text()
    for line in (
        'infosentry_alert{name="worker_heartbeat",severity="critical"} 4.0',
        'infosentry_alert{name="queue_backlog",severity="warning"} 0.0',
        'infosentry_queue_jobs{queue="ingest",state="todo"} 1.0',
        "infosentry_health_status 2.0",
        "infosentry_database_up 1.0",
        "infosentry_smtp_consecutive_failures 2.0",
        'infosentry_http_requests_total{method="GET",route="/health",status="200"}',
        'infosentry_fetches_total{outcome="ok"}',
        'infosentry_decisions_total{tier="BATCH"}',
        'infosentry_push_latency_seconds_bucket{le="60.0",tier="IMMEDIATE"}',
        "infosentry_queue_oldest_todo_seconds",
        'infosentry_workers{role="api",state="live"} 1.0',
    ):
        assert line in text, line
