"""Tenancy, driven by the real route table (new routes are covered automatically): user B, with every user scope,
gets 404 (never 403, never data) for each of user A's objects on every authenticated route, B's lists never show
A's objects (also when filtered by A's goal), and nothing of A's changes."""

from __future__ import annotations

import re
from typing import Any

import pytest

from infosentry import auth, openapi
from infosentry.api import routes
from infosentry.api.http import RT
from infosentry.runtime import Runtime
from tests.conftest import bearer, make_user

# path segment before a parameter -> the kind of object it names
RESOURCE_OF = {
    "goals": "goal",
    "sources": "source",
    "blocked_sources": "source",
    "notifications": "notification",
    "runs": "run",
    "tokens": "token",
    "items": "item",
    "users": "user",
}
# valid bodies, so that a refusal cannot come from validation instead of ownership
BODIES: dict[tuple[str, str], Any] = {
    ("PUT", "/api/v1/goals/{id}"): {"name": "mine now", "description": "taken over"},
    ("PUT", "/api/v1/sources/{id}"): {"name": "mine now"},
    ("POST", "/api/v1/items/{id}/feedback"): {"goal_id": "{goal}", "feedback": "dislike", "block_source": True},
}


async def objects_of_a(rt: Runtime) -> dict[str, int]:
    """User A with one of everything (written with SQL, so no route is needed to set the scene)."""
    a, _ = await make_user(rt, "a@example.com")
    pool = rt.pool
    source = await pool.fetchval(
        "INSERT INTO sources (type, url, name, fetch_interval_sec, created_by) "
        "VALUES ('rss', 'https://a.example/feed', 'A feed', 900, $1) RETURNING id",
        a,
    )
    await pool.execute("INSERT INTO subscriptions (user_id, source_id) VALUES ($1, $2)", a, source)
    goal = await pool.fetchval(
        "INSERT INTO goals (user_id, name, description) VALUES ($1, 'A goal', 'what A wants') RETURNING id", a
    )
    item = await pool.fetchval(
        "INSERT INTO items (url, canonical_url, url_hash, title, source_id, title_key) "
        "VALUES ('https://a.example/1', 'https://a.example/1', md5('a1'), 'A item', $1, 'a item') RETURNING id",
        source,
    )
    await pool.execute(
        "INSERT INTO item_sources (item_id, source_id, url) VALUES ($1, $2, 'https://a.example/1')", item, source
    )
    await pool.execute(
        "INSERT INTO matches (goal_id, item_id, score, components) VALUES ($1, $2, 0.9, '{}')", goal, item
    )
    decision = await pool.fetchval(
        "INSERT INTO decisions (goal_id, item_id, tier, status, score) VALUES ($1, $2, 'BATCH', 'pushed', 0.9) "
        "RETURNING id",
        goal,
        item,
    )
    notification = await pool.fetchval(
        "INSERT INTO notifications (user_id, goal_id, item_id, decision_id, tier, score, reason) "
        "VALUES ($1, $2, $3, $4, 'BATCH', 0.9, 'because') RETURNING id",
        a,
        goal,
        item,
        decision,
    )
    run = await pool.fetchval(
        "INSERT INTO agent_runs (goal_id, item_id, trigger, status, input) "
        "VALUES ($1, $2, 'test', 'SUCCESS', '{}') RETURNING id",
        goal,
        item,
    )
    await pool.execute(
        "INSERT INTO feedback (goal_id, item_id, user_id, feedback) VALUES ($1, $2, $3, 'like')", goal, item, a
    )
    await pool.execute("INSERT INTO blocked_sources (goal_id, source_id, user_id) VALUES ($1, $2, $3)", goal, source, a)
    token = await pool.fetchval("SELECT id FROM api_tokens WHERE user_id = $1", a)
    return {
        "user": a,
        "source": source,
        "goal": goal,
        "item": item,
        "notification": notification,
        "run": run,
        "token": token,
    }


