"""SQL for the config table (hot switches and tunables) and its audit trail.

Validation of the values is the domain's (infosentry.domain.admin); this module only reads and writes rows.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from infosentry.store import Conn


async def values(conn: Conn) -> dict[str, Any]:
    """key -> value of every row (the overrides of the environment's defaults)."""
    return {r["key"]: r["value"] for r in await conn.fetch("SELECT key, value FROM config ORDER BY key")}


async def entries(conn: Conn) -> dict[str, dict[str, Any]]:
    """key -> {value, updated_at, updated_by} of every row."""
    rows = await conn.fetch("SELECT key, value, updated_at, updated_by FROM config")
    return {r["key"]: dict(r) for r in rows}


async def lock(conn: asyncpg.Connection) -> None:
    """Serialise writers (inside a transaction): two concurrent changes cannot together break the threshold
    order that each of them checked alone."""
    await conn.execute("LOCK TABLE config IN SHARE ROW EXCLUSIVE MODE")


async def write(conn: asyncpg.Connection, changes: dict[str, Any], *, old: dict[str, Any], who: str) -> None:
    """Upsert each key with one audit row (old -> new). Run inside the transaction that holds lock()."""
    for name, value in changes.items():
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
            old.get(name),
            value,
            who,
        )


async def delete(conn: asyncpg.Connection, names: list[str], *, who: str) -> list[str]:
    """Remove rows so the environment's defaults apply again; audited. Returns the keys that had a row."""
    removed = []
    for name in names:
        old = await conn.fetchval("DELETE FROM config WHERE key = $1 RETURNING value", name)
        if old is not None:
            removed.append(name)
            await conn.execute(
                "INSERT INTO config_audit (key, old_value, new_value, changed_by) VALUES ($1, $2, NULL, $3)",
                name,
                old,
                who,
            )
    return removed


async def audit(conn: Conn, *, limit: int = 50, before_id: int | None = None) -> list[dict[str, Any]]:
    """Changes, newest first (keyset pagination on id)."""
    rows = await conn.fetch(
        """SELECT id, key, old_value, new_value, changed_by, changed_at FROM config_audit
           WHERE ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $1""",
        limit,
        before_id,
    )
    return [dict(r) for r in rows]
