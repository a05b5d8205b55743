"""SQL for goal_calibration: per goal and signal, the recent raw values and the background prior that
infosentry/calibrate.py turns into scores. Appends are one atomic statement per batch, so concurrent matching
batches never lose each other's values. The window is stored as big-endian float4 bytes (`window_bytes` in,
`window_of` out): every matching batch rewrites a thousand of them on a busy instance, and bytes are appended
by a copy and read without a Python float per value (migration 0011)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import numpy as np
from pgvector import Vector

from infosentry.store import Conn

_FLOAT4 = np.dtype(">f4")  # float4send's byte order


def window_bytes(values: Sequence[float] | np.ndarray) -> bytes:
    """A window (or a batch of values to append) as stored."""
    return np.asarray(values, dtype=_FLOAT4).tobytes()


def window_of(stored: bytes) -> np.ndarray:
    """The values of a stored window, oldest first."""
    return np.frombuffer(stored, dtype=_FLOAT4).astype(np.float64)


async def reset(
    conn: Conn,
    signal: str,
    goal_ids: Sequence[int],
    versions: Sequence[int],
    priors: Sequence[tuple[float, float] | None],
    neighbours: Sequence[float | None],
) -> None:
    """A goal's new vector (or text) starts a new calibration: empty window, the given prior."""
    if not goal_ids:
        return
    await conn.execute(
        """INSERT INTO goal_calibration AS c (goal_id, signal, goal_version, prior_loc, prior_spread, neighbour,
                                              recent, seen, updated_at)
           SELECT v.g, $1, v.version, v.loc, v.spread, v.nb, ''::bytea, 0, now()
           FROM unnest($2::bigint[], $3::int[], $4::real[], $5::real[], $6::real[]) AS v(g, version, loc, spread, nb)
           WHERE EXISTS (SELECT 1 FROM goals WHERE id = v.g)
           ON CONFLICT (goal_id, signal) DO UPDATE SET
               goal_version = EXCLUDED.goal_version, prior_loc = EXCLUDED.prior_loc,
               prior_spread = EXCLUDED.prior_spread, neighbour = EXCLUDED.neighbour, recent = ''::bytea, seen = 0,
               prf = NULL, prf_at = NULL, updated_at = now()""",
        signal,
        list(goal_ids),
        list(versions),
        [p[0] if p else None for p in priors],
        [p[1] if p else None for p in priors],
        list(neighbours),
    )


