"""Fault drills (CONTRACT §8): inject one fault, watch what degrades and what keeps working, undo it.

A drill acts only on what it owns: worker processes it starts itself (with OPENAI_BASE_URL or SMTP pointed at a
refusing 127.0.0.1 port), config rows it changes (their old values recorded), the embedded Postgres it restarts
(or, on an external server, the connections it cuts: ops.db_drill), a worker it SIGKILLs (ops.worker_drill).
Every lasting change is recorded in <data dir>/chaos.json (ops.faults), so `recover` undoes exactly those.
This module: the openai, smtp and budget drills, recover, status, and run_drill, which runs any of them.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

from infosentry.domain import admin
from infosentry.errors import Invalid
from infosentry.ops.db_drill import drill_db
from infosentry.ops.faults import (
    WHO,
    Progress,
    Report,
    add_fault,
    alive,
    live_workers,
    load_state,
    new_fault,
    now,
    observe,
    others_on,
    quiet,
    refuse_second,
    refusing_port,
    remove_fault,
    spawn,
    stop,
    update_fault,
    wait_heartbeat,
)
from infosentry.ops.worker_drill import drill_worker
from infosentry.runtime import Runtime, open_runtime
from infosentry.settings import Settings
from infosentry.store import config as config_store
from infosentry.store import emails as emails_store

# --- drills that leave a fault in place until `recover` ----------------------------------------------------


async def _config_fault(rt: Runtime, fault: dict[str, Any], changes: dict[str, Any]) -> None:
    """Change config keys, recording their previous overrides (absent = default) for recover."""
    current = await config_store.values(rt.pool)
    saved = {k: {"had": k in current, "old": current.get(k)} for k in changes}
    # record first: if the write succeeds and we crash before recording, recover would not know
    fault["config"].update(saved)
    update_fault(rt.settings, fault["id"], config=saved)
    await admin.set_config(rt, changes, who=f"{WHO}:{fault['drill']}")


async def _watch(
    rt: Runtime, report: Report, since: datetime, seconds: float, procs: list[dict[str, Any]], progress: Progress
) -> dict[str, Any]:
    """Observe the pipeline for `seconds`, checking that the drill's processes are alive."""
    deadline = time.monotonic() + seconds
    obs = await observe(rt.pool, since)
    last_line = ""
    while time.monotonic() < deadline:
        await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        obs = await observe(rt.pool, since)
        dead = [p["name"] for p in procs if not alive(p)]
        if dead:
            report.fail(f"drill-owned process crashed: {', '.join(dead)} (see {procs[0]['log']})")
            break
        line = (
            f"  +{(now() - since).total_seconds():.0f}s: runs {obs['runs']} decisions {obs['decisions']} "
            f"inbox +{obs['inbox_new']} emails waiting {obs['emails_waiting']} "
            f"pending embeddings {obs['items_pending_embedding']}"
        )
        if line.split(":", 1)[1] != last_line:
            progress(line)
            last_line = line.split(":", 1)[1]
    return obs


async def drill_openai(settings: Settings, *, watch: float = 20.0, progress: Progress = quiet) -> Report:
    """A worker of ours on the embed and agent queues whose OpenAI endpoint refuses every connection."""
    report = Report("openai")
    port = refusing_port()
    url = f"http://127.0.0.1:{port}/v1"
    overrides = {
        "OPENAI_BASE_URL": url,
        "OPENAI_API_KEY": settings.openai_api_key or "chaos-drill-key",
        "EMBED_PROVIDER": settings.embed_provider,  # a dummy key must not switch the embedder
    }
    return await _process_drill(
        settings,
        report,
        queues=["embed", "agent"],
        overrides=overrides,
        watch=watch,
        what=f"OpenAI endpoint {url} (refusing)",
        progress=progress,
    )


async def drill_smtp(settings: Settings, *, watch: float = 20.0, progress: Progress = quiet) -> Report:
    """A worker of ours on the email queue whose SMTP server refuses every connection."""
    report = Report("smtp")
    port = refusing_port()
    overrides = {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(port),
        "SMTP_TLS": "false",
        "SMTP_SSL": "false",
        "SMTP_USER": "",
        "SMTP_PASSWORD": "",
    }
    return await _process_drill(
        settings,
        report,
        queues=["email"],
        overrides=overrides,
        watch=watch,
        what=f"SMTP server 127.0.0.1:{port} (refusing)",
        progress=progress,
    )


