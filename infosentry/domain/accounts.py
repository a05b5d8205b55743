"""Accounts: passwordless sign-in (magic links), the user's settings, and API tokens.

A login link works once, for LINK_MINUTES; a newer one voids the older ones; links and tokens are stored
hashed. The account is created on the first successful login, so an address that never proved it receives
mail never becomes an account. A token never has more scopes, nor a later expiry, than the one creating it.
Imports auth, mail, store.{users, tokens, logins, emails}, domain.fields.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from infosentry import auth, mail
from infosentry.domain import Actor
from infosentry.domain.fields import Fields, valid_email, valid_timezone
from infosentry.errors import BadRequest, Invalid, NotFound, RateLimited
from infosentry.runtime import Runtime
from infosentry.store import emails as emails_store
from infosentry.store import keys as keys_store
from infosentry.store import logins as logins_store
from infosentry.store import rate_limits as rate_limits_store
from infosentry.store import tokens as tokens_store
from infosentry.store import users as users_store

log = logging.getLogger(__name__)

LINK_MINUTES = 30
SESSION_DAYS = 30
LINK_PREFIX = "isl_"
# per address: enough for a user who lost a mail or two, too few to flood a mailbox
EMAIL_LIMIT, EMAIL_WINDOW = 5, 3600
# per client address: a small office behind one NAT still fits
IP_LIMIT, IP_WINDOW = 30, 3600
USER_FIELDS = {"display_name", "timezone", "language", "combined_digest"}


class LinkRefused(BadRequest):
    """400 with a precise title: the link is unknown, used, replaced or expired."""

    def __init__(self, code: str, title: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.title = code, title


# --- users ----------------------------------------------------------------------------------------------------


async def create_user(rt: Runtime, email: str, *, is_admin: bool = False) -> asyncpg.Record:
    """An account made by an operator (`infosentry user create`)."""
    email = email.strip().lower()
    if not valid_email(email):
        raise BadRequest(f"{email!r} is not an email address")
    return await users_store.create_user(rt.pool, email, is_admin=is_admin)


async def actor_for(rt: Runtime, email: str | None) -> Actor:
    """Who a CLI command acts for: the user with `email`, else the first admin."""
    if email:
        row = await users_store.user_by_email(rt.pool, email)
    else:
        admin_id = await users_store.first_admin_id(rt.pool)
        if admin_id is None:
            raise BadRequest("no admin user yet: create one with `infosentry user create --email E --admin`")
        row = await users_store.user_by_id(rt.pool, admin_id)
        assert row is not None
    return Actor(
        user_id=row["id"],
        email=row["email"],
        is_admin=row["is_admin"],
        scopes=auth.expand_scopes([], is_admin=row["is_admin"]),
        timezone=row["timezone"],
        language=row["language"],
    )


async def profile(rt: Runtime, actor: Actor) -> dict[str, Any]:
    row = await users_store.profile(rt.pool, actor.user_id)
    if row is None:
        raise NotFound("no such user")
    return dict(row)


async def update_profile(rt: Runtime, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
    """Display name, time zone, language (en/zh: pages and emails) and the combined digest switch."""
    f = Fields(body, USER_FIELDS)
    display_name = f.str("display_name", max_len=100)
    timezone = f.str("timezone", max_len=64)
    language = f.str("language", choices=("en", "zh"))
    combined = f.bool("combined_digest")
    if timezone is not None:
        f.check(valid_timezone(timezone), "timezone", "must be an IANA time zone such as Asia/Shanghai")
    f.done()
    row = await users_store.update_profile(
        rt.pool,
        actor.user_id,
        display_name=display_name,
        timezone=timezone,
        language=language,
        combined_digest=combined,
    )
    return dict(row)


# --- tokens ---------------------------------------------------------------------------------------------------


async def actor_for_token(rt: Runtime, token: str) -> Actor | None:
    """The user behind a live token (None when unknown, revoked or expired), with the token's scopes; a demoted
    admin's tokens keep no admin power."""
    if not token:
        return None
    row = await tokens_store.token_owner(rt.pool, auth.hash_token(token))
    if row is None:
        return None
    scopes = list(row["scopes"])
    if not row["is_admin"]:
        scopes = [s for s in scopes if not s.startswith("admin:")]
    return Actor(
        user_id=row["user_id"],
        email=row["email"],
        is_admin=row["is_admin"],
        scopes=scopes,
        token_id=row["token_id"],
        timezone=row["timezone"],
        language=row["language"],
        token_kind=row["kind"],
        token_expires_at=row["expires_at"],
        session_id=row["session_id"],
        display_name=row["display_name"],
    )


async def actor_for_session(rt: Runtime, token: str) -> Actor | None:
    """The user behind a web session cookie: only a live token of kind 'session' opens the pages (an API token
    pasted into a cookie does not)."""
    actor = await actor_for_token(rt, token)
    return actor if actor is not None and actor.token_kind == "session" else None


