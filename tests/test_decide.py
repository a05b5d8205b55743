"""Decisions: the tier rules (pure), the set-based sweep over the decide queue, runs with full snapshots,
idempotence, re-scores, hot switches, and the speed of the rule-based path."""

from __future__ import annotations

import asyncio
import time

import pytest

from infosentry import decide
from infosentry.decide import Policy, classify, conclude
from tests import pushkit as kit
from tests.conftest import make_user

POLICY = Policy(immediate_threshold=0.93, boundary_low=0.88, batch_threshold=0.75, digest_min=0.60)


def snap(
    score: float,
    *,
    gate: str | None = None,
    backfill: bool = False,
    blocked: bool = False,
    components: dict | None = None,
    lexical_only: bool = False,
) -> dict:
    return {
        "goal": {"id": 1, "version": 1},
        "item": {"id": 2, "is_backfill": False},
        "match": {
            "score": score,
            "gate": gate,
            "is_backfill": backfill,
            "components": components or {},
            "lexical_only": lexical_only,
        },
        "blocked_source": blocked,
    }


@pytest.mark.parametrize(
    ("score", "kwargs", "policy", "tier"),
    [
        (0.95, {}, POLICY, "IMMEDIATE"),
        (0.93, {}, POLICY, "IMMEDIATE"),
        (0.90, {}, POLICY, "BOUNDARY"),
        (0.88, {}, POLICY, "BOUNDARY"),
        (0.80, {}, POLICY, "BATCH"),
        (0.75, {}, POLICY, "BATCH"),
        (0.65, {}, POLICY, "DIGEST"),
        (0.59, {}, POLICY, "IGNORE"),
        (0.0, {"gate": "negative_term"}, POLICY, "IGNORE"),
        (0.99, {"gate": "blocked_source"}, POLICY, "IGNORE"),
        (0.99, {"blocked": True}, POLICY, "IGNORE"),
        (0.99, {"backfill": True}, POLICY, "BATCH"),
        (0.90, {"backfill": True}, POLICY, "BATCH"),
        (0.99, {"gate": "strict_no_hit"}, POLICY, "BATCH"),
        (0.99, {"components": {"strict_miss": True}}, POLICY, "BATCH"),
        (0.99, {}, Policy(0.93, 0.88, 0.75, 0.6, immediate_enabled=False), "BATCH"),
        (0.90, {}, Policy(0.93, 0.88, 0.75, 0.6, immediate_enabled=False), "BATCH"),
        (0.90, {}, Policy(0.93, 0.88, 0.75, 0.6, llm_enabled=False), "BATCH"),
        (0.99, {}, Policy(0.93, 0.88, 0.75, 0.6, llm_enabled=False), "IMMEDIATE"),
    ],
)
def test_classify(score: float, kwargs: dict, policy: Policy, tier: str) -> None:
    assert classify(snap(score, **kwargs), policy).tier == tier


def test_conclude_marks_fallbacks_and_keeps_reasons() -> None:
    boundary = classify(snap(0.9), POLICY)
    assert boundary.needs_llm
    ok = conclude(boundary, {"label": "IMMEDIATE", "confidence": 0.8, "reason": "cites 'chip'"}, ["term hit: chip"])
    assert (ok.tier, ok.run_status, ok.status) == ("IMMEDIATE", "SUCCESS", "pending")
    assert "cites 'chip'" in ok.reason and "term hit: chip" in ok.reason
    failed = conclude(boundary, {"label": None, "fallback_reason": "LLM error: HTTP 500"})
    assert (failed.tier, failed.run_status, failed.fallback_reason) == ("BATCH", "FALLBACK", "LLM error: HTTP 500")
    broken = conclude(boundary, {"label": None, "fallback_reason": "error: boom", "unexpected": True})
    assert (broken.tier, broken.run_status) == ("BATCH", "ERROR")
    off = conclude(classify(snap(0.9), Policy(0.93, 0.88, 0.75, 0.6, llm_enabled=False)), None)
    assert (off.tier, off.run_status, off.fallback_reason) == ("BATCH", "FALLBACK", "LLM_ENABLED is false")
    ignored = conclude(classify(snap(0.3), POLICY), None)
    assert (ignored.tier, ignored.status, ignored.run_status) == ("IGNORE", "skipped", "SUCCESS")
    assert "DIGEST_MIN_SCORE" in ignored.reason  # never shown to a reader: says why it was not pushed
    batch = conclude(classify(snap(0.8), POLICY), None, ["mentions 'chip'", "close to your goal"])
    assert batch.reason == "mentions 'chip'; close to your goal" and "BATCH_THRESHOLD" in batch.rule


