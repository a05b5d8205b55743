"""Goals API: create with defaults, validation (one 422 listing every bad field), tenancy (404), scopes (403),
version bumps on scored-text edits, pause/resume, delete, the matches listing, and `infosentry goal`."""

from __future__ import annotations

import json
from typing import Any
from unittest.mock import patch

import pytest
from click.testing import CliRunner

from infosentry import embed, match
from infosentry.api.http import RT
from infosentry.cli import main
from infosentry.runtime import Runtime
from infosentry.store import matches as matches_store
from tests.conftest import bearer, make_user
from tests.test_match import AI_GOAL, AI_ITEM, OFF_ITEM, seed_item, seed_source, set_hot

GOAL = {"name": "AI chips", "description": "New AI accelerator chips", "priority_terms": ["Nvidia", " GPU ", "GPU"]}


async def post_goal(api: Any, token: str, **body: Any) -> Any:
    return await api.post("/api/v1/goals", json={**GOAL, **body}, headers=bearer(token))


async def test_create_with_defaults_get_and_list(api: Any) -> None:
    rt: Runtime = api.app[RT]
    await set_hot(rt, DEFAULT_BATCH_WINDOWS="8:00,20:15", DEFAULT_DIGEST_TIME="07:30")
    uid, token = await make_user(rt, "owner@example.com")
    await rt.pool.execute("UPDATE users SET timezone = 'Europe/Paris', language = 'zh' WHERE id = $1", uid)
    resp = await post_goal(api, token)
    assert resp.status == 201, await resp.text()
    goal = await resp.json()
    assert goal["priority_terms"] == ["Nvidia", "GPU"] and goal["negative_terms"] == []
    assert goal["priority_mode"] == "SOFT" and goal["status"] == "active" and goal["version"] == 1
    assert goal["batch_windows"] == ["08:00", "20:15"] and goal["digest_time"] == "07:30"
    assert goal["timezone"] == "Europe/Paris" and goal["email"] == "owner@example.com" and goal["language"] == "zh"
    assert goal["email_is_default"] and goal["embedded"] is False and goal["match_count"] == 0
    # the embed job was nudged (the handler never embeds itself)
    jobs = await rt.pool.fetchval("SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'embed_pending'")
    assert jobs == 1

    second_goal = dict(
        name="Second",
        priority_mode="strict",
        batch_windows=["18:30", "9:05"],
        digest_time="6:00",
        timezone="Asia/Tokyo",
        email="Alerts@Example.com",
        language="en",
        negative_terms=["rumour"],
    )
    # pushes to someone else's address: an admin's choice only (else the service could mail any third party)
    refused = await post_goal(api, token, **second_goal)
    assert refused.status == 422 and (await refused.json())["errors"][0]["field"] == "email"
    await rt.pool.execute("UPDATE users SET is_admin = true WHERE id = $1", uid)
    explicit = await post_goal(api, token, **second_goal)
    assert explicit.status == 201
    second = await explicit.json()
    assert second["priority_mode"] == "STRICT" and second["batch_windows"] == ["09:05", "18:30"]
    assert second["digest_time"] == "06:00" and second["email"] == "alerts@example.com"
    assert not second["email_is_default"] and second["language"] == "en" and second["negative_terms"] == ["rumour"]

    got = await api.get(f"/api/v1/goals/{goal['id']}", headers=bearer(token))
    assert got.status == 200 and (await got.json())["name"] == "AI chips"
    page = await (await api.get("/api/v1/goals?limit=1", headers=bearer(token))).json()
    assert [g["id"] for g in page["items"]] == [goal["id"]] and page["next_cursor"]
    rest = await (await api.get(f"/api/v1/goals?limit=1&cursor={page['next_cursor']}", headers=bearer(token))).json()
    assert [g["id"] for g in rest["items"]] == [second["id"]] and rest["next_cursor"] is None


async def test_deeply_nested_bodies_answer_400_not_500(api: Any) -> None:
    _, token = await make_user(api.app[RT], "deep@example.com")
    deep_valid = '{"name": ' + "[" * 900 + "]" * 900 + "}"  # parses, then the storability walk recurses
    for body in ("[" * 100_000, '{"a": ' * 50_000, "[" * 5000 + "]" * 5000, deep_valid):
        resp = await api.post("/api/v1/goals", data=body, headers={**bearer(token), "Content-Type": "application/json"})
        assert resp.status == 400 and resp.content_type == "application/problem+json", (body[:20], resp.status)
        assert "nested" in (await resp.json())["detail"]


