"""Magic-link login: POST /api/v1/auth/request_link, and /api/v1/auth/consume: its GET (the emailed link) is a
confirmation page that changes nothing; its POST spends the link: a session cookie for the browser's form,
the session token in JSON for API clients. Imports domain.accounts, openapi, api.http, web.auth (the pages).
"""

from __future__ import annotations

from aiohttp import web

from infosentry import openapi
from infosentry.api.http import client_ip, ok, read_json, requires, rt
from infosentry.domain.accounts import EMAIL_LIMIT, IP_LIMIT, consume_link, request_link
from infosentry.web import auth as web_auth

FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
TOKEN_PARAM = openapi.qparam(
    "token", {"type": "string", "pattern": "^isl_[A-Za-z0-9_-]{43}$"}, "the token from the emailed link"
)


@openapi.doc(
    "Email a single-use login link (valid 30 minutes; a newer link voids older ones)",
    description="Always 202 for a well-formed address, whether or not it has an account (nothing is revealed); "
    f"at most {EMAIL_LIMIT} links per address per hour (beyond: 202, no email). 429 only when the calling IP "
    f"made more than {IP_LIMIT} requests in the hour.",
    tags=("auth",),
    body=openapi.obj({"email": {"type": "string", "format": "email", "maxLength": 254}}, extra=False),
    status=202,
    response=openapi.obj({"status": openapi.enum("accepted"), "detail": openapi.STR}),
)
@requires(None)
async def post_request_link(request: web.Request) -> web.Response:
    detail = await request_link(rt(request), await read_json(request), ip=client_ip(request))
    return ok({"status": "accepted", "detail": detail}, status=202)


@openapi.doc(
    "The page an emailed login link opens: a confirmation button; nothing is spent",
    description="Mail scanners prefetch links: this GET changes nothing. The page's form POSTs the same URL.",
    tags=("auth",),
    query=[TOKEN_PARAM],
    response={"type": "string", "description": "an HTML page"},
    response_type="text/html",
)
@requires(None)
async def consume_page(request: web.Request) -> web.Response:
    return await web_auth.consume_page(request)


@openapi.doc(
    "Spend a login link and start a session (30 days, the user's scopes)",
    description='The token comes as the `token` query parameter or in a JSON body `{"token": ...}`. API clients '
    "get the session token in JSON; the confirmation page's form (a form body) gets the session cookie and a "
    "redirect to the inbox instead. 400 with a precise title when the link is invalid, already used, replaced by "
    "a newer one or expired. The user is created on the first successful login. Cache-Control: no-store.",
    tags=("auth",),
    query=[TOKEN_PARAM],
    body=openapi.obj({"token": openapi.STR}, [], extra=False),
    body_required=False,
    response=openapi.obj(
        {
            "token": openapi.STR,
            "token_type": openapi.enum("Bearer"),
            "token_id": openapi.INT,
            "expires_at": openapi.TIME,
            "scopes": openapi.arr(openapi.STR),
            "user": openapi.obj({"id": openapi.INT, "email": openapi.STR, "is_admin": openapi.BOOL}),
        }
    ),
)
@requires(None)
async def consume(request: web.Request) -> web.Response:
    if request.content_type in FORMS:
        return await web_auth.consume_form(request)
    token = request.query.get("token", "")
    if request.can_read_body:
        body = await read_json(request)
        token = str(body.get("token") or token) if isinstance(body.get("token"), str | None) else ""
    session = await consume_link(rt(request), token)
    return ok(
        {
            "token": session.token,
            "token_type": "Bearer",
            "token_id": session.token_id,
            "expires_at": session.expires_at,
            "scopes": session.scopes,
            "user": session.user,
        },
        headers={"Cache-Control": "no-store"},
    )


ROUTES = [
    web.post("/api/v1/auth/request_link", post_request_link),
    web.get("/api/v1/auth/consume", consume_page),
    web.post("/api/v1/auth/consume", consume),
]
