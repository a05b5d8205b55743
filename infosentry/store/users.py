"""SQL for users: accounts, their settings, the login upsert and the admin listing."""

from __future__ import annotations

from typing import Any

import asyncpg

from infosentry.errors import Conflict, NotFound
from infosentry.store import Conn


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


async def user_for_login(conn: asyncpg.Connection, email: str) -> asyncpg.Record:
    """The user of `email`, created on first successful login; last_login_at is set."""
    row = await conn.fetchrow(
        """INSERT INTO users (email, last_login_at) VALUES ($1, now())
           ON CONFLICT (email) DO UPDATE SET last_login_at = now()
           RETURNING id, email, is_admin, language, timezone""",
        email,
    )
    assert row is not None
    return row


async def user_language(conn: Conn, email: str) -> tuple[str, str]:
    """(language, time zone) of the user with `email`, or the defaults for a new address."""
    row = await conn.fetchrow("SELECT language, timezone FROM users WHERE email = $1", email)
    return (row["language"], row["timezone"]) if row else ("en", "")


async def first_admin_id(conn: Conn) -> int | None:
    return await conn.fetchval("SELECT id FROM users WHERE is_admin ORDER BY id LIMIT 1")


async def users(conn: Conn) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT u.id, u.email, u.display_name, u.is_admin, u.timezone, u.language, u.created_at, u.last_login_at,
                  (SELECT count(*) FROM goals g WHERE g.user_id = u.id)::int AS goals,
                  (SELECT count(*) FROM api_tokens t WHERE t.user_id = u.id AND t.revoked_at IS NULL
                      AND (t.expires_at IS NULL OR t.expires_at > now()))::int AS live_tokens
           FROM users u ORDER BY u.id"""
    )
    return [dict(r) for r in rows]


_PROFILE = "id, email, display_name, timezone, language, is_admin, combined_digest, created_at, last_login_at"


async def user_by_id(conn: Conn, user_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM users WHERE id = $1", user_id)


async def profile(conn: Conn, user_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_PROFILE} FROM users WHERE id = $1", user_id)


async def update_profile(
    conn: Conn,
    user_id: int,
    *,
    display_name: str | None,
    timezone: str | None,
    language: str | None,
    combined_digest: bool | None,
) -> asyncpg.Record:
    """Change the fields given (None keeps a field)."""
    row = await conn.fetchrow(
        f"""UPDATE users SET display_name = COALESCE($2, display_name), timezone = COALESCE($3, timezone),
                            language = COALESCE($4, language), combined_digest = COALESCE($5, combined_digest)
            WHERE id = $1 RETURNING {_PROFILE}""",
        user_id,
        display_name,
        timezone,
        language,
        combined_digest,
    )
    assert row is not None
    return row
