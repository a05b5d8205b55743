"""Alerts: the CONTRACT §7 conditions, computed from live data by the `infosentry_alerts` view, turned into
episodes (open while the condition holds) and notified once per episode by admin email and/or webhook.

A condition that clears and comes back within FLAP_MINUTES continues its episode (no second notice).
The webhook is an outbound request like any other: it goes through the fetcher's address guard.
Imports runtime, mail, fetch and store.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from infosentry import budget, mail, metrics, retry
from infosentry.fetch import GuardedResolver
from infosentry.fetch_errors import FetchError
from infosentry.runtime import Runtime
from infosentry.store import emails as emails_store
from infosentry.store import monitoring as monitoring_store

log = logging.getLogger(__name__)

SEVERITIES = ("critical", "warning", "notice")
NAMES = ("queue_backlog", "smtp_failures", "llm_errors", "budget_breaker_open", "source_failing", "worker_heartbeat")
FLAP_MINUTES = 10.0
MAX_NOTIFY_ATTEMPTS = 7  # retry.WEBHOOK waits 1, 2, 4, 8, 16, 30 min between them: about an hour
WEBHOOK_TIMEOUT = 10.0


def rank(severity: str | None) -> int:
    """critical 3, warning 2, notice 1, nothing 0."""
    return {"critical": 3, "warning": 2, "notice": 1}.get(severity or "", 0)


def worst(alerts: list[dict[str, Any]]) -> str | None:
    return max((a["severity"] for a in alerts), key=rank, default=None)


async def active(rt: Runtime) -> list[dict[str, Any]]:
    """Every active alert now (with the start of its episode when one is open)."""
    return await monitoring_store.active_alerts(rt.pool)


async def budget_status(rt: Runtime) -> dict[str, Any]:
    """The live budget state (budget.status), which the budget_breaker_open alert is about."""
    return dict(await budget.status(rt))


@dataclass
class TickResult:
    skipped: bool = False  # another process holds the evaluator lock
    opened: list[dict[str, Any]] = field(default_factory=list)
    reopened: list[dict[str, Any]] = field(default_factory=list)
    closed: list[dict[str, Any]] = field(default_factory=list)
    emailed: list[int] = field(default_factory=list)
    webhooked: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def tick(rt: Runtime) -> TickResult:
    """Open/close episodes for the alerts active now and notify new episodes (safe in many processes)."""
    result = TickResult()
    async with rt.pool.acquire() as conn:
        if not await monitoring_store.try_alerts_lock(conn):
            result.skipped = True
            return result
        try:
            changes = await monitoring_store.sync_episodes(conn, flap_minutes=FLAP_MINUTES)
            result.opened, result.reopened, result.closed = changes["opened"], changes["reopened"], changes["closed"]
            for e in result.opened:
                log.warning(
                    "alert: %s %s",
                    e["alert"],
                    e["detail"],
                    extra={
                        "action": "alert_opened",
                        "alert": e["alert"],
                        "subject": e["subject"],
                        "severity": e["severity"],
                        "episode_id": e["id"],
                    },
                )
            for e in result.closed:
                extra = {"action": "alert_closed", "alert": e["alert"], "subject": e["subject"], "episode_id": e["id"]}
                log.info("alert cleared: %s %s", e["alert"], e["subject"], extra=extra)
            pending = await monitoring_store.episodes_to_notify(conn, max_attempts=MAX_NOTIFY_ATTEMPTS)
            if pending:
                await _notify(rt, conn, pending, result)
        finally:
            try:
                await monitoring_store.release_alerts_lock(conn)
            except BaseException:  # failed or cancelled: the lock may still be held
                conn.terminate()  # never hand a connection that may still hold the lock back to the pool
                raise
    return result


def _for_humans(e: dict[str, Any]) -> dict[str, Any]:
    return {
        "severity": e["severity"],
        "name": e["alert"],
        "detail": e["detail"],
        "subject": e["subject"],
        "since": e["started_at"].strftime("%Y-%m-%d %H:%M UTC"),
    }


async def _notify(rt: Runtime, conn: Any, pending: list[dict[str, Any]], result: TickResult) -> None:
    settings = rt.settings
    ids = [e["id"] for e in pending]
    # the email goes once, on the first attempt; a failing webhook is retried on later ticks
    fresh = [e for e in pending if e["notify_attempts"] == 0]
    if settings.admin_email and fresh:
        rendered = mail.render_alert_email([_for_humans(e) for e in fresh], settings.public_url)
        key = "alert:" + hashlib.sha256(",".join(str(e["id"]) for e in fresh).encode()).hexdigest()[:24]
        await emails_store.insert_email(
            conn,
            emails_store.NewEmail(
                dedupe_key=key,
                kind="alert",
                user_id=None,
                goal_id=None,
                to_addr=settings.admin_email,
                subject=rendered.subject,
                body_text=rendered.text,
                body_html=rendered.html,
                headers=dict(rendered.headers),
                status="pending",
                last_error=None,
            ),
        )
        result.emailed = [e["id"] for e in fresh]
        metrics.ALERT_NOTIFICATIONS.labels("email", "queued").inc()
    if not settings.alert_webhook_url:
        await monitoring_store.mark_notified(conn, ids)
        return
    payload = {
        "source": "infosentry",
        "event": "alerts_opened",
        "health_url": f"{settings.public_url}/api/v1/admin/health",
        "alerts": [
            {
                "alert": e["alert"],
                "severity": e["severity"],
                "subject": e["subject"],
                "detail": e["detail"],
                "started_at": e["started_at"].isoformat(),
                "episode_id": e["id"],
            }
            for e in pending
        ],
    }
    try:
        await post_webhook(rt, settings.alert_webhook_url, payload)
    except FetchError as exc:
        log.warning("alert webhook failed: %s", exc, extra={"action": "alert_webhook_failed", "kind": exc.kind})
        result.errors.append(str(exc))
        metrics.ALERT_NOTIFICATIONS.labels("webhook", "failed").inc()
        retry_in = None  # an answer that says "not this" (404, 401...): repeating it cannot help
        if exc.kind != "http_status" or retry.retryable_status(exc.status):
            waited = exc.retry_after.timestamp() - time.time() if exc.retry_after else None
            failures = max(e["notify_attempts"] for e in pending) + 1
            retry_in = retry.WEBHOOK.delay(failures, retry_after=max(0.0, waited) if waited is not None else None)
        await monitoring_store.mark_notify_failed(
            conn, ids, f"{exc.kind}: {exc}", retry_in=retry_in, max_attempts=MAX_NOTIFY_ATTEMPTS
        )
        return
    result.webhooked = ids
    metrics.ALERT_NOTIFICATIONS.labels("webhook", "delivered").inc()
    await monitoring_store.mark_notified(conn, ids)


async def post_webhook(rt: Runtime, url: str, payload: dict[str, Any]) -> None:
    """POST JSON to `url` with the fetcher's guard: scheme and IP-literal check up front, and every resolved
    address checked at connect time. No redirects are followed. Raises FetchError unless the answer is 2xx."""
    fetcher = await rt.fetcher()
    target = fetcher.check_url(url)
    resolver = GuardedResolver(fetcher.guard)
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT),
                trust_env=False,
                headers={"User-Agent": rt.settings.fetch_user_agent},
            ) as session,
            session.post(target, json=payload, allow_redirects=False) as resp,
        ):
            if not 200 <= resp.status < 300:
                raise FetchError(
                    "http_status",
                    f"webhook answered HTTP {resp.status}",
                    status=resp.status,
                    retry_after=retry.parse_retry_after(resp.headers.get("Retry-After")),
                    url=url,
                )
    except FetchError:
        raise
    except TimeoutError as exc:
        raise FetchError("timeout", f"webhook gave no answer within {WEBHOOK_TIMEOUT:g} s", url=url) from exc
    except (aiohttp.ClientError, OSError) as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, FetchError):  # the guarded resolver refused the address
            raise cause from None
        raise FetchError("connection", f"webhook connection failed: {exc}", url=url) from exc
    finally:
        await resolver.close()
