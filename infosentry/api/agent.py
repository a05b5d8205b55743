"""Routes of /api/v1 (agent)."""

from __future__ import annotations

from aiohttp import web

ROUTES: list[web.RouteDef] = []
