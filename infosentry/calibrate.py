"""Self-calibration of a goal's similarity signals: raw value (a cosine, or the keyword overlap) -> score in (0, 1),
learned per goal from the items it scores, for any embedding model. Pure numpy; the state lives in the
goal_calibration table (store.calibration).

Most items a goal scores are not about it, whatever the model, the language or the wording. So the bulk of a
goal's recent values describes "a typical unrelated item for this goal under this model": its location m (the
median) and spread s (one Gaussian sigma measured on the LOWER half only: median - 15.87th percentile, which
on-topic items, sitting in the upper tail, barely move). An item's evidence is how far above that bulk it is:

    z = (value - m) / s              invariant to any affine map of the values: a model whose cosines all sit
                                     at 0.7-0.9 gets the same z as one spreading them over 0-1 (no flood)
    score = sigmoid(z - Z0),  Z0 = Z_BATCH - logit(0.75)

so the hot thresholds mean a distance from the goal's background, the same for every model and goal:
DIGEST 0.60 <=> z 2.31, BATCH 0.75 <=> z 3.00, boundary 0.88 <=> z 3.89, IMMEDIATE 0.93 <=> z 4.49, and a typical
item (z 0) scores 0.13.

The lower half does not show how far UNRELATED items reach upward, and that reach differs by goal: for a narrow
goal ("oil prices", 2 % of the items) a whole neighbouring cluster (market reports) sits 3-6 lower-half sigmas
up, while its own items sit 8-15 up; z = 3 alone pushed 5-7 % of the items of a goal whose feeds carry none of
its topic. So the spread is also measured from the top:

    s >= (q99 - m) / Z_TOP           q99: the goal's best recent items (the TOP_QUANTILE of its window)

A goal's best 1 % then score at most sigmoid(Z_TOP - Z0) = 0.92 from meaning alone (an instant alert has to beat
them), and a push needs Z_BATCH / Z_TOP = 70 % of their distance above the typical item: the neighbouring
cluster of a goal whose own items stand far out no longer passes, while a broad goal, whose best items stand
less far out, keeps its reach, and the wordings of one topic push at more similar rates (README: measured).
A broad goal whose topic is a large, tight cluster far above the rest (a quarter of the items, "sports") would
still push that whole cluster, at a rate that depends on how the goal is worded; so the spread is also at least

    s >= (q90 - m) / Z_BATCH         q90: the BROAD_QUANTILE of the window

and at most about a tenth of a goal's items reach BATCH (the rest of its topic is DIGEST material).

State per (goal, signal): a window of the last WINDOW raw values (forgets at the rate items arrive: drift), how
many were ever seen, and a prior (m0, s0) measured when the goal was embedded: the goal's values against a
fixed background corpus of assorted news (infosentry/calibration/background_*.txt), so a new goal is calibrated
from its first item (`background_prior`: the same rules, the corpus's best headlines standing in for the
goal's best items). The window's estimates are shrunk toward the prior with a pseudo-count of N0 items, and
while the window is young (fewer than YOUNG values) its spread is at least the prior's: the best of a few
dozen items, with perhaps none of the topic among them, is not yet the top of the scale. A goal with neither
prior nor N_MIN values seen is capped below BATCH (nothing to compare with).

Constants carry a meaning; none was fitted to one wording, language or model (Z_TOP was chosen on the tuning
halves of both languages, category and narrow goals together; measurements: README).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

Z_BATCH = 3.0  # a push needs three background sigmas above the goal's typical item
BATCH_SCORE = 0.75  # the default BATCH_THRESHOLD: Z_BATCH is anchored there (unit slope: one sigma = one logit)
Z0 = Z_BATCH - math.log(BATCH_SCORE / (1 - BATCH_SCORE))
WINDOW = 500  # recent values kept per goal and signal (about a day of items for a typical user)
N0 = 20.0  # the prior weighs like 20 observed items
N_MIN = 30  # without a prior, values seen before the window is trusted
EARLY_CAP = 0.74  # below BATCH: nothing is pushed on a goal's uncalibrated scores
Q_SIGMA = 0.158655  # the Gaussian quantile one sigma below the median
MIN_SPREAD = 1e-4  # floor, in the signal's units, for a degenerate window
# A sparse signal (keyword overlap: most items share no word with the goal) has more than 16 % of its values
# tied at the median, so the lower-half sigma is 0; its standard deviation is used instead.
DEGENERATE = 1e-3
# The top of the scale: a goal's best recent items (the TOP_QUANTILE of its window, once it holds TOP_MIN values)
# sit at most Z_TOP above its typical item. Z_BATCH / Z_TOP = 0.7: a push needs 70 % of the way from the typical
# item to the best ones (the largest share that keeps category goals' push recall above 0.25 on the tuning
# halves of the bench; 0.6-0.8 measured: README).
TOP_QUANTILE = 0.99
Z_TOP = Z_BATCH / 0.7  # 4.29: score 0.92, just below IMMEDIATE
TOP_MIN = 20  # as many values as the prior weighs
# A push tier is for the few items that stand out: the goal's 90th-percentile item sits at most at Z_BATCH, so at
# most about a tenth of a goal's items reach BATCH however broad the goal or tight its topic's cluster.
BROAD_QUANTILE = 0.9
YOUNG = WINDOW // 2  # below this many values the window's spread is at least the prior's
NEIGHBOUR_QUANTILE = 0.9  # feedback: a rated item counts as a neighbour when closer than 90 % of random pairs


@dataclass(frozen=True)
class Estimate:
    """What a goal's values are compared with: location, spread, and whether the score must stay below BATCH."""

    m: float
    s: float
    capped: bool = False

    @property
    def known(self) -> bool:
        return not math.isnan(self.m)


