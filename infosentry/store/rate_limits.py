"""SQL for fixed-window rate limits (login links per address and per IP, live replays per user)."""

from __future__ import annotations

import asyncpg


async def hit_rate_limit(conn: asyncpg.Pool | asyncpg.Connection, key: str, *, window_seconds: int, limit: int) -> bool:
    """Count one hit in the current fixed window; True when the limit is exceeded."""
    hits = await conn.fetchval(
        """INSERT INTO rate_limits (key, window_start, hits)
           VALUES ($1, to_timestamp(floor(extract(epoch FROM now()) / $2) * $2), 1)
           ON CONFLICT (key, window_start) DO UPDATE SET hits = rate_limits.hits + 1
           RETURNING hits""",
        key,
        window_seconds,
    )
    return int(hits) > limit
