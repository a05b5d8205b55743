"""When a source is fetched next (pure): the interval learned from how often a feed publishes, server hints
(Retry-After, Cache-Control max-age, feed TTL), exponential backoff after failures, jitter.

Imports retry (the one backoff policy) and sources (default intervals).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from infosentry import retry
from infosentry.sources import DEFAULT_INTERVALS

MIN_INTERVAL = 300  # adaptive scheduling never polls faster than 5 min (unless the user's base is lower)
MAX_INTERVAL = 86400  # ... nor slower than 24 h; backoff and server hints are capped at 24 h too
JITTER = 0.10  # ±10 % on every delay, so sources drift apart instead of fetching in bursts


def base_interval(row: Mapping[str, Any]) -> int:
    return int(row["fetch_interval_sec"] or DEFAULT_INTERVALS.get(row["type"], 1800))


def interval_bounds(base: int) -> tuple[int, int]:
    """The adaptive range around the user's interval: ×¼ to ×4, clipped to 5 min – 24 h; a base the user set
    below 5 min is itself the floor (adaptation never polls faster than asked, nor slower than 24 h)."""
    return min(base, max(MIN_INTERVAL, base // 4)), max(base, min(MAX_INTERVAL, base * 4))


def learn_interval(base: int, published: Sequence[datetime | None], now: datetime) -> int | None:
    """Polling interval from how often the feed publishes (about two polls per new item); None = no signal.

    Rate = items of the last 7 days over the time they span (a feed capped at 20 items that all appeared
    today is busy, not quiet). A feed with dated items but none this week slows to the upper bound.
    """
    dated = sorted(d for d in published if d is not None and d <= now)
    if not dated:
        return None
    low, high = interval_bounds(base)
    week = timedelta(days=7)
    recent = [d for d in dated if now - d <= week]
    if not recent:
        return high
    span = week if len(recent) < 3 else max(now - recent[0], timedelta(minutes=1))
    gap = span.total_seconds() / len(recent)
    return int(min(max(gap / 2, low), high))


def jittered(seconds: float, rng: random.Random | None = None) -> float:
    return seconds * (1 + (rng or random).uniform(-JITTER, JITTER))


def hint_at(
    now: datetime, *, retry_after: datetime | None = None, max_age: int | None = None, ttl: int | None = None
) -> datetime | None:
    """The earliest next fetch the server asked for (Retry-After, Cache-Control max-age, feed TTL), capped at
    24 h so a wrong header cannot silence a source."""
    hints = [h for h in (retry_after,) if h is not None]
    hints += [now + timedelta(seconds=s) for s in (max_age, ttl) if s]
    if not hints:
        return None
    return min(max(hints), now + timedelta(seconds=MAX_INTERVAL))


def next_after_success(
    interval: int, now: datetime, hint: datetime | None, rng: random.Random | None = None
) -> datetime:
    planned = now + timedelta(seconds=jittered(interval, rng))
    return max(planned, hint) if hint else planned


def backoff_delay(base: int, streak: int) -> float:
    """Failure number `streak` (1, 2, ...) waits base, 2×base, 4×base ... capped at 24 h."""
    return retry.source_backoff(base, streak, cap=MAX_INTERVAL)


def next_after_failure(
    base: int, streak: int, now: datetime, retry_after: datetime | None, rng: random.Random | None = None
) -> datetime:
    delay = min(jittered(backoff_delay(base, streak), rng), MAX_INTERVAL)
    planned = now + timedelta(seconds=delay)
    hint = hint_at(now, retry_after=retry_after)
    return max(planned, hint) if hint else planned
