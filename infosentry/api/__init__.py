"""The aiohttp application: create_app(), middlewares (request id + logging, problem+json errors,
bearer auth with scopes) and THE route table, assembled from the per-resource modules; the web pages
(infosentry.web) are mounted on the same application.

Handlers read and write through store/* and auth; anything slow (fetching, OpenAI, SMTP) is
deferred as a job. Imports everything below the entry-point level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from infosentry import auth, jobs, metrics
from infosentry.api import account, admin, agent, auth_links, goals, health, inbox, sources
from infosentry.api.http import PRINCIPAL, RT, Handler, dumps
from infosentry.domain import accounts
from infosentry.errors import Forbidden, InfosentryError, RateLimited, Unauthorized, Unavailable
from infosentry.queue import QUEUES
from infosentry.runtime import open_runtime
from infosentry.settings import Settings
from infosentry.web import session as pages
from infosentry.web import setup as setup_pages

log = logging.getLogger("infosentry.http")

ROUTE_MODULES = [health, account, auth_links, sources, goals, inbox, agent, admin]


def routes() -> list[web.RouteDef]:
    table: list[web.RouteDef] = []
    for module in ROUTE_MODULES:
        table.extend(module.ROUTES)
    return table


def problem(status: int, title: str, detail: str, *, code: str, errors: list | None = None) -> web.Response:
    body = {"type": f"https://infosentry.dev/problems/{code}", "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return web.Response(status=status, text=dumps(body), content_type="application/problem+json")


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, access log line, HTTP metrics, and the one error shape for every failure."""
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
    started = time.perf_counter()
    try:
        response = await handler(request)
    except InfosentryError as exc:
        response = problem(exc.status, exc.title, exc.detail, code=exc.code, errors=exc.errors)
        if isinstance(exc, RateLimited) and exc.retry_after:
            response.headers["Retry-After"] = str(exc.retry_after)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status in (404, 405) and _browser_page(request):
            response = await pages.not_found(request, exc.status)
        else:
            titles = {404: "Not found", 405: "Method not allowed", 413: "Request body too large"}
            detail = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
            response = problem(exc.status, titles.get(exc.status, exc.reason), detail, code=f"http_{exc.status}")
        for name in ("Allow",):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
    except asyncpg.DataError as exc:  # a value the database cannot take (out of range, bad encoding)
        response = problem(400, "Bad request", f"a value cannot be stored: {exc}", code="bad_request")
    except (TimeoutError, OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
        log.warning("dependency unavailable: %s", exc, extra={"action": "http_unavailable"})
        response = problem(503, "Service unavailable", "a dependency is unavailable; retry later", code="unavailable")
    except Exception:
        log.exception("unhandled error", extra={"action": "http_error", "request_id": request_id})
        response = problem(500, "Internal error", f"unexpected error (request id {request_id})", code="internal")
    response.headers["X-Request-Id"] = request_id
    elapsed_ms = (time.perf_counter() - started) * 1000
    if not response.prepared:  # a streamed response has sent its headers already
        response.headers["Server-Timing"] = f"app;dur={elapsed_ms:.1f}"
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    metrics.HTTP_REQUESTS.labels(route, request.method, str(response.status)).inc()
    log.info(
        "%s %s %s",
        request.method,
        request.path,
        response.status,
        extra={
            "action": "http_request",
            "request_id": request_id,
            "status": response.status,
            "ms": round(elapsed_ms, 1),
        },
    )
    return response


def _browser_page(request: web.Request) -> bool:
    """A person's browser asking for a page (not the API, a tracked link or a probe): errors come as pages."""
    api = request.path.startswith(("/api/", "/r/", "/health", "/metrics", "/static/"))
    return not api and "text/html" in request.headers.get("Accept", "")


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every /api/v1 handler declares a scope with @requires; None means public."""
    scope = getattr(handler, "scope", "unset")
    if scope == "unset":
        # routes outside /api/v1 (health, redirects) and framework handlers are public
        if request.path.startswith("/api/v1") and request.match_info.http_exception is None:
            raise Forbidden("route has no declared scope")
        return await handler(request)
    if scope is None:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise Unauthorized("send 'Authorization: Bearer <token>'")
    actor = await accounts.actor_for_token(request.app[RT], token.strip())
    if actor is None:
        raise Unauthorized("token is unknown, expired or revoked")
    if not auth.has_scope(actor.scopes, scope):
        raise Forbidden(f"this route needs the {scope} scope")
    request[PRINCIPAL] = actor
    return await handler(request)


def create_app(settings: Settings, *, role: str = "api", concurrency: int = 8) -> web.Application:
    """The HTTP application; role 'all' also runs the worker (every queue) inside this process."""
    app = web.Application(middlewares=[request_context, authenticate], client_max_size=settings.max_body_bytes)
    app.add_routes(routes())
    setup_pages(app)  # the web app: pages and static files beside the JSON API

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with open_runtime(settings, role=role) as rt:
            app[RT] = rt
            qapp = await rt.queue(max_size=10)
            queues = list(QUEUES) if role == "all" else []
            tasks = [
                asyncio.create_task(jobs.heartbeat_loop(rt, queues), name="heartbeat"),
                # alerts must fire even when every worker is dead (then no alerts_tick job runs)
                asyncio.create_task(jobs.alerts_loop(rt, qapp), name="alerts"),
            ]
            if role == "all":
                tasks.append(
                    asyncio.create_task(
                        jobs.run_worker(rt, qapp, queues, concurrency=concurrency, install_signal_handlers=False),
                        name="worker",
                    )
                )
            try:
                yield
            finally:
                for task in reversed(tasks):  # the worker first: it drains in-flight jobs
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    app.cleanup_ctx.append(lifecycle)
    return app


__all__ = ["Unavailable", "create_app", "problem", "routes"]