async def _process_drill(
    settings: Settings,
    report: Report,
    *,
    queues: list[str],
    overrides: dict[str, str],
    watch: float,
    what: str,
    progress: Progress,
) -> Report:
    refuse_second(settings, report.drill)
    async with open_runtime(settings, live_config=False, pool_size=3) as rt:
        since = now()
        before = await observe(rt.pool, since)
        others = others_on(await live_workers(rt.pool), set(queues))
        fault = new_fault(report.drill)
        add_fault(settings, fault)
        started = time.monotonic()
        entry = spawn(
            settings,
            ["infosentry", "worker", *[a for q in queues for a in ("--queue", q)]],
            overrides=overrides,
            name=f"chaos-{report.drill}-worker",
        )
        update_fault(settings, fault["id"], processes=[entry])
        report.injected.append(f"worker pid {entry['pid']} on queue {','.join(queues)} using {what}")
        progress(f"chaos {report.drill}: started worker pid {entry['pid']} ({','.join(queues)}) using {what}")
        if not await wait_heartbeat(rt.pool, entry["pid"], 30):
            report.fail(f"the drill's worker did not start (log: {entry['log']})")
            return report
        report.timings["worker_start"] = time.monotonic() - started
        if others:
            report.notes.append(
                f"{len(others)} other worker(s) serve {','.join(queues)} with the real settings and share the "
                f"work: {'; '.join(others)}. Stop them for a full outage drill."
            )
        progress(f"chaos {report.drill}: watching for {watch:.0f} s")
        after = await _watch(rt, report, since, watch, [entry], progress)
        report.data = {"before": before, "after": after}
        _summarise(report, after)
        report.notes.append("the fault stays until `infosentry chaos recover`")
    return report


def _summarise(report: Report, obs: dict[str, Any]) -> None:
    """Plain words for what the observation shows."""
    runs, reasons, decisions = obs["runs"], obs["fallback_reasons"], obs["decisions"]
    if report.drill in ("openai", "budget"):
        if runs.get("FALLBACK"):
            why = ", ".join(f"{k}: {v}" for k, v in reasons.items())
            report.degraded.append(f"{runs['FALLBACK']} boundary decisions fell back to BATCH ({why})")
        if obs["external_errors"]:
            report.degraded.append(f"{obs['external_errors']} failed calls to the embedding/LLM endpoint")
        if obs["items_pending_embedding"]:
            report.degraded.append(f"{obs['items_pending_embedding']} items wait for their embedding")
        if runs.get("SUCCESS"):
            report.notes.append(f"{runs['SUCCESS']} LLM judgments succeeded (work taken by other workers?)")
    if report.drill == "smtp" and obs["emails_waiting"]:
        report.degraded.append(
            f"{obs['emails_waiting']} emails wait in the outbox ({obs['emails_retrying']} already retried)"
        )
    if obs["items_new"]:
        report.kept_working.append(f"ingest: {obs['items_new']} new items")
    if obs["matches_new"]:
        report.kept_working.append(f"matching: {obs['matches_new']} new matches")
    if decisions:
        report.kept_working.append("decisions: " + ", ".join(f"{v} {k}" for k, v in sorted(decisions.items())))
    if obs["inbox_new"]:
        report.kept_working.append(f"inbox: {obs['inbox_new']} new notifications")
    if obs["emails_sent"]:
        report.kept_working.append(f"email: {obs['emails_sent']} sent")
    n = obs["live_processes"]
    report.kept_working.append(f"{n} process{'' if n == 1 else 'es'} with a fresh heartbeat; no crash")
    if obs["jobs_failed"]:
        report.notes.append(
            f"{obs['jobs_failed']} jobs failed since the drill started (they are retried by the "
            "periodic sweeps; see `infosentry status`)"
        )


async def drill_budget(settings: Settings, *, watch: float = 20.0, progress: Progress = quiet) -> Report:
    """Force the budget breaker open: DAILY_USD_BUDGET = 0 (recorded) and today's breaker tripped."""
    report = Report("budget")
    refuse_second(settings, "budget")
    async with open_runtime(settings, live_config=False, pool_size=3) as rt:
        since = now()
        before = await observe(rt.pool, since)
        fault = new_fault("budget")
        add_fault(settings, fault)
        await _config_fault(rt, fault, {"DAILY_USD_BUDGET": 0})
        report.injected.append("DAILY_USD_BUDGET = 0 (config table, every process within 2 s)")
        tripped = await _trip_breaker(rt)
        if tripped:
            fault["breaker"] = True
            update_fault(settings, fault["id"], breaker=True)
            report.injected.append(f"today's budget breaker opened ({tripped})")
        progress(f"chaos budget: breaker forced open; watching for {watch:.0f} s")
        after = await _watch(rt, report, since, watch, [], progress)
        report.data = {"before": before, "after": after}
        state = await _budget_state(rt)
        if state is not None:
            report.data["budget"] = state
            if not state["breaker_open"]:
                report.fail(f"the budget module does not report the breaker open: {state}")
        _summarise(report, after)
        if after["external_ok"]:
            report.fail(f"{after['external_ok']} paid calls succeeded while the breaker was open")
        else:
            report.degraded.append("no embedding or LLM call was made while the breaker was open")
        report.notes.append("the fault stays until `infosentry chaos recover`")
    return report


