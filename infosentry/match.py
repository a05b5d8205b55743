"""Scoring items against goals: pure, vectorised scoring functions and the set-based matching step.

Every item is scored against every ACTIVE goal whose owner has an enabled subscription to one of the item's
sources, one batch at a time: one matrix product for the semantic part, term hits per distinct term (not per
pair), the goals' calibration windows (written behind: one atomic update of the goals that are due, see
windows.py), one bulk upsert of the match rows. Imports calibrate, windows, reasons, store.matches,
store.calibration, embedders.lexical, numpy.

The score (in [0, 1], monotonic and continuous in every component, no cliffs)::

    s  = calibrated semantic similarity = sigmoid(z - 1.90), z = (cos - m) / sd       (calibrate.py)
         m: the goal's typical item under this model (median of its last 500 cosines, shrunk toward a prior
         measured against a background corpus); sd: their lower-half sigma, or 1/4.29 of the distance from m
         to the goal's best recent items (its 99th percentile), or 1/3 of the distance to its 90th percentile,
         whichever is largest. BATCH 0.75 <=> z = 3: three sigmas up, at least 70 % of the way to the best
         items (which score 0.92 from meaning alone), reached by at most about a tenth of the goal's items (an
         instant alert, 0.93, needs an item beyond the goal's best 1 %, or a term hit or a like on top)
    t  = priority-term evidence = 0.5 * (1 - 0.5**hits)         (0.25, 0.375, 0.44 ... for 1, 2, 3 hits)
    R  = 1 - (1 - s) * (1 - t)                                   (either strong meaning or term hits count)
    R' = R + 0.6*F*(1 - R) if F >= 0 else R * (1 + 0.6*F)       (feedback moves R part of the way to 1 or 0)
         F = feedback in (-1, 1): similarity-weighted votes of the goal's rated neighbours (like +, dislike -)
    score = sigmoid(logit(R') + 0.5*U + 0.6*(r - 1))
         U = source trust in (-1, 1): likes/clicks minus dislikes on that source for this goal, neutral 0
         r = recency in (0, 1]: exp(-max(0, age_h - 6) / 48)

`cos` compares the goal's matching vector (the mean of the unit vectors of its parts: full text, name,
description, each clause of the description, each priority term; moved toward its best recent items once it
has enough, see PRF_*) with the item's context vector (its own vector blended with its nearest recent items of
the same model, see `context_vectors`). Items without a usable vector, or goals without one, are scored by
keyword overlap (`lexical_only`, calibrated per goal as the signal "lexical", capped at LEXICAL_CAP) when
embedding is off, failing or over budget, or the item has waited PENDING_WAIT_SECONDS; an item whose embedding
is merely pending is left unscored until then. Rows are re-scored when embedded (computed_at bumped).

What the decide step reads from a match row (matches table):
- `gate = 'negative_term'` (a negative term appears) or `'blocked_source'` (every source the owner sees the
  item in is blocked for the goal): never push; `score` is stored as 0 (the score it would have had is
  components.ungated_score, so the API can show why an item was filtered).
- `gate = 'strict_no_hit'` (also components.strict_miss = true): a STRICT goal with priority terms and no
  hit; never IMMEDIATE and never the boundary judge: at most BATCH. `score` is capped at STRICT_CAP (0.87).
- `is_backfill = true`: the item was ingested before its goal was created, edited or resumed (found by the
  goal's 72 h backfill), or it is a new source's back catalogue (items.is_backfill); never IMMEDIATE (at
  most BATCH). Sticky once set for a pair.
- `lexical_only = true`: scored by keywords only (no embedding); never IMMEDIATE (decide caps it at BATCH);
  re-scored when the item or goal is embedded, so an IGNORE may need re-deciding.
Pairs below DIGEST_MIN_SCORE whose score is their semantic score alone, and every other pair below STORE_FLOOR
(unless stored before), are not written: the matches listing ranks them at read time by their semantic score
(`TailRank`, store.matches.unstored_matches), capped at DIGEST_MIN_SCORE.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from infosentry import calibrate, reasons, windows
from infosentry.embedders.lexical import CJK_CLASS, has_cjk
from infosentry.embedders.lexical import _terms as lexical_terms  # the tokenizer behind lexical_similarity
from infosentry.store import calibration as calibration_store
from infosentry.store import goals as goals_store
from infosentry.store import items as items_store
from infosentry.store import matches as matches_store

if TYPE_CHECKING:
    import asyncpg

    from infosentry.runtime import Runtime

log = logging.getLogger(__name__)

# --- constants -------------------------------------------------------------------------------------------

T_MAX = 0.5  # most the priority terms alone can add to R (diminishing: 1 - 0.5**hits)
# Feedback acts on R in probability space: it lifts mid-scoring items near liked ones a lot, items already
# near the top little, so likes do not flood the instant tier (in logit space 18 likes made 150 items IMMEDIATE).
FEEDBACK_SHARE = 0.6
BETA_TRUST, BETA_RECENCY = 0.5, 0.6
FRESH_HOURS, RECENCY_HOURS = 6.0, 48.0
FEEDBACK_KAPPA = 0.5  # prior weight: one weak neighbour moves a score only a little
FEEDBACK_MAX_RATED = 200  # newest rated items per goal used as neighbours
TRUST_PRIOR = 3.0  # pseudo-count that keeps source trust neutral until there is evidence
STRICT_CAP = 0.87  # a STRICT miss stays below the default boundary band (decide also caps it at BATCH)
LEXICAL_CAP = 0.87  # a score from keywords alone never reaches the boundary band (decide caps it at BATCH too)
# Which pairs get a row (`stored_pairs`): every pair a decision can use (DIGEST_MIN_SCORE, hot, 0.60 by
# default), and from STORE_FLOOR (about 1.3 sigmas above the goal's typical item) every pair whose score is not
# its semantic score alone (term hits, a gate, feedback, source trust, age, keywords only). The matches listing
# ranks the rest at read time by that semantic score, from the stored vectors (`TailRank`), so every item stays
# listed, in the order its score would give, while the matching step writes a few rows per item.
STORE_FLOOR = 0.35
PLAIN_FRESH = 0.999  # recency at or above this (an item up to ~6 h old) leaves a score as it was
RECENT_HOURS = 72  # backfill window and "still needed for matching" horizon
# An item whose embedding is merely pending is not scored by keywords meanwhile: keyword scores rank far worse
# and a lexical 1.000 must never beat its embedding to an instant push. After this long (the embedding job
# runs every few seconds) it is scored by keywords, capped at BATCH, and re-scored when its vector arrives.
PENDING_WAIT_SECONDS = 120.0
LEXICAL_SIGNAL = "lexical"  # the calibration signal name of the keyword-overlap score
# Pseudo-relevance feedback (label-free): a goal is matched with its embedded vector plus the centroid of its
# PRF_TOP best recent items (unit weight, one round: the textbook recipe), computed once it has PRF_MIN_ITEMS
# recent items and again every PRF_EVERY items it sees (its calibration window is rebuilt under the new vector).
# It adapts a goal's few words to how its topic is actually written (README: measured gains). Without it narrow
# goals push a little more precisely (en +0.05) but category AUC drops 0.01 and one wording of a topic pushes
# 19 times less than another; 20-30 items, a heavier centroid or a second round measured no better.
PRF_TOP = 10
PRF_MIN_ITEMS = 200
PRF_EVERY = 1000  # values seen since the last PRF vector (the rebuilt window counts: ~500 new items)

# Context vectors: each item blended with its nearest recent items of the same model (k, weight): topics form
# clusters and a terse headline inherits its cluster's meaning. Chosen on the tuning halves of both bench sets
# (k 10-80, weight 1-8; AUC rises with both and flattens past 40 / 4): held-out zh +0.01, en +0.01. The blend
# also lifts a narrow goal's neighbouring cluster (market reports for "oil prices"); calibrate.Z_TOP handles
# that: with it, weight 2 or k 20 push narrow goals only 0.01-0.03 more precisely and cost en AUC 0.01.
CONTEXT_K = 40
CONTEXT_WEIGHT = 4.0
CONTEXT_FULL_POOL = 300  # with fewer recent items the neighbours are blended in proportionally less
MAX_ITEM_CHARS = 1000


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p))


def term_evidence(hits: np.ndarray | float) -> np.ndarray:
    return T_MAX * (1.0 - np.power(0.5, np.asarray(hits, dtype=np.float64)))


def recency(age_hours: np.ndarray | float) -> np.ndarray:
    """1 for the first 6 hours, then a smooth exponential decay (0.37 at 54 h, 0.23 at 78 h)."""
    age = np.maximum(0.0, np.asarray(age_hours, dtype=np.float64) - FRESH_HOURS)
    return np.exp(-age / RECENCY_HOURS)


def combine(semantic: Any, hits: Any, feedback: Any = 0.0, trust: Any = 0.0, fresh: Any = 1.0) -> np.ndarray:
    """The score from its components (all arrays broadcast): see the module docstring."""
    relevance = 1.0 - (1.0 - np.asarray(semantic, dtype=np.float64)) * (1.0 - term_evidence(hits))
    f = np.asarray(feedback, dtype=np.float64)
    relevance = np.where(
        f >= 0, relevance + FEEDBACK_SHARE * f * (1.0 - relevance), relevance * (1.0 + FEEDBACK_SHARE * f)
    )
    z = logit(relevance) + BETA_TRUST * np.asarray(trust) + BETA_RECENCY * (np.asarray(fresh) - 1.0)
    return sigmoid(z)


# --- texts and vectors -------------------------------------------------------------------------------------

_CLAUSE_SPLIT = re.compile(r"[,;:.!?\n，。；：、！？]+|\s+(?:and|or)\s+")


def normalise(text: str) -> str:
    """NFKC + casefold: full-width Latin folds to ASCII, matching is case-insensitive."""
    return unicodedata.normalize("NFKC", text or "").casefold()


def goal_text(name: str, description: str, terms: list[str] | tuple[str, ...] = ()) -> str:
    text = f"{name.strip()}. {description.strip()}"
    return f"{text} {', '.join(terms)}" if terms else text


def goal_facets(name: str, description: str, terms: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The parts a goal vector averages: the whole text, the name, the description, each clause of the
    description and each priority term (a list of topics in one long sentence embeds poorly as a whole)."""
    parts = [goal_text(name, description, terms), name, description]
    parts += [c.strip() for c in _CLAUSE_SPLIT.split(description)]
    parts += list(terms)
    seen: list[str] = []
    for p in parts:
        p = p.strip()
        if p and p not in seen:
            seen.append(p)
    return seen


