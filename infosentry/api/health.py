"""GET /health: liveness with a database round trip (503 when the database is unreachable)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from infosentry.api.http import ok, rt


async def get_health(request: web.Request) -> web.Response:
    try:
        async with asyncio.timeout(2):
            await rt(request).pool.fetchval("SELECT 1")
    except Exception:
        return web.json_response({"status": "unavailable", "database": "down"}, status=503)
    return ok({"status": "ok"})


ROUTES = [web.get("/health", get_health)]