async def test_validation_lists_every_bad_field(api: Any) -> None:
    _, token = await make_user(api.app[RT], "v@example.com")
    resp = await api.post(
        "/api/v1/goals",
        json={
            "priority_mode": "LOUD",
            "batch_windows": ["12:30", "25:00"],
            "timezone": "Mars/Olympus",
            "email": "nope",
            "colour": "red",
            "priority_terms": "AI",
            "digest_time": "9",
        },
        headers=bearer(token),
    )
    assert resp.status == 422 and resp.content_type == "application/problem+json"
    fields = {e["field"] for e in (await resp.json())["errors"]}
    assert fields == {
        "description",
        "priority_mode",
        "batch_windows",
        "timezone",
        "email",
        "colour",
        "priority_terms",
        "digest_time",
    }
    too_many = await post_goal(api, token, batch_windows=["08:00", "12:00", "16:00", "20:00"])
    assert too_many.status == 422
    derived = await post_goal(api, token, name="  ", description="Chip export rules. And the fabs behind them")
    assert derived.status == 201 and (await derived.json())["name"] == "Chip export rules"
    goal_id = (await derived.json())["id"]
    emptied = await api.put(f"/api/v1/goals/{goal_id}", json={"name": " "}, headers=bearer(token))
    assert emptied.status == 422 and (await emptied.json())["errors"][0]["field"] == "name"
    long_desc = await post_goal(api, token, description="x" * 2001)
    assert long_desc.status == 422
    assert (await api.post("/api/v1/goals", data=b"{oops", headers=bearer(token))).status == 400


async def test_tenancy_and_scopes(api: Any) -> None:
    rt: Runtime = api.app[RT]
    _, alice = await make_user(rt, "alice@example.com")
    _, bob = await make_user(rt, "bob@example.com")
    _, reader = await make_user(rt, "reader@example.com", scopes=["goals:read"])
    goal = await (await post_goal(api, alice)).json()
    gid = goal["id"]
    for method, path in [
        ("GET", f"/api/v1/goals/{gid}"),
        ("PUT", f"/api/v1/goals/{gid}"),
        ("DELETE", f"/api/v1/goals/{gid}"),
        ("POST", f"/api/v1/goals/{gid}/pause"),
        ("POST", f"/api/v1/goals/{gid}/resume"),
        ("GET", f"/api/v1/goals/{gid}/matches"),
    ]:
        resp = await api.request(method, path, json={"name": "x"} if method == "PUT" else None, headers=bearer(bob))
        assert resp.status == 404, (method, path)
    assert (await (await api.get("/api/v1/goals", headers=bearer(bob))).json())["items"] == []
    assert (await post_goal(api, reader)).status == 403
    assert (await api.get("/api/v1/goals", headers=bearer(reader))).status == 200
    assert (await api.get("/api/v1/goals/abc", headers=bearer(alice))).status == 404
    assert (await api.get("/api/v1/goals")).status == 401


async def test_edits_bump_the_version_only_for_scored_text(api: Any) -> None:
    rt: Runtime = api.app[RT]
    _, token = await make_user(rt, "edit@example.com")
    gid = (await (await post_goal(api, token)).json())["id"]
    await rt.pool.execute("UPDATE goals SET embedded_version = 1, matched_version = 1 WHERE id = $1", gid)

    async def put(**body: Any) -> dict[str, Any]:
        resp = await api.put(f"/api/v1/goals/{gid}", json=body, headers=bearer(token))
        assert resp.status == 200, await resp.text()
        return await resp.json()

    goal = await put(digest_time="10:00", batch_windows=["07:00"], email=None, language=None)
    assert goal["version"] == 1 and goal["digest_time"] == "10:00" and goal["embedded"] is True
    goal = await put(description="New AI accelerator chips")  # unchanged text: no bump
    assert goal["version"] == 1
    goal = await put(priority_terms=["Nvidia", "GPU", "TPU"])
    assert goal["version"] == 2 and goal["embedded"] is False and goal["name"] == "AI chips"
    goal = await put(negative_terms=["rumour"], priority_mode="STRICT")
    assert goal["version"] == 3
    assert (await api.put(f"/api/v1/goals/{gid}", json={"description": ""}, headers=bearer(token))).status == 422