def goal_vector(facet_vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(facet_vectors, dtype=np.float32).mean(axis=0)
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def item_text(title: str, snippet: str) -> str:
    title, snippet = (title or "").strip(), (snippet or "").strip()
    text = f"{title}. {snippet}" if title and snippet else title or snippet
    return text[:MAX_ITEM_CHARS]


def context_vectors(
    x: np.ndarray, pool: np.ndarray, self_index: np.ndarray | None = None, valid: np.ndarray | None = None
) -> np.ndarray:
    """Each row of x blended with the similarity-weighted mean of its CONTEXT_K nearest pool rows:
    normalise(x + w * mean), w = CONTEXT_WEIGHT scaled down while the pool is small. `self_index[i]` is the
    pool row of x[i] itself (excluded), or -1; `valid` (bool per pool row), when given, the rows that may be
    neighbours at all. All vectors unit length, one model."""
    x = np.asarray(x, dtype=np.float32)
    n_valid = pool.shape[0] if valid is None else int(valid.sum())
    n_pool = n_valid - (int((self_index >= 0).any()) if self_index is not None else 0)
    if x.shape[0] == 0 or n_pool <= 0:
        return x.copy()
    sims = x @ pool.T
    if valid is not None:
        sims[:, ~valid] = -np.inf
    if self_index is not None:
        rows = np.nonzero(self_index >= 0)[0]
        sims[rows, self_index[rows]] = -np.inf
    k = min(CONTEXT_K, n_pool)
    nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    w = np.maximum(np.take_along_axis(sims, nn, axis=1), 0.0)
    mean = np.einsum("nk,nkd->nd", w, pool[nn]) / np.maximum(w.sum(axis=1, keepdims=True), 1e-9)
    out = x + (CONTEXT_WEIGHT * min(1.0, n_pool / CONTEXT_FULL_POOL)) * mean
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)


# --- terms -------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _term_matcher(term: str) -> tuple[str, re.Pattern[str] | None]:
    """(normalised term, regex or None for a plain substring). Chinese is written without spaces, so a term of
    two or more CJK characters (or CJK mixed with Latin, "AI芯片") matches as a substring: "芯片" finds "国产芯片"
    and "AI芯片". A single CJK character would match a large share of all text ("车" is in 汽车, 车站, 马车...),
    so it matches only standing alone, with no CJK character on either side. Other terms match on word
    boundaries (CJK characters count as boundaries), with a plural s/es allowed after a final letter."""
    norm = normalise(term).strip()
    cjk = sum(1 for c in norm if has_cjk(c))
    if not norm or cjk >= 2 or (cjk == 1 and len(norm) >= 2):
        return norm, None
    if cjk == 1:
        return norm, re.compile(f"(?<!{_CJK_CHAR}){re.escape(norm)}(?!{_CJK_CHAR})")
    plural = "(?:s|es)?" if norm[-1].isalpha() else ""
    return norm, re.compile(f"{re.escape(norm)}{plural}")