def test_keyword_only_scores_never_make_instant_pushes() -> None:
    # observed: "scored by keywords only: embedding pending" at 1.000 went out as IMMEDIATE
    lexical = snap(1.0, lexical_only=True)
    assert classify(lexical, POLICY).tier == "BATCH"
    assert classify(snap(0.9, lexical_only=True), POLICY).tier == "BATCH"  # nor reaches the judge
    assert classify(snap(1.0), POLICY).tier == "IMMEDIATE"


async def _world(rt, n_goals: int = 1):
    user_id, _ = await make_user(rt, "d@example.com")
    source_id = await kit.source(rt, user_id)
    goals = [await kit.goal(rt, user_id, f"Goal {i}") for i in range(n_goals)]
    return user_id, source_id, goals


async def test_every_match_gets_one_decision_with_a_full_run(rt) -> None:
    await kit.set_hot(rt, LLM_ENABLED=False)
    _, source_id, (goal_id,) = await _world(rt)
    scores = {0.97: "IMMEDIATE", 0.90: "BATCH", 0.80: "BATCH", 0.65: "DIGEST", 0.40: None}
    items = {}
    for score in scores:
        items[score] = await kit.item(rt, source_id, f"Story scored {score}")
        await kit.match(rt, goal_id, items[score], score, reasons=[f"hit {score}"])
    report = await kit.decide_all(rt)
    assert report.written == 4 and report.items == 5
    tiers = await kit.tiers(rt, goal_id)
    assert tiers == {items[s]: t for s, t in scores.items() if t}  # below DIGEST_MIN_SCORE: no decision at all
    # the boundary item fell back to BATCH because the LLM is off, and says so
    row = await rt.pool.fetchrow("SELECT * FROM agent_runs WHERE item_id = $1", items[0.90])
    assert row["status"] == "FALLBACK" and row["fallback_reason"] == "LLM_ENABLED is false"
    snapshot = row["input"]
    assert snapshot["goal"]["name"] == "Goal 0" and snapshot["item"]["title"] == "Story scored 0.9"
    assert snapshot["match"]["score"] == pytest.approx(0.90) and snapshot["match"]["reasons"] == ["hit 0.9"]
    assert snapshot["thresholds"] == {
        "IMMEDIATE_THRESHOLD": 0.93,
        "BOUNDARY_LOW": 0.88,
        "BATCH_THRESHOLD": 0.75,
        "DIGEST_MIN_SCORE": 0.6,
    }
    assert snapshot["switches"] == {"IMMEDIATE_ENABLED": True, "LLM_ENABLED": False}
    assert "breaker_open" in snapshot["budget"]
    decision = await rt.pool.fetchrow("SELECT * FROM decisions WHERE item_id = $1", items[0.97])
    assert decision["run_id"] is not None and decision["status"] == "pending"
    # the reader's reason is the matcher's; the rule with its thresholds is in the run, not in emails
    assert decision["reason"] == "hit 0.97"
    run = await rt.pool.fetchrow("SELECT output FROM agent_runs WHERE item_id = $1", items[0.97])
    assert "IMMEDIATE_THRESHOLD" in run["output"]["rule"]
    # the queue is drained; running again writes nothing and duplicates nothing
    assert await decide.queued_items(rt) == 0
    again = await kit.decide_all(rt)
    assert again.written == 0
    assert await rt.pool.fetchval("SELECT count(*) FROM decisions") == 4
    assert await rt.pool.fetchval("SELECT count(*) FROM agent_runs") == 4


async def test_a_chunk_is_written_slice_by_slice_and_loses_nothing(rt, monkeypatch) -> None:
    monkeypatch.setattr(decide, "DECISIONS_PER_WRITE", 2)
    _, source_id, goals = await _world(rt, n_goals=3)
    expected = {}
    for k, score in enumerate((0.97, 0.90, 0.80, 0.65, 0.40)):
        item = await kit.item(rt, source_id, f"Sliced story {k}")
        for goal_id in goals:
            await kit.match(rt, goal_id, item, score)
            expected[(goal_id, item)] = score
    report = await decide.decide_pending(rt)  # the sweep alone: boundary pairs wait in the judge queue
    decided = {(r["goal_id"], r["item_id"]): r["tier"] for r in await rt.pool.fetch("SELECT * FROM decisions")}
    # 15 candidates over slices of 2: every rule decision written once, every boundary pair queued for the judge
    tiers = {0.97: "IMMEDIATE", 0.80: "BATCH", 0.65: "DIGEST"}
    assert decided == {pair: tiers[s] for pair, s in expected.items() if s in tiers}
    queued = {(r["goal_id"], r["item_id"]) for r in await rt.pool.fetch("SELECT goal_id, item_id FROM judge_queue")}
    assert queued == {pair for pair, s in expected.items() if s == 0.90}
    assert report.written == 9 and report.to_judge == 3 and await decide.queued_items(rt) == 0


