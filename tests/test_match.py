"""Scoring and matching: the pure score functions (monotonic, continuous, bounded), term matching, and the
set-based matching step with the real local model (subscription scoping, feedback, gates, STRICT, backfill).

The helpers at the top (users, sources, items, goals written as the other steps write them) are shared by
tests/test_embed.py and tests/test_api_goals.py."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from infosentry import calibrate, embed, match, reasons
from infosentry.domain import admin
from infosentry.embedders.lexical import lexical_similarity
from infosentry.runtime import Runtime
from infosentry.store import decisions as decisions_store
from infosentry.store import items as items_store
from infosentry.store import matches as matches_store
from tests.conftest import make_user

_seq = itertools.count(1)


# --- helpers -----------------------------------------------------------------------------------------------


async def set_hot(rt: Runtime, **values: Any) -> None:
    await admin.set_config(rt, values, who="test")
    await rt.hot.reload()


async def seed_source(rt: Runtime, *subscribers: int, name: str = "Feed") -> int:
    sid = await rt.pool.fetchval(
        "INSERT INTO sources (type, url, name, fetch_interval_sec) VALUES ('rss', $1, $2, 900) RETURNING id",
        f"http://127.0.0.1:9/feed{next(_seq)}.xml",
        name,
    )
    for user_id in subscribers:
        await rt.pool.execute("INSERT INTO subscriptions (user_id, source_id) VALUES ($1, $2)", user_id, sid)
    return sid


async def seed_item(
    rt: Runtime,
    source_id: int,
    title: str,
    snippet: str = "",
    *,
    hours_ago: float = 0.0,
    extra_sources: tuple[int, ...] = (),
    backfill: bool = False,
) -> int:
    n = next(_seq)
    url = f"https://news.example.com/{n}"
    when = datetime.now(UTC) - timedelta(hours=hours_ago)
    item_id = await rt.pool.fetchval(
        """INSERT INTO items (url, canonical_url, url_hash, title, snippet, published_at, ingested_at, source_id,
                              title_key, is_backfill)
           VALUES ($1, $1, $2, $3, $4, $5, $5, $6, $7, $8) RETURNING id""",
        url,
        hashlib.sha256(url.encode()).hexdigest()[:32],
        title,
        snippet,
        when,
        source_id,
        f"k{n}",
        backfill,
    )
    for sid in (source_id, *extra_sources):
        await rt.pool.execute(
            "INSERT INTO item_sources (item_id, source_id, url) VALUES ($1, $2, $3)", item_id, sid, url
        )
    return item_id


async def seed_goal(
    rt: Runtime,
    user_id: int,
    name: str,
    description: str,
    *,
    terms: list[str] | None = None,
    negatives: list[str] | None = None,
    mode: str = "SOFT",
) -> int:
    return await rt.pool.fetchval(
        """INSERT INTO goals (user_id, name, description, priority_terms, negative_terms, priority_mode)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        user_id,
        name,
        description,
        terms or [],
        negatives or [],
        mode,
    )


async def match_row(rt: Runtime, goal_id: int, item_id: int) -> dict[str, Any] | None:
    row = await rt.pool.fetchrow("SELECT * FROM matches WHERE goal_id = $1 AND item_id = $2", goal_id, item_id)
    return dict(row) if row else None


async def run_until_idle(rt: Runtime, rounds: int = 10) -> embed.RunReport:
    report = embed.RunReport()
    for _ in range(rounds):
        report = await embed.run(rt)
        if not report.more:
            break
    return report


AI_GOAL = ("AI chips", "New AI accelerator chips and GPUs from Nvidia, AMD and startups")
AI_ITEM = ("Nvidia unveils a faster GPU for training AI models", "The new accelerator doubles training speed.")
AI_ITEM_2 = ("AMD announces AI accelerator to rival Nvidia", "The chip targets data-centre training workloads.")
OFF_ITEM = ("Local bakery wins award for sourdough bread", "The family bakery has baked bread for 40 years.")


# --- pure functions ----------------------------------------------------------------------------------------