UNKNOWN = Estimate(float("nan"), float("nan"), True)


def location_spread(values: np.ndarray) -> tuple[float, float]:
    """Robust (location, spread) of a sample: median and the lower-half sigma (the standard deviation when the
    lower half is degenerate)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    med = float(np.median(v))
    s = med - float(np.quantile(v, Q_SIGMA))
    if s < DEGENERATE:
        s = float(v.std())
    return med, max(s, MIN_SPREAD)


def background_prior(values: np.ndarray) -> tuple[float, float]:
    """A goal's prior (m0, s0) from its values against the background corpus: `location_spread`, the spread
    widened like a window's (the corpus's best headline at most Z_TOP above its typical one)."""
    m, s = location_spread(values)
    v = np.asarray(values, dtype=np.float64)
    if v.size >= TOP_MIN:
        s = _widened(s, m, *np.quantile(v, [TOP_QUANTILE, BROAD_QUANTILE]))
    return m, s


def _widened(s: float, m: float, top: float, broad: float) -> float:
    """The spread widened so that the TOP_QUANTILE value sits at most Z_TOP above m and the BROAD_QUANTILE value
    at most Z_BATCH above it."""
    return max(s, (float(top) - m) / Z_TOP, (float(broad) - m) / Z_BATCH)


def estimate(window: np.ndarray, seen: int, prior: tuple[float, float] | None) -> Estimate:
    """The window's (m, s) shrunk toward the prior with pseudo-count N0; capped when there is no prior and fewer
    than N_MIN values were seen."""
    n = int(np.asarray(window).size)
    if n == 0 and prior is None:
        return UNKNOWN
    if n == 0:
        assert prior is not None
        return Estimate(prior[0], max(prior[1], MIN_SPREAD))
    m, s = location_spread(window)
    tops = np.quantile(np.asarray(window, dtype=np.float64), [TOP_QUANTILE, BROAD_QUANTILE]) if n >= TOP_MIN else None
    return _shrink(m, s, n, seen, prior, None if tops is None else (tops[0], tops[1]))


def estimates(grid: np.ndarray, seen: Sequence[int], priors: Sequence[tuple[float, float] | None]) -> list[Estimate]:
    """`estimate` for many goals at once, as arrays (a batch scores every candidate goal, a thousand of them on a
    busy instance): `grid` holds one goal's window per row in any order, +inf where the window is not full."""
    grid = np.sort(grid, axis=1)  # the padding sorts last
    n = np.isfinite(grid).sum(axis=1)
    with np.errstate(invalid="ignore"):  # a row without values (inf - inf) is answered by `estimate` below
        m, low, top, broad = _quantiles(grid, n, (0.5, Q_SIGMA, TOP_QUANTILE, BROAD_QUANTILE))
        s = m - low
        flat = np.nonzero((s < DEGENERATE) & (n > 0))[0]
        if flat.size:  # a sparse signal: its standard deviation instead
            v = grid[flat].astype(np.float64)
            finite = np.isfinite(v)
            mean = np.where(finite, v, 0.0).sum(axis=1) / n[flat]
            s[flat] = np.sqrt(np.where(finite, (v - mean[:, None]) ** 2, 0.0).sum(axis=1) / n[flat])
        s = np.maximum(s, MIN_SPREAD)
        # _shrink, every row at once
        has_prior = np.array([p is not None for p in priors], dtype=bool)
        m0 = np.array([p[0] if p is not None else 0.0 for p in priors])
        s0 = np.array([p[1] if p is not None else 0.0 for p in priors])
        capped = ~has_prior & (np.asarray(seen) < N_MIN)
        m = np.where(has_prior, (n * m + N0 * m0) / (n + N0), m)
        s = np.where(has_prior, np.sqrt((n * s * s + N0 * s0 * s0) / (n + N0)), s)
        s = np.where(n >= TOP_MIN, np.maximum(s, np.maximum((top - m) / Z_TOP, (broad - m) / Z_BATCH)), s)
        s = np.maximum(np.where(has_prior & (n < YOUNG), np.maximum(s, s0), s), MIN_SPREAD)
    return [
        Estimate(a, b, c) if k else estimate(grid[r, :0], seen[r], priors[r])
        for r, (a, b, c, k) in enumerate(zip(m.tolist(), s.tolist(), capped.tolist(), n.tolist(), strict=True))
    ]


