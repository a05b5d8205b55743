"""When a source is fetched next (pure): the interval learned from how often a feed publishes, server hints
(Retry-After, Cache-Control max-age, feed TTL), exponential backoff after failures with jitter, and each
source's phase within its interval (so sources spread evenly instead of fetching in waves).

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
JITTER = 0.10  # ±10 % on every delay after a failure, so failing sources drift apart
PHASE_STEP = 0.10  # a successful fetch moves its source at most 10 % of the interval toward its phase


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


def phase_of(source_id: int) -> float:
    """Where in its interval a source is fetched, in [0, 1): fixed per source and spread evenly over the ids
    (Knuth's multiplicative hash), so sources on the same interval are fetched evenly across it."""
    return ((source_id * 2654435761) % 2**32) / 2**32


def next_after_success(interval: int, now: datetime, hint: datetime | None, phase: float) -> datetime:
    """One interval on, moved at most PHASE_STEP of it toward the source's phase (its slot in each interval).

    Sources added together (an OPML import, a restart after an outage) would otherwise be due together every
    interval forever, and a wave of thousands of items at once is what makes instant alerts wait behind each
    other; random jitter spreads such a herd only slowly. On its phase, a source is fetched exactly every
    `interval`; the gap is never more than 10 % off it."""
    after = now.timestamp() + interval
    error = (phase * interval - after + interval / 2) % interval - interval / 2  # in [-interval/2, interval/2)
    step = max(-PHASE_STEP * interval, min(PHASE_STEP * interval, error))
    planned = now + timedelta(seconds=interval + step)
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
