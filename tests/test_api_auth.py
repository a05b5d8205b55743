"""Magic-link login: 202 that reveals nothing, hashed single-use links, newer voids older, expiry, rate limits
per address and per IP, session tokens with the user's scopes; the emailed link's GET is a confirmation page that
spends nothing, its POST spends the link (JSON for API clients, a cookie for the browser's form)."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from infosentry import auth
from infosentry.api.auth_links import EMAIL_LIMIT, IP_LIMIT
from infosentry.api.http import RT, client_ip
from tests.conftest import bearer, make_user


async def request_link(api: Any, email: str, **headers: str) -> Any:
    return await api.post("/api/v1/auth/request_link", json={"email": email}, headers=headers)


async def last_link(api: Any, email: str) -> str:
    """The token in the newest login email to `email` (what the user clicks)."""
    body = await api.app[RT].pool.fetchval(
        "SELECT body_text FROM emails WHERE kind = 'login' AND to_addr = $1 ORDER BY id DESC LIMIT 1", email
    )
    match = re.search(r"/api/v1/auth/consume\?token=(\S+)", body)
    assert match, body
    return match.group(1)


async def consume(api: Any, token: str) -> Any:
    """What an API client does with the link: POST it (the GET only shows the confirmation page)."""
    return await api.post("/api/v1/auth/consume", params={"token": token})


async def test_login_round_trip_creates_the_user_and_a_session(api: Any) -> None:
    rt = api.app[RT]
    resp = await request_link(api, "  New.User@Example.com ")
    assert resp.status == 202
    assert (await resp.json())["status"] == "accepted"
    # no account until the address proved it receives mail
    assert await rt.pool.fetchval("SELECT count(*) FROM users") == 0
    mail = await rt.pool.fetchrow("SELECT * FROM emails WHERE kind = 'login'")
    assert mail["to_addr"] == "new.user@example.com" and mail["status"] == "pending"
    assert "expires at" in mail["body_text"] and mail["body_html"]
    token = await last_link(api, "new.user@example.com")
    assert mail["body_text"].count(token) == 1
    # stored hashed only
    link = await rt.pool.fetchrow("SELECT * FROM login_links")
    assert link["token_hash"] == auth.hash_token(token)
    assert token not in " ".join(str(v) for v in link.values())

    resp = await consume(api, token)
    assert resp.status == 200
    session = await resp.json()
    assert session["user"]["email"] == "new.user@example.com" and session["user"]["is_admin"] is False
    assert "admin:read" not in session["scopes"] and "goals:write" in session["scopes"]
    row = await rt.pool.fetchrow("SELECT * FROM api_tokens WHERE id = $1", session["token_id"])
    assert row["kind"] == "session" and row["token_hash"] == auth.hash_token(session["token"])
    days = (row["expires_at"] - row["created_at"]).total_seconds() / 86400
    assert 29.9 < days < 30.1
    me = await api.get("/api/v1/users/me", headers=bearer(session["token"]))
    assert me.status == 200
    assert (await me.json())["last_login_at"] is not None


async def test_link_is_single_use(api: Any) -> None:
    await request_link(api, "once@example.com")
    token = await last_link(api, "once@example.com")
    assert (await consume(api, token)).status == 200
    again = await consume(api, token)
    assert again.status == 400
    body = await again.json()
    assert again.content_type == "application/problem+json"
    assert body["title"] == "Login link already used" and body["type"].endswith("login_link_used")


async def test_newer_link_voids_older(api: Any) -> None:
    await request_link(api, "twice@example.com")
    older = await last_link(api, "twice@example.com")
    await request_link(api, "twice@example.com")
    newer = await last_link(api, "twice@example.com")
    assert older != newer
    resp = await consume(api, older)
    assert resp.status == 400 and (await resp.json())["title"] == "Login link replaced"
    assert (await consume(api, newer)).status == 200


async def test_expired_invalid_and_missing_links(api: Any) -> None:
    rt = api.app[RT]
    await request_link(api, "late@example.com")
    token = await last_link(api, "late@example.com")
    await rt.pool.execute("UPDATE login_links SET expires_at = now() - interval '1 second'")
    resp = await consume(api, token)
    assert resp.status == 400 and (await resp.json())["title"] == "Login link expired"
    for bad in ("isl_nope", "x" * 300):
        resp = await consume(api, bad)
        assert resp.status == 400 and (await resp.json())["title"] == "Invalid login link"
    resp = await api.post("/api/v1/auth/consume")
    assert resp.status == 400 and (await resp.json())["title"] == "Invalid login link"
    assert await rt.pool.fetchval("SELECT count(*) FROM users") == 0


async def test_link_expires_after_30_minutes(api: Any) -> None:
    await request_link(api, "clock@example.com")
    row = await api.app[RT].pool.fetchrow("SELECT created_at, expires_at FROM login_links")
    assert abs((row["expires_at"] - row["created_at"]).total_seconds() - 1800) < 5


async def test_existing_admin_gets_admin_scopes_and_known_address_looks_the_same(api: Any) -> None:
    rt = api.app[RT]
    await make_user(rt, "boss@example.com", admin=True)
    known = await request_link(api, "boss@example.com")
    unknown = await request_link(api, "nobody@example.com")
    assert known.status == unknown.status == 202
    k, u = await known.json(), await unknown.json()
    assert set(k) == set(u) and k["status"] == u["status"]
    session = await (await consume(api, await last_link(api, "boss@example.com"))).json()
    assert session["user"]["is_admin"] is True and "admin:write" in session["scopes"]
    assert (await api.get("/api/v1/admin/config", headers=bearer(session["token"]))).status == 200


async def test_bad_requests(api: Any) -> None:
    for body in ({"email": "not-an-address"}, {"email": ""}, {}, {"email": "a@b.c", "extra": 1}, {"email": 5}):
        resp = await api.post("/api/v1/auth/request_link", json=body)
        assert resp.status == 422, body
    resp = await api.post("/api/v1/auth/request_link", data=b"{", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert await api.app[RT].pool.fetchval("SELECT count(*) FROM login_links") == 0


async def test_per_address_limit_still_answers_202_but_sends_nothing(api: Any) -> None:
    rt = api.app[RT]
    for _ in range(EMAIL_LIMIT):
        assert (await request_link(api, "flood@example.com")).status == 202
    newest = await last_link(api, "flood@example.com")
    resp = await request_link(api, "flood@example.com")
    assert resp.status == 202
    assert await rt.pool.fetchval("SELECT count(*) FROM emails WHERE to_addr = 'flood@example.com'") == EMAIL_LIMIT
    # the over-limit request voided nothing: the newest link still works
    assert (await consume(api, newest)).status == 200
    # other addresses are unaffected
    assert (await request_link(api, "calm@example.com")).status == 202
    assert await rt.pool.fetchval("SELECT count(*) FROM emails WHERE to_addr = 'calm@example.com'") == 1


async def test_per_ip_limit_answers_429(api: Any) -> None:
    for i in range(IP_LIMIT):
        assert (await request_link(api, f"u{i}@example.com")).status == 202
    resp = await request_link(api, "one-more@example.com")
    assert resp.status == 429
    assert resp.content_type == "application/problem+json"
    assert 0 < int(resp.headers["Retry-After"]) <= 3600
    assert await api.app[RT].pool.fetchval("SELECT count(*) FROM emails WHERE to_addr = 'one-more@example.com'") == 0


async def test_forwarded_address_is_trusted_only_from_loopback(api: Any) -> None:
    """The test client connects from 127.0.0.1 (our own proxy's position): X-Forwarded-For names the client."""
    rt = api.app[RT]
    for i in range(IP_LIMIT):
        assert (await request_link(api, f"p{i}@example.com", **{"X-Forwarded-For": "203.0.113.7"})).status == 202
    assert (await request_link(api, "p@example.com", **{"X-Forwarded-For": "203.0.113.7"})).status == 429
    assert (await request_link(api, "q@example.com", **{"X-Forwarded-For": "203.0.113.8"})).status == 202
    ips = {str(r["requested_ip"]) for r in await rt.pool.fetch("SELECT DISTINCT requested_ip FROM login_links")}
    assert ips == {"203.0.113.7", "203.0.113.8"}


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "client"),
    [
        # the default: only loopback is a proxy of ours
        (("127.0.0.0/8",), "127.0.0.1", "203.0.113.7", "203.0.113.7"),
        (("127.0.0.0/8",), "198.51.100.9", "203.0.113.7", "198.51.100.9"),  # forged by a stranger: ignored
        # behind Docker's port proxy (172.17.0.1) and nginx: the bridge is listed, every client has its own bucket
        (("127.0.0.0/8", "172.16.0.0/12"), "172.17.0.1", "203.0.113.7", "203.0.113.7"),
        (("127.0.0.0/8",), "172.17.0.1", "203.0.113.7", "172.17.0.1"),  # not listed: one bucket for everyone
        # a chain: the client's own header is believed no further than our first proxy
        (("127.0.0.0/8", "10.0.0.0/8"), "127.0.0.1", "6.6.6.6, 203.0.113.7, 10.1.2.3", "203.0.113.7"),
        (("127.0.0.0/8",), "127.0.0.1", "garbage", "127.0.0.1"),
    ],
)
def test_client_ip_follows_trusted_proxies_only(
    trusted: tuple[str, ...], peer: str, forwarded: str, client: str
) -> None:
    app = web.Application()
    app[RT] = SimpleNamespace(settings=SimpleNamespace(trusted_proxies=trusted))  # type: ignore[assignment]

    class Transport:  # what the connection tells aiohttp about the peer
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return (peer, 40000) if name == "peername" else default

    request = make_mocked_request("GET", "/", headers={"X-Forwarded-For": forwarded}, app=app, transport=Transport())
    assert client_ip(request) == client


