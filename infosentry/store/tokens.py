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
    session_id: int | None = None,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        """INSERT INTO api_tokens (user_id, token_hash, prefix, scopes, kind, name, expires_at, session_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *""",
        user_id,
        token_hash,
        prefix,
        scopes,
        kind,
        name,
        expires_at,
        session_id,
    )
    assert row is not None
    return row


async def token_owner(conn: asyncpg.Pool | asyncpg.Connection, token_hash: str) -> asyncpg.Record | None:
    """The live token with its user, or None when unknown, revoked or expired (a token minted under a web session
    dies with that session, however it was revoked or expired).

    Runs on every authenticated request, so it is a read: last_used_at is written at most once a minute per
    token (a write per request serialised concurrent requests of one token on its row lock and a WAL flush).
    """
    return await conn.fetchrow(
        """WITH live AS (
               SELECT t.id AS token_id, t.scopes, t.kind, t.last_used_at, t.expires_at, t.session_id,
                      u.id AS user_id, u.email, u.is_admin, u.timezone, u.language, u.display_name
               FROM api_tokens t JOIN users u ON u.id = t.user_id
               LEFT JOIN api_tokens s ON s.id = t.session_id
               WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())
                 AND (t.session_id IS NULL
                      OR (s.revoked_at IS NULL AND (s.expires_at IS NULL OR s.expires_at > now())))),
           touched AS (
               UPDATE api_tokens SET last_used_at = now() FROM live
               WHERE api_tokens.id = live.token_id
                 AND (live.last_used_at IS NULL OR live.last_used_at < now() - interval '60 seconds')
               RETURNING api_tokens.id)
           SELECT token_id, scopes, kind, expires_at, session_id, user_id, email, is_admin, timezone, language,
                  display_name
           FROM live""",
        token_hash,
    )


async def revoke_token(conn: asyncpg.Pool | asyncpg.Connection, token_id: int, user_id: int | None = None) -> bool:
    """Revoke a live token, and with a session every token minted under it. False: no such live token."""
    revoked = await conn.fetch(
        """WITH target AS (SELECT id FROM api_tokens
                           WHERE id = $1 AND revoked_at IS NULL AND ($2::bigint IS NULL OR user_id = $2))
           UPDATE api_tokens SET revoked_at = now()
           WHERE revoked_at IS NULL AND (id IN (SELECT id FROM target) OR session_id IN (SELECT id FROM target))
           RETURNING id""",
        token_id,
        user_id,
    )
    return any(r["id"] == token_id for r in revoked)


async def list_tokens(conn: asyncpg.Pool | asyncpg.Connection, user_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT id, name, kind, prefix, scopes, created_at, expires_at, revoked_at, last_used_at, session_id
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


async def token_by_id(conn: asyncpg.Pool | asyncpg.Connection, token_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, user_id, kind, expires_at, revoked_at, session_id FROM api_tokens WHERE id = $1", token_id
    )