def _quantiles(grid: np.ndarray, n: np.ndarray, qs: Sequence[float]) -> list[np.ndarray]:
    """Quantiles of each row's first n values (sorted), numpy's default (linear) definition."""
    at = np.arange(len(n))
    last = np.maximum(n - 1, 0)
    out = []
    for q in qs:
        pos = last * q
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, last)
        a, b = grid[at, lo].astype(np.float64), grid[at, hi].astype(np.float64)
        out.append(np.where(hi > lo, a + (pos - lo) * (b - a), a))
    return out


def _shrink(
    m: float, s: float, n: int, seen: int, prior: tuple[float, float] | None, tops: tuple[float, float] | None = None
) -> Estimate:
    """The window's (m, s) shrunk toward the prior; s widened so that the window's TOP_QUANTILE and
    BROAD_QUANTILE (`tops`, when it holds TOP_MIN values) sit at most Z_TOP and Z_BATCH above m, and to the
    prior's while the window is young."""
    capped = False
    if prior is None:
        capped = seen < N_MIN
    else:
        m0, s0 = prior
        m = (n * m + N0 * m0) / (n + N0)
        s = math.sqrt((n * s * s + N0 * s0 * s0) / (n + N0))
    if tops is not None:
        s = _widened(s, m, *tops)
    if prior is not None and n < YOUNG:
        s = max(s, prior[1])
    return Estimate(m, max(s, MIN_SPREAD), capped)


def score_from_z(z: np.ndarray | float) -> np.ndarray:
    """sigmoid(z - Z0): 0.75 at z = Z_BATCH, 0.93 at Z_BATCH + 1.49, 0.13 at z = 0."""
    return 1.0 / (1.0 + np.exp(-(np.asarray(z, dtype=np.float64) - Z0)))


def z_for_score(score: float) -> float:
    """The z a score stands for (the inverse of score_from_z)."""
    return Z0 + math.log(score / (1 - score))


def scores(values: np.ndarray, est: Estimate) -> np.ndarray:
    """Calibrated scores of raw values under one goal's estimate (EARLY_CAP everywhere when unknown)."""
    values = np.asarray(values, dtype=np.float64)
    if not est.known:
        return np.full(values.shape, EARLY_CAP)
    out = score_from_z((values - est.m) / est.s)
    return np.minimum(out, EARLY_CAP) if est.capped else out


def append(window: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The window after a batch: the newest WINDOW values."""
    return np.concatenate([np.asarray(window, dtype=np.float32), np.asarray(values, dtype=np.float32)])[-WINDOW:]


def neighbour_threshold(vectors: np.ndarray) -> float | None:
    """The similarity above which two items count as neighbours for feedback: the NEIGHBOUR_QUANTILE of the
    pairwise similarities of a sample of items (measured per model, no hand-set anchor)."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.shape[0] < 3:
        return None
    sims = v @ v.T
    off = sims[~np.eye(len(v), dtype=bool)]
    return float(np.quantile(off, NEIGHBOUR_QUANTILE))


@lru_cache(maxsize=2)
def background(language: str) -> tuple[str, ...]:
    """The background corpus of a language ('en' or 'zh'): assorted news headlines, none about any goal in
    particular, shipped in infosentry/calibration/."""
    name = "background_zh.txt" if language == "zh" else "background_en.txt"
    text = (resources.files("infosentry") / "calibration" / name).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
