"""95 % bootstrap confidence intervals for the headline metrics, and paired differences.

Percentile intervals from 1,000 seeded resamples. The unit resampled is the **patient**: every
function takes `groups` (one patient id per row) and draws patients with replacement, each
drawn patient bringing all of its rows (a cluster bootstrap). Images of one patient are not
independent, so resampling images would make intervals too narrow (on the phantom's test
split by up to 1.3-1.9x). Without `groups` (a dataset that names no patients) each row is its
own patient, which is the image bootstrap. A comparison of two models on the same test images
resamples the same patients for both (a paired bootstrap of the difference), which is far
tighter than two separate intervals.

Over training seeds (the ablation) the unit is a run, not an image: `t_interval` is Student's t
interval of the mean of a few runs' numbers, `paired_t_difference` that of the per-seed
differences of two variants trained with the same seeds and scored on the same images.
`bootstrap_off()` skips the per-image intervals where only the seed-level ones are reported.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Callable

import numpy as np
from scipy.stats import rankdata
from scipy.stats import t as student_t

from medclip_nb.evaluate.multiplicity import bootstrap_p

CONFIDENCE = 0.95
N_RESAMPLES = 1000
# What metrics.json says about every `_ci` it holds.
INTERVAL_METHOD = {"method": "percentile bootstrap", "unit": "patient", "resamples": N_RESAMPLES,
                   "confidence": CONFIDENCE}
# False inside `bootstrap_off()`: the bootstrap intervals below return None (no resampling).
_BOOTSTRAP = contextvars.ContextVar("bootstrap", default=True)


@contextlib.contextmanager
def bootstrap_off():
    """Within the block, every bootstrap interval is None and costs nothing: for many short runs
    (the ablation) whose intervals come from the spread over seeds instead."""
    token = _BOOTSTRAP.set(False)
    try:
        yield
    finally:
        _BOOTSTRAP.reset(token)


def _interval(result) -> list[float]:
    low, high = result.confidence_interval
    return [float(low), float(high)]


def mean_interval(values, *, groups=None, seed: int = 0, n_resamples: int = N_RESAMPLES,
                  confidence: float = CONFIDENCE) -> list[float] | None:
    """Interval of the mean of per-sample values (accuracy from 0/1 hits, recall from hits),
    patients resampled (`groups`; None: every row its own patient)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2 or not np.isfinite(values).all() or not _BOOTSTRAP.get():
        return None
    if np.all(values == values[0]):  # every resample has the same mean
        return [float(values[0])] * 2
    weights = resample_counts(len(values), groups=groups, seed=seed, n_resamples=n_resamples)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (weights @ values) / weights.sum(axis=1)
    return percentile_interval(means, confidence)


def statistic_interval(statistic: Callable[[np.ndarray], float], n: int, *, groups=None, seed: int = 0,
                       n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE) -> list[float] | None:
    """Interval of any statistic of the rows: `statistic(rows)` gets an index array (the rows of
    the resampled patients, each as often as its patient was drawn).

    Resamples where the statistic is undefined (NaN, e.g. an AUROC with one class) are left
    out of the percentiles; None when fewer than half of them are defined. The AUROC and
    macro-F1 intervals below compute the same resamples at once (`resample_counts`).
    """
    if n < 2 or not _BOOTSTRAP.get():
        return None
    weights = resample_counts(n, groups=groups, seed=seed, n_resamples=n_resamples).astype(np.int64)
    values = np.array([statistic(np.repeat(np.arange(n), w)) for w in weights], dtype=np.float64)
    return percentile_interval(values, confidence)


def percentile_interval(values, confidence: float = CONFIDENCE) -> list[float] | None:
    """The percentile interval of one statistic's values over the resamples, NaNs (undefined
    resamples) left out; None when fewer than half are defined."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if len(finite) < len(values) / 2 or len(finite) == 0:
        return None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return [float(low), float(high)]


def patient_codes(groups, n: int) -> np.ndarray:
    """Each row's patient as 0..P-1; None (or a row id < 0) makes the row its own patient."""
    if groups is None:
        return np.arange(n)
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"groups: {len(groups)} patient ids for {n} rows")
    if groups.dtype.kind in "iu":
        groups = np.where(groups >= 0, groups, -1 - np.arange(n))  # -1: unknown, a patient of its own
    return np.unique(groups, return_inverse=True)[1].reshape(-1)


def resample_counts(n: int, *, groups=None, seed: int = 0, n_resamples: int = N_RESAMPLES) -> np.ndarray:
    """[n_resamples, n]: how often each row is drawn in each resample: its patient's count when
    the patients (`groups`) are drawn with replacement. A statistic that is a sum over rows is
    then one weighted sum per resample, all resamples at once."""
    codes = patient_codes(groups, n)
    patients = int(codes.max()) + 1 if n else 0
    draws = np.random.default_rng(seed).integers(0, patients, size=(n_resamples, patients))
    offsets = draws + patients * np.arange(n_resamples)[:, None]
    per_patient = np.bincount(offsets.ravel(), minlength=n_resamples * patients).reshape(n_resamples, patients)
    return per_patient[:, codes].astype(np.float64)


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


