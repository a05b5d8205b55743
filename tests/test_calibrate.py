"""Self-calibration: the thresholds mean a distance from the goal's background (same for every model), a model
whose cosines cluster high does not flood, a goal's estimate converges and stays stable, follows drift, and
nothing is pushed before a goal can be calibrated; end to end with the fake OpenAI model whose cosines sit at
0.8-1.0 and with the local model, push rates are comparable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from infosentry import calibrate, embed, match, windows
from infosentry.runtime import Runtime, open_runtime
from infosentry.settings import Settings
from infosentry.store import calibration as calibration_store
from infosentry.store import items as items_store
from tests.conftest import make_user
from tests.fakes.openai import FakeOpenAI, fake_vector
from tests.test_match import run_until_idle, seed_goal, seed_item, seed_source

BATCH, IMMEDIATE = 0.75, 0.93


def stream(values: np.ndarray, prior: tuple[float, float] | None, batch: int = 20) -> np.ndarray:
    """Scores of a stream of raw values, batch by batch, as the matcher does (append first, then score)."""
    window, seen, out = np.zeros(0, np.float32), 0, []
    for start in range(0, len(values), batch):
        chunk = values[start : start + batch]
        window, seen = calibrate.append(window, chunk), seen + len(chunk)
        out.append(calibrate.scores(chunk, calibrate.estimate(window, seen, prior)))
    return np.concatenate(out)


def mixture(rng: np.random.Generator, n: int, share: float, loc: float, spread: float, gap: float) -> np.ndarray:
    """A goal's cosines: background N(loc, spread), on-topic items `gap` spreads higher."""
    on = rng.random(n) < share
    return np.where(on, rng.normal(loc + gap * spread, spread, n), rng.normal(loc, spread, n)), on


def test_thresholds_are_distances_from_the_background() -> None:
    assert calibrate.score_from_z(calibrate.Z_BATCH) == pytest.approx(BATCH)
    assert calibrate.z_for_score(IMMEDIATE) == pytest.approx(4.49, abs=0.01)
    assert calibrate.z_for_score(0.88) == pytest.approx(3.89, abs=0.01)
    assert calibrate.score_from_z(0.0) == pytest.approx(0.13, abs=0.01)  # a typical item
    z = np.linspace(-10, 10, 2001)
    s = calibrate.score_from_z(z)
    assert np.all(np.diff(s) > 0) and s.min() > 0 and s.max() < 1
    assert np.abs(np.diff(s)).max() < 0.01  # continuous: no cliff


def test_a_model_whose_cosines_cluster_high_does_not_flood() -> None:
    rng = np.random.default_rng(0)
    low, on = mixture(rng, 3000, 0.05, loc=0.10, spread=0.08, gap=4.5)
    high = 0.8 + 0.2 * (low - 0.10)  # the same ranking squeezed into 0.7-0.9
    assert 0.7 < np.quantile(high, 0.01) and np.quantile(high, 0.99) < 0.9
    prior_low = calibrate.location_spread(rng.normal(0.10, 0.08, 200))
    prior_high = calibrate.location_spread(0.8 + 0.2 * (rng.normal(0.10, 0.08, 200) - 0.10))
    s_low, s_high = stream(low, prior_low), stream(high, prior_high)
    rate_low, rate_high = (s_low >= BATCH).mean(), (s_high >= BATCH).mean()
    assert rate_high < 0.08  # 5 % on-topic: no flood (the old anchors pushed ~100 % of such a model's items)
    assert 0.8 < rate_high / rate_low < 1.25  # affine invariance: the same pushes for both models
    assert (s_high >= IMMEDIATE).mean() < 0.05
    assert on[s_high >= BATCH].mean() > 0.8  # what is pushed is mostly on topic


def test_no_relevant_items_pushes_only_the_background_tail() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(0.3, 0.05, 3000)  # a goal whose feeds never carry its topic
    prior = calibrate.location_spread(rng.normal(0.3, 0.05, 200))
    assert (stream(values, prior) >= BATCH).mean() < 0.01  # a Gaussian tail beyond 3 sigma: 0.13 %


