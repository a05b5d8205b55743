"""Web sessions and the guard around every page: the session cookie (httpOnly, SameSite=Lax, Secure behind TLS),
CSRF checks on every POST, redirects to sign-in, and errors as pages instead of problem+json.

A session is an api_tokens row of kind 'session' (domain.accounts); its secret is the cookie. Forms carry the
session's CSRF token in a hidden field (scripts send it as X-CSRF-Token); forms shown before sign-in use a
double-submit cookie instead. Imports domain.accounts, web.render, api.http (the runtime key).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web
from multidict import MultiDictProxy

from infosentry import auth
from infosentry.api.http import RT
from infosentry.domain import accounts
from infosentry.errors import BadRequest, Forbidden, InfosentryError, Invalid, NotFound
from infosentry.web.render import SECURITY_HEADERS, Ctx, pick_language, render

log = logging.getLogger("infosentry.web")

SESSION_COOKIE = "infosentry_session"
PRESESSION_COOKIE = "infosentry_csrf"  # double-submit token of the forms shown before sign-in
LANG_COOKIE = "infosentry_lang"
CTX = web.RequestKey("web_ctx", Ctx)

PageHandler = Callable[[web.Request, Ctx], Awaitable[web.StreamResponse]]


def secure(request: web.Request) -> bool:
    return request.app[RT].settings.public_url.startswith("https:") or request.secure


def set_session_cookie(request: web.Request, response: web.StreamResponse, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=accounts.SESSION_DAYS * 86400,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=secure(request),
    )


def clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path="/")


def presession_token(request: web.Request) -> str:
    """The double-submit token of a public form: the cookie's value, or a new one (set it with
    set_presession_cookie on the response that shows the form)."""
    token = request.cookies.get(PRESESSION_COOKIE, "")
    return token if len(token) >= 20 else secrets.token_urlsafe(24)


def set_presession_cookie(request: web.Request, response: web.StreamResponse, token: str) -> None:
    response.set_cookie(
        PRESESSION_COOKIE, token, max_age=3600, path="/", httponly=True, samesite="Lax", secure=secure(request)
    )


def safe_next(value: str | None, default: str = "/goals") -> str:
    """A local path to go back to after a form (never another site: no scheme, no host, no '//')."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


def redirect(location: str, status: int = 303) -> web.Response:
    response = web.Response(status=status, headers={"Location": location})
    response.headers.update(SECURITY_HEADERS)
    return response


def wants_json(request: web.Request) -> bool:
    """A script (fetch with Accept: application/json) rather than a plain form submission."""
    return "application/json" in request.headers.get("Accept", "")


async def posted(request: web.Request) -> MultiDictProxy[Any]:
    """The posted body, read once by aiohttp. A body that is not a form (a multipart type without its boundary,
    a broken encoding) is a 400, not a server error."""
    try:
        return await request.post()
    except (ValueError, LookupError, RuntimeError) as exc:  # bad boundary or bytes, unknown charset or encoding
        raise BadRequest(f"the form could not be read: {exc}") from exc


async def form(request: web.Request) -> dict[str, Any]:
    """The posted form: single values as str, repeated fields as lists."""
    data = await posted(request)
    out: dict[str, Any] = {}
    for key in data:
        values = data.getall(key)
        out[key] = values if len(values) > 1 else values[0]
    return out


async def context(request: web.Request) -> Ctx:
    rt = request.app[RT]
    token = request.cookies.get(SESSION_COOKIE, "")
    actor = await accounts.actor_for_session(rt, token) if token else None
    ctx = Ctx(request=request, rt=rt, actor=actor, lang=pick_language(request, actor))
    if actor is not None:
        ctx.csrf = await accounts.csrf_token(rt, actor)
    return ctx


def page(*, public: bool = False, admin: bool = False) -> Callable[[PageHandler], Callable]:
    """Guard a page: a session is required unless `public` (else 303 to sign-in), admin pages answer 403 to
    others, every POST must carry the CSRF token, and errors become pages (or JSON for scripts)."""

    def wrap(handler: PageHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def run(request: web.Request) -> web.StreamResponse:
            ctx = await context(request)
            request[CTX] = ctx
            try:
                if ctx.actor is None and not public:
                    if wants_json(request):
                        raise web.HTTPUnauthorized(text="sign in first")
                    target = request.path_qs if request.method == "GET" else "/goals"
                    return redirect(f"/login?next={quote(target, safe='')}")
                if admin and (ctx.actor is None or not ctx.actor.is_admin):
                    raise Forbidden("admins only")
                if request.method == "POST" and ctx.actor is not None:
                    given = request.headers.get("X-CSRF-Token") or (await posted(request)).get("csrf", "")
                    if not auth.same(ctx.csrf, str(given)):
                        log.warning("csrf check failed", extra={"action": "web_csrf_refused", "path": request.path})
                        raise Forbidden("csrf")
                response = await handler(request, ctx)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                return error_page(ctx, exc.status)
            except NotFound:
                return error_page(ctx, 404)
            except Forbidden as exc:
                return error_page(ctx, 403, "error.csrf" if exc.detail == "csrf" else "error.forbidden")
            except Invalid as exc:
                # handlers that show a form catch Invalid themselves; anything else gets a readable page
                return error_page(ctx, 422, detail=exc.detail)
            except InfosentryError as exc:
                return error_page(ctx, exc.status, detail=exc.detail)
            except (TimeoutError, OSError):
                raise  # a dependency is down: the app's middleware answers 503
            except Exception:
                log.exception("page failed", extra={"action": "web_error", "path": request.path})
                return error_page(ctx, 500)
            response.headers.update({k: v for k, v in SECURITY_HEADERS.items() if k not in response.headers})
            return response

        run.page = True  # type: ignore[attr-defined]
        return run

    return wrap


def error_page(ctx: Ctx, status: int, key: str | None = None, *, detail: str = "") -> web.Response:
    if wants_json(ctx.request):
        response = web.json_response({"status": status, "detail": detail or ctx.t(key or f"error.{status}")})
        response.set_status(status)
        return response
    known = {401, 403, 404, 405, 409, 422, 429, 503}
    key = key or (f"error.{status}" if status in known else "error.other")
    return render(ctx, "error.html", status=status, message=ctx.t(key), detail=detail, code=status)


async def not_found(request: web.Request, status: int) -> web.Response:
    """A page (not problem+json) for a browser that asks for a path no page or route has."""
    return error_page(await context(request), status)
