"""The pages' static files (stylesheet, script), served from the package with long cache lifetimes: their URLs
carry a digest of the files (render.static_version), so a new release is fetched at once."""

from __future__ import annotations

import mimetypes
from functools import cache
from importlib import resources

from aiohttp import web

from infosentry.web.render import static_version

_TYPES = {".css": "text/css", ".js": "text/javascript", ".png": "image/png", ".svg": "image/svg+xml"}


@cache
def _file(name: str) -> bytes | None:
    entry = resources.files("infosentry.web") / "static" / name
    return entry.read_bytes() if entry.is_file() else None


async def serve(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    suffix = name[name.rfind(".") :] if "." in name else ""
    if "/" in name or name.startswith(".") or suffix not in _TYPES:
        raise web.HTTPNotFound()
    data = _file(name)
    if data is None:
        raise web.HTTPNotFound()
    versioned = request.query.get("v") == static_version()
    headers = {
        "Cache-Control": "public, max-age=31536000, immutable" if versioned else "public, max-age=300",
        "X-Content-Type-Options": "nosniff",
        "ETag": f'"{static_version()}"',
    }
    if request.headers.get("If-None-Match") == headers["ETag"]:
        return web.Response(status=304, headers=headers)
    content_type = _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return web.Response(
        body=data, content_type=content_type, charset="utf-8" if suffix in (".css", ".js") else None, headers=headers
    )


ROUTES = [web.get("/static/{name}", serve)]
