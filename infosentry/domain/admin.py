"""Operator actions: the hot switches and tunables (read, change, audit, reset to the environment), the daily
budget, component health, alerts, workers and queues, every source's health, and the user list.

A config change is validated whole (unknown keys, bad values, a broken threshold order: nothing changes),
written with an audit row under a table lock, and seen by every process within 2 s.
Imports hotconfig, budget, health, alerts, ingest.run, store.{config, monitoring, sources, users, workers}.
"""

from __future__ import annotations

from typing import Any

from infosentry import alerts, budget, health, hotconfig
from infosentry.errors import Invalid, Unavailable
from infosentry.ingest import run as ingest_run
from infosentry.models import FetchResult
from infosentry.runtime import Runtime
from infosentry.store import config as config_store
from infosentry.store import monitoring as monitoring_store
from infosentry.store import sources as sources_store
from infosentry.store import users as users_store
from infosentry.store import workers as workers_store

TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string"}


async def config_entries(rt: Runtime) -> list[dict[str, Any]]:
    """Every key: the live value of this process, its default (env or built in), where it comes from."""
    table = await config_store.entries(rt.pool)
    live, defaults = rt.hot.snapshot(), rt.hot.defaults
    entries = []
    for name, key in hotconfig.KEYS.items():
        row = table.get(name)
        source = "table" if row else ("env" if name in rt.settings.hot_defaults else "default")
        entries.append(
            {
                "key": name,
                "value": live[name],
                "default": defaults[name],
                "builtin_default": key.default,
                "source": source,
                "type": TYPE_NAMES[key.kind],
                "min": key.low,
                "max": key.high,
                "help": key.help,
                "updated_at": row["updated_at"] if row else None,
                "updated_by": row["updated_by"] if row else None,
            }
        )
    return entries


def parse_changes(body: dict[str, Any]) -> dict[str, Any]:
    """KEY: value pairs (keys case-insensitive) parsed to their types; one Invalid naming every bad key."""
    if not body:
        raise Invalid("send a JSON object of KEY: value pairs", errors=[{"field": "(body)", "message": "is empty"}])
    changes, errors = {}, []
    for raw_name, value in body.items():
        name = raw_name.strip().upper()
        try:
            changes[name] = hotconfig.parse_value(name, value)
        except Invalid as exc:
            errors.extend({**e, "field": raw_name} for e in exc.errors or [{"message": exc.detail}])
    if errors:
        raise Invalid("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)
    return changes


async def set_config(rt: Runtime, body: dict[str, Any], *, who: str) -> list[dict[str, Any]]:
    """Change switches and tunables everywhere; returns [{key, old, new}]. This process sees the new values at
    once, the others within 2 s."""
    changes = parse_changes(body)
    before = rt.hot.snapshot()
    async with rt.pool.acquire() as conn, conn.transaction():
        await config_store.lock(conn)
        current = await config_store.values(conn)
        merged = hotconfig.defaults()
        for name, raw in current.items():
            if name in hotconfig.KEYS:
                merged[name] = hotconfig.parse_value(name, raw)
        merged.update(changes)
        hotconfig.check_consistency(merged)
        await config_store.write(conn, changes, old=current, who=who)
    await rt.hot.reload()
    return [{"key": k, "old": before[k], "new": v} for k, v in changes.items()]


async def reset_config(rt: Runtime, names: list[str], *, who: str) -> list[str]:
    """Remove table rows so the environment's defaults apply again (audited). Returns the keys reset."""
    unknown = [n for n in names if n not in hotconfig.KEYS]
    if unknown:
        raise Invalid(f"unknown config keys: {', '.join(unknown)}")
    async with rt.pool.acquire() as conn, conn.transaction():
        await config_store.lock(conn)
        removed = await config_store.delete(conn, names, who=who)
    await rt.hot.reload()
    return removed


async def config_audit(rt: Runtime, *, limit: int = 50, before_id: int | None = None) -> list[dict[str, Any]]:
    return await config_store.audit(rt.pool, limit=limit, before_id=before_id)


async def budget_status(rt: Runtime) -> dict[str, Any]:
    return await budget.status(rt)


async def reset_budget(rt: Runtime, *, who: str) -> dict[str, Any]:
    """Close today's breaker: the caps count the spend from now on."""
    await budget.reset(rt, who)
    return await budget.status(rt)


async def health_report(rt: Runtime) -> dict[str, Any]:
    return await health.report(rt)


def exit_code(report: dict[str, Any]) -> int:
    """`infosentry status`: 0 ok (or notices only), 1 a warning, 2 critical."""
    return health.exit_code(report)


async def active_alerts(rt: Runtime) -> list[dict[str, Any]]:
    return await alerts.active(rt)


async def users(rt: Runtime) -> list[dict[str, Any]]:
    return await users_store.users(rt.pool)


async def source_health(rt: Runtime, *, email: str | None = None) -> list[dict[str, Any]]:
    """Every source with its health (the infosentry_source_health view), or those one user follows."""
    user_id = (await users_store.user_by_email(rt.pool, email))["id"] if email else None
    return [dict(r) for r in await sources_store.health(rt.pool, user_id=user_id)]


async def refresh_source(rt: Runtime, source_id: int) -> FetchResult:
    """Fetch one source now (due or not) and return the result with its new schedule."""
    result = await ingest_run.refresh_source(rt, source_id)
    if result is None:
        raise Unavailable(f"the result of fetching source {source_id} could not be stored; see the log")
    return result


async def alert_history(rt: Runtime, *, limit: int = 50) -> list[dict[str, Any]]:
    return await monitoring_store.episodes(rt.pool, limit=limit)


async def workers(rt: Runtime) -> list[dict[str, Any]]:
    return await workers_store.workers(rt.pool)


async def queues(rt: Runtime) -> list[dict[str, Any]]:
    return await monitoring_store.queue_depth(rt.pool)
