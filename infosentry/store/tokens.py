"""SQL for API and session tokens (stored hashed): mint, look up on every request, revoke, list."""

from __future__ import annotations

from datetime import datetime

import asyncpg


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


async def count_live(conn: asyncpg.Pool | asyncpg.Connection, user_id: int, *, kind: str = "api") -> int:
    """Tokens of a kind that still work (not revoked, not expired)."""
    return int(
        await conn.fetchval(
            """SELECT count(*) FROM api_tokens WHERE user_id = $1 AND kind = $2 AND revoked_at IS NULL
                 AND (expires_at IS NULL OR expires_at > now())""",
            user_id,
            kind,
        )
    )
