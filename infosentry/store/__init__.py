"""Every SQL statement of the service (besides the migrations), one module per table or aggregate.

Functions take a pool or a connection (`Conn`) and return records or plain values; rules live above, in the
steps and in infosentry.domain.
"""

from __future__ import annotations

import asyncpg

Conn = asyncpg.Pool | asyncpg.Connection

# What the foreign keys of matches, decisions and agent_runs did per inserted row, once per batch (migration
# 0013): CTEs `live_goals` and `live_items` that lock the batch's distinct goals ($1) and items ($2) FOR KEY SHARE,
# in id order, so neither can be deleted before the writer's transaction ends (their deletion then removes the
# rows through statement triggers). The writer inserts only rows whose goal and item are in them.
LIVE_GOALS_AND_ITEMS = """live_goals AS (SELECT id FROM goals WHERE id IN (SELECT DISTINCT unnest($1::bigint[]))
                                 ORDER BY id FOR KEY SHARE),
               live_items AS (SELECT id FROM items WHERE id IN (SELECT DISTINCT unnest($2::bigint[]))
                                 ORDER BY id FOR KEY SHARE)"""


async def delete_in_batches(
    conn: Conn, table: str, where: str, *args: object, batch: int = 20_000, key: str = "id"
) -> int:
    """DELETE FROM `table` WHERE `where`, `batch` rows per statement, so a large backlog never holds locks long.
    `table`, `where` and `key` (a unique column) are this package's own SQL text (never user input); the values
    go in `args` ($1...)."""
    n = len(args) + 1
    query = f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {where} LIMIT ${n})"
    total = 0
    while True:
        deleted = int((await conn.execute(query, *args, batch)).split()[-1])
        total += deleted
        if deleted < batch:
            return total
