"""Foundation: health, error shapes, auth and scopes, request limits."""

from __future__ import annotations

from urllib.parse import urlsplit

import psycopg

from infosentry import db
from infosentry.api.http import RT
from tests.conftest import bearer, make_user


async def test_health_ok(api) -> None:
    resp = await api.get("/health")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}
    assert resp.headers["X-Request-Id"]


async def test_health_503_when_database_gone(api, dsn, pg_base_uri) -> None:
    name = urlsplit(dsn).path.lstrip("/")
    with psycopg.connect(db.with_database(pg_base_uri, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    resp = await api.get("/health")
    assert resp.status == 503


async def test_unknown_route_is_problem_json(api) -> None:
    resp = await api.get("/api/v1/nope")
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["status"] == 404 and body["title"] and "type" in body and "detail" in body


async def test_missing_and_bad_token(api) -> None:
    resp = await api.get("/api/v1/users/me")
    assert resp.status == 401
    assert resp.content_type == "application/problem+json"
    resp = await api.get("/api/v1/users/me", headers=bearer("isk_wrong"))
    assert resp.status == 401


async def test_scope_is_enforced(api) -> None:
    rt = api.app[RT]
    _, token = await make_user(rt, "scoped@example.com", scopes=["sources:read"])
    resp = await api.get("/api/v1/users/me", headers=bearer(token))
    assert resp.status == 403
    assert "goals:read" in (await resp.json())["detail"]


async def test_revoked_token_is_refused(api) -> None:
    rt = api.app[RT]
    _, token = await make_user(rt, "rev@example.com")
    assert (await api.get("/api/v1/users/me", headers=bearer(token))).status == 200
    tokens = (await (await api.get("/api/v1/tokens", headers=bearer(token))).json())["items"]
    resp = await api.delete(f"/api/v1/tokens/{tokens[0]['id']}", headers=bearer(token))
    assert resp.status == 204
    assert (await api.get("/api/v1/users/me", headers=bearer(token))).status == 401


async def test_bad_json_and_unknown_fields(api) -> None:
    rt = api.app[RT]
    _, token = await make_user(rt, "json@example.com")
    resp = await api.put("/api/v1/users/me", data=b"{not json", headers=bearer(token))
    assert resp.status == 400
    resp = await api.put("/api/v1/users/me", json=[1, 2], headers=bearer(token))
    assert resp.status == 400
    resp = await api.put("/api/v1/users/me", json={"timezone": 5, "colour": "red"}, headers=bearer(token))
    assert resp.status == 422
    fields = {e["field"] for e in (await resp.json())["errors"]}
    assert fields == {"timezone", "colour"}
    resp = await api.put("/api/v1/users/me", json={"display_name": "a\x00b"}, headers=bearer(token))
    assert resp.status == 400 and "NUL" in (await resp.json())["detail"]
    resp = await api.put("/api/v1/users/me", data=b'{"display_name": "\\ud800"}', headers=bearer(token))
    assert resp.status == 400
    resp = await api.put("/api/v1/users/me", json={"timezone": "Mars/Olympus"}, headers=bearer(token))
    assert resp.status == 422
    resp = await api.put("/api/v1/users/me", json={"timezone": "Europe/Paris", "language": "zh"}, headers=bearer(token))
    assert resp.status == 200
    assert (await resp.json())["timezone"] == "Europe/Paris"


async def test_body_too_large(api) -> None:
    rt = api.app[RT]
    _, token = await make_user(rt, "big@example.com")
    resp = await api.put("/api/v1/users/me", data=b"x" * (2 * 1024 * 1024), headers=bearer(token))
    assert resp.status == 413
    assert resp.content_type == "application/problem+json"


async def test_token_cannot_exceed_creator(api) -> None:
    rt = api.app[RT]
    _, token = await make_user(rt, "small@example.com", scopes=["goals"])
    resp = await api.post("/api/v1/tokens", json={"scopes": ["goals", "sources"]}, headers=bearer(token))
    assert resp.status == 201
    assert set((await resp.json())["scopes"]) == {"goals:read", "goals:write"}
    resp = await api.post("/api/v1/tokens", json={"scopes": ["admin"]}, headers=bearer(token))
    assert resp.status == 422


async def test_forged_cursors_are_400_not_500(api) -> None:
    import base64
    import json

    rt = api.app[RT]
    _, token = await make_user(rt, "cursor@example.com")

    def forge(key: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")

    for path in ("/api/v1/notifications", "/api/v1/goals", "/api/v1/sources", "/api/v1/agent/runs"):
        for key in ([10**30], [True], ["x" * 100], {"a": 1}, []):
            resp = await api.get(path, params={"cursor": forge(key)}, headers=bearer(token))
            assert resp.status == 400, (path, key, resp.status)
        resp = await api.get(path, params={"cursor": "%%%not-base64"}, headers=bearer(token))
        assert resp.status == 400


async def test_pooled_connections_skip_the_reset_round_trip_yet_leave_no_lock_behind(rt) -> None:
    """Release sends no reset query; the session advisory locks the service takes are released by their
    holders (decide's chunk lock, the alerts tick), so a connection handed out next can take them."""
    from infosentry import alerts, decide
    from infosentry.store import decisions as decisions_store

    async with rt.pool.acquire() as conn:
        assert isinstance(conn, db.PooledConnection) and conn.get_reset_query() == ""
    async with decide._decide_lock(rt, 0.0) as got:
        assert got
    assert not (await alerts.tick(rt)).skipped
    async with rt.pool.acquire() as a, rt.pool.acquire() as b:
        # nothing is held on any pooled connection: both locks are free for whoever asks
        held = await a.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert held == 0
        assert await b.fetchval("SELECT pg_try_advisory_lock($1)", decisions_store.DECIDE_LOCK)
        await b.execute("SELECT pg_advisory_unlock_all()")


async def test_list_routes_read_from_the_replica_when_one_is_set(settings, pg_base_uri, template_dsn) -> None:
    """DATABASE_READ_URL: the matches listing and the inbox read from it, everything else from the primary. The
    'replica' here is an empty database of the same schema, so a listing that went to the primary would show the
    rows written there."""
    from dataclasses import replace

    from infosentry.domain import Actor
    from infosentry.domain import goals as goals_domain
    from infosentry.domain import inbox as inbox_domain
    from infosentry.runtime import open_runtime
    from tests import pushkit as kit
    from tests.conftest import _admin

    replica = f"replica_{urlsplit(settings.database_url).path.lstrip('/')}"
    with _admin(pg_base_uri) as conn:
        conn.execute(f'CREATE DATABASE "{replica}" TEMPLATE "{urlsplit(template_dsn).path.lstrip("/")}"')
    try:
        async with open_runtime(replace(settings, database_read_url=db.with_database(pg_base_uri, replica))) as rt:
            user_id, _ = await make_user(rt, "reader@example.com")
            source_id = await kit.source(rt, user_id)
            goal_id = await kit.goal(rt, user_id)
            item_id = await kit.item(rt, source_id, "Chip exports rise")
            await kit.match(rt, goal_id, item_id, 0.9)
            await rt.pool.execute(
                """INSERT INTO notifications (user_id, goal_id, item_id, tier, score, reason)
                   VALUES ($1, $2, $3, 'BATCH', 0.9, 'test')""",
                user_id,
                goal_id,
                item_id,
            )
            actor = Actor(user_id=user_id, email="reader@example.com")
            assert await goals_domain.get(rt, actor, goal_id)  # the goal itself: the primary
            assert await goals_domain.matches(rt, actor, goal_id, min_score=0.5) == []
            assert await inbox_domain.notifications(rt, actor) == []
            assert rt.reader is not rt.pool
            plain = replace(rt, read_pool=None)  # without a replica the same calls list the primary's rows
            assert [m["item"]["id"] for m in await goals_domain.matches(plain, actor, goal_id, min_score=0.5)] == [
                item_id
            ]
            assert [n["item"]["id"] for n in await inbox_domain.notifications(plain, actor)] == [item_id]
    finally:
        with _admin(pg_base_uri) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{replica}" WITH (FORCE)')