async def test_token_use_is_recorded_at_most_once_a_minute(api: Any) -> None:
    """Authentication is a read on the hot path; last_used_at still tells an operator which tokens are alive."""
    rt = api.app[RT]
    _, token = await make_user(rt, "busy@example.com")
    query = "SELECT last_used_at FROM api_tokens WHERE token_hash = $1"
    assert await rt.pool.fetchval(query, auth.hash_token(token)) is None
    assert (await api.get("/api/v1/users/me", headers=bearer(token))).status == 200
    first = await rt.pool.fetchval(query, auth.hash_token(token))
    assert first is not None
    assert (await api.get("/api/v1/users/me", headers=bearer(token))).status == 200
    assert await rt.pool.fetchval(query, auth.hash_token(token)) == first
    await rt.pool.execute("UPDATE api_tokens SET last_used_at = now() - interval '2 minutes'")
    assert (await api.get("/api/v1/users/me", headers=bearer(token))).status == 200
    assert await rt.pool.fetchval(query, auth.hash_token(token)) > first


async def test_the_emailed_link_opens_a_page_that_spends_nothing(api: Any) -> None:
    """Mail scanners prefetch links: any number of GETs leave the link usable."""
    rt = api.app[RT]
    await request_link(api, "scanned@example.com")
    token = await last_link(api, "scanned@example.com")
    for _ in range(3):
        page = await api.get("/api/v1/auth/consume", params={"token": token})
        assert page.status == 200 and page.content_type == "text/html"
        assert page.headers["Cache-Control"].startswith("no-store")
        html = await page.text()
        assert 'action="/api/v1/auth/consume"' in html and token in html
    assert await rt.pool.fetchval("SELECT used_at FROM login_links") is None
    assert await rt.pool.fetchval("SELECT count(*) FROM users") == 0
    resp = await api.post("/api/v1/auth/consume", json={"token": token})  # a JSON body works too
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    assert (await resp.json())["user"]["email"] == "scanned@example.com"


