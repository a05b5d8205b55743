"""Alerts of CONTRACT §7 from live data (each on both sides of its threshold), episodes notified once,
the guarded webhook, the health report's statuses and `infosentry status` exit codes."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from aiohttp import web
from click.testing import CliRunner

from infosentry import alerts, budget, health
from infosentry.cli import main
from infosentry.runtime import Runtime, open_runtime
from infosentry.settings import Settings

QUEUES = ["ingest", "embed", "agent", "email"]


async def live_workers(rt: Runtime, *, age_s: int = 0, queues: list[str] | None = None) -> None:
    await rt.pool.execute(
        """INSERT INTO worker_heartbeats (id, role, queues, pid, host, started_at, last_seen_at)
           VALUES ('test:1', 'worker', $1, 1, 'test', now(), now() - make_interval(secs => $2))""",
        queues or QUEUES,
        age_s,
    )


async def names(rt: Runtime) -> dict[tuple[str, str], dict[str, Any]]:
    return {(a["alert"], a["subject"]): a for a in await alerts.active(rt)}


async def source(rt: Runtime, url: str, streak: int, *, enabled: bool = True) -> int:
    return await rt.pool.fetchval(
        """INSERT INTO sources (type, url, name, fetch_interval_sec, error_streak, last_error, enabled)
           VALUES ('rss', $1, 'S', 900, $2, 'HTTP 500', $3) RETURNING id""",
        url,
        streak,
        enabled,
    )


async def test_worker_heartbeat_is_critical_until_every_queue_has_a_live_worker(rt: Runtime) -> None:
    active = await names(rt)
    assert {k for k in active if k[0] == "worker_heartbeat"} == {("worker_heartbeat", q) for q in QUEUES}
    assert all(a["severity"] == "critical" for a in active.values())
    await live_workers(rt, queues=["ingest", "embed"])
    assert {k[1] for k in await names(rt)} == {"agent", "email"}
    await rt.pool.execute("UPDATE worker_heartbeats SET queues = $1", QUEUES)
    assert await names(rt) == {}
    await rt.pool.execute("UPDATE worker_heartbeats SET last_seen_at = now() - interval '61 seconds'")
    stale = await names(rt)
    assert len(stale) == 4 and "61 s" in stale[("worker_heartbeat", "email")]["detail"]


async def test_queue_backlog_over_100(rt: Runtime) -> None:
    await live_workers(rt)
    await rt.pool.execute(
        "INSERT INTO procrastinate_jobs (queue_name, task_name) SELECT 'embed', 'x' FROM generate_series(1, 100)"
    )
    # scheduled for later and running jobs are not a backlog
    await rt.pool.execute(
        "INSERT INTO procrastinate_jobs (queue_name, task_name, scheduled_at)"
        " VALUES ('embed', 'x', now() + interval '1 hour')"
    )
    assert await names(rt) == {}
    await rt.pool.execute("INSERT INTO procrastinate_jobs (queue_name, task_name) VALUES ('embed', 'x')")
    a = (await names(rt))[("queue_backlog", "embed")]
    assert a["severity"] == "warning" and a["value"] == 101 and a["threshold"] == 100
    depth = {q["queue"]: q for q in (await health.report(rt))["components"]["queues"]["queues"]}
    assert depth["embed"]["todo"] == 101 and depth["embed"]["scheduled"] == 1 and depth["ingest"]["todo"] == 0


async def test_smtp_streak_over_3(rt: Runtime) -> None:
    await live_workers(rt)
    await rt.pool.execute(
        "INSERT INTO delivery_state (channel, consecutive_failures, last_error) VALUES ('smtp', 3, 'x')"
    )
    assert await names(rt) == {}
    await rt.pool.execute("UPDATE delivery_state SET consecutive_failures = 4, last_error = '421 try later'")
    a = (await names(rt))[("smtp_failures", "smtp")]
    assert a["severity"] == "warning" and "421 try later" in a["detail"]


async def test_llm_429_and_5xx_over_10_in_the_last_hour(rt: Runtime) -> None:
    await live_workers(rt)
    await rt.pool.execute(
        """INSERT INTO external_calls (kind, ok, http_status, created_at)
           SELECT 'judge', false, s, now() FROM unnest(ARRAY[429, 429, 500, 502, 503, 429, 500, 429, 504, 429]) s
           UNION ALL SELECT 'judge', false, 429, now() - interval '61 minutes'   -- too old
           UNION ALL SELECT 'judge', false, 400, now()                           -- not a 429/5xx
           UNION ALL SELECT 'embed', false, NULL, now()                          -- a timeout
           UNION ALL SELECT 'judge', true, 200, now()"""
    )
    assert await names(rt) == {}
    await rt.pool.execute("INSERT INTO external_calls (kind, ok, http_status) VALUES ('embed', false, 429)")
    a = (await names(rt))[("llm_errors", "")]
    assert a["severity"] == "warning" and a["value"] == 11
    llm = (await health.report(rt))["components"]["llm"]
    assert llm["calls"] == 14 and llm["errors"] == 13 and llm["rate_limited"] == 6 and llm["status"] == "degraded"


async def test_budget_breaker_open_is_a_notice(rt: Runtime) -> None:
    await live_workers(rt)
    day = budget.today(rt)
    await rt.pool.execute(
        "INSERT INTO budget_days (day, tz, breaker_open) VALUES ($1, $2, true)", day - timedelta(days=1), rt.settings.tz
    )
    assert await names(rt) == {}  # yesterday's breaker is over: a new day starts closed
    await budget.charge(rt, "judge", prompt_tokens=1000, completion_tokens=100)
    await budget.force_open(rt, "drill")
    active = await alerts.active(rt)
    assert [(a["alert"], a["severity"], a["subject"]) for a in active] == [
        ("budget_breaker_open", "notice", day.isoformat())
    ]
    assert "drill" in active[0]["detail"]
    report = await health.report(rt)
    assert report["status"] == "ok"  # a notice is not a fault: the breaker is doing its job
    b = report["components"]["budget"]
    assert b["status"] == "ok" and b["breaker_open"] is True and b["llm_calls"] == 1
    await budget.reset(rt, "test")
    assert await names(rt) == {}


async def test_source_error_streak_over_5(rt: Runtime) -> None:
    await live_workers(rt)
    await source(rt, "https://a.example/feed", 5)
    await source(rt, "https://b.example/feed", 9, enabled=False)
    assert await names(rt) == {}
    sid = await source(rt, "https://c.example/feed", 6)
    a = (await names(rt))[("source_failing", str(sid))]
    assert a["severity"] == "warning" and "HTTP 500" in a["detail"]
    report = await health.report(rt)
    assert report["status"] == "degraded"
    assert report["components"]["sources"]["failing_count"] == 1
    assert report["components"]["sources"]["failing"][0]["id"] == sid


async def test_health_report_components_and_overall(rt: Runtime) -> None:
    report = await health.report(rt)
    assert report["status"] == "critical" and health.exit_code(report) == 2
    assert set(report["components"]) == set(health.COMPONENTS)
    assert report["components"]["workers"]["queues_without_worker"] == sorted(QUEUES)
    assert report["components"]["database"]["latency_ms"] >= 0
    await live_workers(rt)
    report = await health.report(rt)
    assert report["status"] == "ok" and report["alerts"] == []
    assert all(c["status"] == "ok" for c in report["components"].values())
    w = report["components"]["workers"]
    assert w["live"] == 1 and w["stale"] == 0 and w["workers"][0]["queues"] == QUEUES


# --- episodes and notifications ---------------------------------------------------------------------------


@pytest.fixture
async def ops_rt(settings: Settings) -> Any:
    async with open_runtime(replace(settings, admin_email="ops@example.com")) as runtime:
        yield runtime


async def alert_emails(rt: Runtime) -> list[dict[str, Any]]:
    return [dict(r) for r in await rt.pool.fetch("SELECT * FROM emails WHERE kind = 'alert' ORDER BY id")]


async def test_one_email_per_episode_and_flapping_is_one_episode(ops_rt: Runtime) -> None:
    rt = ops_rt
    await live_workers(rt)
    sid = await source(rt, "https://c.example/feed", 7)
    first = await alerts.tick(rt)
    assert [e["alert"] for e in first.opened] == ["source_failing"] and first.emailed
    mails = await alert_emails(rt)
    assert len(mails) == 1 and mails[0]["to_addr"] == "ops@example.com"
    assert "source_failing" in mails[0]["subject"] and f"source {sid}" in mails[0]["body_text"]
    # still active: same episode, no second email
    again = await alerts.tick(rt)
    assert not again.opened and not again.emailed and len(await alert_emails(rt)) == 1
    # cleared: the episode closes; back within the flap window: the same episode, still one email
    await rt.pool.execute("UPDATE sources SET error_streak = 0")
    assert [e["alert"] for e in (await alerts.tick(rt)).closed] == ["source_failing"]
    await rt.pool.execute("UPDATE sources SET error_streak = 8")
    back = await alerts.tick(rt)
    assert len(back.reopened) == 1 and not back.opened and len(await alert_emails(rt)) == 1
    assert await rt.pool.fetchval("SELECT count(*) FROM alert_episodes") == 1
    # cleared for longer than the flap window: a new episode and a new email
    await rt.pool.execute("UPDATE sources SET error_streak = 0")
    await alerts.tick(rt)
    await rt.pool.execute("UPDATE alert_episodes SET ended_at = now() - interval '11 minutes'")
    await rt.pool.execute("UPDATE sources SET error_streak = 8")
    later = await alerts.tick(rt)
    assert len(later.opened) == 1 and len(await alert_emails(rt)) == 2
    episodes = await rt.pool.fetch("SELECT ended_at, notified_at FROM alert_episodes ORDER BY id")
    assert episodes[0]["ended_at"] is not None and all(e["notified_at"] for e in episodes)


async def test_several_new_alerts_share_one_email(ops_rt: Runtime) -> None:
    # no worker at all: four critical alerts at once
    result = await alerts.tick(ops_rt)
    assert len(result.opened) == 4 and len(result.emailed) == 4
    mails = await alert_emails(ops_rt)
    assert len(mails) == 1 and "4 active alerts" in mails[0]["subject"] and "critical" in mails[0]["subject"]


async def test_no_channel_configured_marks_episodes_notified(rt: Runtime) -> None:
    await alerts.tick(rt)
    assert await rt.pool.fetchval("SELECT count(*) FROM alert_episodes WHERE notified_at IS NULL") == 0
    assert await alert_emails(rt) == []


async def test_webhook_once_per_episode_retried_when_failing(settings: Settings, aiohttp_server: Any) -> None:
    received: list[dict[str, Any]] = []
    fail = {"on": True}

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=500 if fail["on"] else 204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app, host="127.0.0.1")
    url = f"http://127.0.0.1:{server.port}/hook"
    async with open_runtime(replace(settings, alert_webhook_url=url)) as rt:
        await live_workers(rt, queues=["ingest", "embed", "agent"])  # the email queue has no worker
        r1 = await alerts.tick(rt)
        assert r1.errors and "500" in r1.errors[0] and len(received) == 1
        fail["on"] = False
        await alerts.tick(rt)
        assert len(received) == 1  # not before the backoff (retry.WEBHOOK: a minute after the first failure)
        wait = await rt.pool.fetchval("SELECT extract(epoch FROM notify_after - now()) FROM alert_episodes")
        assert 45 < wait < 66
        await rt.pool.execute("UPDATE alert_episodes SET notify_after = now()")  # the minute has passed
        r2 = await alerts.tick(rt)
        assert r2.webhooked and len(received) == 2
        await alerts.tick(rt)
        assert len(received) == 2  # delivered: never again for this episode
        body = received[-1]
        assert body["event"] == "alerts_opened"
        assert [(a["alert"], a["subject"], a["severity"]) for a in body["alerts"]] == [
            ("worker_heartbeat", "email", "critical")
        ]
        row = await rt.pool.fetchrow("SELECT notify_attempts, notified_at, notify_error FROM alert_episodes")
        assert row["notify_attempts"] == 2 and row["notified_at"] and row["notify_error"] is None


@pytest.mark.parametrize(("status", "headers", "wait"), [(429, {"Retry-After": "600"}, 600), (404, {}, None)])
async def test_webhook_obeys_retry_after_and_gives_up_on_a_final_answer(
    settings: Settings, aiohttp_server: Any, status: int, headers: dict[str, str], wait: float | None
) -> None:
    calls: list[int] = []

    async def hook(request: web.Request) -> web.Response:
        calls.append(1)
        return web.Response(status=status, headers=headers)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app, host="127.0.0.1")
    async with open_runtime(replace(settings, alert_webhook_url=f"http://127.0.0.1:{server.port}/hook")) as rt:
        await live_workers(rt, queues=["ingest", "embed", "agent"])
        await alerts.tick(rt)
        row = await rt.pool.fetchrow(
            "SELECT notify_attempts, extract(epoch FROM notify_after - now()) AS wait FROM alert_episodes"
        )
        if wait is None:  # a 404 says the request itself is wrong: no further attempt, even when due
            assert row["notify_attempts"] == alerts.MAX_NOTIFY_ATTEMPTS
        else:
            assert row["notify_attempts"] == 1 and wait - 5 < row["wait"] <= wait
        await rt.pool.execute("UPDATE alert_episodes SET notify_after = now()")
        await alerts.tick(rt)
        assert len(calls) == (1 if wait is None else 2)


async def test_webhook_goes_through_the_address_guard(settings: Settings, aiohttp_server: Any) -> None:
    hits: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app, host="127.0.0.1")
    # loopback is not allowed here; by name (resolved, refused at connect time) and as an IP literal
    for url in (
        f"http://localhost:{server.port}/hook",
        f"http://127.0.0.1:{server.port}/hook",
        "http://169.254.169.254/latest/meta-data",
    ):
        async with open_runtime(replace(settings, alert_webhook_url=url, fetch_allow_networks=())) as rt:
            await rt.pool.execute("UPDATE alert_episodes SET notify_after = now()")  # past the previous backoff
            result = await alerts.tick(rt)
            assert result.errors and "not a public address" in result.errors[0], result.errors
            error = await rt.pool.fetchval("SELECT notify_error FROM alert_episodes LIMIT 1")
            assert error.startswith("blocked_address")
    assert hits == []


async def test_ticks_in_two_processes_do_not_duplicate(ops_rt: Runtime, settings: Settings) -> None:
    import asyncio

    async with open_runtime(replace(settings, admin_email="ops@example.com")) as other:
        results = await asyncio.gather(*(alerts.tick(r) for r in (ops_rt, other, ops_rt, other)))
    assert sum(len(r.opened) for r in results) == 4
    assert await ops_rt.pool.fetchval("SELECT count(*) FROM alert_episodes") == 4
    assert len(await alert_emails(ops_rt)) == 1


# --- infosentry status ------------------------------------------------------------------------------------


def _status(dsn: str, *args: str) -> Any:
    env = {"DATABASE_URL": dsn, "LOG_LEVEL": "WARNING"}
    return CliRunner().invoke(main, ["status", *args], env=env, catch_exceptions=False)


def test_status_exit_codes(dsn: str) -> None:
    result = _status(dsn)
    assert result.exit_code == 2, result.output
    assert "status: critical" in result.output and "worker_heartbeat" in result.output
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO worker_heartbeats (id, role, queues, pid, host, started_at, last_seen_at)"
            " VALUES ('t:1', 'worker', '{ingest,embed,agent,email}', 1, 't', now(), now())"
        )
        result = _status(dsn, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert report["status"] == "ok" and report["alerts"] == []
        conn.execute("INSERT INTO delivery_state (channel, consecutive_failures) VALUES ('smtp', 4)")
        result = _status(dsn)
        assert result.exit_code == 1 and "status: degraded" in result.output and "smtp_failures" in result.output


def test_status_without_a_database_is_critical(tmp_path: Any) -> None:
    env = {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "LOG_LEVEL": "WARNING"}
    result = CliRunner().invoke(main, ["status", "--json"], env=env, catch_exceptions=False)
    assert result.exit_code == 2
    assert json.loads(result.output)["components"]["database"]["status"] == "critical"