_CJK_CHAR = f"[{CJK_CLASS}]"  # one Han, kana or Hangul character


def _word_char(c: str) -> bool:
    # A letter or digit of a spaced script. CJK characters count as boundaries, so "OpenAI" is found in
    # "使用OpenAI的模型" (Chinese puts no spaces around Latin words); \b would see no boundary there.
    return c.isalnum() and not has_cjk(c)


def _found(text: str, rx: re.Pattern[str]) -> bool:
    if rx.pattern.startswith("(?<!"):  # a lone CJK character: the lookarounds are its boundaries
        return rx.search(text) is not None
    for m in rx.finditer(text):
        start, end = m.start(), m.end()
        if (start == 0 or not _word_char(text[start - 1])) and (end == len(text) or not _word_char(text[end])):
            return True
    return False


def term_hits(texts: list[str], terms: list[str]) -> np.ndarray:
    """(len(texts), len(terms)) bool: does normalised text i contain term j. Texts must be `normalise`d."""
    out = np.zeros((len(texts), len(terms)), dtype=bool)
    for j, term in enumerate(terms):
        norm, rx = _term_matcher(term)
        if not norm:
            continue
        for i, text in enumerate(texts):
            if norm in text and (rx is None or _found(text, rx)):  # cheap substring test first
                out[i, j] = True
    return out


# --- lexical similarity, vectorised ------------------------------------------------------------------------


@lru_cache(maxsize=8192)
def _goal_terms(text: str) -> Counter[str]:
    # goal texts repeat in every batch; tokenising them once per process keeps the index build cheap
    return lexical_terms(text)


class LexicalIndex:
    """lexical_similarity(goal_text, doc) for many goals at once: an inverted index over the goals' terms,
    then per item one weighted bincount over the goals sharing its terms (not a loop over pairs)."""

    def __init__(self, goal_texts: list[str]) -> None:
        self.m = len(goal_texts)
        postings: dict[str, list[tuple[int, int]]] = {}
        self.q_len = np.zeros(self.m)
        self.q_norm = np.zeros(self.m)
        for g, text in enumerate(goal_texts):
            counts = _goal_terms(text)
            self.q_len[g] = len(counts)
            self.q_norm[g] = math.sqrt(sum(c * c for c in counts.values()))
            for term, c in counts.items():
                postings.setdefault(term, []).append((g, c))
        self.postings = {
            t: (np.array([g for g, _ in p]), np.array([c for _, c in p], dtype=float)) for t, p in postings.items()
        }

    def scores(self, doc: str) -> np.ndarray:
        """(m,) similarity of every goal text to doc, as lexical.lexical_similarity computes it."""
        counts: Counter[str] = lexical_terms(doc)
        out = np.zeros(self.m)
        if not counts or not self.m:
            return out
        gs, cov, dot = [], [], []
        for term, c in counts.items():
            p = self.postings.get(term)
            if p is not None:
                gs.append(p[0])
                cov.append(np.ones(len(p[0])))
                dot.append(p[1] * c)
        if not gs:
            return out
        g = np.concatenate(gs)
        coverage = np.bincount(g, np.concatenate(cov), minlength=self.m)
        dots = np.bincount(g, np.concatenate(dot), minlength=self.m)
        d_norm = math.sqrt(sum(c * c for c in counts.values()))
        with np.errstate(divide="ignore", invalid="ignore"):
            cosine = np.where(self.q_norm > 0, np.minimum(1.0, dots / (self.q_norm * d_norm)), 0.0)
            cover = np.where(self.q_len > 0, coverage / self.q_len, 0.0)
        return 0.5 * cover + 0.5 * cosine


# --- batch scoring (pure) ----------------------------------------------------------------------------------


@dataclass
class Goals:
    """Candidate goals of a batch (parallel lists), in the batch's source index space."""

    ids: np.ndarray
    texts: list[str]
    priority_terms: list[list[str]]
    negative_terms: list[list[str]]
    strict: np.ndarray  # bool
    vectors: np.ndarray | None  # (m, d) or None; rows of goals without a usable vector are ignored
    has_vector: np.ndarray  # bool
    visible: np.ndarray  # (m, S) bool: the owner subscribes to source s (enabled)
    blocked: np.ndarray  # (m, S) bool: source s blocked for the goal
    trust: np.ndarray  # (m, S) float in (-1, 1)


@dataclass
class Items:
    ids: np.ndarray
    texts: list[str]
    sources: np.ndarray  # (n, kmax) source indexes, padded with -1
    vectors: np.ndarray | None  # (n, d) context vectors or None
    has_vector: np.ndarray  # bool
    age_hours: np.ndarray
    is_backfill: np.ndarray  # bool: the item is a new source's back catalogue
    goal_backfill: np.ndarray  # bool: scored by a goal backfill and ingested before the goal (version) changed
    pending_reason: list[str]  # why an item has no vector ("embedding pending", "embedding failed", "")


@dataclass
class Rated:
    """The goals' rated items (context vectors), grouped by goal: goal_pos[j] is the Goals row of rated j."""

    vectors: np.ndarray  # (K, d)
    labels: np.ndarray  # +1 like, -1 dislike
    goal_pos: np.ndarray  # (K,) sorted ascending


@dataclass
class Scored:
    pair_item: np.ndarray  # (P,) row in Items
    pair_goal: np.ndarray  # (P,) row in Goals
    score: np.ndarray
    ungated: np.ndarray
    cosine: np.ndarray  # nan where lexical
    semantic: np.ndarray
    lexical: np.ndarray  # nan where not computed
    hits: np.ndarray
    negative: np.ndarray  # bool
    blocked: np.ndarray  # bool
    strict_miss: np.ndarray  # bool
    feedback: np.ndarray
    trust: np.ndarray
    fresh: np.ndarray
    lexical_only: np.ndarray  # bool
    hit_matrix: np.ndarray = field(repr=False)  # (n, T) over `terms`
    neg_matrix: np.ndarray = field(repr=False)
    terms: list[str] = field(default_factory=list)
    negs: list[str] = field(default_factory=list)


