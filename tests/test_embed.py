"""Embedding: the fake OpenAI server itself, the OpenAI embedder's retries (429 with Retry-After, 5xx,
timeouts), usage accounting into the budget day, and the pipeline's degraded paths (outage, switch off,
breaker open, refused inputs, model change): items stay pending, are scored by keywords meanwhile, and are
embedded and re-scored once embedding is possible again."""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI

from infosentry import budget, calibrate, embed, match
from infosentry.embedders.openai import CallRecord, EmbedError, OpenAIEmbedder, RateLimiter
from infosentry.retry import Backoff, retry_after_seconds
from infosentry.runtime import Runtime, open_runtime
from infosentry.settings import Settings
from infosentry.store import items as items_store
from infosentry.store import matches as matches_store
from tests.conftest import make_user
from tests.fakes.openai import FakeOpenAI, fake_tokens, fake_vector
from tests.test_match import (
    AI_GOAL,
    AI_ITEM,
    AI_ITEM_2,
    OFF_ITEM,
    match_row,
    seed_goal,
    seed_item,
    seed_source,
    set_hot,
)

MODEL = "fake-embed"  # not a known model: 256-dim fake vectors, default anchors

FAST_RETRY = Backoff(base=0.01, cap=0.05, max_retry_after=60.0)


def fake_settings(settings: Settings, fake: FakeOpenAI, model: str = MODEL) -> Settings:
    return replace(settings, **fake.settings_overrides(), openai_embed_model=model)


def tune(rt: Runtime) -> OpenAIEmbedder:
    """Short timeouts and backoff, so failure paths take milliseconds."""
    emb = embed.embedder(rt)
    assert isinstance(emb, OpenAIEmbedder)
    emb.timeout, emb.backoff = 0.5, FAST_RETRY
    return emb


@pytest.fixture
async def fake_rt(settings: Settings, openai_server: FakeOpenAI) -> AsyncIterator[Runtime]:
    async with open_runtime(fake_settings(settings, openai_server)) as runtime:
        tune(runtime)
        yield runtime


async def seed_world(rt: Runtime) -> dict[str, int]:
    uid, _ = await make_user(rt, "reader@example.com")
    src = await seed_source(rt, uid)
    return {
        "user": uid,
        "source": src,
        "goal": await seed_goal(rt, uid, *AI_GOAL, terms=["Nvidia"]),
        "ai": await seed_item(rt, src, *AI_ITEM),
        "ai2": await seed_item(rt, src, *AI_ITEM_2),
        "off": await seed_item(rt, src, *OFF_ITEM),
    }


async def statuses(rt: Runtime) -> dict[str, int]:
    rows = await rt.pool.fetch("SELECT embedding_status AS s, count(*) AS n FROM items GROUP BY 1")
    return {r["s"]: r["n"] for r in rows}


# --- the fake server ----------------------------------------------------------------------------------------