def test_estimates_converge_stay_stable_and_follow_drift() -> None:
    rng = np.random.default_rng(2)
    window, seen = np.zeros(0, np.float32), 0
    prior = (0.3, 0.1)  # an off prior: the window must win (it keeps N0 / (WINDOW + N0) = 4 % of the weight)
    history = []
    values, _ = mixture(rng, 4000, 0.1, loc=0.2, spread=0.05, gap=4)
    for start in range(0, len(values), 25):
        window, seen = calibrate.append(window, values[start : start + 25]), seen + 25
        history.append(calibrate.estimate(window, seen, prior))
    late = history[40:]  # after 1,000 items
    assert all(abs(e.m - 0.2) < 0.015 and abs(e.s - 0.05) < 0.02 for e in late)  # converged, 10 % on-topic
    assert np.std([e.m for e in late]) < 0.006 and np.std([e.s for e in late]) < 0.006  # stable
    assert len(window) == calibrate.WINDOW
    for _ in range(30):  # the feed changes: everything now sits 0.1 higher
        window = calibrate.append(window, rng.normal(0.3, 0.05, 25))
        seen += 25
    assert abs(calibrate.estimate(window, seen, prior).m - 0.3) < 0.015


def on_share(pushed: np.ndarray, on: np.ndarray) -> float:
    return float(on[pushed].mean())


def test_a_narrow_goal_does_not_push_its_neighbouring_cluster() -> None:
    # "oil prices": 3 % of the items far out, a neighbouring cluster (market reports, 8 %) 4-5 sigmas up, which
    # three lower-half sigmas alone would push whole
    rng = np.random.default_rng(5)
    kind = rng.choice(3, size=5000, p=[0.89, 0.08, 0.03])
    values = np.choose(kind, [rng.normal(0, 1, 5000), rng.normal(4.5, 0.7, 5000), rng.normal(10, 1.5, 5000)])
    scores = stream(values, calibrate.background_prior(rng.normal(0, 1, 84)))[1000:]  # after the first day
    kind = kind[1000:]
    pushed = scores >= BATCH
    assert pushed[kind == 2].mean() > 0.9  # the goal's own items
    assert pushed[kind == 1].mean() < 0.1  # not its neighbours (with the lower half alone: all of them)
    assert (scores[kind == 1] >= IMMEDIATE).sum() == 0 and on_share(pushed, kind == 2) > 0.75
    # no saturation: the goal's best 1 % score about 0.92 from meaning alone, the very best a little more
    assert np.quantile(scores, 0.99) == pytest.approx(calibrate.score_from_z(calibrate.Z_TOP), abs=0.03)
    assert scores.max() < 0.99


def test_a_broad_goal_keeps_its_reach() -> None:
    rng = np.random.default_rng(6)
    values, on = mixture(rng, 5000, 0.25, loc=0.0, spread=1.0, gap=4.0)  # a category: a quarter of the items
    scores = stream(values, calibrate.background_prior(rng.normal(0, 1, 84)))[1000:]
    on = on[1000:]
    pushed = scores >= BATCH
    assert pushed[on].mean() > 0.3 and on_share(pushed, on) > 0.95  # push recall and precision


def test_a_broad_goal_whose_topic_stands_far_out_pushes_about_a_tenth_of_its_items() -> None:
    # a quarter of the items, all far above the rest: the goal's best 1 % alone would let 0.17-0.21 of all
    # items reach BATCH (gap 6 and 8); a push tier is for what stands out, so its 90th percentile caps it
    for gap in (6.0, 8.0):
        rng = np.random.default_rng(9)
        values, on = mixture(rng, 5000, 0.25, loc=0.0, spread=1.0, gap=gap)
        scores = stream(values, calibrate.background_prior(rng.normal(0, 1, 84)))[1000:]
        pushed = scores >= BATCH
        assert 0.08 < pushed.mean() <= 0.11
        assert on_share(pushed, on[1000:]) > 0.99
    # the background corpus's 90th percentile widens the prior the same way
    corpus = np.concatenate([np.random.default_rng(8).normal(0.1, 0.02, 60), np.full(24, 0.3)])
    m0, s0 = calibrate.background_prior(corpus)
    assert s0 == pytest.approx((np.quantile(corpus, calibrate.BROAD_QUANTILE) - m0) / calibrate.Z_BATCH)


