"""Push: coalesced IMMEDIATE emails with overflow, batch windows (missed, DST), the digest exactly once across a
restart and a late start, the combined digest, the no-twice ledger, the EMAIL_ENABLED and IMMEDIATE_ENABLED hot
switches, the outbox sender against a real SMTP sink (refusing, then recovering), and reconciliation.
The clock is driven by passing `now` to the push functions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from infosentry import jobs, push
from infosentry.domain import accounts
from infosentry.runtime import Runtime, open_runtime
from infosentry.settings import Settings
from infosentry.store import emails as emails_store
from tests import pushkit as kit
from tests.conftest import make_user
from tests.fakes.smtp import SmtpSink
from tests.pushkit import hhmm, midday_zone


def slot_at(now: datetime, tz: str, value: str) -> datetime:
    return push.slot_instant(now.astimezone(ZoneInfo(tz)).date(), value, ZoneInfo(tz))


def sink_settings(settings: Settings, smtp_sink: SmtpSink) -> Settings:
    return replace(settings, smtp_host=smtp_sink.host, smtp_port=smtp_sink.port, smtp_tls=False, smtp_ssl=False)


@pytest.fixture
async def srt(settings: Settings, smtp_sink: SmtpSink) -> AsyncIterator[Runtime]:
    """A runtime that sends through the SMTP sink."""
    async with open_runtime(sink_settings(settings, smtp_sink)) as runtime:
        yield runtime


async def world(rt: Runtime, **goal_kw) -> tuple[int, int, int]:
    """A user, a source and a goal; unless a test says otherwise the goal lives in a zone where it is midday and
    its digest is hours away, so no slot fires by accident."""
    now = push.utcnow()
    goal_kw.setdefault("timezone", midday_zone(now))
    goal_kw.setdefault("digest_time", hhmm(now + timedelta(hours=6), goal_kw["timezone"]))
    # created a minute ago: yesterday's windows and digest predate the goal (they would be caught up otherwise)
    goal_kw.setdefault("created_at", now - timedelta(minutes=1))
    await kit.set_hot(rt, LLM_ENABLED=False)
    user_id, _ = await make_user(rt, "reader@example.com")
    source_id = await kit.source(rt, user_id, "Wire")
    goal_id = await kit.goal(rt, user_id, "Chip exports", **goal_kw)
    return user_id, source_id, goal_id


async def decided(rt: Runtime, goal_id: int, source_id: int, scores: list[float], prefix: str = "Story") -> list[int]:
    items = []
    for n, score in enumerate(scores):
        item_id = await kit.item(rt, source_id, f"{prefix} {n} ({score})")
        await kit.match(rt, goal_id, item_id, score)
        items.append(item_id)
    await kit.decide_all(rt)
    return items


# --- IMMEDIATE ---------------------------------------------------------------------------------------------


async def test_immediate_coalesces_and_overflows_without_loss(srt: Runtime, smtp_sink: SmtpSink) -> None:
    rt = srt
    _, source_id, goal_id = await world(rt, batch_windows=[])
    await kit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=5, IMMEDIATE_MAX_ITEMS=3)
    now = push.utcnow()
    items = await decided(rt, goal_id, source_id, [0.95, 0.96, 0.97, 0.98])
    assert (await push.flush(rt, now)).emails == []
    assert (await push.flush(rt, now + timedelta(minutes=4))).emails == []
    report = await push.flush(rt, now + timedelta(minutes=5, seconds=2))
    assert len(report.emails) == 2 and report.immediate == 4
    assert sorted(n["item_id"] for n in await kit.notifications(rt, goal_id)) == items
    mails = await kit.emails(rt, "immediate")
    assert [m["subject"] for m in mails] == [
        "[Goal: Chip exports] 3 new high-priority items",
        "[Goal: Chip exports] 1 new high-priority item",
    ]
    assert {d["status"] for d in await kit.decisions(rt, goal_id)} == {"pushed"}
    # a second flush finds nothing; the ledger holds each item once
    assert (await push.flush(rt, now + timedelta(minutes=6))).emails == []
    sent = await push.send_due(rt)
    assert sent.sent == 2
    received = await smtp_sink.wait_for(2)
    first = next(m.message for m in received if " 3 new " in m.message["Subject"])
    assert first["To"] == "reader@example.com" and first["Subject"].startswith("[Goal: Chip exports] 3 new")
    body = first.get_body(("plain",)).get_content()
    # the best first: 0.98, 0.97, 0.96 in the first email, each with a tracked link
    for item_id in items[1:]:
        assert f"/r/{item_id}?goal_id={goal_id}&channel=email" in body
    assert "/unsubscribe?token=" in first["List-Unsubscribe"]
    assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert (await push.send_due(rt)).sent == 0 and len(smtp_sink.received) == 2
    today = {r["kind"]: dict(r) for r in await rt.pool.fetch("SELECT * FROM infosentry_pushes_today")}
    assert (today["immediate"]["items_pushed"], today["immediate"]["emails"], today["immediate"]["sent"]) == (4, 2, 2)
    assert today["batch"]["items_pushed"] == today["digest"]["emails"] == 0


async def test_many_goals_flush_in_rounds_and_racing_flushes_send_each_item_once(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The IMMEDIATE flush claims due goals set-wise, FLUSH_GOALS per transaction: seven goals in rounds of three
    all go out, and two flushes running at once (two workers) split the goals without a second email."""
    user_id, source_id, first_goal = await world(rt, batch_windows=[])
    await kit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=0, IMMEDIATE_MAX_ITEMS=2)
    goals = [first_goal] + [await kit.goal(rt, user_id, f"Topic {n}", batch_windows=[]) for n in range(6)]
    items = [await kit.item(rt, source_id, f"Story {n}") for n in range(3)]
    for goal_id in goals:
        for item_id in items:
            await kit.match(rt, goal_id, item_id, 0.97)
    await kit.decide_all(rt)
    monkeypatch.setattr(push, "FLUSH_GOALS", 3)
    one, two = await asyncio.gather(push.flush_immediate(rt, push.utcnow()), push.flush_immediate(rt, push.utcnow()))
    assert one.immediate + two.immediate == 3 * len(goals)
    mails = await kit.emails(rt, "immediate")
    assert len(mails) == 2 * len(goals)  # 3 items per goal, at most 2 per email
    assert sorted(m["goal_id"] for m in mails) == sorted(goals * 2)
    ledger = await kit.notifications(rt)
    assert sorted((n["goal_id"], n["item_id"]) for n in ledger) == sorted((g, i) for g in goals for i in items)
    assert {d["status"] for d in await kit.decisions(rt)} == {"pushed"}
    runs = await rt.pool.fetch("SELECT goal_id, output FROM agent_runs WHERE trigger = 'immediate_flush'")
    assert sorted(r["goal_id"] for r in runs) == sorted(goals)
    for r in runs:
        assert sorted(i for e in r["output"]["emails"] for i in e["item_ids"]) == items
    assert (await push.flush_immediate(rt, push.utcnow())).emails == []