async def csrf_token(rt: Runtime, actor: Actor) -> str:
    """The anti-forgery token of a web session: every form of the pages carries it and every POST is checked
    against it. Derived from the session with the installation's secret, so nothing is stored."""
    assert actor.token_id is not None
    return auth.sign(await _signing_key(rt), f"csrf:{actor.token_id}")


async def _signing_key(rt: Runtime) -> str:
    key = rt.settings.secret_key or rt.extras.get("signing_key")
    if not key:
        key = await keys_store.link_key(rt.pool)
        rt.extras["signing_key"] = key
    return key


async def sessions(rt: Runtime, actor: Actor) -> list[dict[str, Any]]:
    """The user's live web sessions (sign-ins), newest first; `current` marks the caller's."""
    now = datetime.now(UTC)
    rows = [
        dict(r)
        for r in await tokens_store.list_tokens(rt.pool, actor.user_id)
        if r["kind"] == "session" and r["revoked_at"] is None and (r["expires_at"] is None or r["expires_at"] > now)
    ]
    for r in rows:
        r["current"] = r["id"] == actor.token_id
    return sorted(rows, key=lambda r: r["id"], reverse=True)


async def revoke_session(rt: Runtime, actor: Actor, session_id: int) -> None:
    """End a sign-in (the caller's own: signing out), with every token minted under it."""
    row = await tokens_store.token_by_id(rt.pool, session_id)
    if row is None or row["user_id"] != actor.user_id or row["kind"] != "session":
        raise NotFound("no such session")
    await revoke_token(rt, actor, session_id)


@dataclass
class NewToken:
    id: int
    token: str  # shown once
    scopes: list[str]
    expires_at: datetime | None


async def tokens(rt: Runtime, actor: Actor) -> list[dict[str, Any]]:
    return [dict(r) for r in await tokens_store.list_tokens(rt.pool, actor.user_id)]


async def create_token(rt: Runtime, actor: Actor, body: dict[str, Any]) -> NewToken:
    """A new API token: never more scopes than the creating token, never outliving it. A token minted under a
    web session (by the session itself or by a token it minted) also dies when the session is revoked."""
    f = Fields(body, {"name", "scopes", "expires_in_days"})
    name = f.str("name", default="", max_len=100)
    scopes = f.str_list("scopes", default=[], max_items=20)
    days = f.int("expires_in_days", low=1, high=3650)
    f.done()
    try:
        granted = auth.expand_scopes(scopes, is_admin=actor.is_admin)
    except Invalid as exc:
        raise Invalid(exc.detail, errors=[{"field": "scopes", "message": exc.detail}]) from None
    granted = [s for s in granted if auth.has_scope(actor.scopes, s)]
    if not granted:
        raise Invalid(
            "scopes: none of them is held by the token creating it",
            errors=[{"field": "scopes", "message": "none of them is yours to give"}],
        )
    limit = int(rt.hot["MAX_TOKENS_PER_USER"])
    if await tokens_store.count_live(rt.pool, actor.user_id) >= limit:
        raise Invalid(f"at most {limit} live API tokens per user (MAX_TOKENS_PER_USER); revoke one first")
    expires = datetime.now(UTC) + timedelta(days=days) if days else None
    if actor.token_expires_at is not None and (expires is None or expires > actor.token_expires_at):
        expires = actor.token_expires_at
    return await _mint(rt, actor.user_id, granted, name=name, expires_at=expires, session_id=actor.session_root)


async def create_token_for(rt: Runtime, email: str, scopes: list[str]) -> NewToken:
    """`infosentry token create`: a token for any user, with every scope the user may have unless narrowed."""
    user = await users_store.user_by_email(rt.pool, email)
    granted = auth.expand_scopes(scopes, is_admin=user["is_admin"])
    return await _mint(rt, user["id"], granted, name="cli")


async def _mint(
    conn: Runtime | asyncpg.Connection,
    user_id: int,
    scopes: list[str],
    *,
    name: str,
    kind: str = "api",
    expires_at: datetime | None = None,
    session_id: int | None = None,
) -> NewToken:
    token = auth.new_token()
    row = await tokens_store.insert_token(
        conn.pool if isinstance(conn, Runtime) else conn,
        user_id=user_id,
        token_hash=auth.hash_token(token),
        prefix=token[:10],
        scopes=scopes,
        kind=kind,
        name=name,
        expires_at=expires_at,
        session_id=session_id,
    )
    return NewToken(row["id"], token, scopes, expires_at)


async def revoke_token(rt: Runtime, actor: Actor, token_id: int) -> None:
    if not await tokens_store.revoke_token(rt.pool, token_id, actor.user_id):
        raise NotFound("no such token")


async def revoke_any_token(rt: Runtime, token_id: int) -> None:
    """`infosentry token revoke` (the operator may revoke anyone's)."""
    if not await tokens_store.revoke_token(rt.pool, token_id):
        raise NotFound(f"no live token with id {token_id}")


# --- sign-in --------------------------------------------------------------------------------------------------