def _term_incidence(term_lists: list[list[str]]) -> tuple[list[str], np.ndarray]:
    """Distinct terms and the (T, m) incidence of goals to their terms."""
    index: dict[str, int] = {}
    for terms in term_lists:
        for t in terms:
            index.setdefault(t, len(index))
    inc = np.zeros((len(index), len(term_lists)), dtype=np.float32)
    for g, terms in enumerate(term_lists):
        for t in terms:
            inc[index[t], g] = 1.0
    return list(index), inc


@dataclass
class Signals:
    """The raw, model-specific part of a batch: the visible pairs, their cosine (or keyword overlap where a
    vector is missing) and term hits. Calibration turns the raw values into comparable scores."""

    pair_item: np.ndarray  # (P,) row in Items
    pair_goal: np.ndarray  # (P,) row in Goals
    cosine: np.ndarray  # nan where a side has no vector
    lexical: np.ndarray  # nan where not computed (only for pairs without vectors)
    use_vec: np.ndarray  # bool
    hits: np.ndarray
    negative: np.ndarray  # bool
    blocked: np.ndarray  # bool
    strict_miss: np.ndarray  # bool
    hit_matrix: np.ndarray = field(repr=False)
    neg_matrix: np.ndarray = field(repr=False)
    terms: list[str] = field(default_factory=list)
    negs: list[str] = field(default_factory=list)

    def values(self, lexical: bool = False, items: np.ndarray | None = None) -> dict[int, np.ndarray]:
        """Per goal row, the raw values of one signal (the model's cosines, or the keyword overlaps), of all
        pairs or only of the pairs whose item is selected by the bool mask `items`."""
        mask = ~self.use_vec if lexical else self.use_vec.copy()
        if items is not None:
            mask &= items[self.pair_item]
        raw = self.lexical if lexical else self.cosine
        out: dict[int, np.ndarray] = {}
        if not mask.any():
            return out
        pg, vals = self.pair_goal[mask], raw[mask]
        order = np.argsort(pg, kind="stable")
        pg, vals = pg[order], vals[order]
        cuts = np.flatnonzero(np.diff(pg)) + 1
        for g, chunk in zip(pg[np.r_[0, cuts]], np.split(vals, cuts), strict=True):
            out[int(g)] = chunk
        return out


def signals(items: Items, goals: Goals) -> Signals:
    """Visible (item, goal) pairs of a batch with their raw values: dense (n, m) arrays, gathered at the pairs."""
    n, m = len(items.ids), len(goals.ids)
    # visibility: an item is seen by a goal when its owner subscribes to one of the item's sources
    inc = np.zeros((n, goals.visible.shape[1] + 1), dtype=np.float32)  # last column: padding (-1)
    rows = np.repeat(np.arange(n), items.sources.shape[1])
    inc[rows, items.sources.ravel()] = 1.0
    inc = inc[:, :-1]
    visible = inc @ goals.visible.T.astype(np.float32) > 0
    unblocked = inc @ (goals.visible & ~goals.blocked).T.astype(np.float32) > 0
    pi, pg = np.nonzero(visible)
    norm_texts = [normalise(t) for t in items.texts]

    # terms: one test per (distinct term, item); goals' counts through the incidence matrix
    terms, t_inc = _term_incidence(goals.priority_terms)
    negs, n_inc = _term_incidence(goals.negative_terms)
    hit_m = term_hits(norm_texts, terms)
    neg_m = term_hits(norm_texts, negs)
    hits_nm = hit_m.astype(np.float32) @ t_inc if terms else np.zeros((n, m), np.float32)
    neg_nm = (neg_m.astype(np.float32) @ n_inc > 0) if negs else np.zeros((n, m), bool)
    hits = hits_nm[pi, pg]

    # meaning: one matrix product where both sides have vectors of this model; keyword overlap only where not
    # (with a vector, the overlap adds nothing for Chinese and costs English ranking: README)
    cosine = np.full(len(pi), np.nan)
    use_vec = items.has_vector[pi] & goals.has_vector[pg]
    if use_vec.any() and items.vectors is not None and goals.vectors is not None:
        c_nm = items.vectors @ goals.vectors.T
        cosine[use_vec] = c_nm[pi[use_vec], pg[use_vec]]
    lexical = np.full(len(pi), np.nan)
    need_lex = ~use_vec
    if need_lex.any():
        index = LexicalIndex(goals.texts)
        lex_nm = np.zeros((n, m))
        for i in np.unique(pi[need_lex]):
            lex_nm[i] = index.scores(items.texts[i])
        lexical[need_lex] = lex_nm[pi[need_lex], pg[need_lex]]
    strict_miss = goals.strict[pg] & (t_inc.sum(axis=0)[pg] > 0 if terms else False) & (hits == 0)
    return Signals(
        pair_item=pi,
        pair_goal=pg,
        cosine=cosine,
        lexical=lexical,
        use_vec=use_vec,
        hits=hits,
        negative=neg_nm[pi, pg],
        blocked=~unblocked[pi, pg],
        strict_miss=strict_miss,
        hit_matrix=hit_m,
        neg_matrix=neg_m,
        terms=terms,
        negs=negs,
    )


def semantic_scores(
    sig: Signals, vector_est: dict[int, calibrate.Estimate], lexical_est: dict[int, calibrate.Estimate]
) -> np.ndarray:
    """Per pair, the calibrated meaning score under each goal's estimate of its signal (EARLY_CAP where a goal
    has no estimate yet)."""
    out = np.full(len(sig.pair_item), calibrate.EARLY_CAP)
    n_goals = int(sig.pair_goal.max(initial=-1)) + 1
    for mask, raw, ests in ((sig.use_vec, sig.cosine, vector_est), (~sig.use_vec, sig.lexical, lexical_est)):
        known = [g for g, est in ests.items() if est.known]
        if not known or not mask.any():
            continue
        # each goal's estimate spread over the pairs as arrays: one pass, not one mask per goal
        m, sd = np.full(n_goals, np.nan), np.ones(n_goals)
        capped = np.zeros(n_goals, dtype=bool)
        for g in known:
            if g < n_goals:
                m[g], sd[g], capped[g] = ests[g].m, ests[g].s, ests[g].capped
        sel = mask & ~np.isnan(m[sig.pair_goal])
        pg = sig.pair_goal[sel]
        scores = calibrate.score_from_z((raw[sel] - m[pg]) / sd[pg])
        out[sel] = np.where(capped[pg], np.minimum(scores, calibrate.EARLY_CAP), scores)
    return out