async def test_the_decide_round_sends_its_instant_alerts_itself_and_leaves_coalescing_and_windows_to_the_flush(
    rt: Runtime,
) -> None:
    """With coalescing 0 the IMMEDIATE email is in the outbox when the decide step returns: no flush job between
    the decision and the sender. With coalescing on, the round writes no email before the window is over, and a
    BATCH decision is left to its window."""
    _, source_id, goal_id = await world(rt, batch_windows=["23:59"])
    await kit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=0)
    instant = await kit.item(rt, source_id, "Instant story")
    await kit.match(rt, goal_id, instant, 0.97)
    later = await kit.item(rt, source_id, "Window story")
    await kit.match(rt, goal_id, later, 0.80)
    report = await jobs.decide_step(rt, None)
    assert report.tiers == {"IMMEDIATE": 1, "BATCH": 1}
    assert [m["goal_id"] for m in await kit.emails(rt, "immediate")] == [goal_id]
    assert await kit.emails(rt, "batch") == []
    assert sorted((d["item_id"], d["status"]) for d in await kit.decisions(rt)) == [
        (instant, "pushed"),
        (later, "pending"),
    ]

    await kit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=5)
    coalesced = await kit.item(rt, source_id, "Coalesced story")
    await kit.match(rt, goal_id, coalesced, 0.97)
    assert (await jobs.decide_step(rt, None)).tiers == {"IMMEDIATE": 1}
    assert len(await kit.emails(rt, "immediate")) == 1  # waits for its coalescing window, as flush_push would
    assert len((await push.flush_immediate(rt, push.utcnow() + timedelta(minutes=5, seconds=1))).emails) == 1


async def test_items_arriving_in_the_window_join_the_first_email(rt: Runtime) -> None:
    _, source_id, goal_id = await world(rt, batch_windows=[])
    await kit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=5)
    first = await decided(rt, goal_id, source_id, [0.95])
    await rt.pool.execute("UPDATE decisions SET decided_at = now() - interval '4 minutes' WHERE item_id = $1", first[0])
    second = await decided(rt, goal_id, source_id, [0.96], prefix="Later")
    now = push.utcnow()
    assert (await push.flush(rt, now)).emails == []  # the window runs from the FIRST item
    report = await push.flush(rt, now + timedelta(minutes=1, seconds=1))
    assert len(report.emails) == 1 and report.immediate == 2
    assert {n["item_id"] for n in await kit.notifications(rt)} == {first[0], second[0]}