def test_a_young_window_is_judged_on_the_prior_scale() -> None:
    # the first 40 items carry nothing of the topic: their best is not the top of the scale yet
    prior = (0.0, 0.1)
    window = np.random.default_rng(7).normal(0.0, 0.05, 40)
    young = calibrate.estimate(window, len(window), prior)
    assert young.s >= 0.1
    grown = calibrate.estimate(np.random.default_rng(7).normal(0.0, 0.05, 400), 400, prior)
    assert grown.s < 0.07  # then the goal's own items take over
    # the background corpus's best headline widens the prior like a window's best items
    corpus = np.concatenate([np.random.default_rng(8).normal(0.1, 0.02, 83), [0.6]])
    m0, s0 = calibrate.background_prior(corpus)
    assert s0 == pytest.approx((np.quantile(corpus, calibrate.TOP_QUANTILE) - m0) / calibrate.Z_TOP)


def test_nothing_is_pushed_before_a_goal_can_be_calibrated() -> None:
    assert calibrate.scores(np.array([0.9, 0.1]), calibrate.UNKNOWN).tolist() == [calibrate.EARLY_CAP] * 2
    few = np.array([0.1, 0.12, 0.09, 0.95])
    early = calibrate.estimate(few, len(few), None)
    assert early.capped and calibrate.scores(few, early).max() <= calibrate.EARLY_CAP < BATCH
    many = np.concatenate([np.random.default_rng(3).normal(0.1, 0.02, 40), [0.95]])
    assert calibrate.scores(many, calibrate.estimate(many, len(many), None)).max() > IMMEDIATE
    # with a prior (measured against the background corpus) the first item is already calibrated
    first = calibrate.estimate(np.array([0.95]), 1, (0.1, 0.02))
    assert not first.capped and calibrate.scores(np.array([0.95]), first)[0] > IMMEDIATE


def test_a_sparse_signal_gets_a_usable_spread() -> None:
    overlaps = np.array([0.0] * 90 + [0.1, 0.2, 0.3, 0.05, 0.15, 0.0, 0.0, 0.4, 0.1, 0.25])  # keyword overlap
    m, s = calibrate.location_spread(overlaps)
    assert m == 0.0 and s > 0.05  # not the 1e-4 floor: one shared word is not "infinitely" significant
    assert calibrate.background("zh") and calibrate.background("en")
    assert all(not t.startswith("#") for t in calibrate.background("en"))


def test_many_goals_at_once_estimate_as_each_goal_alone() -> None:
    """calibrate.estimates (a batch's goals as one padded array, each row in ring order) equals estimate per goal:
    empty, young, full and sparse windows, with and without a prior."""
    rng = np.random.default_rng(8)
    sparse = np.concatenate([np.zeros(120), rng.uniform(0, 0.4, 12)])
    cases = [
        (np.zeros(0), 0, None),
        (np.zeros(0), 0, (0.2, 0.05)),
        (rng.normal(0.3, 0.05, 7), 7, None),
        (rng.normal(0.3, 0.05, 25), 25, (0.25, 0.04)),
        (rng.normal(0.4, 0.1, 320), 900, (0.3, 0.05)),
        (rng.normal(0.1, 0.02, calibrate.WINDOW + 230), 5000, None),  # more than a window: the ring wraps
        (sparse, 132, (0.01, 0.03)),
    ]
    rings = []
    for values, seen, prior in cases:
        w = windows.Window(version=1, stamp=None, stored_seen=seen, prior=prior, neighbour=None)
        for start in range(0, len(values), 97):  # several appends, one of them across the ring's end
            w.add(values[start : start + 97])
        assert w.values.tolist() == values[-calibrate.WINDOW :].astype(np.float32).tolist()
        rings.append(w.ring)
    got = calibrate.estimates(np.stack(rings), [c[1] for c in cases], [c[2] for c in cases])
    for (values, seen, prior), est in zip(cases, got, strict=True):
        alone = calibrate.estimate(values[-calibrate.WINDOW :].astype(np.float32), seen, prior)
        if not alone.known:
            assert not est.known
            continue
        assert est.capped == alone.capped
        assert est.m == pytest.approx(alone.m, rel=1e-12) and est.s == pytest.approx(alone.s, rel=1e-12)


# --- end to end: the fake model with high cosines and the local model --------------------------------------

TOPIC = [
    "Nvidia unveils a faster GPU for training AI models",
    "AMD announces an AI accelerator to rival Nvidia",
    "Startup designs a chip for AI inference in phones",
    "Intel delays its next AI processor to next year",
    "Data centres order more GPUs as AI demand grows",
]