def test_score_is_bounded_monotonic_and_continuous_in_each_component() -> None:
    grid = np.linspace(0, 1, 401)
    base = {"semantic": 0.6, "hits": 1.0, "feedback": 0.0, "trust": 0.0, "fresh": 1.0}
    ranges = {
        "semantic": grid,
        "hits": np.linspace(0, 6, 401),
        "feedback": np.linspace(-1, 1, 401),
        "trust": np.linspace(-1, 1, 401),
        "fresh": grid,
    }
    for name, values in ranges.items():
        scores = match.combine(**{**base, name: values})
        assert np.all((scores >= 0) & (scores <= 1)), name
        assert np.all(np.diff(scores) >= -1e-12), f"{name} is not monotonic"
        assert np.abs(np.diff(scores)).max() < 0.03, f"{name} has a cliff"
    # diminishing returns of term hits, and feedback bounded in logit space
    gains = np.diff(match.term_evidence(np.arange(6)))
    assert np.all(np.diff(gains) < 0)
    assert match.combine(0.5, 0) == pytest.approx(0.5)
    assert match.combine(0.5, 0, feedback=1.0) == pytest.approx(0.8)  # 60% of the way to 1
    assert match.combine(0.5, 0, feedback=-1.0) == pytest.approx(0.2)  # 60% of the way to 0
    # recency: flat for 6 hours, then smooth decay
    r = match.recency(np.array([0, 6, 7, 54, 200]))
    assert r[0] == r[1] == 1.0 and 0.97 < r[2] < 1 and r[3] == pytest.approx(np.exp(-1)) and r[4] < 0.06


def test_term_matching_cjk_substrings_latin_word_boundaries_case_plural() -> None:
    texts = [
        match.normalise(t)
        for t in [
            "我们的人工智能平台发布了新模型",
            "OpenAI raises funding; elections in France",
            "He said the plan was approved",
            "AI-driven tools for C++ developers",
            "ＯｐｅｎＡＩ全角",
        ]
    ]
    terms = ["人工智能", "openai", "AI", "election", "C++", "funding"]
    hits = match.term_hits(texts, terms)
    assert hits[0].tolist() == [True, False, False, False, False, False]
    assert hits[1].tolist() == [False, True, False, True, False, True]  # plural "elections" matches
    assert not hits[2].any()  # "AI" is not inside "said"
    assert hits[3, 2] and hits[3, 4]  # "AI-driven", "C++"
    assert hits[4, 1]  # full-width Latin folds to ASCII
    hits = match.term_hits([match.normalise("Funding round for OPENAI")], ["OpenAI", "funding", "Anthropic"])[0]
    assert list(hits) == [True, True, False]


def test_chinese_terms_match_as_words_not_as_single_characters() -> None:
    texts = [
        match.normalise(t)
        for t in [
            "国产芯片迎来新突破",
            "AI芯片大战升级",
            "汽车销量大涨，车市回暖",
            "《车》新片今日上映",
            "使用OpenAI的模型写代码",
            "５G手机发布会",
            "芯 片 之间有空格",
        ]
    ]
    terms = ["芯片", "AI芯片", "车", "OpenAI", "5G手机"]
    hits = match.term_hits(texts, terms)
    assert hits[:, 0].tolist() == [True, True, False, False, False, False, False]  # 芯片 in 国产芯片 and AI芯片
    assert hits[:, 1].tolist() == [False, True, False, False, False, False, False]
    # a one-character term matches only standing alone: not inside 汽车 or 车市, but 《车》
    assert hits[:, 2].tolist() == [False, False, False, True, False, False, False]
    assert hits[4, 3] and hits[5, 4]  # Latin inside Chinese; full-width digits fold


def test_semantic_scores_apply_each_goals_estimate_to_its_pairs() -> None:
    rng = np.random.default_rng(3)
    n = 400
    pair_goal = rng.integers(0, 5, n)
    use_vec = rng.random(n) < 0.8
    sig = match.Signals(
        pair_item=np.arange(n),
        pair_goal=pair_goal,
        cosine=np.where(use_vec, rng.random(n), np.nan),
        lexical=np.where(use_vec, np.nan, rng.random(n)),
        use_vec=use_vec,
        hits=np.zeros(n),
        negative=np.zeros(n, bool),
        blocked=np.zeros(n, bool),
        strict_miss=np.zeros(n, bool),
        hit_matrix=np.zeros((n, 0), bool),
        neg_matrix=np.zeros((n, 0), bool),
    )
    vector_est = {0: calibrate.Estimate(0.3, 0.05), 1: calibrate.Estimate(0.5, 0.1, capped=True), 3: calibrate.UNKNOWN}
    lexical_est = {0: calibrate.Estimate(0.1, 0.2), 4: calibrate.Estimate(0.2, 0.01)}
    got = match.semantic_scores(sig, vector_est, lexical_est)
    for k in range(n):  # the reference: one pair at a time
        ests = vector_est if use_vec[k] else lexical_est
        raw = sig.cosine[k] if use_vec[k] else sig.lexical[k]
        est = ests.get(int(pair_goal[k]), calibrate.UNKNOWN)
        assert got[k] == pytest.approx(float(calibrate.scores(np.array([raw]), est)[0])), k


