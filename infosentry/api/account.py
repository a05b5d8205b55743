"""/api/v1/users/me (the caller's settings) and the caller's API tokens. Imports domain.accounts, api.http."""

from __future__ import annotations

from aiohttp import web

from infosentry.api.http import ok, path_id, principal, read_json, requires, rt
from infosentry.domain import accounts


@requires("goals:read")
async def get_me(request: web.Request) -> web.Response:
    return ok(await accounts.profile(rt(request), principal(request)))


@requires("goals:write")
async def put_me(request: web.Request) -> web.Response:
    return ok(await accounts.update_profile(rt(request), principal(request), await read_json(request)))


@requires("goals:read")
async def list_tokens(request: web.Request) -> web.Response:
    return ok({"items": await accounts.tokens(rt(request), principal(request)), "next_cursor": None})


@requires("goals:write")
async def create_token(request: web.Request) -> web.Response:
    new = await accounts.create_token(rt(request), principal(request), await read_json(request))
    return ok({"id": new.id, "token": new.token, "scopes": new.scopes, "expires_at": new.expires_at}, status=201)


@requires("goals:write")
async def revoke_token(request: web.Request) -> web.Response:
    await accounts.revoke_token(rt(request), principal(request), path_id(request))
    return web.Response(status=204)


ROUTES = [
    web.get("/api/v1/users/me", get_me),
    web.put("/api/v1/users/me", put_me),
    web.get("/api/v1/tokens", list_tokens),
    web.post("/api/v1/tokens", create_token),
    web.delete("/api/v1/tokens/{id}", revoke_token),
]
