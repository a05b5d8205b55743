"""SQL for budget days (atomic counters + the sticky breaker) and the external call log."""

from __future__ import annotations

from datetime import date

import asyncpg

from infosentry.store import Conn, delete_in_batches


async def get_day(conn: Conn, day: date) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM budget_days WHERE day = $1", day)


async def add(
    conn: Conn,
    day: date,
    tz: str,
    *,
    embed_requests: int = 0,
    embed_tokens: int = 0,
    embed_usd: float = 0.0,
    llm_calls: int = 0,
    llm_prompt_tokens: int = 0,
    llm_completion_tokens: int = 0,
    llm_usd: float = 0.0,
) -> asyncpg.Record:
    """Add to the day's counters in one atomic upsert; returns the new row."""
    row = await conn.fetchrow(
        """INSERT INTO budget_days AS b (day, tz, embed_requests, embed_tokens, embed_usd, llm_calls,
                                         llm_prompt_tokens, llm_completion_tokens, llm_usd, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
           ON CONFLICT (day) DO UPDATE SET
               tz = EXCLUDED.tz,
               embed_requests = b.embed_requests + EXCLUDED.embed_requests,
               embed_tokens = b.embed_tokens + EXCLUDED.embed_tokens,
               embed_usd = b.embed_usd + EXCLUDED.embed_usd,
               llm_calls = b.llm_calls + EXCLUDED.llm_calls,
               llm_prompt_tokens = b.llm_prompt_tokens + EXCLUDED.llm_prompt_tokens,
               llm_completion_tokens = b.llm_completion_tokens + EXCLUDED.llm_completion_tokens,
               llm_usd = b.llm_usd + EXCLUDED.llm_usd,
               updated_at = now()
           RETURNING *""",
        day,
        tz,
        embed_requests,
        embed_tokens,
        embed_usd,
        llm_calls,
        llm_prompt_tokens,
        llm_completion_tokens,
        llm_usd,
    )
    assert row is not None
    return row


async def open_if_over(conn: Conn, day: date, *, usd_cap: float, judge_cap: int) -> asyncpg.Record | None:
    """Open the day's breaker when the spend (since the last reset) reached a cap; the row if it opened now."""
    return await conn.fetchrow(
        """UPDATE budget_days SET
               breaker_open = true,
               opened_at = now(),
               updated_at = now(),
               breaker_reason = CASE
                   WHEN embed_usd + llm_usd - usd_at_reset >= round($2::numeric, 6)
                   THEN format('daily budget of $%s reached ($%s spent today)', trim_scale(round($2::numeric, 6)),
                               trim_scale(round(embed_usd + llm_usd, 6)))
                   ELSE format('%s LLM judge calls reached the daily cap of %s', llm_calls, $3::int)
               END
           WHERE day = $1 AND NOT breaker_open
             AND (embed_usd + llm_usd - usd_at_reset >= round($2::numeric, 6)
                  OR llm_calls - llm_calls_at_reset >= $3)
           RETURNING *""",
        day,
        usd_cap,
        judge_cap,
    )


async def force_open(conn: Conn, day: date, tz: str, reason: str) -> asyncpg.Record:
    row = await conn.fetchrow(
        """INSERT INTO budget_days AS b (day, tz, breaker_open, breaker_reason, opened_at)
           VALUES ($1, $2, true, $3, now())
           ON CONFLICT (day) DO UPDATE SET breaker_open = true, breaker_reason = EXCLUDED.breaker_reason,
               opened_at = COALESCE(CASE WHEN b.breaker_open THEN b.opened_at END, now()), updated_at = now()
           RETURNING *""",
        day,
        tz,
        reason,
    )
    assert row is not None
    return row


async def reset(conn: Conn, day: date, tz: str) -> asyncpg.Record:
    """Close the day's breaker; the caps then apply to spend after this moment."""
    row = await conn.fetchrow(
        """INSERT INTO budget_days AS b (day, tz, reset_at) VALUES ($1, $2, now())
           ON CONFLICT (day) DO UPDATE SET breaker_open = false, breaker_reason = NULL, opened_at = NULL,
               reset_at = now(), usd_at_reset = b.embed_usd + b.llm_usd, llm_calls_at_reset = b.llm_calls,
               updated_at = now()
           RETURNING *""",
        day,
        tz,
    )
    assert row is not None
    return row


async def record_call(
    conn: Conn, kind: str, *, ok: bool, http_status: int | None, error: str | None, latency_ms: int
) -> None:
    await conn.execute(
        "INSERT INTO external_calls (kind, ok, http_status, error, latency_ms) VALUES ($1, $2, $3, $4, $5)",
        kind,
        ok,
        http_status,
        error[:1000] if error else None,
        max(0, int(latency_ms)),
    )


async def prune_calls(conn: Conn, *, older_than_days: float) -> int:
    return await delete_in_batches(
        conn, "external_calls", "created_at < now() - make_interval(secs => $1::float8 * 86400)", older_than_days
    )