async def test_coalesce_zero_sends_at_once_and_immediate_switch_moves_to_batch(rt: Runtime) -> None:
    _, source_id, goal_id = await world(rt, batch_windows=[])
    await kit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=0)
    await decided(rt, goal_id, source_id, [0.97])
    assert len((await push.flush(rt)).emails) == 1
    # a coalescing window is open when the operator switches IMMEDIATE off: what waits becomes BATCH
    await kit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=5)
    waiting = await decided(rt, goal_id, source_id, [0.98], prefix="Waiting")
    await kit.set_hot(rt, IMMEDIATE_ENABLED=False)
    report = await push.flush(rt, push.utcnow() + timedelta(minutes=10))
    assert report.moved_to_batch == 1 and report.immediate == 0
    row = (await kit.decisions(rt, goal_id))[-1]
    assert row["item_id"] == waiting[0] and (row["tier"], row["status"]) == ("BATCH", "pending")
    assert "IMMEDIATE_ENABLED=false" in row["reason"]


# --- BATCH -------------------------------------------------------------------------------------------------


async def test_batch_window_sends_the_best_once(rt: Runtime) -> None:
    now = push.utcnow()
    tz = midday_zone(now)
    w1, w2, w3 = (
        hhmm(now + timedelta(minutes=20), tz),
        hhmm(now + timedelta(minutes=80), tz),
        hhmm(now + timedelta(minutes=140), tz),
    )
    _, source_id, goal_id = await world(rt, timezone=tz, batch_windows=[w1, w2, w3])
    await kit.set_hot(rt, BATCH_MAX_ITEMS=2, IMMEDIATE_COALESCE_MINUTES=0)
    immediate, *batch = await decided(rt, goal_id, source_id, [0.97, 0.80, 0.85, 0.78])
    report = await push.flush(rt)
    assert report.immediate == 1 and report.batch == 0  # no window yet
    at1 = slot_at(now, tz, w1)
    assert (await push.flush(rt, at1 - timedelta(seconds=1))).batch == 0
    report = await push.flush(rt, at1 + timedelta(seconds=5))
    assert report.batch == 2 and len(report.emails) == 1
    batch_mail = (await kit.emails(rt, "batch"))[0]
    assert batch_mail["subject"] == f"[Goal: Chip exports] 2 items for the {w1} window"
    pushed = {n["item_id"]: n["tier"] for n in await kit.notifications(rt, goal_id)}
    assert pushed == {immediate: "IMMEDIATE", batch[1]: "BATCH", batch[0]: "BATCH"}  # best two, not the 0.78
    assert (await push.flush(rt, at1 + timedelta(minutes=1))).emails == []  # fires exactly once
    report = await push.flush(rt, slot_at(now, tz, w2) + timedelta(seconds=1))
    assert report.batch == 1
    # the third window has nothing: no email, but the slot is recorded as fired
    report = await push.flush(rt, slot_at(now, tz, w3) + timedelta(seconds=1))
    assert report.emails == [] and report.slots == 1
    slots = await rt.pool.fetch("SELECT slot, item_count, email_id FROM push_slots ORDER BY slot")
    assert [(s["slot"], s["item_count"], s["email_id"] is not None) for s in slots] == [
        (w1, 2, True),
        (w2, 1, True),
        (w3, 0, False),
    ]
    assert len({n["item_id"] for n in await kit.notifications(rt)}) == 4 == len(await kit.notifications(rt))


async def test_missed_windows_send_once_when_back(rt: Runtime) -> None:
    now = push.utcnow()
    tz = midday_zone(now)
    early, late = hhmm(now - timedelta(hours=3), tz), hhmm(now - timedelta(hours=1), tz)
    _, source_id, goal_id = await world(
        rt, timezone=tz, batch_windows=[early, late], created_at=now - timedelta(days=1)
    )
    await decided(rt, goal_id, source_id, [0.8, 0.81, 0.82])
    report = await push.flush(rt, now)  # the service was down at both windows
    assert len(report.emails) == 1 and report.batch == 3
    slots = await rt.pool.fetch("SELECT slot, item_count FROM push_slots WHERE kind = 'batch' ORDER BY slot")
    assert [(s["slot"], s["item_count"]) for s in slots] == [(early, 0), (late, 3)]
    assert (await push.flush(rt, now + timedelta(minutes=5))).emails == []


