"""Relevance quality on ../shared/data/ag_news_tuning.csv: `bin/bench relevance [--provider local|fake] [--json]`.

One goal per label, described as a user would (below). Every snippet is scored by the production scorer
(`match.score_batch`: goal vectors, item context vectors, priority terms, calibration, feedback), side by side
with a TF-IDF baseline and with the keyword-only (lexical) fallback. The data is split 50/50 (seeded): the
anchors are measured on the tuning half (printed next to the values in match.ANCHORS) and everything is
reported on both halves, the held-out one being the honest number. Then 20 like/dislike answers per goal are
simulated (rounds of 5, always the top-scored unrated items, labelled by ground truth) and the held-out
numbers are reported again, without the rated items. Pushed = score >= BATCH_THRESHOLD (IMMEDIATE + BATCH);
digest = the 10 best items.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from infosentry import hotconfig, match
from tests.bench import results as bench_results
from tests.bench.common import shared_data

DATA = shared_data("ag_news_tuning.csv")
BATCH_THRESHOLD = hotconfig.KEYS["BATCH_THRESHOLD"].default
IMMEDIATE_THRESHOLD = hotconfig.KEYS["IMMEDIATE_THRESHOLD"].default
ANSWERS, ROUND = 20, 5
SEED = 0

# The four goals, written the way a user would describe the interest (name, description, priority terms).
GOALS: dict[str, tuple[str, str, list[str]]] = {
    "world": (
        "World news",
        "What happens in other countries: wars and conflicts, elections, presidents and prime ministers, "
        "diplomacy, terrorism, the Middle East, Iraq, Africa and Asia",
        ["war", "election", "prime minister", "United Nations", "president", "troops"],
    ),
    "sports": (
        "Sports",
        "Games, matches and athletes: football, baseball, basketball, soccer, tennis, golf, the Olympics, "
        "scores and championships",
        ["Olympics", "championship", "coach", "season", "game"],
    ),
    "business": (
        "Economy and companies",
        "How the economy and markets move: stocks, Wall Street, oil prices, interest rates, jobs and inflation; "
        "company results, mergers, bankruptcies and deals",
        ["stocks", "earnings", "profit", "oil prices", "Wall Street", "economy"],
    ),
    "sci_tech": (
        "Science and technology",
        "New technology, software, the internet, computers and gadgets, space exploration and scientific research",
        ["software", "Microsoft", "internet", "NASA", "computer"],
    ),
}
LABELS = list(GOALS)


def load() -> tuple[list[str], np.ndarray]:
    with DATA.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], np.array([LABELS.index(r["label"]) for r in rows])


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney U with average ranks for ties)."""
    order = np.argsort(scores, kind="mergesort")
    _, inverse, counts = np.unique(scores[order], return_inverse=True, return_counts=True)
    avg = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = np.empty(len(scores))
    ranks[order] = avg[inverse]
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# --- embeddings ------------------------------------------------------------------------------------------


def embedder_for(provider: str) -> tuple[Any, Any]:
    """(embedder, cleanup)"""
    if provider == "local":
        from infosentry.embedders.local import LocalEmbedder

        return LocalEmbedder(), None
    from dataclasses import replace

    from infosentry.embedders.openai import OpenAIEmbedder
    from infosentry.settings import load_settings
    from tests.fakes.openai import FakeOpenAI

    fake = FakeOpenAI().start()
    settings = replace(load_settings({}), **fake.settings_overrides(), openai_embed_model="fake-embed")
    return OpenAIEmbedder(settings, batch_size=256), fake


