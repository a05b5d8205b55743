"""Push: when decided items reach the user — coalesced IMMEDIATE emails, BATCH windows, daily digests (per goal
or combined per user), the inbox ledger, the email outbox and its sender, and reconciliation.

Every scheduling function takes `now` (tests drive the clock); slots that must fire once live in push_slots,
and notifications UNIQUE (goal_id, item_id) guarantees an item reaches a goal at most once, whatever the tier.
Emails are rendered when they are created (outbox rows), then sent by `send_due` with retries.
Imports mail and the store modules it writes (decisions, emails, goals, notifications, slots, keys).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg

from infosentry import links, mail, metrics, retry
from infosentry.runtime import Runtime
from infosentry.settings import Settings
from infosentry.store import decisions as decisions_store
from infosentry.store import emails as emails_store
from infosentry.store import goals as goals_store
from infosentry.store import notifications as notifications_store
from infosentry.store import slots as slots_store

log = logging.getLogger(__name__)

PUSH_KINDS = ("immediate", "batch", "digest")  # email kinds that carry pushes (login and alert mail do not)
LOOKBACK = timedelta(hours=24)  # batch windows and digests choose among items decided in the last 24 h
EXPIRE_AFTER = timedelta(hours=48)  # BATCH/DIGEST decisions never chosen are closed after this
CATCH_UP = timedelta(hours=24)  # a window or digest missed while the service was down fires up to this late
LATE_AFTER = timedelta(minutes=10)  # ... and says so when it fires later than this
SEND_CONCURRENCY = 8  # SMTP connections, each with its own sending lane
SEND_LANE_CLAIM = 4  # rows a busy lane claims at a time: a new instant alert waits for at most this many sends
SEND_BUDGET = 1000  # emails claimed per send job (the job asks for another while mail is due)
MAX_SEND_ATTEMPTS = 10
FLUSH_GOALS = 200  # goals per IMMEDIATE flush transaction
LEASE_SECONDS = 60.0  # a `sending` row older than this belongs to a dead sender (SMTP times out at 20 s)


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- time: zones, slots (pure) -----------------------------------------------------------------------------


def zone(name: str | None, fallback: str = "UTC") -> ZoneInfo:
    for candidate in (name, fallback, "UTC"):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def slot_instant(day: date, hhmm: str, tz: ZoneInfo) -> datetime:
    """The instant of local `day` at `hhmm`. A time skipped by a DST jump resolves to the same wall-clock
    time in the offset before the jump (02:30 on a spring-forward night fires at 03:30 local); a repeated
    time is its first occurrence. The slot key is (day, hhmm), so either way it fires once."""
    hour, minute = (int(p) for p in hhmm.split(":"))
    return datetime.combine(day, dtime(hour, minute), tzinfo=tz)


def due_slots(
    now: datetime,
    tz: ZoneInfo,
    times: Sequence[str],
    *,
    not_before: datetime,
    fired: set[tuple[date, str]],
    catch_up: timedelta = CATCH_UP,
) -> list[tuple[date, str]]:
    """Slots (local date, HH:MM) that are due and have not fired, oldest first: every slot whose time passed
    within `catch_up` (a window missed while the service was down fires when it is back, across midnight too).
    Slots before `not_before` (the goal's creation) never fire."""
    today = now.astimezone(tz).date()
    due: list[tuple[datetime, date, str]] = []
    for day in (today - timedelta(days=1), today):
        for hhmm in times:
            try:
                at = slot_instant(day, hhmm, tz)
            except ValueError:
                continue
            if at > now or at < not_before or (day, hhmm) in fired or now - at > catch_up:
                continue
            due.append((at, day, hhmm))
    due.sort()
    return [(d, t) for _, d, t in due]


def local_time(when: datetime | None, tz: ZoneInfo) -> str:
    return when.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z") if when else ""


def late_since(local_date: date, hhmm: str, tz: ZoneInfo, now: datetime) -> str | None:
    """When a slot fires more than LATE_AFTER after its time: that time (local), for the email to say so."""
    at = slot_instant(local_date, hhmm, tz)
    return local_time(at, tz) if now - at > LATE_AFTER else None


# --- emails ------------------------------------------------------------------------------------------------


def _email_item(row: asyncpg.Record, tz: ZoneInfo, signer: links.Signer, goal_id: int) -> mail.EmailItem:
    return mail.EmailItem(
        item_id=row["item_id"],
        title=row["title"],
        url=row["url"],
        link=signer.click_url(row["item_id"], goal_id, "email"),
        snippet=row["snippet"] or "",
        source_name=row["source_name"] or "",
        published_local=local_time(row["published_at"] or row["ingested_at"], tz),
        reason=row["reason"] or "",
        score=float(row["score"]),
    )


def _initial_status(rt: Runtime) -> tuple[str, str | None]:
    """A push email is born suppressed when email is off: turning email back on later never floods old items."""
    if not rt.hot["EMAIL_ENABLED"]:
        return "suppressed", "EMAIL_ENABLED was false: inbox only"
    if not rt.settings.smtp_host:
        return "suppressed", "SMTP_HOST is not set: inbox only"
    return "pending", None


def _goal_email(
    rt: Runtime,
    signer: links.Signer,
    goal: asyncpg.Record,
    rows: Sequence[asyncpg.Record],
    tz: ZoneInfo,
    *,
    kind: str,
    dedupe_key: str,
    window: str | None = None,
    day: str | None = None,
    late: str | None = None,
) -> emails_store.NewEmail:
    """One goal's items as an email for the outbox."""
    goal_id = goal["goal_id"]
    section = mail.Section(goal_id, goal["name"], [_email_item(r, tz, signer, goal_id) for r in rows])
    return _new_email(
        rt,
        kind=kind,
        dedupe_key=dedupe_key,
        user_id=goal["user_id"],
        goal_id=goal_id,
        to_addr=goal["to_addr"],
        language=goal["language"],
        sections=[section],
        unsubscribe=signer.unsubscribe_url("goal", goal_id),
        window=window,
        day=day,
        late=late,
    )


async def _push_goal_email(
    conn: asyncpg.Connection,
    rt: Runtime,
    goal: asyncpg.Record,
    rows: list[asyncpg.Record],
    tz: ZoneInfo,
    *,
    kind: str,
    dedupe_key: str,
    report: FlushReport,
    window: str | None = None,
    day: str | None = None,
    late: str | None = None,
) -> tuple[int | None, list[int]]:
    """One email with one goal's items, and their rows in the push ledger; (email id, item ids pushed)."""
    signer = await links.signer(rt)
    email = _goal_email(rt, signer, goal, rows, tz, kind=kind, dedupe_key=dedupe_key, window=window, day=day, late=late)
    email_id = (await _create_emails(conn, [email])).get(dedupe_key)
    inserted = await _record(conn, [(email, email_id, rows)], report)
    return email_id, [r["item_id"] for r in rows if (goal["goal_id"], r["item_id"]) in inserted]


async def _record(
    conn: asyncpg.Connection,
    pushes: Sequence[tuple[emails_store.NewEmail, int | None, Sequence[asyncpg.Record]]],
    report: FlushReport,
) -> set[tuple[int, int]]:
    """The push ledger for emails just created (an email that existed already is skipped with its items);
    returns the (goal id, item id) pairs that reached the inbox."""
    made = [(e, email_id, rows) for e, email_id, rows in pushes if email_id is not None]
    ledger = []
    for e, email_id, rows in made:
        assert e.user_id is not None, "push emails have a user"
        ledger.append(notifications_store.Push(e.user_id, email_id, rows))
    inserted = await notifications_store.record_push(conn, ledger)
    for _, email_id, rows in made:
        report.emails.append(email_id)
        report.items += sum((r["goal_id"], r["item_id"]) in inserted for r in rows)
    return inserted


def inbox_url(settings: Settings, goal_id: int | None) -> str:
    """The web inbox page of a goal (of every goal for a combined digest): every push email links to it."""
    base = f"{settings.public_url}/inbox"
    return f"{base}?goal={int(goal_id)}" if goal_id is not None else base


def render(
    rt: Runtime,
    kind: str,
    language: str,
    sections: list[mail.Section],
    *,
    goal_id: int | None,
    unsubscribe: str,
    window: str | None = None,
    day: str | None = None,
    late: str | None = None,
) -> mail.RenderedEmail:
    return mail.render_push_email(
        kind,
        language,
        sections,
        public_url=rt.settings.public_url,
        unsubscribe_url=unsubscribe,
        window=window,
        day=day,
        late=late,
        inbox_url=inbox_url(rt.settings, goal_id),
    )


def _new_email(
    rt: Runtime,
    *,
    kind: str,
    dedupe_key: str,
    user_id: int,
    goal_id: int | None,
    to_addr: str,
    language: str,
    sections: list[mail.Section],
    unsubscribe: str,
    window: str | None = None,
    day: str | None = None,
    late: str | None = None,
) -> emails_store.NewEmail:
    rendered = render(
        rt, kind, language, sections, goal_id=goal_id, unsubscribe=unsubscribe, window=window, day=day, late=late
    )
    status, note = _initial_status(rt)
    return emails_store.NewEmail(
        dedupe_key=dedupe_key,
        kind=kind,
        user_id=user_id,
        goal_id=goal_id,
        to_addr=to_addr,
        subject=rendered.subject,
        body_text=rendered.text,
        body_html=rendered.html,
        headers=dict(rendered.headers),
        status=status,
        last_error=note,
    )


async def _create_emails(conn: asyncpg.Connection, emails: list[emails_store.NewEmail]) -> dict[str, int]:
    """The outbox rows, by dedupe key; a key that exists was created before (a retried step): never a second."""
    created = await emails_store.insert_emails(conn, emails)
    for e in emails:
        if e.dedupe_key not in created:
            log.warning("email %s already exists", e.dedupe_key, extra={"action": "push_email_exists"})
    return created


# --- flush -------------------------------------------------------------------------------------------------


@dataclass
class FlushReport:
    emails: list[int] = field(default_factory=list)
    items: int = 0
    immediate: int = 0
    batch: int = 0
    digest: int = 0
    slots: int = 0
    moved_to_batch: int = 0
    cancelled: int = 0

    @property
    def sendable(self) -> bool:
        return bool(self.emails)


async def flush(rt: Runtime, now: datetime | None = None) -> FlushReport:
    """Everything that is due: coalesced IMMEDIATE emails, batch windows, digests."""
    now = now or utcnow()
    report = FlushReport()
    if not rt.hot["IMMEDIATE_ENABLED"]:
        report.moved_to_batch = await decisions_store.immediate_to_batch(rt.pool)
    report.cancelled = await decisions_store.cancel_blocked(rt.pool) + await decisions_store.cancel_inactive(rt.pool)
    await flush_immediate(rt, now, report)
    goals = await goals_store.active_goals(rt.pool)
    await flush_windows(rt, now, report, goals=goals)
    await flush_digests(rt, now, report, goals=goals)
    if report.emails or report.items:
        log.info(
            "pushed %d items in %d emails",
            report.items,
            len(report.emails),
            extra={
                "action": "push_flushed",
                "immediate": report.immediate,
                "batch": report.batch,
                "digest": report.digest,
            },
        )
    return report


async def flush_immediate(rt: Runtime, now: datetime, report: FlushReport | None = None) -> FlushReport:
    """Goals whose first pending IMMEDIATE item has waited IMMEDIATE_COALESCE_MINUTES: everything pending goes
    out now, in emails of at most IMMEDIATE_MAX_ITEMS (the overflow in the next email, right after). Up to
    FLUSH_GOALS goals per transaction in a fixed handful of statements: a flush follows every decide round, so
    its cost sits on every instant alert's path, and with a statement per goal it grew with the goals alerted."""
    report = report or FlushReport()
    coalesce = float(rt.hot["IMMEDIATE_COALESCE_MINUTES"]) * 60
    done: list[int] = []
    while True:
        claimed = await _flush_immediate_round(rt, now, coalesce, done, report)
        if not claimed:  # not fewer than FLUSH_GOALS: goals locked elsewhere are left out of a full round too
            return report
        done += claimed


async def _flush_immediate_round(
    rt: Runtime, now: datetime, coalesce: float, done: list[int], report: FlushReport
) -> list[int]:
    started = time.perf_counter()
    max_items = int(rt.hot["IMMEDIATE_MAX_ITEMS"])
    async with rt.pool.acquire() as conn, conn.transaction():
        claimed = await decisions_store.claim_due_immediate(
            conn, now=now, coalesce_seconds=coalesce, limit=FLUSH_GOALS, skip=done
        )
        if not claimed:
            return claimed
        goals = {g["goal_id"]: g for g in await goals_store.deliveries(conn, claimed)}
        by_goal: dict[int, list[asyncpg.Record]] = {}
        for r in await decisions_store.pending_immediate(conn, claimed):
            by_goal.setdefault(r["goal_id"], []).append(r)
        signer = await links.signer(rt)
        pushes: list[tuple[emails_store.NewEmail, list[asyncpg.Record]]] = []
        for goal_id, rows in by_goal.items():
            goal = goals.get(goal_id)
            first = min(r["decided_at"] for r in rows)
            if goal is None or goal["status"] != "active" or first + timedelta(seconds=coalesce) > now:
                continue  # pushed by another process between the claim's snapshot and its lock
            tz = zone(goal["timezone"], rt.settings.tz)
            for start in range(0, len(rows), max_items):
                chunk = rows[start : start + max_items]
                key = f"immediate:{goal_id}:{min(r['decision_id'] for r in chunk)}"
                pushes.append((_goal_email(rt, signer, goal, chunk, tz, kind="immediate", dedupe_key=key), chunk))
        created = await _create_emails(conn, [e for e, _ in pushes])
        before = report.items
        inserted = await _record(conn, [(e, created.get(e.dedupe_key), rows) for e, rows in pushes], report)
        report.immediate += report.items - before
        latency_ms = int((time.perf_counter() - started) * 1000)
        runs = []
        for goal_id, rows in by_goal.items():
            mine = [(e, rows_) for e, rows_ in pushes if e.goal_id == goal_id]
            if not mine:
                continue
            runs.append(
                decisions_store.PushRun(
                    goal_id,
                    "immediate_flush",
                    input={
                        "now": now.isoformat(),
                        "first_pending_at": min(r["decided_at"] for r in rows).isoformat(),
                        "coalesce_seconds": coalesce,
                        "max_items": max_items,
                        "candidates": [
                            {"decision_id": r["decision_id"], "item_id": r["item_id"], "score": r["score"]}
                            for r in rows
                        ],
                    },
                    output={
                        "emails": [
                            {
                                "email_id": created[e.dedupe_key],
                                "dedupe_key": e.dedupe_key,
                                "item_ids": [r["item_id"] for r in rows_ if (goal_id, r["item_id"]) in inserted],
                            }
                            for e, rows_ in mine
                            if e.dedupe_key in created
                        ]
                    },
                    latency_ms=latency_ms,
                )
            )
        await decisions_store.insert_push_runs(conn, runs)
    return claimed


async def flush_windows(
    rt: Runtime, now: datetime, report: FlushReport | None = None, *, goals: list[asyncpg.Record] | None = None
) -> FlushReport:
    """Batch windows: at each window of each active goal, one email with the best BATCH_MAX_ITEMS BATCH items
    not yet pushed (decided in the last 24 h); nothing when there is nothing. The slot fires exactly once."""
    report = report or FlushReport()
    goals = await goals_store.active_goals(rt.pool) if goals is None else goals
    if not goals:
        return report
    fired = await slots_store.fired_slots(rt.pool, ["batch"], (now - timedelta(days=3)).date())
    for goal in goals:
        if not goal["batch_enabled"]:
            continue  # the goal's BATCH items wait for its digest instead
        tz = zone(goal["timezone"], rt.settings.tz)
        mine = {(d, s) for k, o, d, s in fired if o == goal["goal_id"]}
        slots = due_slots(now, tz, list(goal["batch_windows"] or []), not_before=goal["created_at"], fired=mine)
        if slots:
            await _fire_batch(rt, goal, slots, now, tz, report)
    return report


async def _fire_batch(
    rt: Runtime, goal: asyncpg.Record, slots: list[tuple[date, str]], now: datetime, tz: ZoneInfo, report: FlushReport
) -> None:
    """Fire the latest due slot; older due slots of the same outage are closed without an email (one email
    when the service comes back, not one per missed window)."""
    started = time.perf_counter()
    goal_id = goal["goal_id"]
    local_date, slot = slots[-1]
    max_items = int(rt.hot["BATCH_MAX_ITEMS"])
    late = late_since(local_date, slot, tz, now)
    async with rt.pool.acquire() as conn, conn.transaction():
        await slots_store.lock_goal(conn, goal_id)
        if not await slots_store.claim_slot(conn, "batch", goal_id, local_date, slot):
            return
        for d, s in slots[:-1]:
            await slots_store.claim_slot(conn, "batch", goal_id, d, s)
        report.slots += 1
        # a late window chooses among what it would have chosen from (and what came since)
        since = slot_instant(local_date, slot, tz) - LOOKBACK
        rows = await decisions_store.pending_items(
            conn, goal_id, tiers=["BATCH"], since=since, min_score=0.0, limit=max_items
        )
        email_id: int | None = None
        pushed: list[int] = []
        if rows:
            email_id, pushed = await _push_goal_email(
                conn,
                rt,
                goal,
                rows,
                tz,
                kind="batch",
                report=report,
                window=slot,
                dedupe_key=f"batch:{goal_id}:{local_date.isoformat()}:{slot}",
                late=late,
            )
            report.batch += len(pushed)
        await slots_store.finish_slot(
            conn, "batch", goal_id, local_date, slot, email_id, len(pushed), late=late is not None
        )
        await decisions_store.insert_push_runs(
            conn,
            [
                decisions_store.PushRun(
                    goal_id=goal_id,
                    trigger="batch_window",
                    input={
                        "now": now.isoformat(),
                        "local_date": local_date.isoformat(),
                        "slot": slot,
                        "closed_missed_slots": [f"{d.isoformat()} {s}" for d, s in slots[:-1]],
                        "late": late,
                        "max_items": max_items,
                        "timezone": str(tz),
                    },
                    output={"email_id": email_id, "item_ids": pushed},
                    latency_ms=int((time.perf_counter() - started) * 1000),
                )
            ],
        )


async def flush_digests(
    rt: Runtime, now: datetime, report: FlushReport | None = None, *, goals: list[asyncpg.Record] | None = None
) -> FlushReport:
    """Daily digests: per goal at its digest_time (goal time zone), or one combined email per user
    (combined_digest=true) at the earliest digest_time of the user's active goals (user time zone)."""
    report = report or FlushReport()
    goals = await goals_store.active_goals(rt.pool) if goals is None else goals
    if not goals:
        return report
    fired = await slots_store.fired_slots(rt.pool, ["digest", "combined_digest"], (now - timedelta(days=3)).date())
    per_user: dict[int, list[asyncpg.Record]] = {}
    for goal in goals:
        if not goal["digest_enabled"]:
            continue
        if goal["combined_digest"]:
            per_user.setdefault(goal["user_id"], []).append(goal)
            continue
        tz = zone(goal["timezone"], rt.settings.tz)
        mine = {(d, s) for k, o, d, s in fired if k == "digest" and o == goal["goal_id"]}
        slots = due_slots(now, tz, [goal["digest_time"]], not_before=goal["created_at"], fired=mine)
        if slots:
            await _fire_goal_digest(rt, goal, slots[-1], now, tz, report)
    for user_id, user_goals in per_user.items():
        tz = zone(user_goals[0]["user_timezone"], rt.settings.tz)
        at = min(g["digest_time"] for g in user_goals)
        mine = {(d, s) for k, o, d, s in fired if k == "combined_digest" and o == user_id}
        slots = due_slots(now, tz, [at], not_before=min(g["created_at"] for g in user_goals), fired=mine)
        if slots:
            await _fire_combined_digest(rt, user_id, user_goals, slots[-1], now, tz, report)
    return report


async def _digest_rows(conn: asyncpg.Connection, rt: Runtime, goal_id: int, due: datetime) -> list[asyncpg.Record]:
    # DIGEST items, and BATCH items no window has taken yet: "not pushed by any tier" in the day before it was due
    return await decisions_store.pending_items(
        conn,
        goal_id,
        tiers=["DIGEST", "BATCH"],
        since=due - LOOKBACK,
        min_score=float(rt.hot["DIGEST_MIN_SCORE"]),
        limit=int(rt.hot["DIGEST_MAX_ITEMS"]),
    )


async def _fire_goal_digest(
    rt: Runtime, goal: asyncpg.Record, slot: tuple[date, str], now: datetime, tz: ZoneInfo, report: FlushReport
) -> None:
    started = time.perf_counter()
    goal_id, (local_date, at) = goal["goal_id"], slot
    late = late_since(local_date, at, tz, now)
    async with rt.pool.acquire() as conn, conn.transaction():
        await slots_store.lock_goal(conn, goal_id)
        if not await slots_store.claim_slot(conn, "digest", goal_id, local_date, at):
            return
        report.slots += 1
        rows = await _digest_rows(conn, rt, goal_id, slot_instant(local_date, at, tz))
        email_id: int | None = None
        pushed: list[int] = []
        if rows:
            email_id, pushed = await _push_goal_email(
                conn,
                rt,
                goal,
                rows,
                tz,
                kind="digest",
                report=report,
                day=local_date.isoformat(),
                dedupe_key=f"digest:{goal_id}:{local_date.isoformat()}",
                late=late,
            )
            report.digest += len(pushed)
        await slots_store.finish_slot(
            conn, "digest", goal_id, local_date, at, email_id, len(pushed), late=late is not None
        )
        await decisions_store.insert_push_runs(
            conn,
            [
                decisions_store.PushRun(
                    goal_id=goal_id,
                    trigger="digest",
                    input={
                        "now": now.isoformat(),
                        "local_date": local_date.isoformat(),
                        "digest_time": at,
                        "timezone": str(tz),
                        "late": late,
                        "min_score": float(rt.hot["DIGEST_MIN_SCORE"]),
                        "max_items": int(rt.hot["DIGEST_MAX_ITEMS"]),
                    },
                    output={"email_id": email_id, "item_ids": pushed},
                    latency_ms=int((time.perf_counter() - started) * 1000),
                )
            ],
        )


async def _fire_combined_digest(
    rt: Runtime,
    user_id: int,
    goals: list[asyncpg.Record],
    slot: tuple[date, str],
    now: datetime,
    tz: ZoneInfo,
    report: FlushReport,
) -> None:
    started = time.perf_counter()
    local_date, at = slot
    late = late_since(local_date, at, tz, now)
    async with rt.pool.acquire() as conn, conn.transaction():
        if not await slots_store.try_lock_user(conn, user_id):
            return
        if not await slots_store.claim_slot(conn, "combined_digest", user_id, local_date, at):
            return
        report.slots += 1
        picked: list[tuple[asyncpg.Record, list[asyncpg.Record]]] = []
        for goal in goals:
            await slots_store.lock_goal(conn, goal["goal_id"])
            # a goal whose own digest already went out today (the setting changed during the day) is left out
            goal_date = now.astimezone(zone(goal["timezone"], rt.settings.tz)).date()
            if await slots_store.slot_fired_on(conn, "digest", goal["goal_id"], goal_date):
                continue
            rows = await _digest_rows(conn, rt, goal["goal_id"], slot_instant(local_date, at, tz))
            if rows:
                picked.append((goal, rows))
        email_id = None
        pushed_total = 0
        items_by_goal: dict[int, list[int]] = {}
        if picked:
            first = goals[0]
            signer = await links.signer(rt)
            sections = [
                mail.Section(
                    g["goal_id"],
                    g["name"],
                    [_email_item(r, zone(g["timezone"], str(tz)), signer, g["goal_id"]) for r in rows],
                )
                for g, rows in picked
            ]
            email = _new_email(
                rt,
                kind="digest",
                dedupe_key=f"digest:user:{user_id}:{local_date.isoformat()}",
                user_id=user_id,
                goal_id=None,
                to_addr=first["user_email"],
                language=first["user_language"],
                sections=sections,
                unsubscribe=signer.unsubscribe_url("user", user_id),
                day=local_date.isoformat(),
                late=late,
            )
            email_id = (await _create_emails(conn, [email])).get(email.dedupe_key)
            rows = [r for _, goal_rows in picked for r in goal_rows]
            before = report.items
            inserted = await _record(conn, [(email, email_id, rows)], report)
            for goal_id, item_id in inserted:
                items_by_goal.setdefault(goal_id, []).append(item_id)
            pushed_total = report.items - before
            report.digest += pushed_total
        await slots_store.finish_slot(
            conn, "combined_digest", user_id, local_date, at, email_id, pushed_total, late=late is not None
        )
        await decisions_store.insert_push_runs(
            conn,
            [
                decisions_store.PushRun(
                    goal_id=goal["goal_id"],
                    trigger="combined_digest",
                    input={
                        "now": now.isoformat(),
                        "user_id": user_id,
                        "local_date": local_date.isoformat(),
                        "digest_time": at,
                        "timezone": str(tz),
                    },
                    output={"email_id": email_id, "item_ids": items_by_goal.get(goal["goal_id"], [])},
                    latency_ms=int((time.perf_counter() - started) * 1000),
                )
                for goal in goals
            ],
        )


# --- on demand (the goal page: preview and send now) -----------------------------------------------------


@dataclass
class NextEmail:
    kind: str
    rendered: mail.RenderedEmail | None  # None: nothing would go out now
    items: int
    email_id: int | None = None


async def _next_rows(conn: asyncpg.Connection, rt: Runtime, goal_id: int, kind: str, now: datetime) -> list:
    if kind == "batch":
        return await decisions_store.pending_items(
            conn, goal_id, tiers=["BATCH"], since=now - LOOKBACK, min_score=0.0, limit=int(rt.hot["BATCH_MAX_ITEMS"])
        )
    return await _digest_rows(conn, rt, goal_id, now)


async def next_email(rt: Runtime, goal_id: int, kind: str, *, send: bool, now: datetime | None = None) -> NextEmail:
    """The goal's next batch or digest email as it would be if its window came now: rendered only (send=False,
    nothing changes), or created and pushed at once (send=True: the items leave the queue like at a window, the
    scheduled windows still fire for what comes later)."""
    if kind not in ("batch", "digest"):
        raise ValueError(f"kind must be batch or digest, not {kind!r}")
    now = now or utcnow()
    async with rt.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await slots_store.lock_goal(conn, goal_id)
            goal = await goals_store.delivery(conn, goal_id)
            if goal is None:
                raise ValueError(f"no goal {goal_id}")
            tz = zone(goal["timezone"], rt.settings.tz)
            rows = await _next_rows(conn, rt, goal_id, kind, now)
            day = now.astimezone(tz).date().isoformat()
            window = now.astimezone(tz).strftime("%H:%M")
            if not rows:
                result = NextEmail(kind, None, 0)
            elif not send:
                signer = await links.signer(rt)
                section = mail.Section(goal_id, goal["name"], [_email_item(r, tz, signer, goal_id) for r in rows])
                unsubscribe = signer.unsubscribe_url("goal", goal_id)
                rendered = render(
                    rt,
                    kind,
                    goal["language"],
                    [section],
                    goal_id=goal_id,
                    unsubscribe=unsubscribe,
                    window=window,
                    day=day,
                )
                result = NextEmail(kind, rendered, len(rows))
            else:
                report = FlushReport()
                key = f"{kind}:{goal_id}:now:{min(r['decision_id'] for r in rows)}:{int(now.timestamp())}"
                email_id, pushed = await _push_goal_email(
                    conn, rt, goal, rows, tz, kind=kind, dedupe_key=key, report=report, window=window, day=day
                )
                await decisions_store.insert_push_runs(
                    conn,
                    [
                        decisions_store.PushRun(
                            goal_id=goal_id,
                            trigger=f"{kind}_send_now",
                            input={"now": now.isoformat(), "timezone": str(tz)},
                            output={"email_id": email_id, "item_ids": pushed},
                            latency_ms=0,
                        )
                    ],
                )
                result = NextEmail(kind, None, len(pushed), email_id)
        except BaseException:
            await tx.rollback()
            raise
        if send:
            await tx.commit()
        else:
            await tx.rollback()  # a preview changes nothing, not even a lock held
    return result


# --- sending -----------------------------------------------------------------------------------------------


def smtp_config(settings: Settings) -> mail.SmtpConfig | None:
    """The SMTP (or file sink) configuration; None when SMTP_HOST is empty (email is inbox only)."""
    if not settings.smtp_host:
        return None
    return mail.SmtpConfig(
        host=settings.smtp_host,
        port=settings.smtp_port,
        user=settings.smtp_user or None,
        password=settings.smtp_password or None,
        starttls=settings.smtp_tls,
        ssl=settings.smtp_ssl,
    )


def _message_id_domain(settings: Settings) -> str:
    domain = settings.emails_from_email.rpartition("@")[2].strip().lower()
    return domain if re.fullmatch(r"[a-z0-9.-]+", domain or "") else "infosentry.local"


@dataclass
class SendReport:
    claimed: int = 0
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    suppressed: int = 0
    more: bool = False  # stopped at the budget with mail still due


async def send_due(rt: Runtime, now: datetime | None = None, *, budget: int = SEND_BUDGET) -> SendReport:
    """Send what is due from the outbox. Each row: pending → sending (with a lease) → sent, or back to pending
    with exponential backoff on a temporary failure, or failed (permanent failure, or MAX_SEND_ATTEMPTS).
    A failure is never recorded as sent."""
    report = SendReport()
    fixed_now = now
    cfg = smtp_config(rt.settings)
    if cfg is None:
        report.suppressed += await emails_store.suppress_due(
            rt.pool,
            now=fixed_now or utcnow(),
            kinds=["immediate", "batch", "digest", "login", "alert"],
            reason="SMTP_HOST is not set",
        )
        return report
    if not rt.hot["EMAIL_ENABLED"]:
        report.suppressed += await emails_store.suppress_due(
            rt.pool, now=fixed_now or utcnow(), kinds=list(PUSH_KINDS), reason="EMAIL_ENABLED was false when it was due"
        )
    sender = rt.smtp_sender(cfg, SEND_CONCURRENCY)
    left = budget

    async def lane() -> None:
        """Claims a few due rows, sends them in turn on its connection, claims again: no lane waits for
        another's slowest send (rounds of 20 rows did, with every connection idle meanwhile). A lane's first
        claim is one row, doubled while claims come back full: five due instant alerts go out side by side
        on five connections, not four in turn on one; a backlog is still claimed SEND_LANE_CLAIM at a time."""
        nonlocal left
        size = 1
        while left > 0:
            take = min(size, left)
            size = min(2 * size, SEND_LANE_CLAIM)
            left -= take
            now = fixed_now or utcnow()
            rows = await emails_store.claim_due(rt.pool, now=now, limit=take, lease_seconds=LEASE_SECONDS)
            left += take - len(rows)
            if not rows:
                return
            await _send_claimed(rt, sender, rows, now, report)
            if len(rows) < take:
                return

    await asyncio.gather(*(lane() for _ in range(SEND_CONCURRENCY)))
    report.more = left <= 0
    return report


async def _send_claimed(
    rt: Runtime, sender: mail.SmtpSender, rows: list[asyncpg.Record], now: datetime, report: SendReport
) -> None:
    report.claimed += len(rows)
    sent, errors = 0, []
    for row in rows:
        delivered, error = await _send_one(rt, sender, row, now, report)
        sent += delivered
        if error is not None:  # an exception with no text is a failure all the same
            errors.append(error)
    if errors or sent:
        await emails_store.smtp_round(rt.pool, sent=sent, errors=errors)


async def _send_one(
    rt: Runtime, sender: mail.SmtpSender, row: asyncpg.Record, now: datetime, report: SendReport
) -> tuple[bool, str | None]:
    """Sends one claimed row and records its outcome; returns whether it was delivered, and the error when SMTP
    failed."""
    if row["kind"] in PUSH_KINDS and not rt.hot["EMAIL_ENABLED"]:
        await emails_store.mark_suppressed(rt.pool, row["id"], reason="EMAIL_ENABLED was false when it was due")
        report.suppressed += 1
        metrics.EMAILS.labels(row["kind"], "suppressed").inc()
        return False, None
    settings = rt.settings
    try:
        message = mail.build_message(
            mail.RenderedEmail(row["subject"], row["body_text"], row["body_html"], dict(row["headers"] or {})),
            to_addr=row["to_addr"],
            from_addr=settings.emails_from_email,
            from_name=settings.emails_from_name,
            message_id_domain=_message_id_domain(settings),
            dedupe_key=row["dedupe_key"],
            date=row["created_at"],
        )
        await sender.send(message)
    except (mail.SmtpPermanentError, ValueError) as exc:
        await emails_store.mark_failed(rt.pool, row["id"], error=f"permanent: {exc}")
        report.failed += 1
        metrics.EMAILS.labels(row["kind"], "failed").inc()
        log.warning("email %s failed permanently: %s", row["id"], exc, extra={"action": "email_failed"})
        return False, str(exc) or type(exc).__name__
    except Exception as exc:  # SmtpTemporaryError, and anything else (a file sink's disk): retry later
        error = str(exc) or type(exc).__name__
        if row["attempts"] >= MAX_SEND_ATTEMPTS:
            await emails_store.mark_failed(
                rt.pool, row["id"], error=f"gave up after {row['attempts']} attempts: {error}"
            )
            report.failed += 1
            metrics.EMAILS.labels(row["kind"], "failed").inc()
            log.warning(
                "email %s failed after %d attempts", row["id"], row["attempts"], extra={"action": "email_failed"}
            )
        else:
            at = now + timedelta(seconds=retry.EMAIL.delay(row["attempts"]))
            await emails_store.mark_retry(rt.pool, row["id"], at=at, error=error)
            report.retrying += 1
            metrics.EMAILS.labels(row["kind"], "retry").inc()
            log.info(
                "email %s will be retried at %s: %s", row["id"], at.isoformat(), error, extra={"action": "email_retry"}
            )
        return False, error
    # the login link in a login email is a credential: once delivered, the outbox keeps no copy of it
    await emails_store.mark_sent(rt.pool, row["id"], forget_body=row["kind"] == "login")
    report.sent += 1
    metrics.EMAILS.labels(row["kind"], "sent").inc()
    return True, None


# --- reconciliation ----------------------------------------------------------------------------------------


@dataclass
class ReconcileReport:
    released_emails: int = 0
    cancelled: int = 0
    expired: int = 0
    overdue_immediate: int = 0
    due_emails: int = 0

    def as_dict(self) -> dict[str, int]:
        return self.__dict__.copy()


async def reconcile(rt: Runtime, now: datetime | None = None) -> ReconcileReport:
    """Finish what a lost or crashed job left: emails stuck in `sending` go back to pending, decisions of
    paused goals and blocked sources are cancelled, BATCH/DIGEST decisions no slot ever chose are closed,
    and the counts of overdue IMMEDIATE decisions and due emails tell the job what to nudge."""
    now = now or utcnow()
    report = ReconcileReport()
    report.released_emails = await emails_store.release_stuck(rt.pool, now=now)
    report.cancelled = await decisions_store.cancel_blocked(rt.pool) + await decisions_store.cancel_inactive(rt.pool)
    report.cancelled += await decisions_store.close_already_pushed(rt.pool)
    report.expired = await decisions_store.expire_stale(rt.pool, older_than=now - EXPIRE_AFTER)
    coalesce = float(rt.hot["IMMEDIATE_COALESCE_MINUTES"]) * 60
    report.overdue_immediate = await decisions_store.overdue_immediate(
        rt.pool, now=now, coalesce_seconds=coalesce, grace_seconds=60
    )
    report.due_emails = await emails_store.due_email_count(rt.pool, now=now)
    if report.released_emails or report.overdue_immediate:
        log.warning("reconcile found stuck work", extra={"action": "push_reconcile", **report.as_dict()})
    return report
