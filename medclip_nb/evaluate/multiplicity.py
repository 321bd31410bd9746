"""Many comparisons in one table: p-values, Holm's correction and the smallest resolvable difference.

A table that compares several pairs at 95 % each calls about one in twenty differences
"resolved" by chance alone. Every table of this study that calls comparisons *resolved*
therefore corrects them together, as one family, with Holm's step-down method (Holm 1979):
sort the m p-values, multiply the i-th smallest by (m - i + 1), carry the running maximum
upwards and cap at 1; a comparison is resolved when its adjusted p is below alpha (0.05). Holm
controls the chance of any false "resolved" in the table at alpha, and is never less powerful
than Bonferroni.

p-values come from the test that matches each table's interval:
- over training seeds (the ablation): the two-sided paired t-test of the per-seed differences
  (`paired_t_p`), the test whose inversion is `intervals.paired_t_difference`'s interval;
- over test patients (a paired bootstrap): twice the share of resampled differences on the far
  side of 0 (`bootstrap_p`), the test whose inversion is the percentile interval.

`smallest_resolvable(sd, n, m)` is the half-width of the Bonferroni interval, t(1 - alpha / 2m,
n - 1) * sd / sqrt(n): an observed mean difference at least this large is resolved by Holm
whatever its rank in the table (Holm's first step is Bonferroni's). It says what a table with n
seeds and that spread between paired runs can resolve at all; a true difference of that size is
found about half the time, not reliably.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from scipy.stats import t as student_t

ALPHA = 0.05


def paired_t_p(differences: Iterable[float]) -> float | None:
    """Two-sided p-value of the paired t-test that the mean of `differences` is 0 (None below 2 values;
    differences all equal: 0 if they are not 0, else 1)."""
    values = np.asarray([d for d in differences if d is not None and math.isfinite(d)], dtype=np.float64)
    if len(values) < 2:
        return None
    mean, sd = float(values.mean()), float(values.std(ddof=1))
    if sd == 0:
        return 0.0 if mean != 0 else 1.0
    statistic = mean / (sd / math.sqrt(len(values)))
    return float(2 * student_t.sf(abs(statistic), len(values) - 1))


def bootstrap_p(resampled: Sequence[float]) -> float | None:
    """Two-sided bootstrap p-value that a difference is 0: twice the smaller share of resampled
    differences at or below 0 and at or above 0, capped at 1 (None without finite resamples)."""
    values = np.asarray(resampled, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    return float(min(1.0, 2 * min(np.mean(values <= 0), np.mean(values >= 0))))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values, in the order given (None stays None and is not counted in m)."""
    known = [(p, i) for i, p in enumerate(p_values) if p is not None]
    m = len(known)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(known)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def smallest_resolvable(sd: float | None, n: int, m: int, alpha: float = ALPHA) -> float | None:
    """The smallest |mean difference| of n paired values with sample sd `sd` that Holm over m
    comparisons calls resolved at any rank: t(1 - alpha / (2 m), n - 1) * sd / sqrt(n)."""
    if sd is None or n < 2 or m < 1 or not math.isfinite(sd):
        return None
    return float(student_t.ppf(1 - alpha / (2 * m), n - 1) * sd / math.sqrt(n))


__all__ = ["ALPHA", "bootstrap_p", "holm", "paired_t_p", "smallest_resolvable"]