def weighted_auroc(truth, scores, weights) -> np.ndarray:
    """AUROC of one binary `truth` [N] against `scores` [N] under each row of `weights` [R, N]
    (row multiplicities of R resamples): the Mann-Whitney count of positive-negative pairs in
    order, ties counting one half, which is what `auroc_columns` gives on the resampled rows.
    NaN for a resample with one class."""
    order = np.argsort(scores, kind="stable")
    sorted_scores, positive = np.asarray(scores)[order], np.asarray(truth, dtype=bool)[order]
    tie_starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = weights[:, order]
    pos = np.add.reduceat(w * positive, tie_starts, axis=1)  # [R, tie groups]
    neg = np.add.reduceat(w * ~positive, tie_starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives with a lower score than the group
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (pos * (below + 0.5 * neg)).sum(axis=1) / pairs, np.nan)


def mean_auroc_interval(truth, scores, *, groups=None, seed: int = 0, n_resamples: int = N_RESAMPLES,
                        confidence: float = CONFIDENCE) -> list[float] | None:
    """Interval of the mean AUROC over the labels defined in each resample (patients resampled)."""
    truth, scores = np.asarray(truth, dtype=bool), np.asarray(scores, dtype=np.float64)
    if len(truth) < 2 or not _BOOTSTRAP.get():
        return None
    weights = resample_counts(len(truth), groups=groups, seed=seed, n_resamples=n_resamples)
    per_label = np.stack([weighted_auroc(truth[:, j], scores[:, j], weights) for j in range(truth.shape[1])], axis=1)
    defined = np.isfinite(per_label)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(defined.any(axis=1), np.nansum(per_label, axis=1) / defined.sum(axis=1), np.nan)
    return percentile_interval(means, confidence)


def macro_f1_interval(classes, predicted, n_classes: int, *, groups=None, seed: int = 0,
                      n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE) -> list[float] | None:
    """Interval of the macro-F1 over classes 0..n_classes-1 (a class neither present nor
    predicted in a resample scores 0, as scikit-learn's `zero_division=0`), from each
    resample's confusion counts."""
    classes, predicted = np.asarray(classes, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if len(classes) < 2 or not _BOOTSTRAP.get():
        return None
    weights = resample_counts(len(classes), groups=groups, seed=seed, n_resamples=n_resamples)
    cell = np.zeros((len(classes), n_classes * n_classes))
    cell[np.arange(len(classes)), classes * n_classes + predicted] = 1.0
    confusions = (weights @ cell).reshape(-1, n_classes, n_classes)  # [R, true, predicted]
    hits = np.diagonal(confusions, axis1=1, axis2=2)
    denominator = confusions.sum(axis=2) + confusions.sum(axis=1)  # 2 TP + FP + FN
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denominator > 0, 2 * hits / denominator, 0.0)
    return percentile_interval(f1.mean(axis=1), confidence)


def paired_difference(values_a, values_b, *, groups=None, seed: int = 0, n_resamples: int = N_RESAMPLES,
                      confidence: float = CONFIDENCE) -> dict[str, float | list[float] | bool | None]:
    """Mean of a minus mean of b over the same samples, with the paired bootstrap interval
    (the same patients resampled for both).

    `resolved` is True when the interval excludes 0 (the data tell the two apart at this level, one
    comparison alone); `p` is the bootstrap p-value of the same resamples (multiplicity.bootstrap_p), what
    a table of several comparisons corrects with Holm's method before it calls any resolved.
    """
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: {a.shape} and {b.shape} are not the same samples")
    difference = float(a.mean() - b.mean()) if len(a) else math.nan
    interval = mean_interval(a - b, groups=groups, seed=seed, n_resamples=n_resamples, confidence=confidence)
    p = None
    if interval is not None:
        weights = resample_counts(len(a), groups=groups, seed=seed, n_resamples=n_resamples)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = bootstrap_p((weights @ (a - b)) / weights.sum(axis=1))
    return {"difference": difference, "ci": interval, "resolved": excludes_zero(interval), "p": p}


def t_interval(values, confidence: float = CONFIDENCE) -> list[float] | None:
    """Student's t interval of the mean of a few values (one per training seed): mean ± t(n-1) · s / sqrt(n).

    None with fewer than 2 finite values; [m, m] when they are all equal.
    """
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return None
    mean, sem = float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))
    if sem == 0:
        return [mean, mean]
    low, high = student_t.interval(confidence, len(values) - 1, loc=mean, scale=sem)
    return [float(low), float(high)]


def excludes_zero(interval) -> bool | None:
    """True when the interval lies wholly above or below 0 (the difference is resolved), None without one."""
    return None if not interval else bool(interval[0] > 0 or interval[1] < 0)


def paired_t_difference(values_a, values_b, confidence: float = CONFIDENCE) -> dict[str, float | list | bool | None]:
    """Mean of the per-pair differences a - b (pairs: the same training seed and test images) with its
    t interval; `resolved` when the interval excludes 0. Pairs where either value is missing are dropped."""
    if len(values_a) != len(values_b):
        raise ValueError(f"paired_t_difference: {len(values_a)} and {len(values_b)} values are not pairs")
    pairs = [(a, b) for a, b in zip(values_a, values_b)
             if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    differences = [a - b for a, b in pairs]
    interval = t_interval(differences, confidence)
    return {"difference": float(np.mean(differences)) if differences else math.nan, "ci": interval,
            "resolved": excludes_zero(interval), "n": len(differences)}


def format_with_interval(value, interval) -> str:
    """'0.812 [0.771, 0.850]', or the value alone without an interval; '–' without a value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if not interval:
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