async def _trip_breaker(rt: Runtime) -> str | None:
    from infosentry import budget

    state = await budget.force_open(rt, reason="chaos drill")
    return f"day {state['day']} ({state['tz']})"


async def _reset_breaker(rt: Runtime) -> str | None:
    from infosentry import budget

    state = await budget.reset(rt, who=f"{WHO}:recover")
    return "closed" if not state["breaker_open"] else "STILL OPEN"


async def _budget_state(rt: Runtime) -> dict[str, Any] | None:
    from infosentry import budget

    return dict(await budget.status(rt))


# --- recover -----------------------------------------------------------------------------------------------


async def recover(settings: Settings, *, timeout: float = 60.0, progress: Progress = quiet) -> Report:
    """Undo every recorded fault (stop drill processes, restore config, close a forced breaker), then watch
    the backlog they left drain: outbox delivered, embeddings done."""
    report = Report("recover")
    faults = load_state(settings)["faults"]
    if not faults:
        report.notes.append("nothing injected")
    async with open_runtime(settings, live_config=False, pool_size=3) as rt:
        since = now()
        started = time.monotonic()
        drills = set()
        for fault in faults:
            drills.add(fault["drill"])
            for entry in fault.get("processes", []):
                outcome = await asyncio.to_thread(stop, entry)
                report.injected.append(f"{fault['drill']}: {entry['name']} pid {entry['pid']} {outcome}")
            restore = {k: v["old"] for k, v in fault.get("config", {}).items() if v["had"]}
            unset = [k for k, v in fault.get("config", {}).items() if not v["had"]]
            if restore:
                await admin.set_config(rt, restore, who=f"{WHO}:recover")
            if unset:
                await admin.reset_config(rt, unset, who=f"{WHO}:recover")
            for key in fault.get("config", {}):
                value = json.dumps(restore[key]) if key in restore else "its default (no override)"
                report.injected.append(f"{fault['drill']}: {key} back to {value}")
            if fault.get("breaker"):
                how = await _reset_breaker(rt)
                report.injected.append(f"{fault['drill']}: today's budget breaker reset ({how})")
            remove_fault(settings, fault["id"])
        if faults:
            await _restart_backlog(rt, report, drills)
        report.timings["undo"] = time.monotonic() - started
        if faults:
            progress(
                f"chaos recover: undone {', '.join(sorted(drills))}; watching the backlog drain (up to {timeout:.0f} s)"
            )
            await _drain(rt, report, since, drills, timeout, progress)
    return report


async def _restart_backlog(rt: Runtime, report: Report, drills: set[str]) -> None:
    """What the fault left waiting is made due now and its jobs nudged, instead of waiting out the backoff
    (emails retry after 30 s, 1 min, 2 min, ...; the sweeps run every 15-60 s)."""
    nudges = []
    if "smtp" in drills:
        due = await emails_store.make_retries_due(rt.pool)
        report.injected.append(f"smtp: {due} emails in retry backoff made due now")
        nudges.append("send_emails")
    if drills & {"openai", "budget"}:
        nudges += ["embed_pending", "decide_pending"]
    if nudges:
        for task in nudges:
            await rt.nudge(task)


async def _drain(
    rt: Runtime, report: Report, since: datetime, drills: set[str], timeout: float, progress: Progress
) -> None:
    started = time.monotonic()
    waiting_for = []
    if "smtp" in drills:
        waiting_for.append("emails_waiting")
    if drills & {"openai", "budget"} and rt.settings.embed_provider == "openai":
        waiting_for.append("items_pending_embedding")
    first = await observe(rt.pool, since)
    obs = first
    while time.monotonic() - started < timeout and any(obs[k] for k in waiting_for):
        await asyncio.sleep(0.5)
        obs = await observe(rt.pool, since)
    report.timings["drain"] = time.monotonic() - started
    report.data = {"before": first, "after": obs}
    workers = await live_workers(rt.pool)
    for key, label in (
        ("emails_waiting", "emails waiting in the outbox"),
        ("items_pending_embedding", "items waiting for their embedding"),
    ):
        if key not in waiting_for:
            continue
        if obs[key]:
            queue = "email" if key == "emails_waiting" else "embed"
            serving = [w for w in workers if queue in w["queues"]]
            hint = "" if serving else f" (no live worker serves queue {queue}: start one)"
            report.fail(f"after {timeout:.0f} s still {obs[key]} {label}{hint}")
        else:
            report.kept_working.append(f"{first[key]} {label} before, 0 now ({report.timings['drain']:.1f} s)")
    if "smtp" in drills and obs["emails_sent"]:
        report.kept_working.append(f"{obs['emails_sent']} emails delivered since recover")


