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
# A successful fetch puts its source's next one on the source's slot: back to it when it is at most CATCH_UP of
# the interval earlier (a fetch that ran late), else forward to it (a longer gap is polite), so a herd is spread
# by its next fetch; right after the interval changed, at most PHASE_STEP either way.
CATCH_UP = 0.25
PHASE_STEP = 0.10
# Learned intervals are rounded down to one of these, so a feed's interval (and with it its slot, a position
# within the interval) stays put while its publishing rate wobbles; they are also intervals people read easily.
LADDER = (300, 600, 900, 1200, 1800, 2700, 3600, 5400, 7200, 10800, 14400, 21600, 28800, 43200, 86400)


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
    return int(min(max(on_ladder(gap / 2), low), high))


def on_ladder(seconds: float) -> float:
    """The longest LADDER interval not above `seconds` (below the ladder: `seconds` itself)."""
    return max((rung for rung in LADDER if rung <= seconds), default=seconds)


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


def next_after_success(
    interval: int, now: datetime, hint: datetime | None, phase: float, *, settled: bool = True
) -> datetime:
    """One interval on, moved to the source's phase (its slot in each interval): back to the slot when it is at
    most CATCH_UP of the interval earlier (so a fetch that ran late is not pushed later still), else forward to
    it (at most 75 % of the interval later).

    Sources added together (an OPML import, a restart after an outage) would otherwise be due together every
    interval forever, and a wave of thousands of items at once is what makes instant alerts wait behind each
    other; random jitter spreads such a herd only slowly. On its slot, a source is fetched exactly every
    `interval`. A slot is a position within the interval, so when the interval has just changed (`settled`
    false) the slot has moved arbitrarily: then the move is at most PHASE_STEP either way, like jitter, rather
    than a long delay after every change."""
    after = now.timestamp() + interval
    late = (phase * interval - after) % interval  # how much later than `after` the slot is, in [0, interval)
    early = interval - late  # ... or how much earlier
    if not settled:
        step = -min(early, PHASE_STEP * interval) if early < late else min(late, PHASE_STEP * interval)
    elif early <= CATCH_UP * interval:
        step = -early  # e.g. this fetch ran late (a busy worker): the next is due on the slot, not later still
    else:
        step = late
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