def feed_titles(n: int) -> list[str]:
    """n items: every tenth about AI chips, the rest assorted (the background corpus of each language)."""
    rng = np.random.default_rng(4)
    other = list(calibrate.background("en"))
    out = []
    for k in range(n):
        if k % 10 == 0:
            out.append(TOPIC[(k // 10) % len(TOPIC)] + f" ({k})")
        else:
            out.append(other[int(rng.integers(len(other)))] + f" ({k})")
    return out


async def push_rate(rt: Runtime, n: int = 120) -> tuple[float, float]:
    uid, _ = await make_user(rt, "cal@example.com")
    src = await seed_source(rt, uid)
    goal = await seed_goal(rt, uid, "AI chips", "New AI accelerator chips and GPUs from Nvidia, AMD and startups")
    await run_until_idle(rt)  # the goal's vector and calibration prior first, then items arrive
    for title in feed_titles(n):
        await seed_item(rt, src, title)
    await run_until_idle(rt, rounds=20)
    rows = await rt.pool.fetch("SELECT score, item_id FROM matches WHERE goal_id = $1", goal)
    titles = {r["id"]: r["title"] for r in await rt.pool.fetch("SELECT id, title FROM items")}
    pushed = [r for r in rows if r["score"] >= BATCH]
    precision = np.mean([any(t in titles[r["item_id"]] for t in TOPIC) for r in pushed]) if pushed else 0.0
    return len(pushed) / n, float(precision)


@pytest.fixture
async def high_rt(settings: Settings, openai_server: FakeOpenAI) -> AsyncIterator[Runtime]:
    cfg = replace(settings, **openai_server.settings_overrides(), openai_embed_model="fake-embed-high")
    async with open_runtime(cfg) as runtime:
        yield runtime


def test_the_fake_high_model_really_clusters_high() -> None:
    a, b = fake_vector("Local bakery wins award", high=True), fake_vector("Parliament debates a bill", high=True)
    assert 0.75 < float(a @ b) < 1.0


async def test_a_high_cosine_model_pushes_like_the_local_model(high_rt: Runtime) -> None:
    rate, precision = await push_rate(high_rt)
    row = await high_rt.pool.fetchrow("SELECT * FROM goal_calibration WHERE signal = 'openai:fake-embed-high'")
    assert row is not None and row["prior_loc"] > 0.7  # the model's cosines do sit high
    # 10 % of the items are on topic: no flood, and what is pushed is on topic (the local model: below)
    assert 0.02 <= rate <= 0.2 and precision >= 0.7, (rate, precision)


async def test_the_local_model_pushes_the_on_topic_items(rt: Runtime) -> None:
    assert embed.model_name(rt) == "local:use-multilingual-v3+wordllama"
    rate, precision = await push_rate(rt)
    assert 0.02 <= rate <= 0.2 and precision >= 0.7, (rate, precision)


async def test_a_goal_gets_its_prf_vector_once_it_has_seen_enough_items(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(match, "PRF_MIN_ITEMS", 40)
    uid, _ = await make_user(rt, "prf@example.com")
    src = await seed_source(rt, uid)
    early = await seed_goal(rt, uid, "AI chips", "New AI accelerator chips and GPUs")
    await run_until_idle(rt)  # embedded, no items yet: matched with its own vector
    for title in feed_titles(60):
        await seed_item(rt, src, title)
    await run_until_idle(rt, rounds=20)
    row = await rt.pool.fetchrow(
        "SELECT * FROM goal_calibration WHERE goal_id = $1 AND signal = $2", early, embed.model_name(rt)
    )
    assert row["prf"] is not None and row["prf_at"] is not None
    assert 40 <= row["seen"] == len(calibration_store.window_of(row["recent"])) <= 60  # rebuilt under the new vector
    # a goal created when the items are already there gets it before its backfill is scored
    late = await seed_goal(rt, uid, "Chip makers", "Companies that design processors")
    await run_until_idle(rt)
    row = await rt.pool.fetchrow(
        "SELECT * FROM goal_calibration WHERE goal_id = $1 AND signal = $2", late, embed.model_name(rt)
    )
    assert row["prf"] is not None and row["seen"] == 60  # the backfill filled the window under it
    stored = await rt.pool.fetchrow("SELECT components FROM matches WHERE goal_id = $1 LIMIT 1", late)
    assert stored is not None
    # a text edit starts over: new vector, new calibration, PRF again at the backfill
    await rt.pool.execute("UPDATE goals SET description = 'GPUs for AI', version = version + 1 WHERE id = $1", late)
    await run_until_idle(rt)
    row = await rt.pool.fetchrow(
        "SELECT * FROM goal_calibration WHERE goal_id = $1 AND signal = $2", late, embed.model_name(rt)
    )
    assert row["goal_version"] == 2 and row["prf"] is not None


async def test_a_users_goals_due_together_read_the_users_recent_items_once(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(match, "PRF_MIN_ITEMS", 40)
    reads: list[int] = []
    read = items_store.recent_visible_vectors

    async def counted(conn, user_id, *args, **kwargs):  # type: ignore[no-untyped-def]
        reads.append(user_id)
        return await read(conn, user_id, *args, **kwargs)

    monkeypatch.setattr(items_store, "recent_visible_vectors", counted)
    uid, _ = await make_user(rt, "prf-once@example.com")
    src = await seed_source(rt, uid)
    goals = [
        await seed_goal(rt, uid, "AI chips", "New AI accelerator chips and GPUs"),
        await seed_goal(rt, uid, "Phones", "Smartphones and their makers"),
        await seed_goal(rt, uid, "Space", "Rocket launches and space probes"),
    ]
    await run_until_idle(rt)
    assert reads == [uid]  # their backfills, together: one read (too few items for a PRF vector yet)
    for title in feed_titles(60):
        await seed_item(rt, src, title)
    await run_until_idle(rt, rounds=20)
    refreshed = await rt.pool.fetch(
        "SELECT goal_id, prf FROM goal_calibration WHERE goal_id = ANY($1) AND signal = $2",
        goals,
        embed.model_name(rt),
    )
    assert len(refreshed) == 3 and all(r["prf"] is not None for r in refreshed)
    assert reads == [uid, uid]  # three goals due together, one more read of their owner's recent vectors
    assert len({match._vec(r["prf"]).tobytes() for r in refreshed}) == 3  # each goal its own vector


async def test_a_window_keeps_the_newest_values_and_reads_back_in_psql(rt: Runtime) -> None:
    uid, _ = await make_user(rt, "window@example.com")
    goal = await seed_goal(rt, uid, "AI chips", "New AI accelerator chips and GPUs")
    values = np.random.default_rng(3).normal(0.3, 0.2, calibrate.WINDOW + 37).astype(np.float32)
    values[:3] = [0.0, -1.5, 1e-3]
    async with rt.pool.acquire() as conn:
        for start in range(0, len(values), 100):  # appended batch by batch, as matching does
            rows = await calibration_store.observe(
                conn, "test:model", [goal], [1], [values[start : start + 100]], [None], window=calibrate.WINDOW
            )
        assert rows[0]["seen"] == len(values)
        window = calibration_store.window_of(rows[0]["recent"])
        assert window.tolist() == values[-calibrate.WINDOW :].astype(np.float64).tolist()  # exact, oldest first
        in_psql = await conn.fetchval(
            "SELECT calibration_values(recent) FROM goal_calibration WHERE goal_id = $1 AND signal = 'test:model'", goal
        )
        assert in_psql == window.tolist()
        assert await conn.fetchval(
            "SELECT calibration_values($1::bytea)", calibration_store.window_bytes([0.0, -1.5])
        ) == [
            0.0,
            -1.5,
        ]
        # another goal version starts the window over
        rows = await calibration_store.observe(
            conn, "test:model", [goal], [2], [values[:5]], [None], window=calibrate.WINDOW
        )
        assert calibration_store.window_of(rows[0]["recent"]).tolist() == values[:5].astype(np.float64).tolist()
        assert rows[0]["seen"] == 5
        # values of the older version (a batch or a worker's waiting values an edit overtook) leave it alone
        rows = await calibration_store.observe(
            conn, "test:model", [goal], [1], [values[5:9]], [None], window=calibrate.WINDOW
        )
        assert rows == [] and (await conn.fetchval("SELECT seen FROM goal_calibration WHERE goal_id = $1", goal)) == 5


async def test_windows_written_behind_score_as_written_through_and_lose_nobodys_values(rt: Runtime) -> None:
    """windows.py: a process writes a goal's values when FLUSH_VALUES wait or the oldest has waited FLUSH_SECONDS;
    its estimates see every waiting value, a new version or vector reads the row afresh, and two processes'
    values all reach the row."""
    uid, _ = await make_user(rt, "behind@example.com")
    goal = await seed_goal(rt, uid, "AI chips", "New AI accelerator chips and GPUs")
    values = np.random.default_rng(5).normal(0.3, 0.1, 400).astype(np.float32)
    stored = "SELECT recent, seen FROM goal_calibration WHERE goal_id = $1 AND signal = 'test:model'"
    here, there = windows.Windows(), windows.Windows()  # two processes
    async with rt.pool.acquire() as conn:

        async def observe(
            w: windows.Windows, chunk: np.ndarray, stamp: object = None, t: float = 0.0, version: int = 1
        ) -> Any:
            (got,) = await w.observe(conn, "test:model", [goal], [version], [stamp], [chunk], [(0.3, 0.1)], now=t)
            return got

        through, seen = np.zeros(0, np.float32), 0
        for start in range(0, 200, 10):  # batches of 10: written at the first and then every 64 values or so
            chunk = values[start : start + 10]
            got = await observe(here, chunk)
            through, seen = calibrate.append(through, chunk), seen + len(chunk)
            assert got.values.tolist() == through.tolist() and got.seen == seen  # as if written at once
        row = await conn.fetchrow(stored, goal)
        assert 200 - windows.FLUSH_VALUES < row["seen"] < 200  # the rest waits in this process
        assert calibration_store.window_of(row["recent"]).tolist() == through[: row["seen"]].tolist()

        # another process appends meanwhile; both processes' values end in the row, none twice
        await observe(there, values[200:230])
        assert (await observe(here, values[230:231], t=windows.FLUSH_SECONDS + 1)).seen == 231  # waited too long
        row = await conn.fetchrow(stored, goal)
        assert row["seen"] == 231 and sorted(calibration_store.window_of(row["recent"])) == sorted(values[:231])

        # a new matching vector (PRF) or version: the row is read afresh, values waiting under the old one dropped
        await observe(here, values[231:241], t=windows.FLUSH_SECONDS + 2)
        await calibration_store.set_prf(conn, "test:model", goal, 1, None, None, None)  # tried: seen starts over
        got = await observe(here, values[241:251], stamp="prf tried", t=windows.FLUSH_SECONDS + 3)
        assert got.seen == 10 and (await conn.fetchrow(stored, goal))["seen"] == 10
        assert got.values[-10:].tolist() == values[241:251].tolist()  # after the row's window; 231:241 dropped
        assert sorted(got.values[:-10].tolist()) == sorted(values[:231].tolist())

        await conn.execute("DELETE FROM goals WHERE id = $1", goal)
        assert await observe(here, values[251:252], stamp="prf tried", version=2) is None  # gone: no row, no window

        # a young row is written through until it has seen `through_until` values (the first PRF vector's due)
        young = await seed_goal(rt, uid, "Phones", "Smartphones and their makers")
        for start in range(0, 80, 10):
            await here.observe(
                conn,
                "test:model",
                [young],
                [1],
                [None],
                [values[start : start + 10]],
                [None],
                through_until=50,
                now=0.0,
            )
            seen = (await conn.fetchrow(stored, young))["seen"]
            assert seen == start + 10 if start < 50 else seen == 50
    await here.flush(rt.pool)  # as the runtime closes: nothing waiting is lost
    async with rt.pool.acquire() as conn:
        row = await conn.fetchrow(stored, young)
        assert row["seen"] == 80 and calibration_store.window_of(row["recent"]).tolist() == values[:80].tolist()


async def test_a_runtime_writes_its_waiting_calibration_values_when_it_closes(
    rt: Runtime, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(match, "PRF_MIN_ITEMS", 5)  # rows are written through only until then
    uid, _ = await make_user(rt, "closes@example.com")
    src = await seed_source(rt, uid)
    goal = await seed_goal(rt, uid, "AI chips", "New AI accelerator chips and GPUs")
    titles = feed_titles(40)
    async with open_runtime(settings) as worker:
        await run_until_idle(worker)
        for start in range(0, 40, 10):
            for title in titles[start : start + 10]:
                await seed_item(rt, src, f"{title} [{start}]")
            await run_until_idle(worker)
        model = embed.model_name(worker)
        in_memory = worker.extras["calibration_windows"].observed(model, goal)
        query = "SELECT seen FROM goal_calibration WHERE goal_id = $1 AND signal = $2"
        assert await rt.pool.fetchval(query, goal, model) < in_memory.seen  # values wait in the worker
    assert await rt.pool.fetchval(query, goal, model) == in_memory.seen  # written as it closed
