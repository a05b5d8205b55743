"""Routes of /api/v1 (auth_links)."""

from __future__ import annotations

from aiohttp import web

ROUTES: list[web.RouteDef] = []
