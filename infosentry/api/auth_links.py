"""Magic-link login: POST /api/v1/auth/request_link and GET /api/v1/auth/consume.

A link is a random token stored only as its SHA-256, valid 30 minutes, usable once; a newer link voids
the older ones. Requesting one answers 202 whatever the address (it reveals nothing about accounts);
only a caller over its per-IP limit gets 429 (which says nothing about any address either). The user
is created when a link is first consumed, i.e. once the address has proven it receives mail.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
from aiohttp import web

from infosentry import auth, jobs, mail, openapi
from infosentry.api.http import QUEUE, Fields, ok, read_json, requires, rt
from infosentry.errors import BadRequest, RateLimited
from infosentry.store import accounts, logins
from infosentry.store import push as push_store

log = logging.getLogger(__name__)

LINK_MINUTES = 30
SESSION_DAYS = 30
LINK_PREFIX = "isl_"
# per address: enough for a user who lost a mail or two, too few to flood a mailbox
EMAIL_LIMIT, EMAIL_WINDOW = 5, 3600
# per client address: a small office behind one NAT still fits
IP_LIMIT, IP_WINDOW = 30, 3600

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s.]+$")


class LinkRefused(BadRequest):
    """400 with a precise title: the link is unknown, used, replaced or expired."""

    def __init__(self, code: str, title: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.title = code, title


def client_ip(request: web.Request) -> str | None:
    """The caller's address. X-Forwarded-For is believed only from a loopback peer (our own reverse proxy,
    which overwrites the header); from anyone else it could be forged to dodge the per-IP limit."""
    peer = request.remote
    try:
        peer_ip = ipaddress.ip_address(peer) if peer else None
    except ValueError:
        peer_ip = None
    forwarded = request.headers.get("X-Forwarded-For", "")
    if peer_ip is not None and peer_ip.is_loopback and forwarded:
        last = forwarded.split(",")[-1].strip()
        try:
            return str(ipaddress.ip_address(last))
        except ValueError:
            pass
    return str(peer_ip) if peer_ip else None


def _local_time(when: datetime, tz_name: str) -> str:
    try:
        zone = ZoneInfo(tz_name)
    except (ValueError, KeyError):
        zone = ZoneInfo("UTC")
    return when.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


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
async def request_link(request: web.Request) -> web.Response:
    f = Fields(await read_json(request), {"email"})
    email = f.str("email", required=True, max_len=254)
    if email is not None:
        email = email.lower()
        f.check(bool(_EMAIL.match(email)), "email", "must be an email address")
    f.done()
    runtime = rt(request)
    ip = client_ip(request)
    if ip and await accounts.hit_rate_limit(runtime.pool, f"login_ip:{ip}", window_seconds=IP_WINDOW, limit=IP_LIMIT):
        log.warning("login link refused: ip over limit", extra={"action": "login_rate_limited_ip", "ip": ip})
        return _too_many(IP_WINDOW - int(datetime.now(UTC).timestamp()) % IP_WINDOW)
    detail = f"if {email} can receive mail, a login link valid {LINK_MINUTES} minutes is on its way"
    accepted = ok({"status": "accepted", "detail": detail}, status=202)
    if await accounts.hit_rate_limit(
        runtime.pool, f"login_email:{email}", window_seconds=EMAIL_WINDOW, limit=EMAIL_LIMIT
    ):
        # same answer as success: the caller cannot tell, and the older link stays valid
        log.warning("login link not sent: address over limit", extra={"action": "login_rate_limited_email"})
        return accepted
    token = LINK_PREFIX + secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(minutes=LINK_MINUTES)
    language, tz_name = await logins.user_language(runtime.pool, email)
    link = f"{runtime.settings.public_url}/api/v1/auth/consume?token={token}"
    rendered = mail.render_login_email(language, link, _local_time(expires, tz_name or runtime.settings.tz))
    async with runtime.pool.acquire() as conn, conn.transaction():
        link_id = await logins.issue_link(
            conn, email=email, token_hash=auth.hash_token(token), expires_at=expires, ip=ip
        )
        await push_store.insert_email(
            conn,
            dedupe_key=f"login:{link_id}",
            kind="login",
            user_id=None,
            goal_id=None,
            to_addr=email,
            subject=rendered.subject,
            body_text=rendered.text,
            body_html=rendered.html,
            headers=dict(rendered.headers),
            status="pending",
            last_error=None,
        )
    await jobs.nudge(request.app[QUEUE], "send_emails")
    log.info("login link issued", extra={"action": "login_link_issued", "link_id": link_id})
    return accepted


@openapi.doc(
    "Exchange a login link for a session token (30 days, the user's scopes)",
    description="400 with a precise title when the link is invalid, already used, replaced by a newer one or "
    "expired. The user is created on the first successful login.",
    tags=("auth",),
    query=[
        openapi.qparam(
            "token",
            {"type": "string", "pattern": "^isl_[A-Za-z0-9_-]{43}$"},
            "the token from the emailed link",
            required=True,
        )
    ],
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
    token = request.query.get("token", "").strip()
    if not token:
        raise LinkRefused("login_link_invalid", "Invalid login link", "the token query parameter is required")
    runtime = rt(request)
    token_hash = auth.hash_token(token)
    async with runtime.pool.acquire() as conn, conn.transaction():
        link = await logins.consume_link(conn, token_hash)
        if link is None:
            raise await _refusal(conn, token_hash)
        user = await logins.user_for_login(conn, link["email"])
        scopes = auth.expand_scopes([], is_admin=user["is_admin"])
        session = auth.new_token()
        expires = datetime.now(UTC) + timedelta(days=SESSION_DAYS)
        row = await accounts.insert_token(
            conn,
            user_id=user["id"],
            token_hash=auth.hash_token(session),
            prefix=session[:10],
            scopes=scopes,
            kind="session",
            name="login",
            expires_at=expires,
        )
    log.info("login", extra={"action": "login_consumed", "user_id": user["id"], "token_id": row["id"]})
    return ok(
        {
            "token": session,
            "token_type": "Bearer",
            "token_id": row["id"],
            "expires_at": expires,
            "scopes": scopes,
            "user": {"id": user["id"], "email": user["email"], "is_admin": user["is_admin"]},
        }
    )


def _too_many(retry_after: int) -> web.Response:
    exc = RateLimited(f"too many login requests from this address; at most {IP_LIMIT} per hour")
    body = {
        "type": f"https://infosentry.dev/problems/{exc.code}",
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
    }
    return web.json_response(
        body,
        status=exc.status,
        content_type="application/problem+json",
        headers={"Retry-After": str(max(retry_after, 1))},
    )


async def _refusal(conn: asyncpg.Connection, token_hash: str) -> LinkRefused:
    state = await logins.link_state(conn, token_hash)
    if state is None:
        return LinkRefused("login_link_invalid", "Invalid login link", "this login link is not valid")
    if state["used_at"] is not None:
        return LinkRefused("login_link_used", "Login link already used", "this login link was already used")
    if state["voided_at"] is not None:
        return LinkRefused(
            "login_link_superseded", "Login link replaced", "a newer login link was requested; use the latest one"
        )
    return LinkRefused("login_link_expired", "Login link expired", f"login links expire after {LINK_MINUTES} minutes")


ROUTES = [
    web.post("/api/v1/auth/request_link", request_link),
    web.get("/api/v1/auth/consume", consume),
]