SNAPSHOT = [
    "SELECT * FROM goals ORDER BY id",
    "SELECT * FROM sources ORDER BY id",
    "SELECT * FROM subscriptions ORDER BY user_id, source_id",
    "SELECT * FROM notifications ORDER BY id",
    "SELECT * FROM feedback ORDER BY goal_id, item_id",
    "SELECT * FROM blocked_sources ORDER BY goal_id, source_id",
    "SELECT id, revoked_at FROM api_tokens ORDER BY id",
    "SELECT * FROM decisions ORDER BY id",
    "SELECT * FROM users ORDER BY id",
]


async def snapshot(rt: Runtime) -> list[list[dict[str, Any]]]:
    return [[dict(r) for r in await rt.pool.fetch(q)] for q in SNAPSHOT]


def user_routes() -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, OpenAPI operation) of every route a user token can call (no public, no admin routes)."""
    spec = openapi.build(routes())
    out = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            scope = op.get("x-required-scope")
            if scope and not scope.startswith("admin:"):
                out.append((method.upper(), path, op))
    return out


def fill(path: str, objects: dict[str, int]) -> str:
    def one(match: re.Match[str]) -> str:
        before = path[: match.start()].rstrip("/").rsplit("/", 1)[-1]
        kind = RESOURCE_OF.get(before)
        if kind is None:
            pytest.fail(f"teach tests/test_tenancy.py which object '{before}/{{{match.group(1)}}}' names in {path}")
        return str(objects[kind])

    return re.sub(r"\{(\w+)\}", one, path)


def body_for(method: str, path: str, objects: dict[str, int]) -> Any:
    body = BODIES.get((method, path), {} if method in ("POST", "PUT") else None)
    if isinstance(body, dict):
        body = {k: objects["goal"] if v == "{goal}" else v for k, v in body.items()}
    return body


async def test_every_route_hides_another_users_objects(api: Any) -> None:
    rt = api.app[RT]
    a = await objects_of_a(rt)
    _, b = await make_user(rt, "b@example.com", scopes=list(auth.USER_SCOPES))
    before = await snapshot(rt)
    checked = []
    for method, path, _op in user_routes():
        if "{" not in path:
            continue
        url = fill(path, a)
        # every id B could name is A's: the path's, and a goal_id in the query for routes that take one
        resp = await api.request(
            method, url, params={"goal_id": str(a["goal"])}, json=body_for(method, path, a), headers=bearer(b)
        )
        text = await resp.text()
        assert resp.status == 404, f"{method} {url} as another user: {resp.status} {text[:300]}"
        assert resp.content_type == "application/problem+json"
        checked.append((method, path))
    assert await snapshot(rt) == before, "a refused request changed another user's data"
    assert len(checked) >= 5, checked  # the table really drove the test


async def test_lists_never_show_another_users_objects(api: Any) -> None:
    rt = api.app[RT]
    a = await objects_of_a(rt)
    b_id, b = await make_user(rt, "b@example.com", scopes=list(auth.USER_SCOPES))
    checked = []
    for method, path, op in user_routes():
        if method != "GET" or "{" in path:
            continue
        queries = [{}]
        names = {p["name"] for p in op["parameters"] if p["in"] == "query"}
        if "goal_id" in names:
            queries.append({"goal_id": str(a["goal"])})
        for query in queries:
            resp = await api.get(path, params=query, headers=bearer(b))
            if resp.status == 404 and query:
                continue  # filtering by another user's goal: "no such goal" is a fine answer
            assert resp.status == 200, f"GET {path} {query}: {resp.status} {await resp.text()}"
            if resp.content_type != "application/json":
                body = await resp.text()
                assert "a.example" not in body and "A feed" not in body, f"GET {path} shows A's data"
                continue
            body = await resp.json()
            if path == "/api/v1/users/me":
                assert body["id"] == b_id
                continue
            items = body.get("items", body) if isinstance(body, dict) else body
            if path == "/api/v1/tokens":
                assert a["token"] not in [t["id"] for t in items]
                continue
            assert items == [], f"GET {path} {query} shows objects B does not own: {items}"
            checked.append((path, tuple(query)))
    assert len(checked) >= 3, checked
