"""Test helpers for the decide/push tests: rows of users, sources, goals, items and matches written the way the
other steps write them (plain SQL; the matches insert fires the real decide-queue triggers), and readers."""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from infosentry import decide
from infosentry.domain import admin
from infosentry.runtime import Runtime

_seq = itertools.count(1)


async def decide_all(rt: Runtime) -> decide.DecideReport:
    """The decision sweep, then the judge for the boundary pairs it handed over (what the jobs do in turn)."""
    first = await decide.decide_pending(rt)
    second = await decide.judge_pending(rt)
    merged = decide.DecideReport(
        items=first.items,
        candidates=first.candidates,
        to_judge=first.to_judge,
        judged=second.judged,
        llm_calls=second.llm_calls,
        errors=second.errors,
        fallbacks=first.fallbacks + second.fallbacks,
    )
    merged.written = first.written + second.written
    for report in (first, second):
        for tier, n in report.tiers.items():
            merged.tiers[tier] = merged.tiers.get(tier, 0) + n
    return merged


async def set_hot(rt: Runtime, **values: Any) -> None:
    await admin.set_config(rt, values, who="test")
    await rt.hot.reload()


async def source(rt: Runtime, user_id: int, name: str = "Example feed") -> int:
    n = next(_seq)
    sid = await rt.pool.fetchval(
        """INSERT INTO sources (type, url, name, fetch_interval_sec, created_by)
           VALUES ('rss', $1, $2, 900, $3) RETURNING id""",
        f"http://127.0.0.1:9/feed{n}.xml",
        name,
        user_id,
    )
    await rt.pool.execute("INSERT INTO subscriptions (user_id, source_id) VALUES ($1, $2)", user_id, sid)
    return sid


def midday_zone(now: datetime) -> str:
    """An Etc/GMT zone where it is between 10:00 and 14:00 now: slots a few hours either side stay on one local
    day, so a test never crosses midnight by accident."""
    for offset in range(-12, 15):
        if 10 <= (now + timedelta(hours=offset)).hour < 14:
            return f"Etc/GMT{-offset:+d}" if offset else "UTC"
    raise AssertionError("no zone")  # pragma: no cover


def hhmm(when: datetime, tz: str) -> str:
    return when.astimezone(ZoneInfo(tz)).strftime("%H:%M")


async def goal(
    rt: Runtime,
    user_id: int,
    name: str = "AI chips",
    *,
    description: str | None = None,
    timezone: str | None = None,
    batch_windows: list[str] | None = None,
    digest_time: str | None = None,
    email: str | None = None,
    language: str | None = None,
    terms: list[str] | None = None,
    mode: str = "SOFT",
    created_at: datetime | None = None,
) -> int:
    """A goal; by default in a zone where it is midday, its digest six hours away, created a minute ago (no slot
    fires by accident: a missed one of the last 24 h would be caught up if the goal were older)."""
    now = datetime.now(UTC)
    timezone = timezone or midday_zone(now)
    digest_time = digest_time or hhmm(now + timedelta(hours=6), timezone)
    return await rt.pool.fetchval(
        """INSERT INTO goals (user_id, name, description, timezone, batch_windows, digest_time, email, language,
                              priority_terms, priority_mode, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id""",
        user_id,
        name,
        description or f"News about {name}",
        timezone,
        batch_windows if batch_windows is not None else ["12:30", "18:30"],
        digest_time,
        email,
        language,
        terms or [],
        mode,
        created_at or now - timedelta(minutes=1),
    )


async def item(
    rt: Runtime,
    source_id: int,
    title: str | None = None,
    *,
    url: str | None = None,
    snippet: str = "A snippet.",
    published_at: datetime | None = None,
    backfill: bool = False,
) -> int:
    n = next(_seq)
    title = title or f"Item {n}"
    url = url or f"https://news.example.com/story/{n}"
    # as ingest stores one: the item and its link to the source it was seen in
    return await rt.pool.fetchval(
        """WITH i AS (
               INSERT INTO items (url, canonical_url, url_hash, title, snippet, published_at, source_id, title_key,
                                  is_backfill, embedding_status)
               VALUES ($1, $1, $2, $3, $4, $5, $6, $7, $8, 'done') RETURNING id)
           INSERT INTO item_sources (item_id, source_id, url) SELECT id, $6, $1 FROM i RETURNING item_id""",
        url,
        hashlib.sha256(f"{url}#{n}".encode()).hexdigest()[:32],
        title,
        snippet,
        published_at or datetime.now(UTC),
        source_id,
        f"key-{n}",
        backfill,
    )


async def match(
    rt: Runtime,
    goal_id: int,
    item_id: int,
    score: float,
    *,
    gate: str | None = None,
    backfill: bool = False,
    lexical: bool = False,
    reasons: list[str] | None = None,
    components: dict[str, Any] | None = None,
) -> None:
    """Insert or re-score a match (computed_at bumped), as the matcher does."""
    comps = components if components is not None else {"semantic": round(score, 3)}
    await rt.pool.execute(
        """INSERT INTO matches AS m (goal_id, item_id, score, components, reasons, gate, lexical_only, is_backfill)
           VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6, $7, $8)
           ON CONFLICT (goal_id, item_id) DO UPDATE SET score = EXCLUDED.score, components = EXCLUDED.components,
               reasons = EXCLUDED.reasons, gate = EXCLUDED.gate, lexical_only = EXCLUDED.lexical_only,
               is_backfill = m.is_backfill OR EXCLUDED.is_backfill, computed_at = clock_timestamp()""",
        goal_id,
        item_id,
        score,
        comps,
        reasons if reasons is not None else [f"semantic similarity {score:.2f}"],
        gate,
        lexical,
        backfill,
    )


async def decisions(rt: Runtime, goal_id: int | None = None) -> list[dict[str, Any]]:
    rows = await rt.pool.fetch(
        "SELECT * FROM decisions WHERE $1::bigint IS NULL OR goal_id = $1 ORDER BY item_id, goal_id", goal_id
    )
    return [dict(r) for r in rows]


async def tiers(rt: Runtime, goal_id: int | None = None) -> dict[int, str]:
    return {d["item_id"]: d["tier"] for d in await decisions(rt, goal_id)}


async def notifications(rt: Runtime, goal_id: int | None = None) -> list[dict[str, Any]]:
    rows = await rt.pool.fetch(
        "SELECT * FROM notifications WHERE $1::bigint IS NULL OR goal_id = $1 ORDER BY id", goal_id
    )
    return [dict(r) for r in rows]


async def emails(rt: Runtime, kind: str | None = None) -> list[dict[str, Any]]:
    rows = await rt.pool.fetch("SELECT * FROM emails WHERE $1::text IS NULL OR kind = $1 ORDER BY id", kind)
    return [dict(r) for r in rows]
