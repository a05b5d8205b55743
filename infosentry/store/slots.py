"""SQL for push slots (each batch window and digest fires once: unique per owner, local day and slot)
and the advisory locks that let one push step work on a goal or a user at a time."""

from __future__ import annotations

from datetime import date

import asyncpg

from infosentry.store import Conn

# advisory lock classes (two-int form): one push step per goal or per user at a time
GOAL_LOCK = 0x50_55  # "PU"


USER_LOCK = 0x50_56


async def lock_goal(conn: asyncpg.Connection, goal_id: int) -> None:
    """Transaction-scoped: one push step works on a goal at a time (a window, a digest, a preview sent now)."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, $2::int)", GOAL_LOCK, goal_id % 2**31)


async def try_lock_user(conn: asyncpg.Connection, user_id: int) -> bool:
    return await conn.fetchval("SELECT pg_try_advisory_xact_lock($1, $2::int)", USER_LOCK, user_id % 2**31)


async def claim_slot(conn: asyncpg.Connection, kind: str, owner_id: int, local_date: date, slot: str) -> bool:
    """Mark a batch window or digest as fired; False when it already was (it fires exactly once)."""
    return bool(
        await conn.fetchval(
            """INSERT INTO push_slots (kind, owner_id, local_date, slot) VALUES ($1, $2, $3, $4)
               ON CONFLICT DO NOTHING RETURNING true""",
            kind,
            owner_id,
            local_date,
            slot,
        )
    )


async def finish_slot(
    conn: asyncpg.Connection,
    kind: str,
    owner_id: int,
    local_date: date,
    slot: str,
    email_id: int | None,
    item_count: int,
    *,
    late: bool = False,
) -> None:
    await conn.execute(
        """UPDATE push_slots SET email_id = $5, item_count = $6, late = $7
           WHERE kind = $1 AND owner_id = $2 AND local_date = $3 AND slot = $4""",
        kind,
        owner_id,
        local_date,
        slot,
        email_id,
        item_count,
        late,
    )


async def fired_slots(conn: Conn, kinds: list[str], since: date) -> set[tuple[str, int, date, str]]:
    rows = await conn.fetch(
        "SELECT kind, owner_id, local_date, slot FROM push_slots WHERE kind = ANY($1::text[]) AND local_date >= $2",
        kinds,
        since,
    )
    return {(r["kind"], r["owner_id"], r["local_date"], r["slot"]) for r in rows}


async def slot_fired_on(conn: Conn, kind: str, owner_id: int, local_date: date) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT true FROM push_slots WHERE kind = $1 AND owner_id = $2 AND local_date = $3 LIMIT 1",
            kind,
            owner_id,
            local_date,
        )
    )


async def prune(conn: Conn, *, older_than_days: float) -> int:
    """Fired slots older than any catch-up (push.CATCH_UP is a day; the fired-slot lookups read 3 days)."""
    status = await conn.execute(
        "DELETE FROM push_slots WHERE local_date < (now() - make_interval(secs => $1::float8 * 86400))::date",
        max(older_than_days, 4.0),
    )
    return int(status.split()[-1])
