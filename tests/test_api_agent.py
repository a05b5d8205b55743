"""Decision runs over the API: the caller's own runs, one run in full, replay (stored answer or a live LLM call,
current or stored thresholds) returning the differences and changing nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import pytest

from infosentry import metrics, push
from infosentry.api import create_app
from infosentry.api.http import RT
from infosentry.settings import Settings
from tests import pushkit as kit
from tests.conftest import bearer, make_user
from tests.fakes.openai import FakeOpenAI, running


@pytest.fixture
def fake_llm() -> Iterator[FakeOpenAI]:
    yield from running()


@pytest.fixture
async def lapi(aiohttp_client: Any, settings: Settings, fake_llm: FakeOpenAI) -> AsyncIterator[Any]:
    """The real app, its judge pointed at the fake OpenAI server."""
    app = create_app(replace(settings, **fake_llm.settings_overrides(provider="local")), role="api")
    yield await aiohttp_client(app)


def answer(label: str) -> str:
    return json.dumps({"label": label, "confidence": 0.8, "reason": f"'export ban' in the title: {label}"})


async def judged_world(rt, fake_llm: FakeOpenAI):
    await kit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=0)
    alice, token = await make_user(rt, "alice@example.com")
    bob, bob_token = await make_user(rt, "bob@example.com")
    src = await kit.source(rt, alice)
    goal = await kit.goal(rt, alice, "Chip exports", batch_windows=[])
    bob_goal = await kit.goal(rt, bob, "Bob's", batch_windows=[])
    boundary = await kit.item(rt, src, "Chip export ban widened")
    plain = await kit.item(rt, src, "Chip fab opens")
    await kit.match(rt, goal, boundary, 0.90)
    await kit.match(rt, goal, plain, 0.97)
    await kit.match(rt, bob_goal, plain, 0.80)
    fake_llm.chat_queue(answer("BATCH"))
    await kit.decide_all(rt)
    await push.flush(rt)
    return {
        "token": token,
        "bob_token": bob_token,
        "goal": goal,
        "bob_goal": bob_goal,
        "boundary": boundary,
        "plain": plain,
    }


async def run_id(rt, item_id: int, goal_id: int) -> int:
    return await rt.pool.fetchval(
        "SELECT id FROM agent_runs WHERE item_id = $1 AND goal_id = $2 AND trigger = 'match'", item_id, goal_id
    )


async def test_runs_are_listed_per_user_and_shown_in_full(lapi, fake_llm: FakeOpenAI) -> None:
    rt = lapi.app[RT]
    w = await judged_world(rt, fake_llm)
    resp = await lapi.get("/api/v1/agent/runs", headers=bearer(w["token"]))
    assert resp.status == 200
    runs = (await resp.json())["items"]
    # two decisions and one push run (the IMMEDIATE flush); none of Bob's
    assert sorted(r["trigger"] for r in runs) == ["immediate_flush", "match", "match"]
    assert {r["goal_id"] for r in runs} == {w["goal"]}
    judged = next(r for r in runs if r["item_id"] == w["boundary"])
    assert judged["llm_used"] and judged["tier"] == "BATCH" and judged["status"] == "SUCCESS"
    assert judged["prompt_tokens"] > 0 and judged["usd"] > 0
    fallback = await (await lapi.get("/api/v1/agent/runs?status=FALLBACK", headers=bearer(w["token"]))).json()
    assert fallback["items"] == []
    only = await (
        await lapi.get(f"/api/v1/agent/runs?goal_id={w['goal']}&trigger=match&limit=1", headers=bearer(w["token"]))
    ).json()
    assert len(only["items"]) == 1 and only["next_cursor"]
    other = await (await lapi.get(f"/api/v1/agent/runs?goal_id={w['bob_goal']}", headers=bearer(w["token"]))).json()
    assert other["items"] == []
    detail = await (await lapi.get(f"/api/v1/agent/runs/{judged['id']}", headers=bearer(w["token"]))).json()
    assert detail["input"]["item"]["title"] == "Chip export ban widened"
    assert detail["input"]["thresholds"]["IMMEDIATE_THRESHOLD"] == 0.93
    assert detail["llm_request"]["messages"][1]["role"] == "user"
    assert detail["llm_response"]["content"] == answer("BATCH")
    assert detail["decision"]["tier"] == "BATCH" and detail["output"]["judge"]["label"] == "BATCH"
    bob_run = await run_id(rt, w["plain"], w["bob_goal"])
    assert (await lapi.get(f"/api/v1/agent/runs/{bob_run}", headers=bearer(w["token"]))).status == 404
    _, no_agent = await make_user(rt, "carol@example.com", scopes=["goals"])
    assert (await lapi.get("/api/v1/agent/runs", headers=bearer(no_agent))).status == 403


async def test_replay_reports_differences_and_changes_nothing(lapi, fake_llm: FakeOpenAI) -> None:
    rt = lapi.app[RT]
    w = await judged_world(rt, fake_llm)
    judged = await run_id(rt, w["boundary"], w["goal"])
    url = f"/api/v1/agent/runs/{judged}/replay"
    before = (
        await rt.pool.fetchval("SELECT count(*) FROM agent_runs"),
        await rt.pool.fetchval("SELECT count(*) FROM judge_cache"),
        dict(await rt.pool.fetchrow("SELECT tier, status, reason FROM decisions WHERE item_id = $1", w["boundary"])),
    )
    # same thresholds, stored answer: nothing differs
    same = await (await lapi.post(url, json={}, headers=bearer(w["token"]))).json()
    assert same["changed"] is False and same["llm"]["source"] == "stored" and same["replayed"]["tier"] == "BATCH"
    # the operator lowered IMMEDIATE_THRESHOLD: under the current thresholds the item is IMMEDIATE outright
    await kit.set_hot(rt, IMMEDIATE_THRESHOLD=0.89, BOUNDARY_LOW=0.85)
    current = await (await lapi.post(url, json={"use_llm": False}, headers=bearer(w["token"]))).json()
    assert current["thresholds"] == "current" and current["policy"]["IMMEDIATE_THRESHOLD"] == 0.89
    diffs = {d["field"]: (d["original"], d["replayed"]) for d in current["differences"]}
    assert diffs["tier"] == ("BATCH", "IMMEDIATE") and diffs["prelim"] == ("BOUNDARY", "IMMEDIATE")
    assert current["llm"]["needed"] is False
    stored = await (await lapi.post(url, json={"thresholds": "stored"}, headers=bearer(w["token"]))).json()
    assert stored["changed"] is False and stored["stored_policy"]["IMMEDIATE_THRESHOLD"] == 0.93
    # a live call under the stored thresholds: the judge now says IMMEDIATE
    fake_llm.chat_queue(answer("IMMEDIATE"))
    live = await (
        await lapi.post(url, json={"use_llm": True, "thresholds": "stored"}, headers=bearer(w["token"]))
    ).json()
    assert live["llm"]["source"] == "live" and live["llm"]["answer"]["label"] == "IMMEDIATE"
    assert {d["field"]: d["replayed"] for d in live["differences"]} == {"tier": "IMMEDIATE"}
    assert fake_llm.requests["chat"] == 2
    # nothing changed: no run, no cache entry, the decision as it was
    after = (
        await rt.pool.fetchval("SELECT count(*) FROM agent_runs"),
        await rt.pool.fetchval("SELECT count(*) FROM judge_cache"),
        dict(await rt.pool.fetchrow("SELECT tier, status, reason FROM decisions WHERE item_id = $1", w["boundary"])),
    )
    assert after == before
    # a failing LLM on a live replay: a FALLBACK outcome, still no change
    fake_llm.fail_next(1, status=500, endpoint="chat")
    failed = await (
        await lapi.post(url, json={"use_llm": True, "thresholds": "stored"}, headers=bearer(w["token"]))
    ).json()
    assert failed["replayed"]["run_status"] == "FALLBACK" and "HTTP 500" in failed["replayed"]["fallback_reason"]


async def test_replay_rejects_push_runs_and_bad_input(lapi, fake_llm: FakeOpenAI) -> None:
    rt = lapi.app[RT]
    w = await judged_world(rt, fake_llm)
    flush_run = await rt.pool.fetchval("SELECT id FROM agent_runs WHERE trigger = 'immediate_flush'")
    resp = await lapi.post(f"/api/v1/agent/runs/{flush_run}/replay", json={}, headers=bearer(w["token"]))
    assert resp.status == 422
    judged = await run_id(rt, w["boundary"], w["goal"])
    bad = await lapi.post(
        f"/api/v1/agent/runs/{judged}/replay", json={"use_llm": "yes", "x": 1}, headers=bearer(w["token"])
    )
    assert bad.status == 422 and {e["field"] for e in (await bad.json())["errors"]} == {"use_llm", "x"}
    assert (await lapi.post(f"/api/v1/agent/runs/{judged}/replay", headers=bearer(w["token"]))).status == 200
    assert (
        await lapi.post(f"/api/v1/agent/runs/{judged}/replay", json={}, headers=bearer(w["bob_token"]))
    ).status == 404


async def test_live_replays_are_limited_per_user_and_counted(lapi, fake_llm: FakeOpenAI) -> None:
    """A live replay spends the shared LLM budget: LIVE_REPLAYS_PER_HOUR per non-admin user, then 429."""
    rt = lapi.app[RT]
    w = await judged_world(rt, fake_llm)
    await kit.set_hot(rt, LIVE_REPLAYS_PER_HOUR=2)
    url = f"/api/v1/agent/runs/{await run_id(rt, w['boundary'], w['goal'])}/replay"
    live = {"use_llm": True, "thresholds": "stored"}
    counted = metrics.REPLAYS.labels("live")._value.get()
    for _ in range(2):
        fake_llm.chat_queue(answer("BATCH"))
        assert (await lapi.post(url, json=live, headers=bearer(w["token"]))).status == 200
    refused = await lapi.post(url, json=live, headers=bearer(w["token"]))
    assert refused.status == 429 and 0 < int(refused.headers["Retry-After"]) <= 3600
    assert "LIVE_REPLAYS_PER_HOUR" in (await refused.json())["detail"]
    assert fake_llm.requests["chat"] == 3  # the judged run, then two replays: the third never called the LLM
    assert metrics.REPLAYS.labels("live")._value.get() == counted + 2
    # a replay with the stored answer costs nothing and is not limited
    assert (await lapi.post(url, json={"use_llm": False}, headers=bearer(w["token"]))).status == 200