async def test_windows_and_digests_missed_across_midnight_are_sent_once_marked_late(srt: Runtime) -> None:
    """The service was down from the evening window to the next morning: the window and the digest of the
    evening before are sent when it is back (once, said to be late), instead of being lost at midnight."""
    rt = srt
    now = push.utcnow()
    tz = "Etc/GMT-7" if 0 <= (now + timedelta(hours=7)).hour < 12 else "Etc/GMT+5"
    local = now.astimezone(ZoneInfo(tz))
    assert local.hour < 12 or (now + timedelta(hours=-5)).hour < 12  # morning there: yesterday evening is missed
    evening = "22:00" if local.hour >= 1 else "23:30"
    _, source_id, goal_id = await world(
        rt, timezone=tz, batch_windows=[evening], digest_time=evening, created_at=now - timedelta(days=2)
    )
    await decided(rt, goal_id, source_id, [0.8, 0.81])  # BATCH items
    await decided(rt, goal_id, source_id, [0.65])  # a DIGEST item
    report = await push.flush(rt, now)
    assert report.batch == 2 and report.digest == 1 and len(report.emails) == 2
    slots = await rt.pool.fetch("SELECT kind, local_date, late FROM push_slots ORDER BY kind")
    yesterday = local.date() - timedelta(days=1)
    assert [(s["kind"], s["local_date"], s["late"]) for s in slots] == [
        ("batch", yesterday, True),
        ("digest", yesterday, True),
    ]
    for email in await kit.emails(rt):
        assert email["subject"].endswith("(sent late)") and f"was due at {yesterday.isoformat()}" in email["body_text"]
    assert (await push.flush(rt, now + timedelta(minutes=5))).emails == []  # once


def test_slots_are_dst_safe() -> None:
    ny = ZoneInfo("America/New_York")
    old = datetime(2020, 1, 1, tzinfo=UTC)
    # spring forward: 02:30 does not exist on 2025-03-09; it fires once, at 03:30 EDT (07:30 UTC)
    fired = {(date(2025, 3, 8), "02:30")}  # the day before went out on time
    assert push.due_slots(datetime(2025, 3, 9, 7, 29, tzinfo=UTC), ny, ["02:30"], not_before=old, fired=fired) == []
    due = push.due_slots(datetime(2025, 3, 9, 7, 31, tzinfo=UTC), ny, ["02:30"], not_before=old, fired=fired)
    assert due == [(date(2025, 3, 9), "02:30")]
    # fall back: 01:30 happens twice on 2025-11-02; the slot fires at the first and never again that day
    first = datetime(2025, 11, 2, 5, 31, tzinfo=UTC)  # 01:31 EDT
    fired = {(date(2025, 11, 1), "01:30")}
    assert push.due_slots(first, ny, ["01:30"], not_before=old, fired=fired) == [(date(2025, 11, 2), "01:30")]
    again = datetime(2025, 11, 2, 6, 31, tzinfo=UTC)  # 01:31 EST, the second 01:30 has passed too
    assert push.due_slots(again, ny, ["01:30"], not_before=old, fired={*fired, (date(2025, 11, 2), "01:30")}) == []
    # a slot before the goal existed never fires; a missed slot fires within 24 h, across midnight too
    made = datetime(2025, 6, 1, 16, 0, tzinfo=UTC)  # 12:00 EDT
    assert push.due_slots(datetime(2025, 6, 1, 17, 0, tzinfo=UTC), ny, ["09:00"], not_before=made, fired=set()) == []
    late = ["23:50"]
    assert push.due_slots(datetime(2025, 6, 2, 4, 10, tzinfo=UTC), ny, late, not_before=old, fired=set()) == [
        (date(2025, 6, 1), "23:50")
    ]
    next_morning = datetime(2025, 6, 2, 13, 0, tzinfo=UTC)  # 09:00 EDT, 9 h after the slot
    assert push.due_slots(next_morning, ny, late, not_before=old, fired=set()) == [(date(2025, 6, 1), "23:50")]
    day_after = datetime(2025, 6, 3, 4, 0, tzinfo=UTC)  # 00:00 EDT two days later: 24 h and 10 min after
    assert push.due_slots(day_after, ny, late, not_before=old, fired=set()) == [(date(2025, 6, 2), "23:50")]


# --- DIGEST ------------------------------------------------------------------------------------------------


