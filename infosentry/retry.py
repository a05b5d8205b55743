"""The one retry policy of every outbound call (embeddings, the LLM judge, SMTP, webhooks, fetching sources):
which failures are worth another attempt, how long to wait before it, and what a server's Retry-After says.

Leaf module: imports nothing of ours.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import aiohttp

# HTTP answers that say "not now" rather than "not this": timeouts, conflicts, too early, rate limits and the
# server errors that pass. 400/401/403/404/413/422 describe the request itself; repeating it cannot help.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


def retryable_status(status: int | None) -> bool:
    """Whether an HTTP call is worth repeating; None = no answer at all (timeout, refused, reset): yes."""
    return status is None or status in RETRYABLE_STATUS


def timed_out(exc: BaseException) -> bool:
    """Whether an HTTP client's timeout error was a timeout. The openai client's aiohttp transport reports a
    refused or dropped connection as a connect timeout (it maps every aiohttp ClientConnectionError so): the
    aiohttp error behind it tells which it was."""
    cause: BaseException | None = exc
    for _ in range(8):  # the chain is openai -> httpx2 -> aiohttp
        if cause is None:
            break
        if isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(cause, TimeoutError):
            return False
        cause = cause.__cause__ or cause.__context__
    return True


def retryable_smtp(code: int | None) -> bool:
    """SMTP replies: 5xx are final (bad recipient, rejected content); 4xx, garbled codes and no reply pass."""
    return code is None or not 500 <= code < 600


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: the n-th consecutive failure (1, 2, ...) waits base * 2**(n-1), capped, with ±jitter
    so that clients that failed together do not retry together. A server's Retry-After is obeyed instead, up to
    `max_retry_after` (a longer wait is the caller's call: give up, or wait that long)."""

    base: float
    cap: float
    jitter: float = 0.25
    max_retry_after: float | None = None

    def delay(self, failures: int, *, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        if retry_after is not None:
            return retry_after if self.max_retry_after is None else min(retry_after, self.max_retry_after)
        plain = min(self.cap, self.base * 2 ** min(max(failures - 1, 0), 40))
        return plain * (1 + (rng or random).uniform(-self.jitter, self.jitter))


# The policies, in one place (README, "Retries").
EMBEDDINGS = Backoff(base=0.5, cap=20.0, max_retry_after=60.0)
JUDGE = Backoff(base=0.5, cap=8.0, jitter=0.2)  # the caller gives up when asked to wait over JUDGE_MAX_WAIT
JUDGE_MAX_WAIT = 20.0
EMAIL = Backoff(base=30.0, cap=3600.0, jitter=0.1)  # outbox: 30 s, 1 min, 2 min ... 1 h
WEBHOOK = Backoff(base=60.0, cap=1800.0, jitter=0.1, max_retry_after=3600.0)  # alert webhook: 1, 2, 4 ... 30 min


def source_backoff(interval: float, streak: int, *, cap: float) -> float:
    """A failing source waits interval, 2×, 4× ... (capped), never stopping for good (jitter is the
    scheduler's)."""
    return Backoff(base=interval, cap=cap, jitter=0.0).delay(streak)


# Far-future Retry-After values are clamped so the datetime arithmetic can never overflow.
_MAX_RETRY_AFTER = timedelta(days=30)


def parse_retry_after(value: str | None, now: datetime | None = None) -> datetime | None:
    """Absolute UTC time from a Retry-After header (delta-seconds or HTTP-date); None if absent/invalid."""
    if not value:
        return None
    now = now or datetime.now(UTC)
    value = value.strip()
    if value.isdigit():
        return now + min(timedelta(seconds=int(value[:12])), _MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(when.astimezone(UTC), now), now + _MAX_RETRY_AFTER)


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Seconds the server asked us to wait: retry-after-ms, else Retry-After (seconds or an HTTP date)."""
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
