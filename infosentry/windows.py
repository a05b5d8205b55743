"""The goals' calibration windows, written behind: a process keeps the windows it has read back and the values it
has scored since, and writes a goal's values only when FLUSH_VALUES of them wait or the oldest has waited
FLUSH_SECONDS.

Every matching batch scores most goals of a busy instance, a few new values each; appending them at once
rewrote and read back a thousand 2 KB windows per batch. A goal's estimate is still computed from its window with
every waiting value appended, so a batch is scored with its own values included, exactly as before. What waits
is written when the runtime closes; a process that dies loses it, and a window is a sample of a goal's recent
values that stays one. Another process's appends reach this one's windows when it next writes that goal (the
statement appends, so no process loses another's values). A goal edited, re-embedded or given a new matching
vector (its version or PRF stamp changes) is read afresh, and values waiting under the old one are dropped.
Imports calibrate, store.calibration, store.matches (the matching write's turn)."""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import asyncpg
import numpy as np

from infosentry import calibrate
from infosentry.store import calibration as calibration_store
from infosentry.store import matches as matches_store

log = logging.getLogger(__name__)

FLUSH_VALUES = 64  # waiting values that make a goal's write due (an eighth of its window)
FLUSH_SECONDS = 30.0  # the oldest waiting value's age that makes it due
# windows kept per process before the cache starts over, waiting values and all (deleted goals' linger until then)
MAX_WINDOWS = 50_000


@dataclass
class Window:
    """One goal's calibration under one signal, as this process sees it."""

    version: int  # the goal's version it was read under
    stamp: Hashable  # ... and its matching vector's (PRF) stamp
    stored_seen: int
    prior: tuple[float, float] | None
    neighbour: float | None
    # the newest WINDOW values this process knows (the row's after its last write, then the waiting ones), in a
    # ring: a batch stacks the rings of its goals as they are, since estimates do not depend on the order
    ring: np.ndarray = field(default_factory=lambda: np.full(calibrate.WINDOW, np.inf, dtype=np.float32))
    head: int = 0  # where the next value goes
    filled: int = 0
    waiting: list[np.ndarray] = field(default_factory=list)
    n_waiting: int = 0
    since: float = 0.0  # monotonic time of the oldest waiting value

    def add(self, values: np.ndarray) -> None:
        """Put values into the ring, over the oldest ones."""
        size = len(self.ring)
        v = np.asarray(values, dtype=np.float32)[-size:]
        end = self.head + len(v)
        if end <= size:
            self.ring[self.head : end] = v
        else:
            self.ring[self.head :] = v[: size - self.head]
            self.ring[: end - size] = v[size - self.head :]
        self.head = end % size
        self.filled = min(size, self.filled + len(v))

    @property
    def values(self) -> np.ndarray:
        """The window, oldest value first."""
        if self.filled < len(self.ring):
            return self.ring[: self.filled].copy()
        return np.concatenate([self.ring[self.head :], self.ring[: self.head]])

    @property
    def seen(self) -> int:
        return self.stored_seen + self.n_waiting

    def read_under(self, version: int, stamp: Hashable) -> bool:
        return self.version == version and self.stamp == stamp


class Windows:
    """A process's calibration windows (one per runtime: goal ids are only unique within a database)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, int], Window] = {}

    async def observe(
        self,
        conn: asyncpg.Connection,
        signal: str,
        goal_ids: Sequence[int],
        versions: Sequence[int],
        stamps: Sequence[Hashable],
        values: Sequence[np.ndarray],
        priors: Sequence[tuple[float, float] | None],
        *,
        through_until: int = 0,
        now: float | None = None,
    ) -> list[Window | None]:
        """Add each goal's new values (possibly none) to its window and return the windows, in order (None for a
        goal whose row could not be written: the goal is gone). `stamps` identify each goal's matching vector
        (None for a signal without one); `priors` are used only when a row is created or restarted; a row that has
        seen fewer than `through_until` values is written at once (the first PRF vector is due when the row has
        seen that many). Due goals are written in one statement (calibration_store.observe); the others only
        wait."""
        now = time.monotonic() if now is None else now
        due = []
        for k, gid in enumerate(goal_ids):
            w = self._rows.get((signal, int(gid)))
            n = len(values[k])
            if (
                w is not None
                and w.read_under(versions[k], stamps[k])
                and w.stored_seen >= through_until
                and w.n_waiting + n < FLUSH_VALUES
                and (w.n_waiting == 0 or now - w.since < FLUSH_SECONDS)
            ):
                if n:
                    w.since = w.since if w.n_waiting else now
                    w.waiting.append(np.asarray(values[k], dtype=np.float32))
                    w.n_waiting += n
                    w.add(w.waiting[-1])
            else:
                due.append(k)
        if due:
            await self._write(conn, signal, due, goal_ids, versions, stamps, values, priors)
        return [self._rows.get((signal, int(gid))) for gid in goal_ids]

    def observed(self, signal: str, goal_id: int) -> Window | None:
        """The goal's window as this process sees it (None before it has scored the goal)."""
        return self._rows.get((signal, goal_id))

    async def flush(self, pool: asyncpg.Pool) -> None:
        """Write every waiting value (a process that stops cleanly loses none), in the matching write's turn. A
        database that cannot be reached costs those values and a log line, never the shutdown."""
        waiting = [(key, w) for key, w in self._rows.items() if w.n_waiting]
        try:
            for signal in sorted({key[0] for key, _ in waiting}):
                await self._flush(pool, signal, [(key[1], w) for key, w in waiting if key[0] == signal])
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("calibration values not written at shutdown: %s", exc, extra={"action": "windows_lost"})

    async def _flush(self, pool: asyncpg.Pool, signal: str, rows: list[tuple[int, Window]]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await matches_store.lock_for_write(conn)
            await self._write(
                conn,
                signal,
                list(range(len(rows))),
                [gid for gid, _ in rows],
                [w.version for _, w in rows],
                [w.stamp for _, w in rows],
                [np.zeros(0, np.float32)] * len(rows),
                [w.prior for _, w in rows],
            )

    async def _write(
        self,
        conn: asyncpg.Connection,
        signal: str,
        due: list[int],
        goal_ids: Sequence[int],
        versions: Sequence[int],
        stamps: Sequence[Hashable],
        values: Sequence[np.ndarray],
        priors: Sequence[tuple[float, float] | None],
    ) -> None:
        batches = []
        for k in due:
            w = self._rows.get((signal, int(goal_ids[k])))
            # values waiting under another version or matching vector are dropped
            kept = w.waiting if w is not None and w.read_under(versions[k], stamps[k]) else []
            batches.append(np.concatenate([*kept, np.asarray(values[k], dtype=np.float32)]))
        records = await calibration_store.observe(
            conn,
            signal,
            [int(goal_ids[k]) for k in due],
            [versions[k] for k in due],
            batches,
            [priors[k] for k in due],
            window=calibrate.WINDOW,
        )
        by_id = {int(r["goal_id"]): r for r in records}
        if len(self._rows) + len(due) > MAX_WINDOWS:
            self._rows.clear()
        for k in due:
            key = (signal, int(goal_ids[k]))
            r = by_id.get(key[1])
            if r is None:
                self._rows.pop(key, None)
                continue
            w = self._rows[key] = Window(
                version=versions[k],
                stamp=stamps[k],
                stored_seen=int(r["seen"]),
                prior=(float(r["prior_loc"]), float(r["prior_spread"])) if r["prior_loc"] is not None else None,
                neighbour=float(r["neighbour"]) if r["neighbour"] is not None else None,
            )
            w.add(calibration_store.window_of(r["recent"]))