async def test_gated_pairs_are_ignored_with_their_reason(rt) -> None:
    _, source_id, (goal_id,) = await _world(rt)
    item_id = await kit.item(rt, source_id, "Crypto chips")
    await kit.match(
        rt,
        goal_id,
        item_id,
        0.0,
        gate="negative_term",
        reasons=["negative term 'crypto'"],
        components={"ungated_score": 0.95},
    )
    quiet = await kit.item(rt, source_id, "Crypto weather")
    await kit.match(rt, goal_id, quiet, 0.0, gate="negative_term", components={"ungated_score": 0.2})
    await kit.decide_all(rt)
    rows = await kit.decisions(rt, goal_id)
    assert len(rows) == 1
    assert (rows[0]["item_id"], rows[0]["tier"], rows[0]["status"]) == (item_id, "IGNORE", "skipped")
    assert "negative term" in rows[0]["reason"] and "'crypto'" in rows[0]["reason"]


async def test_a_rescored_match_is_decided_again_unless_pushed(rt) -> None:
    await kit.set_hot(rt, LLM_ENABLED=False)
    _, source_id, (goal_id,) = await _world(rt)
    lexical = await kit.item(rt, source_id, "Scored lexically first")
    pushed = await kit.item(rt, source_id, "Already pushed")
    await kit.match(rt, goal_id, lexical, 0.62, lexical=True)
    await kit.match(rt, goal_id, pushed, 0.97)
    await kit.decide_all(rt)
    assert await kit.tiers(rt, goal_id) == {lexical: "DIGEST", pushed: "IMMEDIATE"}
    await rt.pool.execute("UPDATE decisions SET status = 'pushed' WHERE item_id = $1", pushed)
    first = await rt.pool.fetchval("SELECT decided_at FROM decisions WHERE item_id = $1", lexical)
    # the embedding arrives: both are re-scored
    await kit.match(rt, goal_id, lexical, 0.96)
    await kit.match(rt, goal_id, pushed, 0.70)
    report = await kit.decide_all(rt)
    assert report.written == 1
    assert await kit.tiers(rt, goal_id) == {lexical: "IMMEDIATE", pushed: "IMMEDIATE"}
    row = await rt.pool.fetchrow("SELECT * FROM decisions WHERE item_id = $1", lexical)
    assert row["decided_at"] > first  # a new tier is a new event (the coalescing window starts now)
    assert await rt.pool.fetchval("SELECT count(*) FROM agent_runs WHERE item_id = $1", lexical) == 2
    # an unchanged tier keeps its place
    await kit.match(rt, goal_id, lexical, 0.97)
    await kit.decide_all(rt)
    assert await rt.pool.fetchval("SELECT decided_at FROM decisions WHERE item_id = $1", lexical) == row["decided_at"]
    # an IGNORE (gate) that is re-scored without the gate is decided again too
    gated = await kit.item(rt, source_id, "Gated then freed")
    await kit.match(rt, goal_id, gated, 0.0, gate="negative_term", components={"ungated_score": 0.8})
    await kit.decide_all(rt)
    await kit.match(rt, goal_id, gated, 0.8)
    await kit.decide_all(rt)
    assert (await kit.tiers(rt, goal_id))[gated] == "BATCH"


async def test_immediate_switch_and_backfill_and_strict(rt) -> None:
    _, source_id, (goal_id,) = await _world(rt)
    await kit.set_hot(rt, IMMEDIATE_ENABLED=False)
    off = await kit.item(rt, source_id)
    await kit.match(rt, goal_id, off, 0.99)
    await kit.decide_all(rt)
    await kit.set_hot(rt, IMMEDIATE_ENABLED=True)
    backfill = await kit.item(rt, source_id, backfill=True)
    strict = await kit.item(rt, source_id)
    normal = await kit.item(rt, source_id)
    await kit.match(rt, goal_id, backfill, 0.99)
    await kit.match(rt, goal_id, strict, 0.87, gate="strict_no_hit", components={"strict_miss": True})
    await kit.match(rt, goal_id, normal, 0.99)
    await kit.decide_all(rt)
    assert await kit.tiers(rt, goal_id) == {off: "BATCH", backfill: "BATCH", strict: "BATCH", normal: "IMMEDIATE"}
    rule = await rt.pool.fetchval("SELECT output->>'rule' FROM agent_runs WHERE item_id = $1", off)
    assert "IMMEDIATE_ENABLED is false" in rule


