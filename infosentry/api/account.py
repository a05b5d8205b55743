"""/api/v1/users/me and the caller's API tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from infosentry import auth
from infosentry.api.http import Fields, ok, path_id, principal, read_json, requires, rt
from infosentry.errors import NotFound
from infosentry.store import accounts

USER_FIELDS = "id, email, display_name, timezone, language, is_admin, combined_digest, created_at, last_login_at"


def valid_timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@requires("goals:read")
async def get_me(request: web.Request) -> web.Response:
    row = await rt(request).pool.fetchrow(f"SELECT {USER_FIELDS} FROM users WHERE id = $1", principal(request).user_id)
    return ok(dict(row))


@requires("goals:write")
async def put_me(request: web.Request) -> web.Response:
    f = Fields(await read_json(request), {"display_name", "timezone", "language", "combined_digest"})
    display_name = f.str("display_name", max_len=100)
    timezone = f.str("timezone", max_len=64)
    language = f.str("language", choices=("en", "zh"))
    combined = f.bool("combined_digest")
    if timezone is not None:
        f.check(valid_timezone(timezone), "timezone", "must be an IANA time zone such as Asia/Shanghai")
    f.done()
    row = await rt(request).pool.fetchrow(
        f"""UPDATE users SET display_name = COALESCE($2, display_name), timezone = COALESCE($3, timezone),
                            language = COALESCE($4, language), combined_digest = COALESCE($5, combined_digest)
            WHERE id = $1 RETURNING {USER_FIELDS}""",
        principal(request).user_id,
        display_name,
        timezone,
        language,
        combined,
    )
    return ok(dict(row))


@requires("goals:read")
async def list_tokens(request: web.Request) -> web.Response:
    rows = await accounts.list_tokens(rt(request).pool, principal(request).user_id)
    return ok({"items": [dict(r) for r in rows], "next_cursor": None})


@requires("goals:write")
async def create_token(request: web.Request) -> web.Response:
    p = principal(request)
    f = Fields(await read_json(request), {"name", "scopes", "expires_in_days"})
    name = f.str("name", default="", max_len=100)
    scopes = f.str_list("scopes", default=[], max_items=20)
    days = f.int("expires_in_days", low=1, high=3650)
    f.done()
    # a token can never carry more than the token that created it
    granted = auth.expand_scopes(scopes, is_admin=p.is_admin)
    granted = [s for s in granted if auth.has_scope(p.scopes, s)]
    token = auth.new_token()
    expires = datetime.now(UTC) + timedelta(days=days) if days else None
    row = await accounts.insert_token(
        rt(request).pool,
        user_id=p.user_id,
        token_hash=auth.hash_token(token),
        prefix=token[:10],
        scopes=granted,
        name=name,
        expires_at=expires,
    )
    return ok({"id": row["id"], "token": token, "scopes": granted, "expires_at": expires}, status=201)


@requires("goals:write")
async def revoke_token(request: web.Request) -> web.Response:
    if not await accounts.revoke_token(rt(request).pool, path_id(request), principal(request).user_id):
        raise NotFound("no such token")
    return web.Response(status=204)


ROUTES = [
    web.get("/api/v1/users/me", get_me),
    web.put("/api/v1/users/me", put_me),
    web.get("/api/v1/tokens", list_tokens),
    web.post("/api/v1/tokens", create_token),
    web.delete("/api/v1/tokens/{id}", revoke_token),
]