def embed_cached(emb: Any, texts: list[str]) -> np.ndarray:
    key = hashlib.sha256((emb.name + "\n" + "\n".join(texts)).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "infosentry-bench" / f"{key}.npy"
    if path.exists():
        return np.load(path)
    started = time.perf_counter()
    vectors = np.asarray(emb.embed_sync(texts), dtype=np.float32)
    print(f"embedded {len(texts)} texts with {emb.name} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def goal_vectors(emb: Any) -> np.ndarray:
    out = []
    for name, description, terms in GOALS.values():
        facets = match.goal_facets(name, description, terms)
        out.append(match.goal_vector(np.asarray(emb.embed_sync(facets))))
    return np.stack(out)


# --- scoring with the production scorer ---------------------------------------------------------------------


def score(
    texts: list[str], vectors: np.ndarray | None, gvec: np.ndarray | None, model: str, rated: match.Rated | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4) scores and raw cosines from match.score_batch (every item visible to every goal, fresh)."""
    n, m = len(texts), len(GOALS)
    items = match.Items(
        ids=np.arange(n),
        texts=texts,
        sources=np.zeros((n, 1), dtype=np.int64),
        vectors=vectors,
        has_vector=np.full(n, vectors is not None),
        age_hours=np.zeros(n),
        is_backfill=np.zeros(n, bool),
        pending_reason=[""] * n,
        goal_backfill=np.zeros(n, bool),
    )
    goals = match.Goals(
        ids=np.arange(m),
        texts=[match.goal_text(*g) for g in GOALS.values()],
        priority_terms=[g[2] for g in GOALS.values()],
        negative_terms=[[] for _ in GOALS],
        strict=np.zeros(m, bool),
        vectors=gvec,
        has_vector=np.full(m, gvec is not None),
        visible=np.ones((m, 1), bool),
        blocked=np.zeros((m, 1), bool),
        trust=np.zeros((m, 1)),
    )
    s = match.score_batch(items, goals, rated, model)
    out = np.zeros((n, m))
    raw = np.zeros((n, m))
    out[s.pair_item, s.pair_goal] = s.score
    raw[s.pair_item, s.pair_goal] = np.where(np.isnan(s.cosine), s.lexical, s.cosine)
    return out, raw


def anchors(raw: np.ndarray, labels: np.ndarray, mask: np.ndarray, same_topic_pct: float = 90) -> tuple[float, float]:
    lo = np.mean([np.percentile(raw[mask & (labels != j), j], 50) for j in range(len(GOALS))])
    hi = np.mean([np.percentile(raw[mask & (labels == j), j], same_topic_pct) for j in range(len(GOALS))])
    return float(lo), float(hi)


def metrics(
    scores: np.ndarray, labels: np.ndarray, mask: np.ndarray, exclude: np.ndarray | None = None
) -> dict[str, Any]:
    per: dict[str, Any] = {}
    for j, name in enumerate(LABELS):
        m = mask & (~exclude[:, j] if exclude is not None else True)
        s, y = scores[m, j], labels[m] == j
        pushed = s >= BATCH_THRESHOLD
        immediate = s >= IMMEDIATE_THRESHOLD
        top = np.argsort(-s, kind="stable")[:10]
        per[name] = {
            "auc": auc(s, y),
            "pushed": int(pushed.sum()),
            "push_precision": float(y[pushed].mean()) if pushed.any() else float("nan"),
            "push_recall": float(y[pushed].sum() / y.sum()),
            "immediate": int(immediate.sum()),
            "immediate_precision": float(y[immediate].mean()) if immediate.any() else float("nan"),
            "digest10_precision": float(y[top].mean()),
            "digest10_recall": float(y[top].sum() / y.sum()),
        }
    keys = ["auc", "push_precision", "push_recall", "digest10_precision", "immediate_precision"]
    per["macro"] = {k: float(np.nanmean([per[g][k] for g in LABELS])) for k in keys}
    pushed_all = sum(per[g]["pushed"] for g in LABELS)
    per["macro"]["pushed"] = pushed_all
    per["macro"]["push_precision_micro"] = float(
        sum(per[g]["push_precision"] * per[g]["pushed"] for g in LABELS if per[g]["pushed"]) / max(1, pushed_all)
    )
    return per


def simulate_feedback(
    texts: list[str], ctx: np.ndarray, gvec: np.ndarray, labels: np.ndarray, mask: np.ndarray, model: str
) -> tuple[np.ndarray, np.ndarray]:
    """20 answers per goal from the top-scored unrated items (rounds of 5); returns (scores, rated mask)."""
    rated = np.zeros((len(texts), len(GOALS)), bool)
    pool = np.nonzero(mask)[0]
    answers: list[tuple[int, int, float]] = []  # (goal, item, label)
    while len(answers) < ANSWERS * len(GOALS):
        r = _rated(answers, ctx)
        scores, _ = score([texts[i] for i in pool], ctx[pool], gvec, model, r)
        for j in range(len(GOALS)):
            order = pool[np.argsort(-scores[:, j], kind="stable")]
            fresh = [i for i in order if not rated[i, j]][:ROUND]
            for i in fresh:
                rated[i, j] = True
                answers.append((j, int(i), 1.0 if labels[i] == j else -1.0))
    final = np.zeros((len(texts), len(GOALS)))
    final[pool], _ = score([texts[i] for i in pool], ctx[pool], gvec, model, _rated(answers, ctx))
    return final, rated


def _rated(answers: list[tuple[int, int, float]], ctx: np.ndarray) -> match.Rated | None:
    if not answers:
        return None
    answers = sorted(answers)
    return match.Rated(
        vectors=ctx[[a[1] for a in answers]],
        labels=np.array([a[2] for a in answers]),
        goal_pos=np.array([a[0] for a in answers]),
    )


# --- TF-IDF baseline -----------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+")


def tfidf_cosines(texts: list[str], queries: list[str], fit_mask: np.ndarray) -> np.ndarray:
    docs = [Counter(_WORD.findall(t.lower())) for t in texts]
    df: Counter[str] = Counter()
    for k in np.nonzero(fit_mask)[0]:
        df.update(docs[k].keys())
    n = int(fit_mask.sum())
    vocab = {w: i for i, w in enumerate(df)}
    idf = np.array([np.log((1 + n) / (1 + df[w])) + 1 for w in vocab])

    def vec(counts: Counter[str]) -> np.ndarray:
        v = np.zeros(len(vocab))
        for w, c in counts.items():
            if w in vocab:
                v[vocab[w]] = (1 + np.log(c)) * idf[vocab[w]]
        norm = np.linalg.norm(v)
        return v / norm if norm else v

    d = np.stack([vec(c) for c in docs])
    q = np.stack([vec(Counter(_WORD.findall(t.lower()))) for t in queries])
    return d @ q.T


# --- report --------------------------------------------------------------------------------------------------


def row(name: str, m: dict[str, Any]) -> str:
    mm = m["macro"]
    per = " ".join(f"{g}={m[g]['auc']:.3f}" for g in LABELS)
    return (
        f"{name:<34} AUC {mm['auc']:.3f} ({per})  push P {mm['push_precision']:.3f} R {mm['push_recall']:.3f}"
        f" n={mm['pushed']}  digest10 P {mm['digest10_precision']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", choices=["local", "fake"], default="local")
    bench_results.add_argument(parser)  # --json alone: the whole document (every figure) on stdout, no text
    args = parser.parse_args()
    with bench_results.session("relevance", args):
        run(args)


def record(results: dict[str, Any]) -> None:
    for key in ("scorer_heldout", "scorer_heldout_after_feedback", "tfidf_heldout", "lexical_heldout"):
        m = results[key]["macro"]
        bench_results.record(f"{key}.auc", m["auc"], "AUC", better="higher")
        bench_results.record(f"{key}.push_precision", m["push_precision"], "fraction", better="higher")
        bench_results.record(f"{key}.push_recall", m["push_recall"], "fraction", better="higher")
        bench_results.record(f"{key}.digest10_precision", m["digest10_precision"], "fraction", better="higher")
    bench_results.record("plain_cosine_heldout.auc", results["plain_cosine_auc_heldout"], "AUC", better="higher")
    bench_results.detail("results", results)


def run(args: argparse.Namespace) -> None:

    texts, labels = load()
    rng = np.random.default_rng(SEED)
    tune = rng.permutation(len(texts)) < len(texts) // 2
    held = ~tune
    emb, fake = embedder_for(args.provider)
    try:
        raw_vectors = embed_cached(emb, texts)
        gvec = goal_vectors(emb)
    finally:
        if fake is not None:
            fake.stop()
    model = emb.name
    # context vectors within each half: each half plays "the items of the last 72 hours"
    ctx = np.zeros_like(raw_vectors)
    for half in (tune, held):
        idx = np.nonzero(half)[0]
        ctx[idx] = match.context_vectors(raw_vectors[idx], raw_vectors[idx], self_index=np.arange(len(idx)))

    results: dict[str, Any] = {"model": model, "items": len(texts), "tuning_items": int(tune.sum())}
    scores, raw = score(texts, ctx, gvec, model)
    measured = anchors(raw, labels, tune)
    used = match.anchors_for(model)
    results["anchors"] = {"measured_on_tuning_half": measured, "in_code": [used.unrelated, used.same_topic]}
    plain_raw = raw_vectors @ gvec.T
    results["plain_cosine_auc_heldout"] = float(
        np.mean([auc(plain_raw[held, j], labels[held] == j) for j in range(len(GOALS))])
    )
    results["scorer_tuning"] = metrics(scores, labels, tune)
    results["scorer_heldout"] = metrics(scores, labels, held)

    fb_scores, rated = simulate_feedback(texts, ctx, gvec, labels, held, model)
    results["scorer_heldout_after_feedback"] = metrics(fb_scores, labels, held, exclude=rated)
    results["feedback_answers"] = {
        g: {"likes": int((rated[:, j] & (labels == j)).sum()), "dislikes": int((rated[:, j] & (labels != j)).sum())}
        for j, g in enumerate(LABELS)
    }

    tf = tfidf_cosines(texts, [match.goal_text(*g) for g in GOALS.values()], tune)
    tf_anchor = match.Anchors(*anchors(tf, labels, tune))
    tf_scores = match.combine(match.calibrate(tf, tf_anchor), 0)
    results["tfidf_heldout"] = metrics(tf_scores, labels, held)
    results["tfidf_anchors"] = [tf_anchor.unrelated, tf_anchor.same_topic]

    lex_scores, lex_raw = score(texts, None, None, model)
    results["lexical_anchors_measured"] = anchors(lex_raw, labels, tune, same_topic_pct=95)
    results["lexical_heldout"] = metrics(lex_scores, labels, held)

    record(results)
    if args.json == "-":
        return
    a = results["anchors"]
    print(f"model {model}; {len(texts)} items, tuned on {int(tune.sum())}, reported on {int(held.sum())} held out")
    print(
        f"anchors measured on the tuning half: unrelated {a['measured_on_tuning_half'][0]:.3f}, same_topic "
        f"{a['measured_on_tuning_half'][1]:.3f} (in code: {a['in_code'][0]:.3f}, {a['in_code'][1]:.3f}); "
        f"lexical p50/p95: {results['lexical_anchors_measured'][0]:.3f}/{results['lexical_anchors_measured'][1]:.3f}"
    )
    print(
        f"plain cosine (item vs goal vector, no context, no terms) held-out macro AUC "
        f"{results['plain_cosine_auc_heldout']:.3f}"
    )
    print(row("scorer, tuning half", results["scorer_tuning"]))
    print(row("scorer, held-out half", results["scorer_heldout"]))
    print(row("scorer, held-out, after 20 answers", results["scorer_heldout_after_feedback"]))
    print(row("TF-IDF baseline, held-out", results["tfidf_heldout"]))
    print(row("keywords only (lexical), held-out", results["lexical_heldout"]))
    print("per goal, held-out (before -> after feedback):")
    for g in LABELS:
        b, f = results["scorer_heldout"][g], results["scorer_heldout_after_feedback"][g]
        fa = results["feedback_answers"][g]
        print(
            f"  {g:<9} AUC {b['auc']:.3f} -> {f['auc']:.3f}  push P {b['push_precision']:.3f} R "
            f"{b['push_recall']:.3f} (n={b['pushed']}) -> P {f['push_precision']:.3f} R {f['push_recall']:.3f} "
            f"(n={f['pushed']})  immediate n={b['immediate']} -> {f['immediate']}  digest10 P "
            f"{b['digest10_precision']:.1f} -> {f['digest10_precision']:.1f}  "
            f"(answers: {fa['likes']} likes, {fa['dislikes']} dislikes)"
        )
    micro = results["scorer_heldout"]["macro"]["push_precision_micro"]
    print(
        f"held-out push precision over all goals (micro): {micro:.3f}; after feedback: "
        f"{results['scorer_heldout_after_feedback']['macro']['push_precision_micro']:.3f}"
    )


if __name__ == "__main__":
    main()
