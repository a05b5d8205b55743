"""What the web app added to the domain, through the JSON API where users would expect it: tokens minted under a
web session die with it (issue 12 item 10), per-goal BATCH/DIGEST switches honoured by the push step, the inbox
link of every email, term suggestions (LLM or the items' words), the preview and send-now of the next batch and
digest email, mark-all-read and the tier filter."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from infosentry import push
from infosentry.api import create_app
from infosentry.api.http import RT
from infosentry.domain import Actor, goals
from infosentry.runtime import open_runtime
from tests import pushkit
from tests.conftest import bearer
from tests.webkit import seed_user, session_token


async def test_a_token_minted_by_a_session_cannot_outlive_it_nor_survive_its_revocation(api: Any) -> None:
    rt = api.app[RT]
    seeded = await seed_user(rt, notifications=0)
    session = seeded.token
    resp = await api.post("/api/v1/tokens", json={"name": "child", "expires_in_days": 3650}, headers=bearer(session))
    assert resp.status == 201
    child = await resp.json()
    session_row = await rt.pool.fetchrow("SELECT * FROM api_tokens WHERE kind = 'session'")
    child_row = await rt.pool.fetchrow("SELECT * FROM api_tokens WHERE id = $1", child["id"])
    assert child_row["session_id"] == session_row["id"]
    assert child_row["expires_at"] == session_row["expires_at"]  # capped at the session's end
    # a grandchild (minted by the child) is tied to the same session
    resp = await api.post("/api/v1/tokens", json={"name": "grandchild"}, headers=bearer(child["token"]))
    grandchild = await resp.json()
    assert (await rt.pool.fetchval("SELECT session_id FROM api_tokens WHERE id = $1", grandchild["id"])) == (
        session_row["id"]
    )
    for token in (child["token"], grandchild["token"]):
        assert (await api.get("/api/v1/goals", headers=bearer(token))).status == 200
    # the session expiring is enough, whatever the children's own expiry says
    await rt.pool.execute("UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE kind = 'session'")
    for token in (child["token"], grandchild["token"]):
        assert (await api.get("/api/v1/goals", headers=bearer(token))).status == 401
    await rt.pool.execute("UPDATE api_tokens SET expires_at = now() + interval '1 day' WHERE kind = 'session'")
    assert (await api.get("/api/v1/goals", headers=bearer(child["token"]))).status == 200
    # revoking the session (signing out) revokes what it minted
    resp = await api.delete(f"/api/v1/tokens/{session_row['id']}", headers=bearer(child["token"]))
    assert resp.status == 204
    revoked = await rt.pool.fetchval("SELECT count(*) FROM api_tokens WHERE revoked_at IS NOT NULL")
    assert revoked == 3
    for token in (session, child["token"], grandchild["token"]):
        assert (await api.get("/api/v1/goals", headers=bearer(token))).status == 401


async def test_tokens_of_a_plain_api_token_are_not_tied_to_a_session(api: Any) -> None:
    rt = api.app[RT]
    from tests.conftest import make_user

    _, token = await make_user(rt, "cli@example.com")
    resp = await api.post("/api/v1/tokens", json={"expires_in_days": 5}, headers=bearer(token))
    row = await rt.pool.fetchrow("SELECT * FROM api_tokens WHERE id = $1", (await resp.json())["id"])
    assert row["session_id"] is None and row["expires_at"] > datetime.now(UTC) + timedelta(days=4)


async def test_batch_and_digest_switches_are_honoured(rt: Any) -> None:
    now = datetime.now(UTC)
    user = await rt.pool.fetchval("INSERT INTO users (email) VALUES ('sw@example.com') RETURNING id")
    source = await pushkit.source(rt, user)
    tz = pushkit.midday_zone(now)
    earlier = pushkit.hhmm(now - timedelta(minutes=10), tz)
    made = now - timedelta(hours=1)
    on = await pushkit.goal(rt, user, "On", timezone=tz, batch_windows=[earlier], digest_time=earlier, created_at=made)
    off = await pushkit.goal(
        rt, user, "Off", timezone=tz, batch_windows=[earlier], digest_time=earlier, created_at=made
    )
    actor = Actor(user_id=user, email="sw@example.com")
    changed = await goals.update(rt, actor, off, {"batch_enabled": False, "digest_enabled": False})
    assert changed["batch_enabled"] is False and changed["digest_enabled"] is False
    for goal_id in (on, off):
        for score in (0.8, 0.65):  # one BATCH, one DIGEST
            item = await pushkit.item(rt, source)
            await pushkit.match(rt, goal_id, item, score)
    await pushkit.decide_all(rt)
    report = await push.flush(rt, now)
    assert report.batch == 1 and report.digest == 1  # only the goal with its switches on
    assert {n["goal_id"] for n in await pushkit.notifications(rt)} == {on}
    # every push email links to its goal's inbox page
    for email in await pushkit.emails(rt):
        assert f"http://127.0.0.1:8000/inbox?goal={on}" in email["body_text"]
        assert f'href="http://127.0.0.1:8000/inbox?goal={on}"' in email["body_html"]


async def test_preview_changes_nothing_and_send_now_pushes(api: Any) -> None:
    rt = api.app[RT]
    seeded = await seed_user(rt, notifications=0)  # 4 matches with pending decisions
    goal = seeded.goal_ids[1]  # its pending ones: a BATCH and an IMMEDIATE
    before = await pushkit.decisions(rt, goal)
    resp = await api.get(f"/api/v1/goals/{goal}/next_email", params={"kind": "batch"}, headers=bearer(seeded.token))
    preview = await resp.json()
    assert resp.status == 200 and preview["items"] >= 1 and preview["subject"] and "<html" in preview["html"]
    assert f"/inbox?goal={goal}" in preview["text"]
    assert await pushkit.decisions(rt, goal) == before and await pushkit.emails(rt) == []
    resp = await api.post(f"/api/v1/goals/{goal}/send_now", json={"kind": "batch"}, headers=bearer(seeded.token))
    sent = await resp.json()
    assert resp.status == 200 and sent["items"] == preview["items"] and sent["email_id"]
    assert len(await pushkit.notifications(rt, goal)) == preview["items"]
    again = await (
        await api.post(f"/api/v1/goals/{goal}/send_now", json={"kind": "batch"}, headers=bearer(seeded.token))
    ).json()
    assert again["items"] == 0 and again["email_id"] is None  # nothing twice
    resp = await api.get(f"/api/v1/goals/{goal}/next_email", params={"kind": "weekly"}, headers=bearer(seeded.token))
    assert resp.status == 400


async def test_suggestions_come_from_the_best_matching_items_without_an_llm(api: Any) -> None:
    rt = api.app[RT]
    seeded = await seed_user(rt, notifications=0)
    headers = bearer(seeded.token)
    body = {"description": "New AI accelerator chips", "terms": ["GPU"]}
    answer = await (await api.post("/api/v1/goals/suggest_terms", json=body, headers=headers)).json()
    assert answer["source"] == "items" and answer["terms"]
    lowered = {t.lower() for t in answer["terms"]}
    assert "gpu" not in lowered and "chips" not in lowered  # known words are never suggested
    assert "HBM" in answer["terms"] and not {"crude", "rocket", "ballot"} & {t.lower() for t in answer["terms"]}
    answer = await (await api.post("/api/v1/goals/suggest_terms", json={"description": "x"}, headers=headers)).json()
    assert answer == {"terms": [], "source": "none", "note": "write a description first"}


async def test_suggestions_come_from_the_llm_when_it_is_on(
    settings: Any, openai_server: Any, aiohttp_client: Any
) -> None:
    openai_server.chat_queue('{"terms": ["Nvidia", "TPU", "gpu", "HBM"]}')
    app = create_app(replace(settings, **openai_server.settings_overrides()), role="api")
    api = await aiohttp_client(app)
    rt = api.app[RT]
    seeded = await seed_user(rt, notifications=0)
    body = {"description": "New AI accelerator chips", "terms": ["GPU"]}
    answer = await (await api.post("/api/v1/goals/suggest_terms", json=body, headers=bearer(seeded.token))).json()
    assert answer == {"terms": ["Nvidia", "TPU", "HBM"], "source": "llm", "note": ""}
    assert (await rt.pool.fetchval("SELECT sum(llm_calls) FROM budget_days")) == 1  # charged to the budget
    # over budget: the items' words, never an error
    await rt.pool.execute("UPDATE budget_days SET breaker_open = true, breaker_reason = 'test'")
    answer = await (await api.post("/api/v1/goals/suggest_terms", json=body, headers=bearer(seeded.token))).json()
    assert answer["source"] == "items" and "budget" in answer["note"]


async def test_mark_all_read_and_the_tier_filter(api: Any) -> None:
    rt = api.app[RT]
    seeded = await seed_user(rt, notifications=9)
    headers = bearer(seeded.token)
    page = await (await api.get("/api/v1/notifications", params={"tier": "DIGEST"}, headers=headers)).json()
    assert {n["tier"] for n in page["items"]} == {"DIGEST"} and len(page["items"]) == 3
    assert (await api.get("/api/v1/notifications", params={"tier": "NOPE"}, headers=headers)).status == 400
    resp = await api.post("/api/v1/notifications/read_all", params={"tier": "BATCH"}, headers=headers)
    assert resp.status == 200 and (await resp.json())["marked"] == 3
    resp = await api.post("/api/v1/notifications/read_all", headers=headers)
    assert (await resp.json())["marked"] == 3  # the DIGEST ones (the IMMEDIATE ones were read)
    assert await rt.pool.fetchval("SELECT count(*) FROM notifications WHERE read_at IS NULL") == 0


async def test_session_tokens_open_the_api_with_the_users_scopes(settings: Any) -> None:
    async with open_runtime(settings) as rt:
        seeded = await seed_user(rt, notifications=0)
        assert await session_token(rt, seeded.user_id) != seeded.token