# --- status ------------------------------------------------------------------------------------------------


async def status(settings: Settings) -> dict[str, Any]:
    """Injected faults (with their processes' liveness) and a health summary."""
    faults = []
    for fault in load_state(settings)["faults"]:
        faults.append(
            {
                "drill": fault["drill"],
                "since": fault["since"],
                "processes": [
                    {"pid": p["pid"], "name": p["name"], "alive": alive(p), "log": p["log"]}
                    for p in fault.get("processes", [])
                ],
                "config": {k: {"was": v["old"] if v["had"] else "default"} for k, v in fault.get("config", {}).items()},
                "breaker_forced": fault.get("breaker", False),
            }
        )
    summary: dict[str, Any] = {"faults": faults}
    try:
        async with open_runtime(settings, live_config=False, pool_size=2) as rt:
            summary["health"] = await _health(rt)
            summary["switches"] = {
                k: rt.hot[k]
                for k in ("LLM_ENABLED", "EMBEDDING_ENABLED", "IMMEDIATE_ENABLED", "EMAIL_ENABLED", "DAILY_USD_BUDGET")
            }
            summary["workers"] = [
                {"id": w["id"], "role": w["role"], "queues": w["queues"]} for w in await live_workers(rt.pool)
            ]
            summary["pipeline_last_hour"] = await observe(rt.pool, datetime.fromtimestamp(time.time() - 3600, UTC))
    except Exception as exc:  # the status of a broken system is exactly what is wanted
        summary["health"] = {"status": "critical", "error": str(exc) or type(exc).__name__}
    return summary


async def _health(rt: Runtime) -> dict[str, Any]:
    try:
        from infosentry import health
    except ImportError:
        return {"status": "unknown", "detail": "health module missing"}
    rep = await health.report(rt)
    return {
        "status": rep["status"],
        "components": {k: v.get("status") for k, v in rep.get("components", {}).items()},
        "alerts": [f"{a['severity']}: {a.get('detail') or a['alert']}" for a in rep.get("alerts", [])],
    }


def status_lines(summary: dict[str, Any]) -> list[str]:
    out = []
    if not summary["faults"]:
        out.append("injected faults: none")
    for fault in summary["faults"]:
        procs = ", ".join(
            f"{p['name']} pid {p['pid']} {'running' if p['alive'] else 'GONE'}" for p in fault["processes"]
        )
        conf = ", ".join(f"{k} (was {json.dumps(v['was'])})" for k, v in fault["config"].items())
        parts = [x for x in (procs, conf, "breaker forced open" if fault["breaker_forced"] else "") if x]
        out.append(f"injected: {fault['drill']} since {fault['since'][:19]}Z: {'; '.join(parts)}")
    health = summary.get("health", {})
    out.append(f"health: {health.get('status', '?')}" + (f" ({health['error']})" if health.get("error") else ""))
    for name, state in health.get("components", {}).items():
        out.append(f"  {name}: {state}")
    for alert in health.get("alerts", []):
        out.append(f"  alert {alert}")
    if "switches" in summary:
        out.append("switches: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in summary["switches"].items()))
        out.append(
            "live processes: "
            + (", ".join(f"{w['id']} ({','.join(w['queues']) or w['role']})" for w in summary["workers"]) or "none")
        )
        p = summary["pipeline_last_hour"]
        out.append(
            f"last hour: items +{p['items_new']}, matches +{p['matches_new']}, runs {p['runs']}, "
            f"decisions {p['decisions']}, inbox +{p['inbox_new']}, emails sent {p['emails_sent']}, "
            f"waiting {p['emails_waiting']}, pending embeddings {p['items_pending_embedding']}"
        )
    return out


async def run_drill(settings: Settings, drill: str, progress: Progress = quiet, **options: Any) -> Report:
    functions = {
        "openai": drill_openai,
        "smtp": drill_smtp,
        "db": drill_db,
        "worker": drill_worker,
        "budget": drill_budget,
        "recover": recover,
    }
    if drill not in functions:
        raise Invalid(f"unknown drill {drill!r}; one of {', '.join(functions)}")
    return await functions[drill](settings, progress=progress, **options)
