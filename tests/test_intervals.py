"""Bootstrap intervals: coverage on cases with a known answer, the fast AUROC, paired differences."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medclip_nb.evaluate.intervals import (
    auroc_columns,
    format_with_interval,
    macro_f1_interval,
    mean_auroc_interval,
    mean_interval,
    paired_difference,
    resample_counts,
    statistic_interval,
)


def test_interval_of_a_proportion_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    truth, n, trials = 0.7, 200, 300
    covered = 0
    for trial in range(trials):
        hits = (rng.random(n) < truth).astype(float)
        low, high = mean_interval(hits, seed=trial)
        assert low <= hits.mean() <= high
        covered += low <= truth <= high
    # Binomial(300, 0.95) lies in [0.91, 0.98] with probability > 0.99; percentile intervals
    # of a proportion run slightly short of nominal at n = 200.
    assert 0.91 <= covered / trials <= 0.98, covered / trials


def test_interval_width_matches_the_normal_approximation():
    hits = np.r_[np.ones(560), np.zeros(440)]  # p = 0.56, n = 1000
    low, high = mean_interval(hits, seed=1)
    half_width = 1.96 * np.sqrt(0.56 * 0.44 / 1000)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)


def test_intervals_are_seeded():
    hits = (np.random.default_rng(3).random(300) < 0.4).astype(float)
    assert mean_interval(hits, seed=5) == mean_interval(hits, seed=5)
    assert mean_interval(hits, seed=5) != mean_interval(hits, seed=6)


def test_degenerate_samples():
    assert mean_interval([1.0]) is None
    assert mean_interval(np.ones(50)) == [1.0, 1.0]
    assert format_with_interval(0.5, None) == "0.500"
    assert format_with_interval(0.5, [0.4, 0.61]) == "0.500 [0.400, 0.610]"
    assert format_with_interval(None, None) == "–"


def test_fast_auroc_equals_scikit_learn_with_ties_and_one_class_columns():
    rng = np.random.default_rng(2)
    truth = rng.random((400, 6)) < 0.3
    truth[:, 5] = False  # one class only: undefined
    scores = np.round(rng.random((400, 6)) + truth * 0.4, 1)  # many ties
    fast = auroc_columns(truth, scores)
    for j in range(5):
        assert fast[j] == pytest.approx(roc_auc_score(truth[:, j], scores[:, j]), abs=1e-12)
    assert np.isnan(fast[5])


def test_mean_auroc_interval_contains_the_estimate():
    rng = np.random.default_rng(4)
    truth = rng.random((500, 4)) < 0.25
    scores = rng.random((500, 4)) + truth * 0.5
    estimate = np.nanmean(auroc_columns(truth, scores))
    low, high = mean_auroc_interval(truth, scores)
    assert low < estimate < high and high - low < 0.1


def test_paired_difference_resolves_a_real_gap_and_not_a_null_one():
    rng = np.random.default_rng(5)
    a = (rng.random(1000) < 0.8).astype(float)
    b = a.copy()
    flip = rng.choice(1000, size=100, replace=False)
    b[flip] = 0.0  # b is wrong on 100 more images: a known gap of at most 0.1
    gap = paired_difference(a, b)
    assert gap["difference"] == pytest.approx(a.mean() - b.mean())
    assert gap["resolved"] and gap["ci"][0] > 0
    same = paired_difference(a, rng.permutation(a))  # same accuracy, unrelated errors
    assert same["difference"] == 0.0 and not same["resolved"]
    with pytest.raises(ValueError):
        paired_difference(a, a[:10])


def test_resample_counts_are_the_row_draws_of_statistic_interval():
    n, seed = 37, 9
    counts = resample_counts(n, seed=seed, n_resamples=50)
    rows = np.random.default_rng(seed).integers(0, n, size=(50, n))
    assert counts.shape == (50, n) and (counts.sum(axis=1) == n).all()
    for r in range(50):
        assert (counts[r] == np.bincount(rows[r], minlength=n)).all()


def test_vectorised_auroc_interval_equals_the_resample_loop():
    rng = np.random.default_rng(6)
    truth = rng.random((300, 5)) < 0.2
    truth[:, 4] = rng.random(300) < 0.02  # rare: some resamples hold no positive (left out)
    scores = np.round(rng.random((300, 5)) + truth * 0.3, 1)  # many ties

    def loop(rows):
        per_label = auroc_columns(truth[rows], scores[rows])
        return float(np.nanmean(per_label))

    expected = statistic_interval(loop, 300, seed=3, n_resamples=400)
    assert mean_auroc_interval(truth, scores, seed=3, n_resamples=400) == pytest.approx(expected, abs=1e-12)


def test_vectorised_macro_f1_interval_equals_scikit_learn_on_each_resample():
    from medclip_nb.evaluate.metrics import macro_f1

    rng = np.random.default_rng(7)
    classes = rng.integers(0, 5, 250)
    predicted = np.where(rng.random(250) < 0.6, classes, rng.integers(0, 5, 250))
    predicted[predicted == 3] = 2  # class 3 is never predicted: its F1 is 0, as scikit-learn's
    expected = statistic_interval(lambda rows: macro_f1(classes[rows], predicted[rows], 5), 250, seed=4,
                                  n_resamples=300)
    assert macro_f1_interval(classes, predicted, 5, seed=4, n_resamples=300) == pytest.approx(expected, abs=1e-12)