def test_a_row_is_stored_for_every_decidable_pair_and_every_pair_the_read_time_rank_would_misplace() -> None:
    """Plain pairs (score = semantic score) get a row from the decide floor on; pairs whose score owes something
    to another component get one from STORE_FLOOR on, as the listing ranks unstored pairs by semantic alone."""
    n = 10
    z, no = np.zeros(n), np.zeros(n, bool)
    ungated = np.array([0.95, 0.6, 0.59, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.3])
    hits, feedback, trust, fresh = z.copy(), z.copy(), z.copy(), np.ones(n)
    negative, lexical_only = no.copy(), no.copy()
    hits[4], feedback[5], trust[6], fresh[7], negative[8], lexical_only[3] = 1, 0.2, -0.1, 0.9, True, True
    hits[9] = 2  # below STORE_FLOOR: no row whatever its components
    scored = match.Scored(
        pair_item=np.arange(n),
        pair_goal=np.zeros(n, int),
        score=ungated,
        ungated=ungated,
        cosine=z,
        semantic=ungated,
        lexical=z,
        hits=hits,
        negative=negative,
        blocked=no,
        strict_miss=no,
        feedback=feedback,
        trust=trust,
        fresh=fresh,
        lexical_only=lexical_only,
        hit_matrix=np.zeros((n, 0), bool),
        neg_matrix=np.zeros((n, 0), bool),
    )
    kept = match.stored_pairs(scored, 0.6)
    assert kept.tolist() == [True, True, False, True, True, True, True, True, True, False]
    # an operator's lower DIGEST_MIN_SCORE stores every pair a decision can now use, plain or not
    assert match.stored_pairs(scored, 0.25).all()
    assert match.stored_pairs(scored, 0.96)[[3, 4, 5, 6, 7, 8]].all() and not match.stored_pairs(scored, 0.96)[0]


def test_vectorised_lexical_similarity_equals_the_reference() -> None:
    goals = ["Electric cars and batteries. EV makers, battery factories", "人工智能 芯片 新闻", "Football results"]
    docs = ["Tesla opens a battery factory for electric cars", "国产人工智能芯片发布", "Weather is fine", ""]
    index = match.LexicalIndex(goals)
    for doc in docs:
        got = index.scores(doc)
        want = [lexical_similarity(g, doc) for g in goals]
        assert got == pytest.approx(want, abs=1e-9)