def test_context_pool_keeps_the_newest_recent_vectors_and_blends_them_like_a_plain_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(embed, "POOL_MAX", 40)
    rng = np.random.default_rng(3)

    def unit(n: int) -> np.ndarray:
        v = rng.normal(size=(n, 16)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    now = time.time()
    ids, vecs = np.arange(1, 101, dtype=np.int64), unit(100)
    ts = np.full(100, now)
    ts[70:75] = now - (match.RECENT_HOURS + 1) * 3600  # five expired among the newest 40
    pool = embed.ContextPool("m")
    for lo in range(0, 100, 30):  # in chunks: the ring wraps around
        pool.add(ids[lo : lo + 30], ts[lo : lo + 30], vecs[lo : lo + 30])
    assert sorted(pool.ids.tolist()) == list(range(61, 101))
    batch_ids, batch = [99, 100, 1001, 1002], np.concatenate([vecs[98:], unit(2)])  # two already in the pool
    plain = [k for k in range(60, 100) if not 70 <= k < 75 and ids[k] not in batch_ids]
    want = match.context_vectors(batch, np.concatenate([vecs[plain], batch]), self_index=np.arange(4) + len(plain))
    assert np.allclose(pool.contexts(batch_ids, batch), want, atol=1e-5)
    bigger_ids = [2001 + k for k in range(8)]  # a larger batch than before grows the room once
    bigger = unit(8)
    want = match.context_vectors(
        bigger,
        np.concatenate([vecs[[k for k in range(60, 100) if not 70 <= k < 75]], bigger]),
        self_index=np.arange(8) + 35,
    )
    assert np.allclose(pool.contexts(bigger_ids, bigger), want, atol=1e-5)
    assert sorted(pool.ids.tolist()) == list(range(61, 101))  # scoring a batch leaves the ring as it was
    pool.add(np.array([500]), np.array([now]), unit(1)[:, :8])  # another model's dimensions: a new pool
    assert pool.size == 1 and pool.vectors.shape[1] == 8


async def test_fake_server_embeddings_chat_and_scripts(openai_server: FakeOpenAI) -> None:
    client = AsyncOpenAI(base_url=openai_server.base_url, api_key="sk-fake", max_retries=0, timeout=2)
    try:
        texts = ["GPU prices fall", "GPU prices rise", "bread"]
        plain = await client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
        assert plain.usage.prompt_tokens == plain.usage.total_tokens == sum(fake_tokens(t) for t in texts)
        vecs = np.array([d.embedding for d in plain.data])
        assert vecs.shape == (3, 256) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
        assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.3  # shared words -> similar vectors
        raw = await client.with_raw_response.embeddings.create(model=MODEL, input=texts[:1], encoding_format="base64")
        b64 = raw.http_response.json()["data"][0]["embedding"]
        assert np.allclose(np.frombuffer(base64.b64decode(b64), "<f4"), fake_vector(texts[0]))
        big = await client.embeddings.create(model="text-embedding-3-small", input="x", encoding_format="float")
        assert len(big.data[0].embedding) == 1536

        assert '"label"' in (await client.chat.completions.create(model="m", messages=[])).choices[0].message.content
        openai_server.chat_queue("first", {"content": "second", "prompt_tokens": 7, "completion_tokens": 3})
        openai_server.chat_handler(lambda body: f"echo {len(body['messages'])}")
        answers = [
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            for _ in range(3)
        ]
        assert [a.choices[0].message.content for a in answers] == ["first", "second", "echo 1"]
        assert answers[1].usage.prompt_tokens == 7 and answers[1].usage.completion_tokens == 3
        openai_server.invalid_json_next(1, "content", endpoint="chat")
        bad = await client.chat.completions.create(model="m", messages=[])
        assert bad.choices[0].message.content == "this is not JSON {"
        openai_server.fail_next(1, 429, retry_after=2, endpoint="chat")
        with pytest.raises(Exception) as info:
            await client.chat.completions.create(model="m", messages=[])
        assert info.value.status_code == 429 and info.value.response.headers["retry-after"] == "2"
        assert openai_server.requests["chat"] == 6 and openai_server.served["chat"] == 4
        assert openai_server.requests["embeddings"] == 3 and openai_server.texts_embedded == 5
    finally:
        await client.close()


# --- the OpenAI embedder ------------------------------------------------------------------------------------


def recording(emb: OpenAIEmbedder) -> list[CallRecord]:
    calls: list[CallRecord] = []

    async def on_call(rec: CallRecord) -> None:
        calls.append(rec)

    emb.on_call = on_call
    return calls


async def test_429_retry_after_is_honoured(settings: Settings, openai_server: FakeOpenAI) -> None:
    emb = OpenAIEmbedder(fake_settings(settings, openai_server), timeout=2, backoff=FAST_RETRY)
    calls = recording(emb)
    openai_server.fail_next(1, 429, retry_after=1)
    started = time.monotonic()
    result = await emb.embed(["hello world"])
    assert time.monotonic() - started >= 1.0  # waited as told, not our 10 ms backoff
    assert len(result.vectors) == 1 and result.tokens == fake_tokens("hello world")
    assert [(c.ok, c.http_status) for c in calls] == [(False, 429), (True, 200)]
    openai_server.fail_next(1, 429, retry_after_ms=300)
    started = time.monotonic()
    await emb.embed(["again"])
    assert 0.3 <= time.monotonic() - started < 1.0
    await emb.aclose()


async def test_5xx_and_timeouts_are_retried_then_given_up(settings: Settings, openai_server: FakeOpenAI) -> None:
    emb = OpenAIEmbedder(fake_settings(settings, openai_server), timeout=0.3, backoff=FAST_RETRY, max_attempts=3)
    calls = recording(emb)
    openai_server.fail_next(2, 500)
    assert len((await emb.embed(["a", "b"])).vectors) == 2
    assert [c.http_status for c in calls] == [500, 500, 200]
    calls.clear()
    openai_server.hang_next(1, 2.0)
    assert len((await emb.embed(["c"])).vectors) == 1
    assert calls[0].ok is False and calls[0].http_status is None and "timeout" in calls[0].error
    openai_server.invalid_json_next(1)
    await emb.embed(["d"])
    openai_server.fail_next(3, 503)
    with pytest.raises(EmbedError) as info:
        await emb.embed(["e"])
    assert not info.value.input_fault and info.value.status == 503
    openai_server.fail_next(1, 400)
    with pytest.raises(EmbedError) as info:
        await emb.embed(["f"])
    assert info.value.input_fault  # not retried: the input itself is refused
    await emb.aclose()


async def test_batches_of_64_and_the_rate_limit_is_read_at_call_time() -> None:
    limiter = RateLimiter(lambda: limit)
    limiter.WINDOW = 0.4
    limit = 2
    started = time.monotonic()
    for _ in range(3):
        await limiter.acquire()
    assert time.monotonic() - started >= 0.35  # the third start waited for the window
    limit = 100  # a hot change applies to the next request
    started = time.monotonic()
    for _ in range(20):
        await limiter.acquire()
    assert time.monotonic() - started < 0.2
    assert retry_after_seconds({"retry-after": "2.5"}) == 2.5 and retry_after_seconds({}) is None


async def test_many_texts_go_in_batched_requests(fake_rt: Runtime, openai_server: FakeOpenAI) -> None:
    emb = tune(fake_rt)
    result = await emb.embed([f"text number {i}" for i in range(150)])
    assert len(result.vectors) == 150 and openai_server.requests["embeddings"] == 3  # 64 + 64 + 22


async def test_embedder_asks_for_base64_and_reads_a_server_that_answers_floats(
    fake_rt: Runtime, openai_server: FakeOpenAI
) -> None:
    emb = tune(fake_rt)
    texts = ["GPU prices fall", "bread"]
    packed = await emb.embed(texts)
    assert [b["encoding_format"] for b in openai_server.bodies["embeddings"]] == ["base64"]
    openai_server.floats_only = True  # Ollama ignores encoding_format
    floats = await emb.embed(texts)
    for a, b, text in zip(packed.vectors, floats.vectors, texts, strict=True):
        assert a.dtype == b.dtype == np.float32 and np.allclose(a, b) and np.allclose(a, fake_vector(text))


def test_embedder_refuses_a_malformed_base64_vector(fake_rt: Runtime) -> None:
    emb = tune(fake_rt)
    good = base64.b64encode(np.ones(4, "<f4").tobytes()).decode()
    vectors, _ = emb._parse({"data": [{"index": 0, "embedding": good}]}, ["x"])
    assert np.allclose(vectors[0], 0.5)  # unit length
    for bad in ("not base64!", base64.b64encode(b"12345").decode()):
        with pytest.raises(ValueError, match="base64"):
            emb._parse({"data": [{"index": 0, "embedding": bad}]}, ["x"])


# --- the pipeline -------------------------------------------------------------------------------------------


async def test_pipeline_accounts_usage_in_the_budget_day(fake_rt: Runtime, openai_server: FakeOpenAI) -> None:
    rt = fake_rt
    w = await seed_world(rt)
    report = await embed.run(rt)
    assert report.embedded == 3 and report.goals_embedded == 1
    goal = await rt.pool.fetchrow("SELECT name, description, priority_terms FROM goals")
    texts = match.goal_facets(goal["name"], goal["description"], list(goal["priority_terms"]))
    rows = await rt.pool.fetch("SELECT title, snippet FROM items")
    texts += [match.item_text(r["title"], r["snippet"]) for r in rows]
    texts += list(calibrate.background("en"))  # the goal's calibration prior: embedded once per process
    st = await budget.status(rt)
    assert st["embed_tokens"] == sum(fake_tokens(t) for t in texts)
    assert st["embed_usd"] == pytest.approx(st["embed_tokens"] * 0.02 / 1e6, abs=1e-6)
    # goal facets, the calibration background (64 texts per request), then the item batch
    requests = 2 + math.ceil(len(calibrate.background("en")) / 64)
    assert st["embed_requests"] == openai_server.served["embeddings"] == requests
    calls = await rt.pool.fetch("SELECT kind, ok, http_status FROM external_calls")
    assert [tuple(c) for c in calls] == [("embed", True, 200)] * requests
    row = await match_row(rt, w["goal"], w["ai"])
    assert row is not None and not row["lexical_only"] and row["components"]["model"] == f"openai:{MODEL}"
    assert (await statuses(rt)) == {"done": 3}


async def test_each_matched_batch_nudges_deciding_as_soon_as_it_commits(fake_rt: Runtime) -> None:
    """A round embeds batch after batch; deciding must not wait for the whole round (IMMEDIATE latency)."""
    rt = fake_rt
    w = await seed_world(rt)
    await set_hot(rt, EMBED_BATCH_SIZE=1)
    seen: list[set[int]] = []

    async def on_matched() -> None:  # what a decide job would find, seen from another connection
        seen.append({r["item_id"] for r in await rt.pool.fetch("SELECT item_id FROM decide_queue")})

    report = await embed.run(rt, on_matched=on_matched)
    assert report.embedded == 3
    ai_items = {w["ai"], w["ai2"]}  # the off-topic item stores no match, so it is not queued
    assert len(seen) == 2 and len(seen[0]) == 1 and seen[0] < seen[1] == ai_items


async def test_outage_keeps_items_pending_and_scored_by_keywords(fake_rt: Runtime, openai_server: FakeOpenAI) -> None:
    rt = fake_rt
    w = await seed_world(rt)
    openai_server.down()
    report = await embed.run(rt)
    assert report.paused and "embedding unavailable" in report.paused
    assert await statuses(rt) == {"pending": 3}
    lexical = await match_row(rt, w["goal"], w["ai"])
    assert lexical["lexical_only"] and lexical["reasons"][-1] == "scored by keywords only: embedding pending"
    # keyword scores are calibrated against the goal's background like any signal (no fixed anchor): the item
    # that shares the goal's words ranks well above the typical item, the unrelated one is not even stored
    assert lexical["components"]["term_hits"] == ["Nvidia"] and lexical["score"] >= calibrate.score_from_z(2)
    assert await match_row(rt, w["goal"], w["off"]) is None
    failures = await rt.pool.fetchval("SELECT count(*) FROM external_calls WHERE NOT ok")
    assert failures >= 1
    assert (await budget.status(rt))["embed_requests"] == 0  # nothing was paid

    openai_server.up()
    await embed.run(rt)
    assert await statuses(rt) == {"done": 3}
    rescored = await match_row(rt, w["goal"], w["ai"])
    assert not rescored["lexical_only"] and rescored["computed_at"] > lexical["computed_at"]
    queued = await rt.pool.fetchval("SELECT to_regclass('decide_queue') IS NOT NULL")
    if queued:  # the decide step learns of the re-score through its queue
        assert await rt.pool.fetchval("SELECT count(*) FROM decide_queue WHERE item_id = $1", w["ai"]) == 1


async def test_switch_off_keeps_items_pending_until_switched_on(fake_rt: Runtime, openai_server: FakeOpenAI) -> None:
    rt = fake_rt
    w = await seed_world(rt)
    await set_hot(rt, EMBEDDING_ENABLED=False)
    report = await embed.run(rt)
    assert report.paused == "EMBEDDING_ENABLED is false" and openai_server.requests["embeddings"] == 0
    assert await statuses(rt) == {"pending": 3}
    assert (await match_row(rt, w["goal"], w["ai"]))["lexical_only"]
    assert (await embed.sweep(rt))["pending"] is True
    await set_hot(rt, EMBEDDING_ENABLED=True)
    await embed.run(rt)
    assert await statuses(rt) == {"done": 3}
    assert not (await match_row(rt, w["goal"], w["ai"]))["lexical_only"]


async def test_a_refused_input_is_isolated_and_fails_visibly(fake_rt: Runtime, openai_server: FakeOpenAI) -> None:
    rt = fake_rt
    w = await seed_world(rt)
    poison = await seed_item(rt, w["source"], "POISON Nvidia GPU story", "the server refuses this one")
    openai_server.refuse_texts("POISON")
    for _ in range(embed.MAX_EMBED_ATTEMPTS):
        await embed.run(rt)
    assert await statuses(rt) == {"done": 3, "failed": 1}
    row = await rt.pool.fetchrow("SELECT embed_attempts, matched_at FROM items WHERE id = $1", poison)
    assert row["embed_attempts"] == embed.MAX_EMBED_ATTEMPTS and row["matched_at"] is not None
    m = await match_row(rt, w["goal"], poison)
    assert m["lexical_only"] and m["reasons"][-1] == "scored by keywords only: embedding failed"
    assert (await embed.sweep(rt))["pending"] is False  # failed is final, not retried forever


async def test_breaker_pauses_embedding_then_resumes_after_reset(fake_rt: Runtime, openai_server: FakeOpenAI) -> None:
    rt = fake_rt
    uid, _ = await make_user(rt, "budget@example.com")
    src = await seed_source(rt, uid)
    goal = await seed_goal(rt, uid, *AI_GOAL, terms=["GPU"])
    ids = [await seed_item(rt, src, f"GPU story {i}: Nvidia ships AI chips", "x" * 400) for i in range(12)]
    # every item costs ~112 tokens; a batch of 3 costs ~336 tokens = $0.0000067
    batch_cost = 3 * fake_tokens(match.item_text("GPU story 10: Nvidia ships AI chips", "x" * 400)) * 0.02 / 1e6
    # plus the goal's calibration background, embedded once before the items
    cap = 0.000015 + sum(fake_tokens(t) for t in calibrate.background("en")) * 0.02 / 1e6
    await set_hot(rt, EMBED_BATCH_SIZE=3, DAILY_USD_BUDGET=cap)
    report = await embed.run(rt)
    st = await budget.status(rt)
    assert report.paused and report.paused.startswith("budget breaker open") and st["breaker_open"]
    assert st["usd_total"] <= cap + batch_cost + 1e-12  # never more than one batch over the cap
    counts = await statuses(rt)
    assert 0 < counts.get("done", 0) < 12 and counts["pending"] >= 1
    pending = [r["id"] for r in await rt.pool.fetch("SELECT id FROM items WHERE embedding_status = 'pending'")]
    for item in pending:  # kept, and scored by keywords meanwhile
        m = await match_row(rt, goal, item)
        assert m is not None and m["lexical_only"], m
    assert (await embed.run(rt)).paused  # still paused: sticky for the day

    await budget.reset(rt, "test-admin")
    await set_hot(rt, DAILY_USD_BUDGET=1.0)
    await embed.run(rt)
    assert await statuses(rt) == {"done": 12}
    for item in ids:  # the keyword rows are re-scored from the vectors (others may score under the floor)
        row = await match_row(rt, goal, item)
        assert (row is not None or item not in pending) and (row is None or not row["lexical_only"])


async def test_model_change_re_embeds_what_matching_still_needs(settings: Settings, openai_server: FakeOpenAI) -> None:
    async with open_runtime(fake_settings(settings, openai_server)) as rt:
        tune(rt)
        w = await seed_world(rt)
        old = await seed_item(rt, w["source"], "An old GPU story", "from last week", hours_ago=24 * 7)
        rated_old = await seed_item(rt, w["source"], "An old rated GPU story", "liked", hours_ago=24 * 7)
        await embed.run(rt)
        await rt.pool.execute(
            "INSERT INTO feedback (goal_id, item_id, user_id, feedback) VALUES ($1, $2, $3, 'like')",
            w["goal"],
            rated_old,
            w["user"],
        )
    async with open_runtime(fake_settings(settings, openai_server, model="fake-embed-v2")) as rt:
        tune(rt)
        sweep = await embed.sweep(rt)
        assert sweep["requeued"] == 4 and sweep["work"]  # 3 recent + 1 rated; the old unrated one stays
        await embed.run(rt)
        rows = {r["id"]: r["embedding_model"] for r in await rt.pool.fetch("SELECT id, embedding_model FROM items")}
        assert rows[old] == f"openai:{MODEL}"
        assert {rows[i] for i in (w["ai"], w["ai2"], w["off"], rated_old)} == {"openai:fake-embed-v2"}
        goal = await rt.pool.fetchrow("SELECT embedding_model FROM goals")
        assert goal["embedding_model"] == "openai:fake-embed-v2"
        assert (await match_row(rt, w["goal"], w["ai"]))["components"]["model"] == "openai:fake-embed-v2"


async def test_concurrent_runs_never_embed_an_item_twice(fake_rt: Runtime, openai_server: FakeOpenAI) -> None:
    rt = fake_rt
    uid, _ = await make_user(rt, "race@example.com")
    src = await seed_source(rt, uid)
    await seed_goal(rt, uid, *AI_GOAL)
    for i in range(40):
        await seed_item(rt, src, f"Story {i} about GPUs", "text")
    await set_hot(rt, EMBED_BATCH_SIZE=8)
    reports: list[Any] = await asyncio.gather(*(embed.run(rt) for _ in range(3)))
    assert sum(r.embedded for r in reports) == 40
    assert openai_server.texts_embedded == 40 + len(calibrate.background("en")) + len(
        match.goal_facets(*AI_GOAL)
    ) * sum(r.goals_embedded for r in reports)
    assert await statuses(rt) == {"done": 40}


async def test_recent_items_are_claimed_oldest_first_and_an_older_backlog_newest_first(fake_rt: Runtime) -> None:
    """A fetch wave brings hundreds of items in a second. Claimed newest first, the wave's first items waited
    until all the rest were done: seconds on the scale day's instant alerts. Items older than FIFO_SECONDS (an
    outage's backlog) come after the recent ones, newest first."""
    rt = fake_rt
    uid, _ = await make_user(rt, "order@example.com")
    src = await seed_source(rt, uid)
    hours = {"old_backlog": 2.0, "new_backlog": 0.2, "wave_first": 0.01, "wave_mid": 0.005, "wave_last": 0.0}
    ids = {name: await seed_item(rt, src, f"The {name} story", hours_ago=h) for name, h in hours.items()}
    assert 0.01 * 3600 < embed.FIFO_SECONDS < 0.2 * 3600

    async def claim(conn: Any, limit: int) -> set[str]:
        rows = await items_store.claim_pending(conn, limit, fifo_seconds=embed.FIFO_SECONDS)
        return {name for name, i in ids.items() if i in {r["id"] for r in rows}}

    async with rt.pool.acquire() as one, one.transaction(), rt.pool.acquire() as two, two.transaction():
        assert await claim(one, 2) == {"wave_first", "wave_mid"}
        assert await claim(two, 2) == {"wave_last", "new_backlog"}  # the claimed rows are skipped, not waited for
        async with rt.pool.acquire() as three, three.transaction():
            assert await claim(three, 5) == {"old_backlog"}


async def test_a_process_runs_a_bounded_number_of_item_rounds_and_a_missed_run_is_taken_up(
    fake_rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ingest batch nudges embedding, and each job that ran a round of its own held a worker slot (up to 6
    of 8 at once in the scale run, so deciding and sending waited for slots). A run that finds the process's
    item rounds all busy returns at once; the round that finishes reports `more` so the job runs again."""
    rt = fake_rt
    monkeypatch.setattr(embed, "ITEM_ROUNDS_PER_PROCESS", 1)
    w = await seed_world(rt)
    await set_hot(rt, EMBED_BATCH_SIZE=1)
    first_batch, go_on = asyncio.Event(), asyncio.Event()

    async def on_matched() -> None:
        first_batch.set()
        await go_on.wait()

    busy = asyncio.create_task(embed.run(rt, on_matched=on_matched))
    await asyncio.wait_for(first_batch.wait(), 10)
    missed = await asyncio.wait_for(embed.run(rt), 5)  # returns while the other round is held
    assert (missed.embedded, missed.more) == (0, False)
    go_on.set()
    finished = await asyncio.wait_for(busy, 10)
    assert finished.embedded == 3 and finished.more  # the missed run asks for another
    assert (await embed.run(rt)).more is False  # taken up: nothing missed since, nothing left
    assert await statuses(rt) == {"done": 3}
    assert await match_row(rt, w["goal"], w["ai"]) is not None


async def test_goal_vectors_are_written_in_turn_with_matching_writes(fake_rt: Runtime) -> None:
    """A goal's new vector resets its calibration rows, which matching writes rewrite too: two runs embedding
    goals created together (at a worker's start) wrote them in different orders and Postgres aborted one as a
    deadlock. Goal writes take the matching writes' turn."""
    rt = fake_rt
    uid, _ = await make_user(rt, "goals@example.com")
    await seed_goal(rt, uid, *AI_GOAL)
    async with rt.pool.acquire() as writer, writer.transaction():
        await matches_store.lock_for_write(writer)  # a matching write in progress
        run = asyncio.create_task(embed.embed_goals(rt, rt.embedder(), embed.RunReport()))
        await asyncio.sleep(1.0)
        assert not run.done()
    await asyncio.wait_for(run, 10)
    assert await rt.pool.fetchval("SELECT count(*) FROM goals WHERE embedded_version = version") == 1