def finish(
    items: Items,
    goals: Goals,
    sig: Signals,
    semantic: np.ndarray,
    rated: Rated | None,
    neighbour: dict[int, float] | None = None,
) -> Scored:
    """The scores from the calibrated meaning and the other components (module docstring)."""
    m = len(goals.ids)
    pi, pg = sig.pair_item, sig.pair_goal
    # feedback: similarity-weighted votes of the goal's rated neighbours (same model only)
    feedback = np.zeros(len(pi))
    if rated is not None and len(rated.labels) and items.vectors is not None:
        feedback = _feedback(items, rated, pi, pg, neighbour or {}, m)
        feedback[~items.has_vector[pi]] = 0.0

    # source trust: the best trust among the item's sources (padding maps to a zero column)
    trust_pad = np.concatenate([goals.trust, np.zeros((m, 1))], axis=1)
    trust = trust_pad[pg[:, None], items.sources[pi]].max(axis=1)
    trust = np.where(items.sources[pi].max(axis=1) < 0, 0.0, trust)

    fresh = recency(items.age_hours[pi])
    ungated = combine(semantic, sig.hits, feedback, trust, fresh)
    ungated = np.where(sig.use_vec, ungated, np.minimum(ungated, LEXICAL_CAP))
    score = np.where(sig.strict_miss, np.minimum(ungated, STRICT_CAP), ungated)
    score = np.where(sig.negative | sig.blocked, 0.0, score)
    return Scored(
        pair_item=pi,
        pair_goal=pg,
        score=score,
        ungated=ungated,
        cosine=sig.cosine,
        semantic=semantic,
        lexical=sig.lexical,
        hits=sig.hits,
        negative=sig.negative,
        blocked=sig.blocked,
        strict_miss=sig.strict_miss,
        feedback=feedback,
        trust=trust,
        fresh=fresh,
        lexical_only=~sig.use_vec,
        hit_matrix=sig.hit_matrix,
        neg_matrix=sig.neg_matrix,
        terms=sig.terms,
        negs=sig.negs,
    )


def stored_pairs(scored: Scored, decide_floor: float) -> np.ndarray:
    """Which pairs get a row (see STORE_FLOOR): `decide_floor` is DIGEST_MIN_SCORE, the lowest score a decision
    uses. A plain pair (its score is its semantic score) below it is listed at read time by that same score."""
    plain = (
        (scored.hits == 0)
        & ~scored.negative
        & ~scored.blocked
        & ~scored.lexical_only
        & (scored.feedback == 0)
        & (scored.trust == 0)
        & (scored.fresh >= PLAIN_FRESH)
    )
    return (scored.ungated >= decide_floor) | ((scored.ungated >= STORE_FLOOR) & ~plain)


def _feedback(
    items: Items, rated: Rated, pi: np.ndarray, pg: np.ndarray, neighbour: dict[int, float], m: int
) -> np.ndarray:
    """F = sum(label * w) / (sum(w) + kappa), w = ((sim - t) / (1 - t))^2 over the goal's rated items, t the
    goal's neighbour threshold (calibrate.neighbour_threshold: closer than 90 % of random pairs of this model;
    without one, the 90th percentile of this batch's similarities to the rated items): near a liked item ->
    up to +1, near a disliked one -> down to -1, no near neighbour -> 0."""
    assert items.vectors is not None
    sims = items.vectors @ rated.vectors.T  # (n, K)
    fallback = float(np.quantile(sims, calibrate.NEIGHBOUR_QUANTILE)) if sims.size else 0.0
    t = np.array([neighbour.get(int(g), fallback) for g in rated.goal_pos])[None, :]  # per rated item
    t = np.minimum(t, 0.99)
    w = np.square(np.clip((sims - t) / (1.0 - t), 0.0, None))
    starts = np.searchsorted(rated.goal_pos, np.unique(rated.goal_pos))  # goal_pos is sorted: one run per goal
    votes = np.add.reduceat(w * rated.labels, starts, axis=1)  # (n, goals with feedback)
    weight = np.add.reduceat(w, starts, axis=1)
    col = np.full(m, -1)
    col[rated.goal_pos[starts]] = np.arange(len(starts))
    out = np.zeros(len(pi))
    has = col[pg] >= 0
    c = col[pg[has]]
    out[has] = votes[pi[has], c] / (weight[pi[has], c] + FEEDBACK_KAPPA)
    return out


# --- the matching step -------------------------------------------------------------------------------------


@dataclass
class MatchStats:
    items: int = 0
    pairs: int = 0
    stored: int = 0
    lexical_pairs: int = 0
    gated: int = 0
    max_score: float = 0.0

    def add(self, other: MatchStats) -> None:
        self.items += other.items
        self.pairs += other.pairs
        self.stored += other.stored
        self.lexical_pairs += other.lexical_pairs
        self.gated += other.gated
        self.max_score = max(self.max_score, other.max_score)