def test_context_vectors_blend_neighbours_and_skip_self() -> None:
    rng = np.random.default_rng(1)
    pool = rng.normal(size=(50, 8)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    x = pool[:3]
    ctx = match.context_vectors(x, pool, self_index=np.array([0, 1, 2]))
    assert np.allclose(np.linalg.norm(ctx, axis=1), 1, atol=1e-5)
    assert not np.allclose(ctx, x)
    alone = match.context_vectors(x[:1], x[:1], self_index=np.array([0]))  # no neighbour: unchanged
    assert np.allclose(alone, x[:1])


def test_reasons_read_like_sentences_in_the_goal_language() -> None:
    args: dict[str, Any] = {
        "hits": ["OpenAI", "funding"],
        "negatives": [],
        "blocked": False,
        "strict_miss": False,
        "semantic": 0.9,
        "lexical_only": False,
        "pending": "",
        "feedback": 0.5,
        "trust": 0.4,
        "age_hours": 1,
        "backfill": "",
    }
    assert reasons.reasons_for(**args) == [
        "mentions 'OpenAI' and 'funding'",
        "very close to your goal",
        "similar to items you liked",
        "from a source you liked",
    ]
    assert reasons.reasons_for(**args, lang="zh") == [
        "提到了“OpenAI”和“funding”",
        "与你的目标高度相关",
        "与你喜欢的内容相似",
        "来自你喜欢的来源",
    ]
    lex_args: dict[str, Any] = {
        **args,
        "hits": [],
        "negatives": ["crypto"],
        "blocked": True,
        "semantic": 0.1,
        "lexical_only": True,
        "pending": "embedding pending",
        "feedback": 0,
        "trust": 0,
        "age_hours": 50,
        "backfill": "goal_backfill",
    }
    lex = reasons.reasons_for(**lex_args)
    assert lex[0] == "from a source you blocked for this goal" and "mentions 'crypto', which you excluded" in lex
    assert lex[-1] == "scored by keywords only: embedding pending" and "published 2 days ago" in lex
    assert "found when the goal was created, changed or resumed" in lex
    zh = reasons.reasons_for(**lex_args, lang="zh")
    assert zh[0] == "来自你为此目标屏蔽的来源" and "提到了你排除的“crypto”" in zh
    assert zh[-1] == "仅按关键词评分：语义向量尚未生成" and "发布于 2 天前" in zh
    assert not any("threshold" in r.lower() or "0." in r for r in lex + zh)  # no numbers for a reader
    # "very close" is kept for the goal's best items (0.92 is its best 1 %); a push-level item is "close"
    closeness = [
        reasons.reasons_for(**{**args, "hits": [], "feedback": 0, "trust": 0, "semantic": x})[0] for x in (0.88, 0.6)
    ]
    assert closeness == ["close to your goal", "somewhat related to your goal"]


# --- the matching step with the real local model ------------------------------------------------------------


async def test_embed_and_match_with_the_local_model(rt: Runtime) -> None:
    alice, _ = await make_user(rt, "alice@example.com")
    bob, _ = await make_user(rt, "bob@example.com")
    src = await seed_source(rt, alice, name="Tech feed")
    other = await seed_source(rt, bob, name="Bob's feed")
    goal = await seed_goal(rt, alice, *AI_GOAL, terms=["Nvidia"])
    bob_goal = await seed_goal(rt, bob, *AI_GOAL)
    relevant = await seed_item(rt, src, *AI_ITEM)
    unrelated = await seed_item(rt, src, *OFF_ITEM)
    elsewhere = await seed_item(rt, other, *AI_ITEM_2)

    report = await run_until_idle(rt)
    assert report.goals_embedded == 2 and report.embedded == 3 and report.paused is None
    rows = await rt.pool.fetch("SELECT embedding_status, embedding_model, matched_at FROM items")
    assert {r["embedding_status"] for r in rows} == {"done"}
    assert {r["embedding_model"] for r in rows} == {"local:use-multilingual-v3+wordllama"}
    assert all(r["matched_at"] is not None for r in rows)

    hit = await match_row(rt, goal, relevant)
    assert hit is not None and not hit["lexical_only"] and hit["gate"] is None
    assert hit["score"] >= 0.75, hit  # BATCH-worthy at least
    assert hit["components"]["term_hits"] == ["Nvidia"]
    assert hit["components"]["model"] == "local:use-multilingual-v3+wordllama"
    assert hit["reasons"][0] == "mentions 'Nvidia'"
    low = await match_row(rt, goal, unrelated)
    assert low is None  # not stored: below the storage floor
    # tenancy: bob's item never reaches alice's goal; alice's items never reach bob's goal
    assert await match_row(rt, goal, elsewhere) is None
    assert await match_row(rt, bob_goal, relevant) is None
    assert (await match_row(rt, bob_goal, elsewhere))["score"] >= 0.6


async def _score_of(rt: Runtime, goal: int, item: int) -> float:
    await match.match_items(rt, [item], model=embed.model_name(rt))
    row = await match_row(rt, goal, item)
    assert row is not None
    return float(row["components"]["ungated_score"])


async def test_feedback_moves_similar_items_and_is_bounded(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(match, "STORE_FLOOR", 0.0)  # every score is read back, however low
    monkeypatch.setattr(match, "decide_floor", lambda rt: 0.0)
    uid, _ = await make_user(rt, "fb@example.com")
    src = await seed_source(rt, uid)
    goal = await seed_goal(rt, uid, "Electric cars", "News about electric vehicles and their makers")
    rated = await seed_item(rt, src, "Tesla cuts Model 3 prices in China", "The electric carmaker lowers prices again.")
    probe = await seed_item(rt, src, "Tesla lowers Model Y prices in Europe", "Another price cut by the EV maker.")
    far = await seed_item(rt, src, "BYD opens battery plant in Hungary", "The Chinese EV maker expands in Europe.")
    await run_until_idle(rt)
    before, before_far = await _score_of(rt, goal, probe), await _score_of(rt, goal, far)

    await rt.pool.execute(
        "INSERT INTO feedback (goal_id, item_id, user_id, feedback) VALUES ($1, $2, $3, 'like')", goal, rated, uid
    )
    liked = await _score_of(rt, goal, probe)
    comps = (await match_row(rt, goal, probe))["components"]
    assert liked > before + 0.02 and comps["feedback"] > 0.1
    assert "similar to items you liked" in (await match_row(rt, goal, probe))["reasons"]

    await rt.pool.execute("UPDATE feedback SET feedback = 'dislike' WHERE goal_id = $1", goal)
    disliked = await _score_of(rt, goal, probe)
    assert disliked < before - 0.02
    # bounded: feedback moves the score at most FEEDBACK_SHARE of the way to 1 (like) or to 0 (dislike)
    assert liked <= before + match.FEEDBACK_SHARE * (1 - before) + 1e-6
    assert disliked >= before * (1 - match.FEEDBACK_SHARE) - 1e-6
    # the item not similar to the rated one barely moves
    assert abs(await _score_of(rt, goal, far) - before_far) < abs(disliked - before)


async def test_negative_term_and_blocked_source_gates(rt: Runtime) -> None:
    uid, _ = await make_user(rt, "gates@example.com")
    src = await seed_source(rt, uid, name="Spammy")
    good = await seed_source(rt, uid, name="Good")
    goal = await seed_goal(rt, uid, *AI_GOAL, negatives=["rumour"])
    rumour = await seed_item(rt, good, "Rumour: Nvidia to launch a new AI GPU", "Unconfirmed report on the chip.")
    plain = await seed_item(rt, src, *AI_ITEM)
    both = await seed_item(rt, src, *AI_ITEM_2, extra_sources=(good,))
    await rt.pool.execute(
        "INSERT INTO blocked_sources (goal_id, source_id, user_id) VALUES ($1, $2, $3)", goal, src, uid
    )
    await run_until_idle(rt)

    neg = await match_row(rt, goal, rumour)
    assert neg["gate"] == "negative_term" and neg["score"] == 0 and neg["components"]["ungated_score"] > 0.5
    assert "mentions 'rumour', which you excluded" in neg["reasons"]
    blocked = await match_row(rt, goal, plain)
    assert blocked["gate"] == "blocked_source" and blocked["score"] == 0
    assert blocked["reasons"][0] == "from a source you blocked for this goal"
    # the same story also seen in a source that is not blocked is not gated
    assert (await match_row(rt, goal, both))["gate"] is None

    # unblocking lifts the gate at the next scoring
    await rt.pool.execute("DELETE FROM blocked_sources WHERE goal_id = $1", goal)
    await match.match_items(rt, [plain], model=embed.model_name(rt))
    assert (await match_row(rt, goal, plain))["gate"] is None


async def test_strict_goal_without_a_term_hit_is_capped_and_flagged(rt: Runtime) -> None:
    uid, _ = await make_user(rt, "strict@example.com")
    src = await seed_source(rt, uid)
    strict = await seed_goal(rt, uid, *AI_GOAL, terms=["Blackwell"], mode="STRICT")
    soft = await seed_goal(rt, uid, *AI_GOAL, terms=["Blackwell"])
    no_terms = await seed_goal(rt, uid, *AI_GOAL, mode="STRICT")
    miss = await seed_item(rt, src, *AI_ITEM)
    hit = await seed_item(rt, src, "Nvidia Blackwell GPU ships to AI labs", "The accelerator for AI training.")
    await run_until_idle(rt)

    row = await match_row(rt, strict, miss)
    assert row["gate"] == "strict_no_hit" and row["components"]["strict_miss"] is True
    assert row["score"] <= np.float32(match.STRICT_CAP)  # stored as real
    assert any("strict goal" in r for r in row["reasons"])
    assert (await match_row(rt, strict, hit))["gate"] is None
    assert (await match_row(rt, soft, miss))["gate"] is None
    assert (await match_row(rt, no_terms, miss))["gate"] is None  # STRICT without terms behaves like SOFT


async def test_new_and_edited_goals_are_backfilled_never_immediate(rt: Runtime) -> None:
    uid, _ = await make_user(rt, "backfill@example.com")
    src = await seed_source(rt, uid)
    recent = await seed_item(rt, src, *AI_ITEM, hours_ago=5)
    old = await seed_item(rt, src, *AI_ITEM_2, hours_ago=24 * 5)
    await run_until_idle(rt)
    goal = await seed_goal(rt, uid, *AI_GOAL)
    report = await run_until_idle(rt)
    assert report.goals_embedded == 1 and report.goals_backfilled == 1
    row = await match_row(rt, goal, recent)
    assert row is not None and row["is_backfill"] is True
    assert "found when the goal was created, changed or resumed" in row["reasons"]
    assert await match_row(rt, goal, old) is None  # older than 72 h: not backfilled
    g = await rt.pool.fetchrow("SELECT version, embedded_version, matched_version FROM goals WHERE id = $1", goal)
    assert g["version"] == g["embedded_version"] == g["matched_version"] == 1

    # editing the scored text: new version, new vector, recent items re-scored
    computed = row["computed_at"]
    await rt.pool.execute(
        "UPDATE goals SET description = 'GPUs for AI training', version = version + 1 WHERE id = $1", goal
    )
    report = await run_until_idle(rt)
    assert report.goals_embedded == 1 and report.goals_backfilled == 1
    assert (await match_row(rt, goal, recent))["computed_at"] > computed
    # a new item for the goal afterwards is not backfill
    fresh = await seed_item(rt, src, "Nvidia GPU demand for AI training soars", "Chips sell out.")
    await run_until_idle(rt)
    assert (await match_row(rt, goal, fresh))["is_backfill"] is False


async def test_source_trust_is_learned_from_likes_and_clicks(rt: Runtime) -> None:
    uid, _ = await make_user(rt, "trust@example.com")
    liked_src = await seed_source(rt, uid, name="Liked")
    plain_src = await seed_source(rt, uid, name="Plain")
    goal = await seed_goal(rt, uid, *AI_GOAL)
    rated = [await seed_item(rt, liked_src, f"Chip story {i}", "About farming equipment prices.") for i in range(3)]
    await run_until_idle(rt)
    for item in rated[:2]:
        await rt.pool.execute(
            "INSERT INTO feedback (goal_id, item_id, user_id, feedback) VALUES ($1, $2, $3, 'like')", goal, item, uid
        )
    await rt.pool.execute("INSERT INTO clicks (item_id, goal_id, channel) VALUES ($1, $2, 'email')", rated[2], goal)
    from_liked = await seed_item(rt, liked_src, *AI_ITEM)
    from_plain = await seed_item(rt, plain_src, *AI_ITEM)
    await run_until_idle(rt)
    a, b = await match_row(rt, goal, from_liked), await match_row(rt, goal, from_plain)
    assert a["components"]["source_trust"] == pytest.approx(2.5 / 5.5, abs=1e-3)  # (2 likes + 0.5 click) / (+3)
    assert b["components"]["source_trust"] == 0.0
    assert a["components"]["ungated_score"] > b["components"]["ungated_score"]
    assert "from a source you liked" in a["reasons"] and "from a source you liked" not in b["reasons"]
    # dislikes pull trust below neutral, bounded in (-1, 1)
    await rt.pool.execute("UPDATE feedback SET feedback = 'dislike', updated_at = now() WHERE goal_id = $1", goal)
    await rt.pool.execute("DELETE FROM clicks")
    await match.match_items(rt, [from_liked], model=embed.model_name(rt))
    assert -1 < (await match_row(rt, goal, from_liked))["components"]["source_trust"] == pytest.approx(-2 / 5)


async def test_an_item_whose_embedding_is_pending_waits_for_it(rt: Runtime) -> None:
    """Observed: a new item scored 1.000 "by keywords only: embedding pending" was decided IMMEDIATE and emailed
    a second before its embedding arrived. Now it waits (bounded); a keyword score is capped at BATCH."""
    from infosentry import decide

    uid, _ = await make_user(rt, "pending@example.com")
    src = await seed_source(rt, uid)
    goal = await seed_goal(rt, uid, *AI_GOAL, terms=["Nvidia", "GPU", "AI"])
    await run_until_idle(rt)
    item = await seed_item(rt, src, "Nvidia AI GPU: new AI accelerator chips and GPUs", "Nvidia, AMD, AI chips")
    model = embed.model_name(rt)
    # a backfill or any other matching path before the vector exists: nothing is scored, nothing decided
    await match.match_items(rt, [item], model=model)
    assert await match_row(rt, goal, item) is None
    assert await rt.pool.fetchval("SELECT matched_at FROM items WHERE id = $1", item) is None
    assert await embed.match_unmatched(rt, model, include_pending=False, report=embed.RunReport()) == 0

    # waited too long (the embedding job is stuck): scored by keywords, capped below the instant tiers
    await rt.pool.execute("UPDATE items SET ingested_at = now() - interval '3 minutes' WHERE id = $1", item)
    assert await embed.match_unmatched(rt, model, include_pending=False, report=embed.RunReport()) == 1
    row = await match_row(rt, goal, item)
    assert row["lexical_only"] and row["score"] <= np.float32(match.LEXICAL_CAP)
    assert row["reasons"][-1] == "scored by keywords only: embedding pending"
    await decide.decide_pending(rt)
    tier = await rt.pool.fetchval("SELECT tier FROM decisions WHERE goal_id = $1 AND item_id = $2", goal, item)
    assert tier in (None, "BATCH", "DIGEST")

    # the vector arrives: re-scored with it, no longer lexical
    await run_until_idle(rt)
    row = await match_row(rt, goal, item)
    assert row is not None and not row["lexical_only"] and row["components"]["model"] == model


async def test_a_backfill_reads_the_recent_items_of_the_sources_the_user_follows(rt: Runtime) -> None:
    uid, _ = await make_user(rt, "visible@example.com")
    other, _ = await make_user(rt, "elsewhere@example.com")
    mine, theirs = await seed_source(rt, uid), await seed_source(rt, other)
    quiet = await seed_source(rt, uid)
    await rt.pool.execute("UPDATE subscriptions SET enabled = false WHERE source_id = $1", quiet)
    seen_here = await seed_item(rt, mine, *AI_ITEM, hours_ago=2)
    seen_in_both = await seed_item(rt, theirs, *AI_ITEM_2, hours_ago=1, extra_sources=(mine,))
    await seed_item(rt, theirs, "Nvidia GPU sales", "Not a source this user follows.")
    await seed_item(rt, quiet, "AMD GPU sales", "A subscription switched off.")
    await seed_item(rt, mine, "Old GPU story", "Older than the backfill horizon.", hours_ago=match.RECENT_HOURS + 1)
    ids = await items_store.recent_visible_items(rt.pool, uid, hours=match.RECENT_HOURS, after_id=0, limit=100)
    assert ids == [seen_here, seen_in_both]
    assert await items_store.recent_visible_items(
        rt.pool, uid, hours=match.RECENT_HOURS, after_id=ids[0], limit=100
    ) == [seen_in_both]


async def test_goals_backfilled_at_once_do_not_deadlock(rt: Runtime) -> None:
    """Two goals' backfills (or a backfill and a new batch) at once each rewrite calibration rows and put many of
    the same items on the decide queue; unordered, two such transactions deadlocked and Postgres aborted one
    (with a batch's paid embeddings). Match writes take turns instead."""
    user_id, _ = await make_user(rt, "deadlock@example.com")
    sid = await seed_source(rt, user_id)
    items = [await seed_item(rt, sid, f"Story {k} about markets and football") for k in range(300)]
    goals = [await seed_goal(rt, user_id, f"Goal {g}", "markets football", terms=["markets"]) for g in range(4)]
    for round_ in range(10):
        rng = random.Random(round_)
        await asyncio.gather(
            *(
                match.match_items(
                    rt,
                    rng.sample(items, 200),  # overlapping sets in random orders
                    model=None,
                    goal_ids=[g],
                    backfill_before=datetime.now(UTC),
                    lexical_fallback=True,
                )
                for g in goals
            )
        )
    stored = await rt.pool.fetchval(
        "SELECT count(DISTINCT goal_id) FROM matches WHERE goal_id = ANY($1::bigint[])", goals
    )
    assert stored == len(goals)
    assert await rt.pool.fetchval("SELECT count(*) FROM decide_queue") > 0


async def test_matches_decisions_and_runs_never_outlive_their_goal_or_item(rt: Runtime) -> None:
    """matches, decisions and agent_runs have no foreign keys (they cost a lookup and a row lock per inserted
    row): deleting goals, items or a source's items removes their rows, pruning a run unlinks its decision, a
    batch skips pairs whose goal or item is gone, and a deletion racing a batch's transaction (either way round)
    leaves no orphan."""
    user_id, _ = await make_user(rt, "orphans@example.com")
    sid = await seed_source(rt, user_id)
    other = await seed_source(rt, user_id, name="Other")
    goals = [await seed_goal(rt, user_id, f"Goal {g}", "markets") for g in range(2)]
    items = [await seed_item(rt, sid, f"Story {k}") for k in range(6)]
    on_other = await seed_item(rt, other, "Story on the other source")

    async def write(conn: Any, goal_ids: list[int], item_ids: list[int]) -> None:
        pairs = [(g, i) for g in goal_ids for i in item_ids]
        n = len(pairs)
        await matches_store.upsert_matches(
            conn,
            [g for g, _ in pairs],
            [i for _, i in pairs],
            [0.5] * n,
            [{"cosine": 0.5}] * n,
            [["close to your goal"]] * n,
            [None] * n,
            [False] * n,
            [False] * n,
            matched_item_ids=[],
        )
        await decisions_store.write(conn, [decision_row(g, i) for g, i in pairs])

    async def pairs(table: str) -> set[tuple[int, int]]:
        rows = await rt.pool.fetch(f"SELECT goal_id, item_id FROM {table}")
        return {(r["goal_id"], r["item_id"]) for r in rows}

    async def everywhere() -> set[tuple[int, int]]:
        found = [await pairs(t) for t in ("matches", "decisions", "agent_runs")]
        assert found[0] == found[1] == found[2]
        return found[0]

    await write(rt.pool, [*goals, 10**9], [*items, on_other, 10**9])  # unknown ids are skipped, not an error
    assert await everywhere() == {(g, i) for g in goals for i in [*items, on_other]}
    assert (await match_row(rt, goals[0], items[0]))["components"] == {"cosine": 0.5}

    await rt.pool.execute("DELETE FROM goals WHERE id = $1", goals[0])
    await rt.pool.execute("DELETE FROM items WHERE id = $1", items[0])
    await rt.pool.execute("DELETE FROM sources WHERE id = $1", other)  # its items go by cascade, then their rows
    assert await everywhere() == {(goals[1], i) for i in items[1:]}
    await rt.pool.execute("DELETE FROM agent_runs WHERE item_id = $1", items[3])
    assert await rt.pool.fetchval("SELECT run_id FROM decisions WHERE item_id = $1", items[3]) is None
    await rt.pool.execute("DELETE FROM decisions WHERE item_id = $1", items[3])
    await write(rt.pool, [goals[1]], [items[3]])

    # each writer on its own: a batch first, and the item's deletion waits for the batch to commit, then takes
    # its rows with it; a deletion first, and the batch waits for it, then skips the vanished item
    async def upsert_only(conn: Any, item_id: int) -> None:
        await matches_store.upsert_matches(
            conn, [goals[1]], [item_id], [0.5], [{}], [[]], [None], [False], [False], matched_item_ids=[]
        )

    async def decide_only(conn: Any, item_id: int) -> None:
        await decisions_store.write(conn, [decision_row(goals[1], item_id)])

    for writer, kept, gone in ((upsert_only, items[1], items[2]), (decide_only, items[4], items[5])):
        async with rt.pool.acquire() as batch, rt.pool.acquire() as deleter:
            async with batch.transaction():
                await writer(batch, kept)
                deleting = asyncio.create_task(deleter.execute("DELETE FROM items WHERE id = $1", kept))
                await asyncio.sleep(0.3)
                assert not deleting.done(), writer.__name__
            await deleting
            async with deleter.transaction():
                await deleter.execute("DELETE FROM items WHERE id = $1", gone)
                writing = asyncio.create_task(writer(batch, gone))
                await asyncio.sleep(0.3)
                assert not writing.done(), writer.__name__
            await writing
    assert await everywhere() == {(goals[1], items[3])}


def decision_row(goal_id: int, item_id: int) -> dict[str, Any]:
    """A rule-based BATCH decision as decide writes it, for tests that need one without the decide step."""
    return {
        "goal_id": goal_id,
        "item_id": item_id,
        "trigger": "match",
        "run_status": "SUCCESS",
        "input": {"score": 0.5},
        "output": {"tier": "BATCH"},
        "llm_used": False,
        "llm_model": None,
        "llm_request": None,
        "llm_response": None,
        "fallback_reason": None,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "usd": 0.0,
        "latency_ms": 0,
        "tier": "BATCH",
        "status": "pending",
        "score": 0.5,
        "reason": "close to your goal",
        "match_computed_at": datetime.now(UTC),
    }
