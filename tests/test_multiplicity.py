"""Many comparisons in one table: Holm's correction against statsmodels and a hand-computed case,
the p-values behind it (paired t-test, bootstrap), and the smallest difference a table can resolve."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from medclip_nb.evaluate.multiplicity import bootstrap_p, holm, paired_t_p, smallest_resolvable
from medclip_nb.study.seed_stats import correct_family, paired_by_seed

multitest = pytest.importorskip("statsmodels.stats.multitest")


def test_holm_by_hand():
    # Sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06, running max), 0.04 (x1 = 0.04 -> 0.06).
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    # Capped at 1, and a missing p-value is neither adjusted nor counted in m.
    assert holm([0.5, None, 0.4]) == pytest.approx([0.8, None, 0.8]) and holm([0.9, 0.8])[0] == 1.0
    assert holm([]) == [] and holm([None]) == [None]


@pytest.mark.parametrize("seed", range(6))
def test_holm_equals_statsmodels(seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 0.2, size=int(rng.integers(1, 25))) ** rng.uniform(0.5, 3)
    if seed % 2:
        p[: len(p) // 2] = p[0]  # ties
    reject, adjusted, _, _ = multitest.multipletests(p, alpha=0.05, method="holm")
    ours = holm(list(p))
    assert ours == pytest.approx(list(adjusted), abs=1e-12)
    assert [q < 0.05 for q in ours] == list(reject)


def test_paired_t_p_is_scipys_paired_t_test():
    a, b = [0.61, 0.55, 0.70, 0.64, 0.58], [0.60, 0.51, 0.66, 0.60, 0.55]
    expected = stats.ttest_rel(a, b).pvalue
    assert paired_t_p([x - y for x, y in zip(a, b)]) == pytest.approx(expected, rel=1e-12)
    assert paired_t_p([0.1]) is None and paired_t_p([0.02, 0.02, 0.02]) == 0.0 and paired_t_p([0.0, 0.0]) == 1.0
    assert paired_t_p([0.1, None, float("nan"), 0.3]) == pytest.approx(stats.ttest_1samp([0.1, 0.3], 0).pvalue)


def test_bootstrap_p_is_twice_the_far_side():
    assert bootstrap_p([0.1, 0.2, 0.3, -0.1]) == pytest.approx(0.5)  # 1 of 4 at or below 0
    assert bootstrap_p([0.1, 0.2]) == 0.0 and bootstrap_p([-0.1, 0.1]) == 1.0 and bootstrap_p([]) is None


def test_smallest_resolvable_is_the_bonferroni_threshold():
    n, m, sd = 5, 7, 0.03
    threshold = smallest_resolvable(sd, n, m)
    assert threshold == pytest.approx(stats.t.ppf(1 - 0.05 / (2 * m), n - 1) * sd / math.sqrt(n))
    # Differences of exactly that mean and sd have p = alpha / m: Holm's strictest step, just met.
    base = np.array([-1.2, -0.4, 0.1, 0.5, 1.0])
    differences = threshold + sd * (base - base.mean()) / base.std(ddof=1)
    assert paired_t_p(differences) * m == pytest.approx(0.05, rel=1e-9)
    assert smallest_resolvable(None, 5, 3) is None and smallest_resolvable(0.1, 1, 3) is None
    assert smallest_resolvable(sd, n, 1) < threshold  # fewer comparisons resolve smaller differences


def test_correct_family_decides_resolved_by_holm_not_by_each_interval():
    ref = {s: 0.6 + 0.05 * s for s in range(5)}
    gains = {"a": [0.050, 0.040, 0.060, 0.050, 0.045], "b": [0.010, 0.025, 0.000, 0.020, 0.015],
             "c": [0.004, -0.010, 0.012, 0.000, 0.006]}
    family = [paired_by_seed({s: ref[s] + g[s] for s in ref}, ref) for g in gains.values()]
    raw = [c["p"] for c in family]
    assert family[1]["ci"][0] > 0 and family[1]["resolved"]  # its own 95 % interval excludes 0 ...
    correct_family(family)
    expected = multitest.multipletests(raw, method="holm")[1]
    assert [c["p_holm"] for c in family] == pytest.approx(list(expected))
    assert [c["resolved"] for c in family] == [bool(q < 0.05) for q in expected]
    assert all(c["m"] == 3 for c in family)
    assert family[0]["smallest_resolvable"] == pytest.approx(smallest_resolvable(family[0]["sd"], 5, 3))
    # b (p 0.031 alone) is not resolved once the table's three comparisons are corrected (Holm p 0.062).
    assert family[1]["p_holm"] == pytest.approx(2 * raw[1]) and family[1]["resolved"] is False
    assert family[0]["resolved"] is True and family[2]["resolved"] is False
