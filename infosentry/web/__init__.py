"""The web app: server-rendered pages in English and Chinese on the same aiohttp application as the JSON API,
calling the same domain functions (sign-in, goals, inbox, sources, settings, admin).

`setup(app)` adds the page routes and the static files. Pages hold no rule of their own: they translate forms
into domain calls and domain answers into HTML. Imports the web.* page modules.
"""

from __future__ import annotations

from aiohttp import web

from infosentry.web import admin, auth, goals, inbox, settings, sources, static

PAGE_MODULES = [auth, goals, inbox, sources, settings, admin, static]


def routes() -> list[web.RouteDef]:
    table: list[web.RouteDef] = []
    for module in PAGE_MODULES:
        table.extend(module.ROUTES)
    return table


def setup(app: web.Application) -> None:
    app.add_routes(routes())
