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


# ---- the patient (cluster) bootstrap ------------------------------------------------------------
def clustered_hits(rng, patients: int, truth: float, images_per_patient=(1, 6), spread: float = 0.35):
    """0/1 hits of images nested in patients: each patient has its own hit rate around `truth`
    (a Beta with the given spread), so a patient's images agree more than strangers'. Returns
    (hits, patient id per image); the population hit rate is `truth`."""
    a = truth * (1 / spread - 1)
    b = (1 - truth) * (1 / spread - 1)
    rates = rng.beta(a, b, size=patients)
    sizes = rng.integers(images_per_patient[0], images_per_patient[1] + 1, size=patients)
    groups = np.repeat(np.arange(patients), sizes)
    hits = (rng.random(len(groups)) < rates[groups]).astype(float)
    return hits, groups


def test_patient_bootstrap_covers_about_95_percent_where_the_image_bootstrap_falls_short():
    rng = np.random.default_rng(11)
    truth, trials = 0.6, 300
    covered = {"patient": 0, "image": 0}
    for trial in range(trials):
        hits, groups = clustered_hits(rng, patients=150, truth=truth)
        # the estimand is the population rate; images are weighted equally, patients by size, and
        # sizes are independent of the rates, so the image mean is unbiased for it
        for unit, g in (("patient", groups), ("image", None)):
            low, high = mean_interval(hits, groups=g, seed=trial)
            covered[unit] += low <= truth <= high
    patient, image = covered["patient"] / trials, covered["image"] / trials
    assert 0.90 <= patient <= 0.985, patient
    assert image < 0.85, image  # too narrow: it treats a patient's images as independent
    assert image < patient - 0.08


def test_resample_counts_draw_whole_patients():
    groups = np.array([7, 7, 7, 3, 9, 9])
    weights = resample_counts(6, groups=groups, seed=0, n_resamples=500)
    assert weights.shape == (500, 6)
    # rows of one patient always come together, as often as that patient was drawn
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 1] == weights[:, 2]).all()
    assert (weights[:, 4] == weights[:, 5]).all()
    # three patients drawn per resample, so the drawn patients' counts sum to 3
    per_patient = weights[:, [0, 3, 4]]
    assert (per_patient.sum(axis=1) == 3).all()


def test_rows_without_a_patient_are_their_own_patients():
    groups = np.array([-1, -1, 5, 5])
    weights = resample_counts(4, groups=groups, seed=1, n_resamples=300)
    assert not (weights[:, 0] == weights[:, 1]).all()  # two different patients
    assert (weights[:, 2] == weights[:, 3]).all()
    assert (weights[:, [0, 1, 2]].sum(axis=1) == 3).all()  # three patients: two unnamed, one named


def test_without_groups_each_row_is_a_patient():
    assert np.array_equal(resample_counts(50, seed=4), resample_counts(50, groups=np.arange(50) * 3, seed=4))
    with pytest.raises(ValueError, match="patient ids for"):
        resample_counts(5, groups=[1, 2, 3])


def test_paired_difference_resamples_the_same_patients_for_both():
    rng = np.random.default_rng(5)
    hits_a, groups = clustered_hits(rng, patients=120, truth=0.7)
    hits_b = np.where(rng.random(len(hits_a)) < 0.1, 1 - hits_a, hits_a)
    by_patient = paired_difference(hits_a, hits_b, groups=groups, seed=2)
    by_hand = mean_interval(hits_a - hits_b, groups=groups, seed=2)
    assert by_patient["ci"] == by_hand
    assert by_patient["difference"] == pytest.approx(hits_a.mean() - hits_b.mean())