async def test_pause_resume_delete(api: Any) -> None:
    rt: Runtime = api.app[RT]
    _, token = await make_user(rt, "life@example.com")
    gid = (await (await post_goal(api, token)).json())["id"]
    await rt.pool.execute("UPDATE goals SET embedded_version = 1, matched_version = 1 WHERE id = $1", gid)
    paused = await (await api.post(f"/api/v1/goals/{gid}/pause", headers=bearer(token))).json()
    assert paused["status"] == "paused" and paused["version"] == 1
    again = await api.post(f"/api/v1/goals/{gid}/pause", headers=bearer(token))
    assert again.status == 200  # idempotent
    resumed = await (await api.post(f"/api/v1/goals/{gid}/resume", headers=bearer(token))).json()
    assert resumed["status"] == "active" and resumed["backfilled"] is False  # missed items get scored
    filtered = await (await api.get("/api/v1/goals?status=paused", headers=bearer(token))).json()
    assert filtered["items"] == []
    assert (await api.delete(f"/api/v1/goals/{gid}", headers=bearer(token))).status == 204
    assert (await api.get(f"/api/v1/goals/{gid}", headers=bearer(token))).status == 404
    assert (await api.delete(f"/api/v1/goals/{gid}", headers=bearer(token))).status == 404


async def test_an_item_ranked_at_read_time_gets_the_score_its_row_would_have(api: Any, monkeypatch: Any) -> None:
    """Pairs that only their meaning scores are stored from DIGEST_MIN_SCORE on; the listing ranks the rest at read
    time, and must give each the score (so the place) a stored row would have given it."""
    rt: Runtime = api.app[RT]
    uid, token = await make_user(rt, "tail@example.com")
    src = await seed_source(rt, uid)
    gid = (await (await post_goal(api, token, name=AI_GOAL[0], description=AI_GOAL[1], priority_terms=[])).json())["id"]
    titles = [
        AI_ITEM,
        ("Chip makers race to build data-centre processors", "Demand for servers lifts semiconductor sales."),
        ("Startup raises funds for machine learning software", "Its tools train models faster."),
        ("Smartphone sales slow in Europe", "Consumers keep their phones longer."),
        ("Electric car maker opens a new factory", "Battery output will double."),
        OFF_ITEM,
        ("Football club signs a new striker", "The striker joins on a three-year deal."),
        ("Rain expected over the weekend", "Forecasters warn of floods in the north."),
    ]
    ids = [await seed_item(rt, src, *t) for t in titles]
    await embed.run(rt)
    listed = (await (await api.get(f"/api/v1/goals/{gid}/matches", headers=bearer(token))).json())["items"]
    assert {m["item"]["id"] for m in listed} == set(ids)
    read_time = {m["item"]["id"]: m["score"] for m in listed if m["components"].get("ranked_at_read")}
    assert read_time and len(read_time) < len(ids)
    stored = await rt.pool.fetchval("SELECT count(*) FROM matches WHERE goal_id = $1", gid)
    assert stored == len(ids) - len(read_time)

    # the same items with every pair stored (an operator's DIGEST_MIN_SCORE of 0 makes every pair decidable):
    # the scores the rows get
    monkeypatch.setattr(match, "STORE_FLOOR", 0.0)
    await set_hot(rt, DIGEST_MIN_SCORE=0.0)
    await match.match_items(rt, ids, model=embed.model_name(rt))
    rows = {
        r["item_id"]: r["score"]
        for r in await rt.pool.fetch("SELECT item_id, score FROM matches WHERE goal_id = $1", gid)
    }
    assert set(rows) == set(ids)
    for item, score in read_time.items():
        assert score == pytest.approx(rows[item], abs=1e-3), (item, score, rows[item])
    assert [m["item"]["id"] for m in listed] == sorted(ids, key=lambda i: (rows[i], i), reverse=True)


