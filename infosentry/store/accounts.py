"""SQL for users, API/session tokens, login links and rate limits."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from infosentry.errors import Conflict, NotFound


async def create_user(
    conn: asyncpg.Pool | asyncpg.Connection, email: str, *, is_admin: bool = False, display_name: str = ""
) -> asyncpg.Record:
    row = await conn.fetchrow(
        """INSERT INTO users (email, is_admin, display_name) VALUES ($1, $2, $3)
           ON CONFLICT (email) DO NOTHING RETURNING *""",
        email.strip().lower(),
        is_admin,
        display_name,
    )
    if row is None:
        raise Conflict(f"user {email} already exists")
    return row


async def user_by_email(conn: asyncpg.Pool | asyncpg.Connection, email: str) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM users WHERE email = $1", email.strip().lower())
    if row is None:
        raise NotFound(f"no user with email {email}")
    return row


async def get_or_create_user(conn: asyncpg.Pool | asyncpg.Connection, email: str) -> asyncpg.Record:
    email = email.strip().lower()
    row = await conn.fetchrow(
        """INSERT INTO users (email) VALUES ($1)
           ON CONFLICT (email) DO UPDATE SET email = EXCLUDED.email RETURNING *""",
        email,
    )
    assert row is not None
    return row


async def insert_token(
    conn: asyncpg.Pool | asyncpg.Connection,
    *,
    user_id: int,
    token_hash: str,
    prefix: str,
    scopes: list[str],
    kind: str = "api",
    name: str = "",
    expires_at: datetime | None = None,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        """INSERT INTO api_tokens (user_id, token_hash, prefix, scopes, kind, name, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *""",
        user_id,
        token_hash,
        prefix,
        scopes,
        kind,
        name,
        expires_at,
    )
    assert row is not None
    return row


async def token_owner(conn: asyncpg.Pool | asyncpg.Connection, token_hash: str) -> asyncpg.Record | None:
    """The live token with its user, or None when unknown, revoked or expired.

    Runs on every authenticated request, so it is a read: last_used_at is written at most once a minute per
    token (a write per request serialised concurrent requests of one token on its row lock and a WAL flush).
    """
    return await conn.fetchrow(
        """WITH live AS (
               SELECT t.id AS token_id, t.scopes, t.kind, t.last_used_at, u.id AS user_id, u.email, u.is_admin,
                      u.timezone, u.language
               FROM api_tokens t JOIN users u ON u.id = t.user_id
               WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())),
           touched AS (
               UPDATE api_tokens SET last_used_at = now() FROM live
               WHERE api_tokens.id = live.token_id
                 AND (live.last_used_at IS NULL OR live.last_used_at < now() - interval '60 seconds')
               RETURNING api_tokens.id)
           SELECT token_id, scopes, kind, user_id, email, is_admin, timezone, language FROM live""",
        token_hash,
    )


async def revoke_token(conn: asyncpg.Pool | asyncpg.Connection, token_id: int, user_id: int | None = None) -> bool:
    status = await conn.execute(
        """UPDATE api_tokens SET revoked_at = now()
           WHERE id = $1 AND revoked_at IS NULL AND ($2::bigint IS NULL OR user_id = $2)""",
        token_id,
        user_id,
    )
    return status.endswith(" 1")


async def list_tokens(conn: asyncpg.Pool | asyncpg.Connection, user_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT id, name, kind, prefix, scopes, created_at, expires_at, revoked_at, last_used_at
           FROM api_tokens WHERE user_id = $1 ORDER BY id""",
        user_id,
    )


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