async def observe(
    conn: Conn,
    signal: str,
    goal_ids: Sequence[int],
    versions: Sequence[int],
    values: Sequence[Sequence[float]],
    priors: Sequence[tuple[float, float] | None],
    *,
    window: int,
) -> list[asyncpg.Record]:
    """Append each goal's batch of values to its window (the newest `window` kept) and return the updated rows
    (goal_id, prior_loc, prior_spread, neighbour, recent, seen). A row of an older goal version starts over, one
    of a newer version is left alone (and not returned); `priors` are used only when a row is created or
    restarted (the embedding step sets the model priors)."""
    if not goal_ids:
        return []
    order = sorted(range(len(goal_ids)), key=lambda k: goal_ids[k])  # one lock order for concurrent batches
    return await conn.fetch(
        """WITH v AS (
               SELECT u.g, u.version, u.vals, u.loc, u.spread, u.k
               FROM unnest($2::bigint[], $3::int[], $4::bytea[], $5::real[], $6::real[])
                    WITH ORDINALITY AS u(g, version, vals, loc, spread, k))
           INSERT INTO goal_calibration AS c (goal_id, signal, goal_version, prior_loc, prior_spread, recent, seen,
                                              updated_at)
           SELECT v.g, $1, v.version, v.loc, v.spread, substring(v.vals FROM greatest(1, length(v.vals) - 4 * $7 + 1)),
                  length(v.vals) / 4, now()
           FROM v WHERE EXISTS (SELECT 1 FROM goals WHERE id = v.g)
           ORDER BY v.k
           ON CONFLICT (goal_id, signal) DO UPDATE SET
               recent = CASE WHEN c.goal_version = EXCLUDED.goal_version
                             THEN substring(c.recent || EXCLUDED.recent
                                            FROM greatest(1, length(c.recent) + length(EXCLUDED.recent) - 4 * $7 + 1))
                             ELSE EXCLUDED.recent END,
               seen = CASE WHEN c.goal_version = EXCLUDED.goal_version THEN c.seen + EXCLUDED.seen
                           ELSE EXCLUDED.seen END,
               prior_loc = CASE WHEN c.goal_version = EXCLUDED.goal_version THEN c.prior_loc
                                ELSE EXCLUDED.prior_loc END,
               prior_spread = CASE WHEN c.goal_version = EXCLUDED.goal_version THEN c.prior_spread
                                   ELSE EXCLUDED.prior_spread END,
               neighbour = CASE WHEN c.goal_version = EXCLUDED.goal_version THEN c.neighbour END,
               goal_version = EXCLUDED.goal_version, updated_at = now()
           -- values of an older goal version (a batch or a worker's waiting values that an edit overtook) never
           -- replace the newer calibration
           WHERE c.goal_version <= EXCLUDED.goal_version
           RETURNING goal_id, prior_loc, prior_spread, neighbour, recent, seen""",
        signal,
        [goal_ids[k] for k in order],
        [versions[k] for k in order],
        [window_bytes(values[k]) for k in order],
        [priors[k][0] if priors[k] else None for k in order],
        [priors[k][1] if priors[k] else None for k in order],
        window,
    )


async def current(conn: Conn, goal_id: int) -> asyncpg.Record | None:
    """The goal's calibration under the model and version it is embedded with."""
    return await conn.fetchrow(
        """SELECT c.signal, c.prior_loc, c.prior_spread, c.recent, c.seen FROM goals g
           JOIN goal_calibration c ON c.goal_id = g.id AND c.signal = g.embedding_model
                                  AND c.goal_version = g.embedded_version
           WHERE g.id = $1""",
        goal_id,
    )


async def neighbours(conn: Conn, signal: str, goal_ids: Sequence[int]) -> dict[int, float]:
    """The feedback neighbour threshold of each goal that has one for this signal."""
    rows = await conn.fetch(
        """SELECT goal_id, neighbour FROM goal_calibration
           WHERE signal = $1 AND goal_id = ANY($2::bigint[]) AND neighbour IS NOT NULL""",
        signal,
        list(goal_ids),
    )
    return {int(r["goal_id"]): float(r["neighbour"]) for r in rows}


async def set_prf(
    conn: Conn,
    signal: str,
    goal_id: int,
    version: int,
    vector: np.ndarray | None,
    prior: tuple[float, float] | None,
    window: Sequence[float] | None,
) -> bool:
    """The goal's matching vector (None: no better one than the embedded goal, recorded as tried), the prior
    under it, and its window: `window` (the recent items' values under the new vector), or empty for the
    backfill that follows to fill. False when the goal's calibration is of another version (edited meanwhile)."""
    status = await conn.execute(
        """UPDATE goal_calibration SET prf = $4, prf_at = now(),
               prior_loc = COALESCE($5, prior_loc), prior_spread = COALESCE($6, prior_spread),
               recent = CASE WHEN $4::vector IS NULL THEN recent ELSE $7::bytea END,
               seen = CASE WHEN $4::vector IS NULL THEN 0 ELSE length($7::bytea) / 4 END, updated_at = now()
           WHERE goal_id = $2 AND signal = $1 AND goal_version = $3""",
        signal,
        goal_id,
        version,
        None if vector is None else Vector(np.asarray(vector, dtype=np.float32)),
        prior[0] if prior else None,
        prior[1] if prior else None,
        window_bytes(window or []),
    )
    return status.endswith(" 1")