async def test_digest_fires_exactly_once_across_restart_and_late_start(settings: Settings, rt: Runtime) -> None:
    now = push.utcnow()
    tz = midday_zone(now)
    digest_at = hhmm(now - timedelta(hours=2), tz)  # the service comes up two hours after the digest time
    # the goal existed yesterday, and yesterday's digest went out on time
    _, source_id, goal_id = await world(
        rt, timezone=tz, batch_windows=[], digest_time=digest_at, created_at=now - timedelta(days=3)
    )
    yesterday = (now - timedelta(days=1)).astimezone(ZoneInfo(tz)).date()
    await rt.pool.execute(
        "INSERT INTO push_slots (kind, owner_id, local_date, slot) VALUES ('digest', $1, $2, $3)",
        goal_id,
        yesterday,
        digest_at,
    )
    await kit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=0, DIGEST_MAX_ITEMS=10)
    immediate, batch, digest, _low = await decided(rt, goal_id, source_id, [0.97, 0.8, 0.65, 0.5])
    now = push.utcnow()
    report = await push.flush(rt, now)
    assert report.immediate == 1 and report.digest == 2
    pushed = {n["item_id"]: n["tier"] for n in await kit.notifications(rt, goal_id)}
    assert pushed == {immediate: "IMMEDIATE", batch: "BATCH", digest: "DIGEST"}  # never twice, never the 0.5
    mail = (await kit.emails(rt, "digest"))[0]
    assert mail["subject"].startswith("[Goal: Chip exports] Daily digest: 2 items")
    assert mail["subject"].endswith("(sent late)")  # two hours after its time
    # a restart (a new process) and any scheduler phase later that day: nothing more
    async with open_runtime(settings) as again:
        for minutes in (1, 7, 60, 180):
            assert (await push.flush(again, now + timedelta(minutes=minutes))).emails == []
    assert len(await kit.emails(rt, "digest")) == 1
    # the next day: only what is new
    fresh = await decided(rt, goal_id, source_id, [0.66], prefix="Tomorrow")
    report = await push.flush(rt, now + timedelta(days=1))
    assert report.digest == 1
    assert (await kit.notifications(rt, goal_id))[-1]["item_id"] == fresh[0]


async def test_digest_waits_for_its_time(rt: Runtime) -> None:
    now = push.utcnow()
    tz = midday_zone(now)
    at = hhmm(now + timedelta(minutes=30), tz)
    _, source_id, goal_id = await world(rt, timezone=tz, batch_windows=[], digest_time=at)
    await decided(rt, goal_id, source_id, [0.7])
    assert (await push.flush(rt, now)).emails == []
    instant = slot_at(now, tz, at)
    assert (await push.flush(rt, instant - timedelta(seconds=1))).emails == []
    assert (await push.flush(rt, instant + timedelta(seconds=1))).digest == 1


async def test_combined_digest_is_one_email_with_a_section_per_goal(rt: Runtime) -> None:
    now = push.utcnow()
    tz = midday_zone(now)
    day_ago = now - timedelta(days=1)  # the goals existed before today's digest time
    user_id, source_id, goal_a = await world(
        rt, timezone=tz, batch_windows=[], digest_time=hhmm(now - timedelta(hours=1), tz), created_at=day_ago
    )
    await rt.pool.execute("UPDATE users SET combined_digest = true, timezone = $2 WHERE id = $1", user_id, tz)
    goal_b = await kit.goal(
        rt,
        user_id,
        "Batteries",
        timezone=tz,
        batch_windows=[],
        digest_time=hhmm(now - timedelta(hours=2), tz),
        created_at=day_ago,
    )
    goal_c = await kit.goal(rt, user_id, "Quiet goal", timezone=tz, batch_windows=[], created_at=day_ago)
    await decided(rt, goal_a, source_id, [0.7, 0.65])
    await decided(rt, goal_b, source_id, [0.7], prefix="Battery")
    report = await push.flush(rt, now)
    assert len(report.emails) == 1 and report.digest == 3
    mail = (await kit.emails(rt, "digest"))[0]
    assert mail["subject"].startswith("[infosentry] Daily digest: 3 items across 2 goals")
    assert mail["to_addr"] == "reader@example.com" and mail["goal_id"] is None
    assert "Chip exports" in mail["body_text"] and "Batteries" in mail["body_text"]
    assert "Quiet goal" not in mail["body_text"]
    assert f"/api/v1/users/{user_id}/unsubscribe?token=" in mail["headers"]["List-Unsubscribe"]
    assert await rt.pool.fetchval("SELECT count(*) FROM push_slots WHERE kind = 'digest'") == 0
    assert (await push.flush(rt, now + timedelta(hours=1))).emails == []
    assert goal_c


# --- email switches and the sender -------------------------------------------------------------------------


async def test_email_disabled_keeps_the_inbox_and_never_floods_later(srt: Runtime, smtp_sink: SmtpSink) -> None:
    rt = srt
    _, source_id, goal_id = await world(rt, batch_windows=[])
    await kit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=0, EMAIL_ENABLED=False)
    first = await decided(rt, goal_id, source_id, [0.97])
    await push.flush(rt)
    assert [n["item_id"] for n in await kit.notifications(rt, goal_id)] == first
    assert [m["status"] for m in await kit.emails(rt)] == ["suppressed"]
    await kit.set_hot(rt, EMAIL_ENABLED=True)
    assert (await push.send_due(rt)).sent == 0  # the old push is not sent later
    await decided(rt, goal_id, source_id, [0.98], prefix="After")
    await push.flush(rt)
    # switched off between creation and sending: suppressed at send time, not sent
    await kit.set_hot(rt, EMAIL_ENABLED=False)
    assert (await push.send_due(rt)).suppressed == 1
    await kit.set_hot(rt, EMAIL_ENABLED=True)
    await decided(rt, goal_id, source_id, [0.99], prefix="Last")
    await push.flush(rt)
    assert (await push.send_due(rt)).sent == 1
    assert len(smtp_sink.received) == 1 and "Last" in smtp_sink.received[0].message.get_body(("plain",)).get_content()


