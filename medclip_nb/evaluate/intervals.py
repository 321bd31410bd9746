"""95 % bootstrap confidence intervals for the headline metrics, and paired differences.

Resampling is SciPy's (`scipy.stats.bootstrap`, percentile intervals, seeded): the test
images are resampled with replacement and the metric recomputed on each resample. A
comparison of two models on the same test images resamples the same rows for both (a
paired bootstrap of the difference), which is far tighter than two separate intervals.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.stats import bootstrap, rankdata

CONFIDENCE = 0.95
N_RESAMPLES = 1000


def _interval(result) -> list[float]:
    low, high = result.confidence_interval
    return [float(low), float(high)]


def mean_interval(values, *, seed: int = 0, n_resamples: int = N_RESAMPLES,
                  confidence: float = CONFIDENCE) -> list[float] | None:
    """Interval of the mean of per-sample values (accuracy from 0/1 hits, recall from hits)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2 or not np.isfinite(values).all():
        return None
    if np.all(values == values[0]):  # every resample has the same mean (SciPy warns and returns NaN)
        return [float(values[0])] * 2
    result = bootstrap((values,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                       method="percentile", vectorized=True, random_state=np.random.default_rng(seed))
    return _interval(result)


def statistic_interval(statistic: Callable[[np.ndarray], float], n: int, *, seed: int = 0,
                       n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE) -> list[float] | None:
    """Interval of any statistic of the rows: `statistic(rows)` gets an index array of size n.

    Resamples where the statistic is undefined (NaN, e.g. an AUROC with one class) are left
    out of the percentiles; None when fewer than half of them are defined.
    """
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n, size=(n_resamples, n))  # the same draw as SciPy's percentile method
    values = np.array([statistic(r) for r in rows], dtype=np.float64)
    finite = values[np.isfinite(values)]
    if len(finite) < n_resamples / 2:
        return None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return [float(low), float(high)]


def auroc_columns(truth, scores) -> np.ndarray:
    """AUROC of each column of binary `truth` [N, L] against `scores` [N, L] in one pass
    (the Mann-Whitney U statistic from SciPy's tie-averaged ranks; equals scikit-learn's
    roc_auc_score); NaN for a column with one class. Fast enough for 1,000 resamples."""
    truth, scores = np.asarray(truth, dtype=bool), np.asarray(scores, dtype=np.float64)
    ranks = rankdata(scores, axis=0)
    positives = truth.sum(axis=0)
    negatives = len(truth) - positives
    with np.errstate(invalid="ignore", divide="ignore"):
        u = (ranks * truth).sum(axis=0) - positives * (positives + 1) / 2
        return np.where((positives > 0) & (negatives > 0), u / (positives * negatives), np.nan)


def mean_auroc_interval(truth, scores, *, seed: int = 0, n_resamples: int = N_RESAMPLES,
                        confidence: float = CONFIDENCE) -> list[float] | None:
    """Interval of the mean AUROC over the labels defined in each resample (rows resampled)."""
    truth, scores = np.asarray(truth, dtype=bool), np.asarray(scores, dtype=np.float64)

    def statistic(rows):
        per_label = auroc_columns(truth[rows], scores[rows])
        return float(np.nanmean(per_label)) if np.isfinite(per_label).any() else math.nan

    return statistic_interval(statistic, len(truth), seed=seed, n_resamples=n_resamples, confidence=confidence)


def paired_difference(values_a, values_b, *, seed: int = 0, n_resamples: int = N_RESAMPLES,
                      confidence: float = CONFIDENCE) -> dict[str, float | list[float] | bool | None]:
    """Mean of a minus mean of b over the same samples, with the paired bootstrap interval.

    `resolved` is True when the interval excludes 0 (the data tell the two apart at this level).
    """
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: {a.shape} and {b.shape} are not the same samples")
    difference = float(a.mean() - b.mean()) if len(a) else math.nan
    interval = mean_interval(a - b, seed=seed, n_resamples=n_resamples, confidence=confidence)
    resolved = None if interval is None else bool(interval[0] > 0 or interval[1] < 0)
    return {"difference": difference, "ci": interval, "resolved": resolved}


def format_with_interval(value, interval) -> str:
    """'0.812 [0.771, 0.850]', or the value alone without an interval; '–' without a value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if not interval:
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
