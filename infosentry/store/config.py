"""SQL for the config table and its audit trail."""

from __future__ import annotations

from typing import Any

import asyncpg

from infosentry import hotconfig


async def rows(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, Any]:
    return {r["key"]: r["value"] for r in await conn.fetch("SELECT key, value FROM config ORDER BY key")}


async def set_values(pool: asyncpg.Pool, changes: dict[str, Any], *, who: str) -> dict[str, Any]:
    """Validate every change (whole request rejected on any error) and store it with an audit row.

    Returns the parsed values that were written.
    """
    parsed = {name: hotconfig.parse_value(name, raw) for name, raw in changes.items()}
    async with pool.acquire() as conn, conn.transaction():
        # lock the table so two concurrent changes cannot together break the threshold order
        await conn.execute("LOCK TABLE config IN SHARE ROW EXCLUSIVE MODE")
        current = await rows(conn)
        merged = hotconfig.defaults()
        for name, raw in current.items():
            if name in hotconfig.KEYS:
                merged[name] = hotconfig.parse_value(name, raw)
        merged.update(parsed)
        hotconfig.check_consistency(merged)
        for name, value in parsed.items():
            old = current.get(name)
            await conn.execute(
                """INSERT INTO config (key, value, updated_at, updated_by) VALUES ($1, $2, now(), $3)
                   ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now(),
                                                   updated_by = EXCLUDED.updated_by""",
                name,
                value,
                who,
            )
            await conn.execute(
                "INSERT INTO config_audit (key, old_value, new_value, changed_by) VALUES ($1, $2, $3, $4)",
                name,
                old,
                value,
                who,
            )
    return parsed


async def unset(pool: asyncpg.Pool, names: list[str], *, who: str) -> None:
    """Remove overrides so the env defaults apply again (used by chaos recover)."""
    async with pool.acquire() as conn, conn.transaction():
        for name in names:
            old = await conn.fetchval("DELETE FROM config WHERE key = $1 RETURNING value", name)
            if old is not None:
                await conn.execute(
                    "INSERT INTO config_audit (key, old_value, new_value, changed_by) VALUES ($1, $2, NULL, $3)",
                    name,
                    old,
                    who,
                )


async def audit(pool: asyncpg.Pool, limit: int = 50) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM config_audit ORDER BY id DESC LIMIT $1", limit)