async def test_smtp_refusing_then_recovering_delivers_exactly_once(srt: Runtime, smtp_sink: SmtpSink) -> None:
    rt = srt
    _, source_id, goal_id = await world(rt, batch_windows=[])
    await kit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=0)
    await decided(rt, goal_id, source_id, [0.97])
    await push.flush(rt)
    smtp_sink.refuse(451)
    now = push.utcnow()
    report = await push.send_due(rt, now)
    assert (report.sent, report.retrying) == (0, 1)
    mail = (await kit.emails(rt))[0]
    assert mail["status"] == "pending" and mail["attempts"] == 1 and "451" in mail["last_error"]
    assert mail["next_attempt_at"] >= now + timedelta(seconds=25)  # backoff, not a hot loop
    smtp_sink.down()
    report = await push.send_due(rt, now + timedelta(minutes=2))
    assert report.retrying == 1
    state = await rt.pool.fetchrow("SELECT * FROM delivery_state WHERE channel = 'smtp'")
    assert state["consecutive_failures"] == 2
    assert (await push.send_due(rt, now + timedelta(minutes=2))).claimed == 0  # not due yet
    smtp_sink.up()
    smtp_sink.accept()
    report = await push.send_due(rt, now + timedelta(hours=1))
    assert report.sent == 1
    assert len(smtp_sink.received) == 1
    mail = (await kit.emails(rt))[0]
    assert mail["status"] == "sent" and mail["attempts"] == 3 and mail["sent_at"] is not None
    assert (await rt.pool.fetchrow("SELECT * FROM delivery_state WHERE channel = 'smtp'"))["consecutive_failures"] == 0
    assert (await push.send_due(rt, now + timedelta(hours=5))).claimed == 0
    assert len(smtp_sink.received) == 1


async def test_permanent_failures_and_exhausted_retries_are_visible(srt: Runtime, smtp_sink: SmtpSink) -> None:
    rt = srt
    _, source_id, goal_id = await world(rt, batch_windows=[])
    await kit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=0, IMMEDIATE_MAX_ITEMS=1)
    await decided(rt, goal_id, source_id, [0.97, 0.98])
    await push.flush(rt)
    ids = [m["id"] for m in await kit.emails(rt)]
    # the second waits (a retry scheduled later) and has used all its attempts but one
    await rt.pool.execute(
        "UPDATE emails SET attempts = $2, next_attempt_at = now() + interval '1 hour' WHERE id = $1",
        ids[1],
        push.MAX_SEND_ATTEMPTS - 1,
    )
    smtp_sink.refuse(550, at="rcpt")
    assert (await push.send_due(rt)).failed == 1
    first = (await kit.emails(rt))[0]
    assert first["status"] == "failed" and first["last_error"].startswith("permanent: 550")
    smtp_sink.refuse(451)
    assert (await push.send_due(rt, push.utcnow() + timedelta(hours=2))).failed == 1
    second = (await kit.emails(rt))[1]
    assert second["status"] == "failed" and second["last_error"].startswith(f"gave up after {push.MAX_SEND_ATTEMPTS}")
    assert smtp_sink.received == []
    state = await rt.pool.fetchrow("SELECT * FROM delivery_state WHERE channel = 'smtp'")
    assert state["consecutive_failures"] == 2 and "451" in state["last_error"]


async def test_smtp_state_counts_a_rounds_failures_after_its_successes(rt: Runtime) -> None:
    async def state() -> tuple[int, str | None, bool]:
        row = await rt.pool.fetchrow("SELECT * FROM delivery_state WHERE channel = 'smtp'")
        return row["consecutive_failures"], row["last_error"], row["last_success_at"] is not None

    await emails_store.smtp_round(rt.pool, sent=0, errors=["451 busy", "451 still busy"])
    assert await state() == (2, "451 still busy", False)
    await emails_store.smtp_round(rt.pool, sent=0, errors=["421 closing"])
    assert await state() == (3, "421 closing", False)
    # concurrent sends have no order: a success in the round does not hide the round's own failures
    await emails_store.smtp_round(rt.pool, sent=3, errors=["550 no such user"])
    assert await state() == (1, "550 no such user", True)
    await emails_store.smtp_round(rt.pool, sent=1, errors=[])
    assert await state() == (0, "550 no such user", True)