async def test_matches_best_first_with_components_reasons_and_decision(api: Any) -> None:
    rt: Runtime = api.app[RT]
    uid, token = await make_user(rt, "m@example.com")
    src = await seed_source(rt, uid, name="Tech feed")
    gid = (await (await post_goal(api, token, name=AI_GOAL[0], description=AI_GOAL[1])).json())["id"]
    ai = await seed_item(rt, src, *AI_ITEM)
    off = await seed_item(rt, src, *OFF_ITEM)
    off2 = await seed_item(rt, src, "Football club signs a new striker", "The striker joins on a three-year deal.")
    others = [await seed_item(rt, src, f"Nvidia GPU news number {i}", "AI accelerators") for i in range(3)]
    bob, _ = await make_user(rt, "bob@example.com")
    hidden = await seed_item(rt, await seed_source(rt, bob), *AI_ITEM)  # another user's feed
    await embed.run(rt)
    await rt.pool.execute(
        """INSERT INTO decisions (goal_id, item_id, tier, status, score, reason)
           VALUES ($1, $2, 'BATCH', 'pending', 0.8, 'score above BATCH_THRESHOLD')""",
        gid,
        ai,
    )
    url = f"/api/v1/goals/{gid}/matches"
    everything = await (await api.get(url, headers=bearer(token))).json()
    scores = [m["score"] for m in everything["items"]]
    assert scores == sorted(scores, reverse=True)
    # every item the goal sees is listed: the stored pairs, then the rest ranked at read time below them
    listed = {m["item"]["id"]: m for m in everything["items"]}
    assert set(listed) == {ai, off, off2, *others} and hidden not in listed
    assert await rt.pool.fetchval("SELECT count(*) FROM matches WHERE goal_id = $1 AND item_id = $2", gid, off) == 0
    assert listed[off]["components"]["ranked_at_read"] and listed[off]["score"] <= match.decide_floor(rt)
    assert listed[off]["reasons"] == [] and listed[off]["decision"] is None
    first = next(m for m in everything["items"] if m["item"]["id"] == ai)
    assert first["item"]["title"] == AI_ITEM[0] and first["item"]["source"]["name"] == "Tech feed"
    assert first["components"]["model"] == "local:use-multilingual-v3+wordllama" and first["reasons"]
    assert first["decision"]["tier"] == "BATCH" and first["decision"]["status"] == "pending"
    assert all(m["decision"] is None for m in everything["items"] if m["item"]["id"] in others)
    assert first["is_backfill"] is False  # the items arrived after the goal: news to it, not backfill

    # cursor pagination walks the same order without gaps or repeats
    seen, cursor = [], None
    while True:
        page = await (
            await api.get(url + "?limit=2" + (f"&cursor={cursor}" if cursor else ""), headers=bearer(token))
        ).json()
        seen += [m["item"]["id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [m["item"]["id"] for m in everything["items"]]
    # a page filled by stored pairs at or above the floor is final: no scan of the goal's other items
    scans: list[int] = []
    scan = matches_store.unstored_matches

    async def counted(*args: Any, **kwargs: Any) -> Any:
        scans.append(1)
        return await scan(*args, **kwargs)

    with patch.object(matches_store, "unstored_matches", counted):
        top = await (await api.get(url + "?limit=1", headers=bearer(token))).json()
        assert top["items"][0]["item"]["id"] == everything["items"][0]["item"]["id"]
        assert top["items"][0]["score"] > match.decide_floor(rt) and scans == []
        assert len((await (await api.get(url, headers=bearer(token))).json())["items"]) == len(listed)
        assert scans == [1]
    high = await (await api.get(url + f"?min_score={scores[1]}", headers=bearer(token))).json()
    assert len(high["items"]) == 2 or all(m["score"] >= scores[1] for m in high["items"])
    assert (await api.get(url + "?min_score=2", headers=bearer(token))).status == 400
    assert (await api.get(url + "?cursor=!!", headers=bearer(token))).status == 400


def test_cli_goal_add_and_list(dsn: str, tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.setenv("INFOSENTRY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    runner = CliRunner()

    def cli(*args: str) -> Any:
        return runner.invoke(main, list(args), catch_exceptions=False)

    assert cli("user", "create", "--email", "cli@example.com").exit_code == 0
    out = cli(
        "goal",
        "add",
        "--email",
        "cli@example.com",
        "--name",
        "EVs",
        "--description",
        "Electric cars",
        "--term",
        "Tesla",
        "--term",
        "BYD",
        "--negative",
        "rumour",
        "--mode",
        "strict",
    )
    assert out.exit_code == 0, out.output
    assert out.stdout.startswith("goal 1 added: EVs (active, STRICT, cli@example.com)")
    bad = cli("goal", "add", "--email", "cli@example.com", "--name", "x", "--description", " ")
    assert bad.exit_code == 1 and "description" in bad.stderr
    rows = json.loads(cli("goal", "list", "--json").stdout)
    assert [(r["name"], r["priority_terms"], r["negative_terms"]) for r in rows] == [
        ("EVs", ["Tesla", "BYD"], ["rumour"])
    ]
    table = cli("goal", "list", "--email", "cli@example.com").stdout
    assert "EVs" in table and "STRICT" in table
