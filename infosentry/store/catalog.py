"""SQL over the catalog of our schema (public): its tables, their row counts, the other sessions, and the
script that empties the schema before a restore. For backup and restore (infosentry.ops.backup)."""

from __future__ import annotations

import asyncpg

# our tables: every table of schema public that does not belong to an extension
_TABLES_SQL = """
SELECT c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY c.relname
"""


async def list_tables(conn: asyncpg.Connection) -> list[str]:
    return [r["relname"] for r in await conn.fetch(_TABLES_SQL)]


async def table_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """Exact row count of every table, in one statement (so in one snapshot even outside a transaction)."""
    tables = await list_tables(conn)
    if not tables:
        return {}
    query = " UNION ALL ".join(f"SELECT {_literal(t)} AS t, count(*) AS n FROM public.{_ident(t)}" for t in tables)
    return {r["t"]: r["n"] for r in await conn.fetch(query)}


async def nonempty_tables(conn: asyncpg.Connection) -> list[str]:
    """Tables holding rows; schema_migrations does not count (a freshly migrated database is empty)."""
    tables = [t for t in await list_tables(conn) if t != "schema_migrations"]
    if not tables:
        return []
    query = " UNION ALL ".join(
        f"SELECT {_literal(t)} AS t WHERE EXISTS (SELECT 1 FROM public.{_ident(t)})" for t in tables
    )
    return [r["t"] for r in await conn.fetch(query)]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# Drops every object of schema public that no extension owns (tables with their sequences, indexes, triggers;
# views; functions; types), so that a role without the right to create extensions (pgvector is not a trusted
# extension) can restore: the extension stays, the archive's CREATE EXTENSION IF NOT EXISTS is then a no-op.
WIPE_SQL = r"""
DO $wipe$
DECLARE
    stmt text;
    stmts text[];
BEGIN
    -- each phase lists its objects before dropping any (a CASCADE may take others along: hence IF EXISTS)
    SELECT array_agg(format('DROP %s IF EXISTS %I.%I CASCADE',
                            CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                           WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
                            n.nspname, c.relname)
                     ORDER BY CASE c.relkind WHEN 'v' THEN 0 WHEN 'm' THEN 1 WHEN 'S' THEN 3 ELSE 2 END)
    INTO stmts
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')
      AND NOT EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e');
    FOREACH stmt IN ARRAY coalesce(stmts, '{}') LOOP EXECUTE stmt; END LOOP;

    SELECT array_agg(format('DROP ROUTINE IF EXISTS %s CASCADE', p.oid::regprocedure)) INTO stmts
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = 'public'
      AND NOT EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e');
    FOREACH stmt IN ARRAY coalesce(stmts, '{}') LOOP EXECUTE stmt; END LOOP;

    SELECT array_agg(format('DROP TYPE IF EXISTS %I.%I CASCADE', n.nspname, t.typname)) INTO stmts
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    LEFT JOIN pg_class c ON c.oid = t.typrelid
    WHERE n.nspname = 'public' AND t.typtype IN ('c', 'd', 'e', 'r', 'm')
      AND (t.typtype <> 'c' OR c.relkind = 'c')
      AND NOT EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e');
    FOREACH stmt IN ARRAY coalesce(stmts, '{}') LOOP EXECUTE stmt; END LOOP;
END
$wipe$;
"""


async def other_connections(conn: asyncpg.Connection) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    )