async def test_no_smtp_host_means_inbox_only(rt: Runtime) -> None:
    _, source_id, goal_id = await world(rt, batch_windows=[])
    await kit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=0)
    await decided(rt, goal_id, source_id, [0.97])
    await push.flush(rt)
    assert len(await kit.notifications(rt)) == 1
    mail = (await kit.emails(rt))[0]
    assert mail["status"] == "suppressed" and "SMTP_HOST" in mail["last_error"]


# --- blocked sources, paused goals, reconciliation ---------------------------------------------------------


async def test_blocked_source_cancels_pending_and_paused_goal_pushes_nothing(rt: Runtime) -> None:
    now = push.utcnow()
    tz = midday_zone(now)
    user_id, source_id, goal_id = await world(rt, timezone=tz, batch_windows=[hhmm(now + timedelta(minutes=10), tz)])
    await kit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=5)
    other = await kit.source(rt, user_id, "Other wire")
    blocked_items = await decided(rt, goal_id, source_id, [0.97, 0.8])
    kept = await decided(rt, goal_id, other, [0.96], prefix="Kept")
    await rt.pool.execute(
        "INSERT INTO blocked_sources (goal_id, source_id, user_id) VALUES ($1, $2, $3)", goal_id, source_id, user_id
    )
    report = await push.flush(rt, now + timedelta(minutes=30))
    assert report.cancelled == 2
    assert [n["item_id"] for n in await kit.notifications(rt)] == kept
    rows = {d["item_id"]: d for d in await kit.decisions(rt, goal_id)}
    assert all(rows[i]["status"] == "cancelled" and "[source blocked]" in rows[i]["reason"] for i in blocked_items)
    # a paused goal: pending decisions are cancelled, nothing is pushed
    paused = await decided(rt, goal_id, other, [0.99], prefix="Paused")
    await rt.pool.execute("UPDATE goals SET status = 'paused' WHERE id = $1", goal_id)
    await push.flush(rt, now + timedelta(hours=1))
    assert (await kit.decisions(rt, goal_id))[-1]["item_id"] == paused[0]
    assert {d["status"] for d in await kit.decisions(rt, goal_id) if d["item_id"] == paused[0]} == {"cancelled"}
    assert len(await kit.notifications(rt)) == 1


async def test_reconcile_releases_stuck_sends_and_expires_stale(srt: Runtime, smtp_sink: SmtpSink) -> None:
    rt = srt
    _, source_id, goal_id = await world(rt, batch_windows=[])
    await kit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=0)
    await decided(rt, goal_id, source_id, [0.97])
    await push.flush(rt)
    # a sender claimed the email and died before finishing
    claimed = await push.emails_store.claim_due(rt.pool, now=push.utcnow(), limit=10, lease_seconds=push.LEASE_SECONDS)
    assert len(claimed) == 1
    assert (await push.send_due(rt)).claimed == 0  # leased: nobody else sends it meanwhile
    later = push.utcnow() + timedelta(seconds=push.LEASE_SECONDS + 1)
    report = await push.reconcile(rt, later)
    assert report.released_emails == 1 and report.due_emails == 1
    assert (await push.send_due(rt, later)).sent == 1
    assert len(smtp_sink.received) == 1
    # an old BATCH nobody chose is closed; an overdue IMMEDIATE is reported (the job nudges the flush)
    stale = await decided(rt, goal_id, source_id, [0.8], prefix="Stale")
    await rt.pool.execute("UPDATE decisions SET decided_at = now() - interval '3 days' WHERE item_id = $1", stale[0])
    await kit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=5)
    await decided(rt, goal_id, source_id, [0.99], prefix="Overdue")
    report = await push.reconcile(rt, push.utcnow() + timedelta(minutes=10))
    assert report.expired == 1 and report.overdue_immediate == 1


async def test_a_sent_login_email_keeps_no_copy_of_its_link(srt: Runtime, smtp_sink: SmtpSink) -> None:
    rt = srt
    await accounts.request_link(rt, {"email": "someone@example.com"}, ip="127.0.0.1")
    before = await rt.pool.fetchval("SELECT body_text FROM emails WHERE kind = 'login'")
    assert "/api/v1/auth/consume?token=isl_" in before  # the outbox holds the link until it is delivered
    assert (await push.send_due(rt)).sent == 1
    received = await smtp_sink.wait_for(1)
    assert "/api/v1/auth/consume?token=isl_" in received[0].message.get_body(("plain",)).get_content()
    row = await rt.pool.fetchrow("SELECT status, subject, body_text, body_html FROM emails WHERE kind = 'login'")
    assert (row["status"], row["body_text"], row["body_html"]) == ("sent", "", "") and row["subject"]