async def test_concurrent_sweeps_never_duplicate(rt) -> None:
    _, source_id, goals = await _world(rt, n_goals=5)
    for _ in range(40):
        item_id = await kit.item(rt, source_id)
        for g in goals:
            await kit.match(rt, g, item_id, 0.8)
    reports = await asyncio.gather(*(decide.decide_pending(rt, items_per_chunk=7) for _ in range(3)))
    assert sum(r.written for r in reports) == 200
    assert await rt.pool.fetchval("SELECT count(*) FROM decisions") == 200
    assert await rt.pool.fetchval("SELECT count(*) FROM agent_runs") == 200


async def test_instant_decisions_are_handed_on_chunk_by_chunk_as_each_commits(rt) -> None:
    """`on_immediate` runs after each committed chunk that wrote IMMEDIATE decisions (the jobs flush them there):
    the first item's alert does not wait for the rest of the round, and a chunk without one calls nothing."""
    await kit.set_hot(rt, LLM_ENABLED=False)
    _, source_id, (goal_id,) = await _world(rt)
    items = []
    for score in (0.97, 0.80, 0.97):
        items.append(await kit.item(rt, source_id, f"Story scored {score}"))
        await kit.match(rt, goal_id, items[-1], score)
    seen: list[list[int]] = []

    async def on_immediate() -> None:
        seen.append([i for i, t in (await kit.tiers(rt, goal_id)).items() if t == "IMMEDIATE"])
        raise RuntimeError("the flush failed")  # logged; deciding goes on

    report = await decide.decide_pending(rt, items_per_chunk=1, on_immediate=on_immediate)
    assert seen == [[items[0]], [items[0], items[2]]]
    assert report.tiers == {"IMMEDIATE": 2, "BATCH": 1}


async def test_deciding_never_waits_on_an_item_a_matching_write_is_requeueing(rt) -> None:
    """A matching write re-queues items (a trigger bumps their queue row) in its own order; deciding waited for
    those rows while holding others, and Postgres aborted one of the two as a deadlock."""
    _, source_id, (goal_id,) = await _world(rt)
    busy, free = await kit.item(rt, source_id), await kit.item(rt, source_id)
    await kit.match(rt, goal_id, busy, 0.8)
    await kit.match(rt, goal_id, free, 0.8)
    async with rt.pool.acquire() as writer, writer.transaction():
        await writer.execute("UPDATE matches SET score = 0.81 WHERE item_id = $1", busy)  # re-queues, uncommitted
        report = await asyncio.wait_for(decide.decide_pending(rt), 5)
        assert report.items == 2  # both decided once in this job; the busy one stays queued
    assert await rt.pool.fetchval("SELECT array_agg(item_id) FROM decide_queue") == [busy]
    await kit.decide_all(rt)  # the next job decides it again, with its new score
    assert await rt.pool.fetchval("SELECT count(*) FROM decide_queue") == 0
    assert await rt.pool.fetchval("SELECT count(*) FROM decisions") == 2


async def test_requeue_lost_finds_matches_without_decisions(rt) -> None:
    _, source_id, (goal_id,) = await _world(rt)
    item_id = await kit.item(rt, source_id)
    await kit.match(rt, goal_id, item_id, 0.8)
    # simulate a lost queue row (e.g. restored from an old backup) and a settled match
    await rt.pool.execute("UPDATE matches SET computed_at = now() - interval '10 minutes'")
    await rt.pool.execute("DELETE FROM decide_queue")
    assert await decide.requeue_lost(rt) == 1
    await kit.decide_all(rt)
    assert await kit.tiers(rt, goal_id) == {item_id: "BATCH"}
    assert await decide.requeue_lost(rt) == 0


async def test_rule_path_is_set_based_and_fast(rt) -> None:
    """200 items x 50 goals = 10,000 pairs scored (mostly low), decided in well under two seconds."""
    user_id, source_id, _ = await _world(rt)
    goals = [await kit.goal(rt, user_id, f"G{i}") for i in range(50)]
    items = [await kit.item(rt, source_id) for _ in range(200)]
    await rt.pool.execute(
        """INSERT INTO matches (goal_id, item_id, score, components, reasons)
           SELECT g, i, CASE WHEN (g + i) % 20 = 0 THEN 0.95 WHEN (g + i) % 7 = 0 THEN 0.8 ELSE 0.4 END,
                  '{}'::jsonb, '["r"]'::jsonb
           FROM unnest($1::bigint[]) g, unnest($2::bigint[]) i""",
        goals,
        items,
    )
    started = time.perf_counter()
    report = await kit.decide_all(rt)
    elapsed = time.perf_counter() - started
    assert report.items == 200 and report.written == report.candidates > 1000
    assert elapsed < 2.0, f"{report.written} decisions took {elapsed:.2f} s"