async def test_the_confirmation_form_sets_a_session_cookie(api: Any) -> None:
    await request_link(api, "browser@example.com")
    token = await last_link(api, "browser@example.com")
    page = await api.get("/api/v1/auth/consume", params={"token": token})
    csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text()).group(1)
    # without the page's double-submit cookie (a form posted from another site) nothing is spent
    api.session.cookie_jar.clear()
    forged = await api.post("/api/v1/auth/consume", data={"token": token, "csrf": csrf}, allow_redirects=False)
    assert forged.status == 403 and "infosentry_session" not in forged.cookies
    assert await api.app[RT].pool.fetchval("SELECT used_at FROM login_links") is None
    page = await api.get("/api/v1/auth/consume", params={"token": token})
    csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text()).group(1)
    resp = await api.post("/api/v1/auth/consume", data={"token": token, "csrf": csrf}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/inbox"
    assert resp.headers["Cache-Control"].startswith("no-store")
    cookie = resp.cookies["infosentry_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and not cookie["secure"]  # plain http in tests
    assert int(cookie["max-age"]) == 30 * 86400
    row = await api.app[RT].pool.fetchrow(
        "SELECT * FROM api_tokens WHERE token_hash = $1", auth.hash_token(cookie.value)
    )
    assert row["kind"] == "session"
    inbox = await api.get("/inbox", allow_redirects=False)
    assert inbox.status == 200
    # a used link's form answers a page that says so (not JSON)
    again = await api.post("/api/v1/auth/consume", data={"token": token, "csrf": csrf}, allow_redirects=False)
    assert again.status in (400, 403) and again.content_type == "text/html"