def _vec(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    return value.to_numpy() if hasattr(value, "to_numpy") else np.asarray(value, dtype=np.float32)


def _stack(vectors: list[np.ndarray | None], ok: np.ndarray) -> np.ndarray | None:
    """Rows for the usable vectors (others zero); None when there is none or dimensions disagree."""
    dims = {v.size for v, good in zip(vectors, ok, strict=True) if good and v is not None}
    if len(dims) != 1:
        ok[:] = False
        return None
    dim = dims.pop()
    out = np.zeros((len(vectors), dim), dtype=np.float32)
    for i, (v, good) in enumerate(zip(vectors, ok, strict=True)):
        if good and v is not None:
            out[i] = v
    return out


async def match_items(
    rt: Runtime,
    item_ids: list[int],
    *,
    model: str | None,
    goal_ids: list[int] | None = None,
    backfill_before: datetime | None = None,
    conn: asyncpg.Connection | None = None,
    now: datetime | None = None,
    lexical_fallback: bool = False,
) -> MatchStats:
    """Score items against their visible active goals (or only `goal_ids`) and upsert the match rows.

    `model`: the current embedder name; vectors of other models are not used (lexical instead).
    `backfill_before`: a goal backfill: items ingested before this moment (the goal's change) are marked
    is_backfill (never IMMEDIATE; later items are news to the goal) and items.matched_at is left alone;
    otherwise matched_at is set for every item. `conn`: read and write in this connection (the caller's claim
    transaction, which may hold vectors not yet committed). `lexical_fallback`: embedding is off, failing or over
    budget, so items still pending are scored by keywords now (capped at BATCH); otherwise an item pending for
    less than PENDING_WAIT_SECONDS is left for its embedding.
    """
    stats = MatchStats()
    if not item_ids:
        return stats
    now = now or datetime.now(UTC)
    reader = conn or rt.pool
    data = await matches_store.load_batch(reader, item_ids, goal_ids)
    if not data.items:
        return stats
    stats.items = len(data.items)
    if not data.goals:
        if backfill_before is None:
            await items_store.mark_matched(conn or rt.pool, [r["id"] for r in data.items])
        return stats

    if not lexical_fallback:
        # an item whose embedding is merely pending waits for it (see PENDING_WAIT_SECONDS); it stays unmatched
        wait_until = now - timedelta(seconds=PENDING_WAIT_SECONDS)
        data.items = [r for r in data.items if r["embedding_status"] != "pending" or r["ingested_at"] < wait_until]
        if not data.items:
            return stats
    vectors = await _goal_vectors(rt, reader, data.goals)
    items, goals = _build(data, vectors, model, now, backfill_before)
    goal_index = {int(g): j for j, g in enumerate(goals.ids)}
    versions = [int(g["version"]) for g in data.goals]
    # a goal's calibration is read afresh when its version or matching vector (PRF) changes
    stamps = [g["prf_at"] for g in data.goals]
    windows_ = _windows(rt)
    rated = await _rated(rt, reader, goals, goal_index, model)
    sig = signals(items, goals)

    # A goal's window learns from the items it sees for the first time (new items, a fresh vector, its
    # backfill), not from re-scores of the same items (feedback, an unblocked source), which would repeat them.
    first = np.array([backfill_before is not None or r["matched_at"] is None for r in data.items], dtype=bool)

    async def write(c: asyncpg.Connection) -> None:
        await matches_store.lock_for_write(c)
        vector_est, neighbour = await _observe(
            c, windows_, sig.values(), sig.values(items=first), model, goals, versions, stamps
        )
        lexical_est, _ = await _observe(
            c,
            windows_,
            sig.values(lexical=True),
            sig.values(lexical=True, items=first),
            LEXICAL_SIGNAL,
            goals,
            versions,
            [None] * len(versions),
        )
        scored = finish(items, goals, sig, semantic_scores(sig, vector_est, lexical_est), rated, neighbour)
        stats.pairs = len(scored.score)
        stats.lexical_pairs = int(scored.lexical_only.sum())
        keep = stored_pairs(scored, decide_floor(rt))
        if data.existing:  # pairs stored before are always re-scored (a lexical score may now be lower)
            pair_keys = (goals.ids[scored.pair_goal] << 32) | items.ids[scored.pair_item]
            old_keys = np.array([(int(r["goal_id"]) << 32) | int(r["item_id"]) for r in data.existing], dtype=np.int64)
            keep |= np.isin(pair_keys, old_keys)
        rows = _rows(scored, items, goals, keep, model, [str(g["language"] or "en") for g in data.goals])
        stats.stored = len(rows[0])
        stats.gated = int((keep & (scored.negative | scored.blocked | scored.strict_miss)).sum())
        stats.max_score = float(scored.score.max(initial=0.0))
        ids = [] if backfill_before is not None else [int(i) for i in items.ids]
        await matches_store.upsert_matches(c, *rows, matched_item_ids=ids)

    if conn is not None:
        await write(conn)
    else:
        async with rt.pool.acquire() as c, c.transaction():
            await write(c)
    return stats


def decide_floor(rt: Runtime) -> float:
    """DIGEST_MIN_SCORE: the lowest score a decision uses, so every pair at or above it is stored."""
    return float(rt.hot["DIGEST_MIN_SCORE"])


@dataclass(frozen=True)
class TailRank:
    """How the matches listing ranks a goal's items that have no row (`stored_pairs`) at read time: the
    calibrated semantic score of the item's context vector against the goal's matching vector (what a plain
    pair's score is), capped at `ceiling` (the decide floor: a plain pair at or above it has a row), computed in
    SQL from the stored vectors."""

    signal: str  # the embedding model
    m: float
    s: float
    ceiling: float
    z0: float = calibrate.Z0


async def tail_rank(rt: Runtime, goal_id: int) -> TailRank | None:
    """The goal's TailRank under its current model; None before it is embedded and calibrated."""
    row = await calibration_store.current(rt.pool, goal_id)
    if row is None:
        return None
    prior = (float(row["prior_loc"]), float(row["prior_spread"])) if row["prior_loc"] is not None else None
    est = calibrate.estimate(calibration_store.window_of(row["recent"]), int(row["seen"]), prior)
    return TailRank(str(row["signal"]), est.m, est.s, decide_floor(rt)) if est.known else None


def _windows(rt: Runtime) -> windows.Windows:
    """The process's calibration windows; their waiting values are written when the runtime closes."""
    found: windows.Windows | None = rt.extras.get("calibration_windows")
    if found is not None:
        return found
    made = rt.extras["calibration_windows"] = windows.Windows()
    rt.on_close(lambda: made.flush(rt.pool))
    return made


async def _observe(
    conn: asyncpg.Connection,
    windows_: windows.Windows,
    scored: dict[int, np.ndarray],
    new: dict[int, np.ndarray],
    signal: str | None,
    goals: Goals,
    versions: list[int],
    stamps: list[Any],
) -> tuple[dict[int, calibrate.Estimate], dict[int, float]]:
    """Add each goal's `new` values of one signal to its calibration window (written behind: windows.py), then
    return the estimates (by goal row) and feedback neighbour thresholds of every goal with values to score. The
    batch is added first, so a goal's first batch (its backfill) calibrates itself; the keyword signal's prior is
    measured here, the models' when the goal is embedded."""
    if not scored or signal is None:
        return {}, {}
    lexical = signal == LEXICAL_SIGNAL
    rows_of = sorted(scored)
    found = await windows_.observe(
        conn,
        signal,
        [int(goals.ids[j]) for j in rows_of],
        [versions[j] for j in rows_of],
        [stamps[j] for j in rows_of],
        [new.get(j, np.zeros(0)) for j in rows_of],
        [lexical_prior(goals.texts[j]) if lexical else None for j in rows_of],
        through_until=0 if lexical else PRF_MIN_ITEMS,  # the first PRF vector waits for nothing
    )
    known = [(j, w) for j, w in zip(rows_of, found, strict=True) if w is not None]
    grid = np.stack([w.ring for _, w in known]) if known else np.zeros((0, calibrate.WINDOW), np.float32)
    ests = calibrate.estimates(grid, [w.seen for _, w in known], [w.prior for _, w in known])
    estimates = {j: e for (j, _), e in zip(known, ests, strict=True)}
    neighbour = {j: w.neighbour for j, w in known if w.neighbour is not None}
    return estimates, neighbour


@lru_cache(maxsize=4096)
def lexical_prior(goal_text_: str) -> tuple[float, float]:
    """The goal's keyword overlap with the background corpus of its language: the keyword signal's prior."""
    corpus = calibrate.background("zh" if has_cjk(goal_text_) else "en")
    index = LexicalIndex([goal_text_])
    return calibrate.background_prior(np.array([index.scores(t)[0] for t in corpus]))


async def _goal_vectors(rt: Runtime, reader: Any, goals: list[Any]) -> list[np.ndarray | None]:
    """Goal vectors from a per-process cache keyed by (goal, embedded version, model): every batch needs all
    candidate goals, and reading 1,000 vectors of 1536 floats per batch from the table dominated matching."""
    cache: dict[int, tuple[Any, Any, Any, np.ndarray | None]] = rt.extras.setdefault("goal_vectors", {})
    key = {int(g["id"]): (g["embedded_version"], g["embedding_model"], g["prf_at"]) for g in goals}
    missing = [gid for gid, k in key.items() if gid not in cache or cache[gid][:3] != k]
    if missing:
        for r in await goals_store.goal_vectors(reader, missing):
            cache[int(r["id"])] = (r["embedded_version"], r["embedding_model"], r["prf_at"], _vec(r["embedding"]))
    return [cache[gid][3] if gid in cache and cache[gid][:3] == key[gid] else None for gid in key]


def prf_vector(goal: np.ndarray, recent: np.ndarray) -> np.ndarray | None:
    """The goal vector plus the centroid of its PRF_TOP closest recent items (unit length); None with fewer
    than PRF_MIN_ITEMS items to choose from."""
    if recent.shape[0] < PRF_MIN_ITEMS or recent.shape[1] != goal.shape[0]:
        return None
    top = np.argpartition(-(recent @ goal), PRF_TOP - 1)[:PRF_TOP]
    v = goal + recent[top].mean(axis=0)
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def _build(
    data: matches_store.Batch,
    goal_vecs: list[np.ndarray | None],
    model: str | None,
    now: datetime,
    backfill_before: datetime | None,
) -> tuple[Items, Goals]:
    source_index: dict[int, int] = {}
    for r in data.items:
        for s in r["sources"]:
            source_index.setdefault(int(s), len(source_index))
    n_src = len(source_index)
    kmax = max(1, max(len(r["sources"]) for r in data.items))
    src = np.full((len(data.items), kmax), -1, dtype=np.int64)
    for i, r in enumerate(data.items):
        for k, s in enumerate(r["sources"]):
            src[i, k] = source_index[int(s)]
    item_vecs = [
        _vec(r["context_embedding"] if r["context_embedding"] is not None else r["embedding"]) for r in data.items
    ]
    item_ok = np.array(
        [
            r["embedding_model"] == model and v is not None and r["embedding_status"] == "done"
            for r, v in zip(data.items, item_vecs, strict=True)
        ],
        dtype=bool,
    )
    item_matrix = _stack(item_vecs, item_ok)
    ages = np.array(
        [
            max(0.0, (now - (r["published_at"] or r["ingested_at"])).total_seconds() / 3600)
            if (r["published_at"] or r["ingested_at"])
            else 0.0
            for r in data.items
        ]
    )
    pending = [
        "" if ok else ("embedding failed" if r["embedding_status"] == "failed" else "embedding pending")
        for r, ok in zip(data.items, item_ok, strict=True)
    ]
    items = Items(
        ids=np.array([r["id"] for r in data.items], dtype=np.int64),
        texts=[item_text(r["title"], r["snippet"]) for r in data.items],
        sources=src,
        vectors=item_matrix,
        has_vector=item_ok,
        age_hours=ages,
        is_backfill=np.array([bool(r["is_backfill"]) for r in data.items], dtype=bool),
        pending_reason=pending,
        goal_backfill=np.array(
            [backfill_before is not None and r["ingested_at"] < backfill_before for r in data.items], dtype=bool
        ),
    )
    m = len(data.goals)
    visible = np.zeros((m, n_src), dtype=bool)
    blocked = np.zeros((m, n_src), dtype=bool)
    trust = np.zeros((m, n_src))
    for j, g in enumerate(data.goals):
        for s in g["visible"]:
            if int(s) in source_index:
                visible[j, source_index[int(s)]] = True
    gidx = {int(g["id"]): j for j, g in enumerate(data.goals)}
    for b in data.blocked:
        j, s = gidx.get(int(b["goal_id"])), source_index.get(int(b["source_id"]))
        if j is not None and s is not None:
            blocked[j, s] = True
    for t in data.trust:
        j, s = gidx.get(int(t["goal_id"])), source_index.get(int(t["source_id"]))
        if j is not None and s is not None:
            good = float(t["likes"]) + 0.5 * float(t["clicks"])
            bad = float(t["dislikes"])
            trust[j, s] = (good - bad) / (good + bad + TRUST_PRIOR)
    goal_ok = np.array(
        [
            g["embedding_model"] == model and v is not None and g["embedded_version"] == g["version"]
            for g, v in zip(data.goals, goal_vecs, strict=True)
        ],
        dtype=bool,
    )
    goal_matrix = _stack(goal_vecs, goal_ok)
    if item_matrix is not None and goal_matrix is not None and item_matrix.shape[1] != goal_matrix.shape[1]:
        goal_ok[:] = False  # cannot happen for one model name, but never compare mismatched spaces
        goal_matrix = None
    goals = Goals(
        ids=np.array([g["id"] for g in data.goals], dtype=np.int64),
        texts=[goal_text(g["name"], g["description"], list(g["priority_terms"])) for g in data.goals],
        priority_terms=[list(g["priority_terms"]) for g in data.goals],
        negative_terms=[list(g["negative_terms"]) for g in data.goals],
        strict=np.array([g["priority_mode"] == "STRICT" for g in data.goals], dtype=bool),
        vectors=goal_matrix,
        has_vector=goal_ok,
        visible=visible,
        blocked=blocked,
        trust=trust,
    )
    return items, goals


async def _rated(rt: Runtime, reader: Any, goals: Goals, goal_index: dict[int, int], model: str | None) -> Rated | None:
    """The goals' rated neighbours, from a per-process cache refreshed when a goal's feedback changes (count
    or latest change), so a batch reads vectors only for goals whose ratings moved."""
    if model is None:
        return None
    cache: dict[int, tuple[Any, list[tuple[float, np.ndarray]]]] = rt.extras.setdefault("rated", {})
    stamps = {
        int(r["goal_id"]): (model, r["n"], r["changed"], r["signed"])
        for r in await matches_store.feedback_stamps(reader, [int(g) for g in goals.ids])
    }
    stale = [gid for gid, stamp in stamps.items() if gid not in cache or cache[gid][0] != stamp]
    if stale:
        fresh: dict[int, list[tuple[float, np.ndarray]]] = {gid: [] for gid in stale}
        for r in await matches_store.rated_items(reader, stale, model, per_goal=FEEDBACK_MAX_RATED):
            if r["vector"] is not None:
                fresh[int(r["goal_id"])].append((1.0 if r["feedback"] == "like" else -1.0, _vec(r["vector"])))
        for gid in stale:
            cache[gid] = (stamps[gid], fresh[gid])
    entries = [(goal_index[gid], label, vec) for gid in stamps for label, vec in cache[gid][1]]
    if not entries:
        return None
    entries.sort(key=lambda e: e[0])
    vectors = np.stack([e[2] for e in entries]).astype(np.float32)
    if goals.vectors is not None and vectors.shape[1] != goals.vectors.shape[1]:
        return None
    return Rated(
        vectors=vectors,
        labels=np.array([e[1] for e in entries]),
        goal_pos=np.array([e[0] for e in entries], dtype=np.int64),
    )


def _col(values: np.ndarray, digits: int) -> list[Any]:
    """A rounded column as Python values (None for nan): one numpy pass instead of work per row."""
    out: list[Any] = np.round(values.astype(np.float64), digits).tolist()
    return [None if v != v else v for v in out] if np.isnan(values).any() else out


def _rows(
    scored: Scored, items: Items, goals: Goals, keep: np.ndarray, model: str | None, languages: list[str]
) -> tuple[list[Any], ...]:
    """Columns for matches_store.upsert_matches: goal ids, item ids, scores, components, reasons, gates, lexical_only,
    is_backfill (only the kept pairs; strings are built here and nowhere on the hot path). The numbers are
    computed as columns and the loop only assembles them."""
    goal_ids, item_ids, scores, comps, reason_texts, gates, lex, bf = [], [], [], [], [], [], [], []
    tpos = {t: k for k, t in enumerate(scored.terms)}
    npos = {t: k for k, t in enumerate(scored.negs)}
    kept = np.nonzero(keep)[0]
    # one lock order for every writer (item batches, backfills): (goal_id, item_id) ascending, so concurrent
    # upserts of overlapping pairs wait for each other instead of deadlocking
    kept = kept[np.lexsort((items.ids[scored.pair_item[kept]], goals.ids[scored.pair_goal[kept]]))]
    pi, pg = scored.pair_item[kept], scored.pair_goal[kept]
    sem = scored.semantic[kept]
    col = {
        "cosine": _col(scored.cosine[kept], 4),
        "lexical": _col(scored.lexical[kept], 4),
        "semantic": _col(sem, 4),
        # the calibrated distance from the goal's typical item, in background sigmas
        "z": _col(calibrate.Z0 + np.log(np.clip(sem, 1e-6, 1 - 1e-6) / (1 - np.clip(sem, 1e-6, 1 - 1e-6))), 2),
        "terms": _col(term_evidence(scored.hits[kept]), 4),
        "feedback": _col(scored.feedback[kept], 4),
        "source_trust": _col(scored.trust[kept], 4),
        "recency": _col(scored.fresh[kept], 4),
        "age_hours": _col(items.age_hours[pi], 1),
        "ungated_score": _col(scored.ungated[kept], 4),
    }
    sem_l, fb_l, tr_l, age_l = (
        sem.tolist(),
        scored.feedback[kept].tolist(),
        scored.trust[kept].tolist(),
        items.age_hours[pi].tolist(),
    )
    blocked_l, neg_l, strict_l = (
        scored.blocked[kept].tolist(),
        scored.negative[kept].tolist(),
        scored.strict_miss[kept].tolist(),
    )
    lexical_l, score_l = scored.lexical_only[kept].tolist(), scored.score[kept].tolist()
    gid_l, iid_l = goals.ids[pg].tolist(), items.ids[pi].tolist()
    hits_l = (scored.hits[kept] > 0).tolist()
    for k, (i, g) in enumerate(zip(pi.tolist(), pg.tolist(), strict=True)):
        hit_names = [t for t in goals.priority_terms[g] if scored.hit_matrix[i, tpos[t]]] if hits_l[k] else []
        neg_names = [t for t in goals.negative_terms[g] if scored.neg_matrix[i, npos[t]]] if neg_l[k] else []
        gate = (
            "blocked_source"
            if blocked_l[k]
            else "negative_term"
            if neg_l[k]
            else "strict_no_hit"
            if strict_l[k]
            else None
        )
        lexical_only = lexical_l[k]
        is_bf = bool(items.goal_backfill[i] or items.is_backfill[i])
        pending = items.pending_reason[i] if not items.has_vector[i] else "goal embedding pending"
        bf_text = "goal_backfill" if items.goal_backfill[i] else "source_backfill" if items.is_backfill[i] else ""
        comps.append(
            {
                "model": None if lexical_only else model,
                "cosine": col["cosine"][k],
                "lexical": col["lexical"][k],
                "semantic": col["semantic"][k],
                "z": col["z"][k],
                "term_hits": hit_names,
                "terms": col["terms"][k],
                "feedback": col["feedback"][k],
                "source_trust": col["source_trust"][k],
                "recency": col["recency"][k],
                "age_hours": col["age_hours"][k],
                "negative_hits": neg_names,
                "blocked_source": blocked_l[k],
                "strict_miss": strict_l[k],
                "ungated_score": col["ungated_score"][k],
            }
        )
        reason_texts.append(
            reasons.reasons_for(
                hits=hit_names,
                negatives=neg_names,
                blocked=blocked_l[k],
                strict_miss=strict_l[k],
                semantic=sem_l[k],
                lexical_only=lexical_only,
                pending=pending,
                feedback=fb_l[k],
                trust=tr_l[k],
                age_hours=age_l[k],
                backfill=bf_text,
                lang=languages[g],
            )
        )
        goal_ids.append(gid_l[k])
        item_ids.append(iid_l[k])
        scores.append(score_l[k])
        gates.append(gate)
        lex.append(lexical_only)
        bf.append(is_bf)
    return goal_ids, item_ids, scores, comps, reason_texts, gates, lex, bf
