"""Statistics over training seeds for the ablation (no training here: plain numbers in, JSON data out).

The unit is a run. Each variant's number is the mean over its seeds with a Student t interval
(`intervals.t_interval`); a variant is compared with the reference by the differences of runs
that share a seed, and so the test images and (for a train_fraction) the training patients:
the mean difference with its 95 % t interval and the paired t-test's p-value
(`paired_by_seed`). The comparisons of one table are one family (`correct_family`): each is
*resolved* when its Holm-adjusted p is below 0.05 (evaluate/multiplicity.py), and each carries the
smallest difference the table could resolve with its seeds and spread. Runs are dicts with at
least "variant", "seed", and the metric; data-efficiency runs also carry "train_fraction",
"n_train" and their learning curve ("curve_steps", "curve"); data_efficiency.py builds on these.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from medclip_nb.evaluate import (
    ALPHA,
    CONFIDENCE,
    holm,
    paired_t_difference,
    paired_t_p,
    smallest_resolvable,
    t_interval,
)

REFERENCE = "clip"
ABLATION_METRICS = ("zs_acc_mean", "i2t_R@10", "probe_auroc")


def fraction_key(fraction: float) -> str:
    """The JSON key of a train_fraction: '0.1', '0.3', '1'."""
    return f"{float(fraction):g}"


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def by_seed(runs: Iterable[Mapping[str, Any]], metric: str, **where) -> dict[int, float]:
    """{seed: value of `metric`} of the runs matching every `where` key (missing values left out)."""
    return {int(r["seed"]): float(r[metric]) for r in runs
            if all(r.get(k) == v for k, v in where.items()) and _finite(r.get(metric))}


def seed_summary(values: Iterable[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """{"mean", "ci" (t interval), "std" (sample std), "n"} of one number over seeds."""
    values = [float(v) for v in values if _finite(v)]
    return {"mean": float(np.mean(values)) if values else None, "ci": t_interval(values, confidence),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None, "n": len(values)}


def paired_by_seed(values: Mapping[int, float], reference: Mapping[int, float],
                   confidence: float = CONFIDENCE) -> dict[str, Any]:
    """values - reference over the seeds both have: {"difference", "ci" (t interval), "sd" (of the
    per-seed differences), "p" (paired t-test, uncorrected), "resolved" (the interval alone, until
    `correct_family` decides it with the table's other comparisons), "n", "seeds"}."""
    seeds = sorted(set(values) & set(reference))
    differences = [values[s] - reference[s] for s in seeds]
    paired = paired_t_difference([values[s] for s in seeds], [reference[s] for s in seeds], confidence)
    return {**paired, "difference": paired["difference"] if seeds else None, "seeds": seeds,
            "sd": float(np.std(differences, ddof=1)) if len(seeds) > 1 else None, "p": paired_t_p(differences)}


def correct_family(comparisons: Iterable[dict[str, Any]], alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Holm over one table's paired comparisons (`paired_by_seed` dicts), in place: each gets "m" (the
    family's size), "p_holm", "resolved" (p_holm < alpha; None without a p-value) and
    "smallest_resolvable" (evaluate.smallest_resolvable from its sd, seeds and m). Returns them."""
    comparisons = list(comparisons)
    adjusted = holm([c.get("p") for c in comparisons])
    m = sum(p is not None for p in adjusted)
    for comparison, p_holm in zip(comparisons, adjusted):
        comparison.update(m=m, p_holm=p_holm, resolved=None if p_holm is None else bool(p_holm < alpha),
                          smallest_resolvable=smallest_resolvable(comparison.get("sd"), comparison.get("n", 0), m,
                                                                  alpha))
    return comparisons


def variant_stats(runs: Sequence[Mapping[str, Any]], reference: str = REFERENCE,
                  metrics: Sequence[str] = ABLATION_METRICS) -> dict[str, Any]:
    """{"summary": {variant: {metric: seed_summary}}, "paired": {variant: {metric: paired_by_seed}}}:
    variants in the order of their first run; "paired" holds every variant but `reference`, every
    metric, corrected together as one family (Holm, `correct_family`)."""
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    summary = {v: {m: seed_summary(by_seed(runs, m, variant=v).values()) for m in metrics} for v in variants}
    paired = {v: {m: paired_by_seed(by_seed(runs, m, variant=v), by_seed(runs, m, variant=reference))
                  for m in metrics}
              for v in variants if v != reference and reference in variants}
    correct_family(c for by_metric in paired.values() for c in by_metric.values())
    return {"summary": summary, "paired": paired}