def _local_time(when: datetime, tz_name: str) -> str:
    try:
        zone = ZoneInfo(tz_name)
    except (ValueError, KeyError):
        zone = ZoneInfo("UTC")
    return when.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


async def request_link(rt: Runtime, body: dict[str, Any], *, ip: str | None) -> str:
    """Queue a login email for a well-formed address; the same answer whether or not it has an account.
    RateLimited (with retry_after) only when the client IP is over its hourly cap. Returns what to tell."""
    f = Fields(body, {"email"})
    email = f.str("email", required=True, max_len=254)
    if email is not None:
        email = email.lower()
        f.check(valid_email(email), "email", "must be an email address")
    f.done()
    if ip and await rate_limits_store.hit_rate_limit(
        rt.pool, f"login_ip:{ip}", window_seconds=IP_WINDOW, limit=IP_LIMIT
    ):
        log.warning("login link refused: ip over limit", extra={"action": "login_rate_limited_ip", "ip": ip})
        raise RateLimited(
            f"too many login requests from this address; at most {IP_LIMIT} per hour",
            retry_after=max(IP_WINDOW - int(datetime.now(UTC).timestamp()) % IP_WINDOW, 1),
        )
    detail = f"if {email} can receive mail, a login link valid {LINK_MINUTES} minutes is on its way"
    if await rate_limits_store.hit_rate_limit(
        rt.pool, f"login_email:{email}", window_seconds=EMAIL_WINDOW, limit=EMAIL_LIMIT
    ):
        # same answer as success: the caller cannot tell, and the older link stays valid
        log.warning("login link not sent: address over limit", extra={"action": "login_rate_limited_email"})
        return detail
    token = LINK_PREFIX + secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(minutes=LINK_MINUTES)
    language, tz_name = await users_store.user_language(rt.pool, email)
    link = f"{rt.settings.public_url}/api/v1/auth/consume?token={token}"
    rendered = mail.render_login_email(language, link, _local_time(expires, tz_name or rt.settings.tz))
    async with rt.pool.acquire() as conn, conn.transaction():
        link_id = await logins_store.issue_link(
            conn, email=email, token_hash=auth.hash_token(token), expires_at=expires, ip=ip
        )
        await emails_store.insert_email(
            conn,
            emails_store.NewEmail(
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
            ),
        )
    await rt.nudge("send_emails")
    log.info("login link issued", extra={"action": "login_link_issued", "link_id": link_id})
    return detail


async def login_link(rt: Runtime, email: str) -> str:
    """A sign-in link made by the operator (the demo's `--serve`): nothing is mailed and no rate limit applies;
    like an emailed link it works once, for LINK_MINUTES, and voids the address's older links."""
    email = email.strip().lower()
    if not valid_email(email):
        raise BadRequest(f"{email!r} is not an email address")
    token = LINK_PREFIX + secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(minutes=LINK_MINUTES)
    async with rt.pool.acquire() as conn, conn.transaction():
        await logins_store.issue_link(conn, email=email, token_hash=auth.hash_token(token), expires_at=expires, ip=None)
    return f"{rt.settings.public_url}/api/v1/auth/consume?token={token}"


@dataclass
class Session:
    token: str
    token_id: int
    expires_at: datetime
    scopes: list[str]
    user: dict[str, Any]


async def consume_link(rt: Runtime, token: str) -> Session:
    """Spend a login link: creates the account on first login and starts a session (a token of kind
    'session' with every scope of the user). LinkRefused says precisely why a link does not work."""
    token = token.strip()
    if not token:
        raise LinkRefused("login_link_invalid", "Invalid login link", "the token query parameter is required")
    token_hash = auth.hash_token(token)
    async with rt.pool.acquire() as conn, conn.transaction():
        link = await logins_store.consume_link(conn, token_hash)
        if link is None:
            raise await _refusal(conn, token_hash)
        user = await users_store.user_for_login(conn, link["email"])
        scopes = auth.expand_scopes([], is_admin=user["is_admin"])
        expires = datetime.now(UTC) + timedelta(days=SESSION_DAYS)
        session = await _mint(conn, user["id"], scopes, name="login", kind="session", expires_at=expires)
    log.info("login", extra={"action": "login_consumed", "user_id": user["id"], "token_id": session.id})
    return Session(
        token=session.token,
        token_id=session.id,
        expires_at=expires,
        scopes=scopes,
        user={"id": user["id"], "email": user["email"], "is_admin": user["is_admin"]},
    )


async def _refusal(conn: asyncpg.Connection, token_hash: str) -> LinkRefused:
    state = await logins_store.link_state(conn, token_hash)
    if state is None:
        return LinkRefused("login_link_invalid", "Invalid login link", "this login link is not valid")
    if state["used_at"] is not None:
        return LinkRefused("login_link_used", "Login link already used", "this login link was already used")
    if state["voided_at"] is not None:
        return LinkRefused(
            "login_link_superseded", "Login link replaced", "a newer login link was requested; use the latest one"
        )
    return LinkRefused("login_link_expired", "Login link expired", f"login links expire after {LINK_MINUTES} minutes")
