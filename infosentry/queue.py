"""The job queue: the procrastinate app every task registers on, its binding to this process's database, and
nudges (defer a task unless one is already queued).

Jobs are nudges, never the state: a lost nudge costs only the time until a periodic sweep finds the work in
its tables. Imports procrastinate only.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import procrastinate
from procrastinate import exceptions as pexc
from procrastinate.psycopg_connector import PsycopgConnector

QUEUES = ("ingest", "embed", "agent", "email")

# Tasks are registered on this app (infosentry.jobs); each process binds it to its database with open_queue().
app = procrastinate.App(connector=PsycopgConnector())


@contextlib.asynccontextmanager
async def open_queue(dsn: str, *, max_size: int = 10) -> AsyncIterator[procrastinate.App]:
    """Bind the task app to this process's database for the duration of the block (one binding per process:
    procrastinate swaps the connector of its one app)."""
    with app.replace_connector(PsycopgConnector(conninfo=dsn, min_size=1, max_size=max_size)) as bound:
        async with bound.open_async():
            yield bound


async def nudge(qapp: procrastinate.App, task: str, *, lock: str | None = None, **kwargs: Any) -> None:
    """Defer `task` unless one is already queued (queueing lock): many nudges collapse into one job.

    Raises procrastinate's TaskNotFound for a task this process has not registered (infosentry.jobs not
    imported): deferred blind, it would land on the 'default' queue that no worker reads and hold the task's
    queueing lock for ever, which also stops its periodic runs."""
    with contextlib.suppress(pexc.AlreadyEnqueued):
        await qapp.configure_task(name=task, allow_unknown=False, queueing_lock=lock or task).defer_async(**kwargs)
