"""The `infosentry` command line (click): one module per area, every command registered on `main`.

    base       the group, error handling, runtime per command, table/JSON output
    service    serve, worker, migrate, db, backup, restore, demo
    accounts   user, token
    sources    source add/list/import-opml/export-opml/refresh/catalog/import-catalog
    goals      goal add/edit/pause/resume/delete/list/matches, inbox, feedback
    admin      config get/set/unset/audit, budget, status, alerts, workers, queues
    chaos      fault drills

Commands translate options into calls of infosentry.domain (and the operator tools) and results into lines;
they hold no rules of their own.
"""

from __future__ import annotations

from infosentry.cli import accounts, admin, chaos, goals, service, sources
from infosentry.cli.base import main

__all__ = ["accounts", "admin", "chaos", "goals", "main", "service", "sources"]
