"""SQL for magic login links: issue (a newer link voids the older ones), consume once, explain a refusal."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from infosentry.store import Conn


async def issue_link(
    conn: asyncpg.Connection, *, email: str, token_hash: str, expires_at: datetime, ip: str | None
) -> int:
    """Void every unused link of `email`, then store the new one (hash only). Run inside a transaction."""
    await conn.execute(
        "UPDATE login_links SET voided_at = now() WHERE email = $1 AND used_at IS NULL AND voided_at IS NULL",
        email,
    )
    link_id = await conn.fetchval(
        "INSERT INTO login_links (email, token_hash, expires_at, requested_ip) VALUES ($1, $2, $3, $4) RETURNING id",
        email,
        token_hash,
        expires_at,
        ip,
    )
    assert link_id is not None
    return int(link_id)


async def consume_link(conn: Conn, token_hash: str) -> asyncpg.Record | None:
    """Mark the link used if it is live (atomic: two concurrent consumers, one winner); None otherwise."""
    return await conn.fetchrow(
        """UPDATE login_links SET used_at = now()
           WHERE token_hash = $1 AND used_at IS NULL AND voided_at IS NULL AND expires_at > now()
           RETURNING id, email""",
        token_hash,
    )


async def link_state(conn: Conn, token_hash: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT used_at, voided_at, expires_at, expires_at <= now() AS expired FROM login_links WHERE token_hash = $1",
        token_hash,
    )


async def prune(conn: Conn) -> None:
    """Forget links and rate-limit windows older than a day."""
    await conn.execute("DELETE FROM login_links WHERE created_at < now() - interval '1 day'")
    await conn.execute("DELETE FROM rate_limits WHERE window_start < now() - interval '1 day'")
