"""SQL for the instance's generated signing key (used when SECRET_KEY is not set)."""

from __future__ import annotations

from infosentry.store import Conn


async def link_key(conn: Conn) -> str:
    return await conn.fetchval("SELECT key FROM push_link_key WHERE id = 1")