async def test_sending_lanes_share_the_job_budget_and_deliver_each_email_once(
    srt: Runtime, smtp_sink: SmtpSink
) -> None:
    """SEND_CONCURRENCY lanes claim SEND_LANE_CLAIM rows at a time: together they stop at the job's budget (and
    ask for another job), and the next job sends the rest; no email twice, none left behind."""
    rt = srt
    rows = [
        emails_store.NewEmail(
            f"lane-{n}", "immediate", None, None, "a@example.com", f"Mail {n}", "body", "", {}, "pending", None
        )
        for n in range(3 * push.SEND_LANE_CLAIM + 1)
    ]
    await emails_store.insert_emails(rt.pool, rows)
    first = await push.send_due(rt, push.utcnow() + timedelta(seconds=1), budget=5)
    assert (first.claimed, first.sent, first.more) == (5, 5, True)
    second = await push.send_due(rt, push.utcnow() + timedelta(seconds=1))
    assert (second.claimed, second.sent, second.more) == (len(rows) - 5, len(rows) - 5, False)
    subjects = sorted(m.message["Subject"] for m in smtp_sink.received)
    assert subjects == sorted(r.subject for r in rows)
    assert {m["status"] for m in await kit.emails(rt)} == {"sent"}
    state = await rt.pool.fetchrow("SELECT * FROM delivery_state WHERE channel = 'smtp'")
    assert state["consecutive_failures"] == 0 and state["last_success_at"] is not None


async def test_a_few_due_emails_go_out_side_by_side_on_as_many_connections(srt: Runtime, smtp_sink: SmtpSink) -> None:
    """Each lane's first claim is one row: five instant alerts due together went out four in turn on one
    connection and one on another (the fourth waited for three sends) before."""
    rt = srt
    rows = [
        emails_store.NewEmail(
            f"few-{n}", "immediate", None, None, "a@example.com", f"Few {n}", "b", "", {}, "pending", None
        )
        for n in range(5)
    ]
    await emails_store.insert_emails(rt.pool, rows)
    # a running service's pool has its connections open: the lanes' first claims then go out together
    await asyncio.gather(*(rt.pool.fetchval("SELECT pg_sleep(0.05)") for _ in range(push.SEND_CONCURRENCY)))
    report = await push.send_due(rt, push.utcnow() + timedelta(seconds=1))
    assert (report.claimed, report.sent) == (5, 5)
    assert smtp_sink.sessions == 5


async def test_send_jobs_in_turn_reuse_the_process_connections_until_it_closes(
    settings: Settings, smtp_sink: SmtpSink
) -> None:
    """One SMTP session for instant alerts sent by jobs in turn: each job opened its own before (with a remote
    relay, a TLS handshake, EHLO and login on every instant alert's path)."""
    async with open_runtime(sink_settings(settings, smtp_sink)) as rt:
        for n in range(3):
            await emails_store.insert_emails(
                rt.pool,
                [
                    emails_store.NewEmail(
                        f"turn-{n}", "immediate", None, None, "a@example.com", "T", "b", "", {}, "pending", None
                    )
                ],
            )
            report = await push.send_due(rt, push.utcnow() + timedelta(seconds=1))
            assert (report.claimed, report.sent) == (1, 1)
        assert len(await smtp_sink.wait_for(3)) == 3 and smtp_sink.sessions == 1
    assert smtp_sink.quits == 1  # the runtime's close ended the kept session


async def test_instant_and_sign_in_mail_is_claimed_before_a_burst_of_batch_mail(rt: Runtime) -> None:
    def email(key: str, kind: str) -> emails_store.NewEmail:
        return emails_store.NewEmail(key, kind, None, None, "a@example.com", key, "body", "", {}, "pending", None)

    await emails_store.insert_emails(rt.pool, [email(f"batch-{n}", "batch") for n in range(5)])
    await emails_store.insert_emails(rt.pool, [email("digest-0", "digest")])
    await emails_store.insert_emails(rt.pool, [email("immediate-0", "immediate"), email("login-0", "login")])
    # the burst was due first; the instant alert and the sign-in link still go out in the first round
    now = push.utcnow() + timedelta(seconds=1)
    first = await emails_store.claim_due(rt.pool, now=now, limit=2, lease_seconds=60)
    assert {r["dedupe_key"] for r in first} == {"immediate-0", "login-0"}
    rest = await emails_store.claim_due(rt.pool, now=now, limit=10, lease_seconds=60)
    assert {r["dedupe_key"] for r in rest} == {f"batch-{n}" for n in range(5)} | {"digest-0"}
