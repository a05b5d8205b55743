"""Sign-in pages: ask for a link, the confirmation page the emailed link opens (it changes nothing: mail
scanners that prefetch links burn nothing), its POST that spends the link and starts a session, sign-out,
and the language of the pages before sign-in.

`consume_page` and `consume_form` serve GET and the browser's POST of /api/v1/auth/consume (the route lives in
api.auth_links with the JSON answer for API clients). Imports domain.accounts, api.http, web.session, web.render.
"""

from __future__ import annotations

from aiohttp import web

from infosentry.api.http import client_ip
from infosentry.domain import accounts
from infosentry.errors import Invalid, RateLimited
from infosentry.web.render import LANGS, Ctx, render
from infosentry.web.session import (
    LANG_COOKIE,
    PRESESSION_COOKIE,
    clear_session_cookie,
    context,
    form,
    page,
    presession_token,
    redirect,
    safe_next,
    set_presession_cookie,
    set_session_cookie,
)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _public_form(request: web.Request, ctx: Ctx, template: str, status: int = 200, **values: object) -> web.Response:
    """A page with a form shown before sign-in: its CSRF token is a double-submit cookie."""
    token = presession_token(request)
    response = render(ctx, template, status=status, presession=token, **values)
    set_presession_cookie(request, response, token)
    response.headers.update(NO_STORE)
    return response


def _presession_ok(request: web.Request, data: dict) -> bool:
    from infosentry import auth

    return auth.same(request.cookies.get(PRESESSION_COOKIE, ""), str(data.get("csrf", "")))


@page(public=True)
async def login_page(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    if ctx.actor is not None:
        return redirect(safe_next(request.query.get("next")))
    return _public_form(request, ctx, "login.html", next=safe_next(request.query.get("next"), ""), email="", errors={})


@page(public=True)
async def login_post(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    data = await form(request)
    email = str(data.get("email", "")).strip()
    nxt = safe_next(str(data.get("next", "")), "")
    if not _presession_ok(request, data):
        ctx.flash.append(("error", ctx.t("error.csrf")))
        return _public_form(request, ctx, "login.html", status=403, next=nxt, email=email, errors={})
    try:
        await accounts.request_link(ctx.rt, {"email": email}, ip=client_ip(request))
    except Invalid:
        errors = {"email": ctx.t("login.bad_email")}
        return _public_form(request, ctx, "login.html", status=422, next=nxt, email=email, errors=errors)
    except RateLimited:
        ctx.flash.append(("error", ctx.t("login.rate_limited")))
        return _public_form(request, ctx, "login.html", status=429, next=nxt, email=email, errors={})
    response = render(ctx, "login_sent.html", email=email)
    response.headers.update(NO_STORE)
    return response


async def consume_page(request: web.Request) -> web.Response:
    """GET of the emailed link: a page with one button. Nothing is spent until it is pressed."""
    ctx = await context(request)
    token = request.query.get("token", "").strip()
    return _public_form(request, ctx, "confirm.html", token=token, signed_in=ctx.actor is not None)


async def consume_form(request: web.Request) -> web.Response:
    """The confirmation page's POST: spend the link, start a session in a cookie, go to the inbox."""
    ctx = await context(request)
    data = await form(request)
    token = str(data.get("token", "")).strip()
    if not _presession_ok(request, data):
        ctx.flash.append(("error", ctx.t("error.csrf")))
        return _public_form(request, ctx, "confirm.html", status=403, token=token, signed_in=False)
    try:
        session = await accounts.consume_link(ctx.rt, token)
    except accounts.LinkRefused as exc:
        key = {
            "login_link_used": "confirm.used",
            "login_link_superseded": "confirm.replaced",
            "login_link_expired": "confirm.expired",
        }.get(exc.code, "confirm.invalid")
        response = render(ctx, "link_refused.html", status=400, message=ctx.t(key))
        response.headers.update(NO_STORE)
        return response
    response = redirect(safe_next(str(data.get("next", "")), "/inbox"))
    set_session_cookie(request, response, session.token)
    response.del_cookie(PRESESSION_COOKIE, path="/")
    response.headers.update(NO_STORE)
    return response


@page()
async def logout(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    assert ctx.actor is not None and ctx.actor.token_id is not None
    await accounts.revoke_session(ctx.rt, ctx.actor, ctx.actor.token_id)
    response = redirect("/login")
    clear_session_cookie(response)
    return response


async def language(request: web.Request) -> web.Response:
    """The language of the pages before sign-in (a cookie; signed-in users have it in their settings)."""
    lang = request.match_info["lang"]
    response = redirect(safe_next(request.query.get("next"), "/login"))
    if lang in LANGS:
        response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, path="/", samesite="Lax", httponly=True)
    return response


@page(public=True)
async def home(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return redirect("/goals" if ctx.actor else "/login")


ROUTES = [
    web.get("/", home),
    web.get("/login", login_page),
    web.post("/login", login_post),
    web.post("/logout", logout),
    web.get("/lang/{lang}", language),
]
