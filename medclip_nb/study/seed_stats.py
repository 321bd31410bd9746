"""Statistics over training seeds for the ablation (no training here: plain numbers in, JSON data out).

The unit is a run. Each variant's number is the mean over its seeds with a Student t interval
(`intervals.t_interval`); a variant is compared with the reference by the differences of runs
that share a seed, and so the test images and (for a train_fraction) the training patients:
the mean difference with its t interval, *resolved* when the interval excludes 0
(`intervals.paired_t_difference`). Runs are dicts with at least "variant", "seed", and the
metric; data-efficiency runs also carry "train_fraction" and "n_train".
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from medclip_nb.evaluate import CONFIDENCE, paired_t_difference, t_interval

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
    """values - reference over the seeds both have: {"difference", "ci", "resolved", "n", "seeds"}."""
    seeds = sorted(set(values) & set(reference))
    paired = paired_t_difference([values[s] for s in seeds], [reference[s] for s in seeds], confidence)
    return {**paired, "difference": paired["difference"] if seeds else None, "seeds": seeds}


def variant_stats(runs: Sequence[Mapping[str, Any]], reference: str = REFERENCE,
                  metrics: Sequence[str] = ABLATION_METRICS) -> dict[str, Any]:
    """{"summary": {variant: {metric: seed_summary}}, "paired": {variant: {metric: paired_by_seed}}}:
    variants in the order of their first run; "paired" holds every variant but `reference`."""
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    summary = {v: {m: seed_summary(by_seed(runs, m, variant=v).values()) for m in metrics} for v in variants}
    paired = {v: {m: paired_by_seed(by_seed(runs, m, variant=v), by_seed(runs, m, variant=reference))
                  for m in metrics}
              for v in variants if v != reference and reference in variants}
    return {"summary": summary, "paired": paired}


def _gap_by_seed(runs, metric: str, loss: str, reference: str, fraction: float) -> dict[int, float]:
    """{seed: loss - reference} at one fraction, for the seeds both have."""
    mine = by_seed(runs, metric, variant=loss, train_fraction=fraction)
    ref = by_seed(runs, metric, variant=reference, train_fraction=fraction)
    return {s: mine[s] - ref[s] for s in set(mine) & set(ref)}


def data_efficiency_stats(runs: Sequence[Mapping[str, Any]], losses: Sequence[str], fractions: Sequence[float],
                          reference: str = REFERENCE, metric: str = "zs_acc_mean") -> dict[str, Any]:
    """The data-efficiency numbers, keyed by loss then `fraction_key`:

    - "table": seed_summary of `metric` with "n_train" (the training pairs of that fraction);
    - "paired": each loss but `reference` minus `reference` at that fraction, paired by seed;
    - "fraction_effect": per loss, the smallest fraction minus the largest, paired by seed (what
      less data costs at this budget);
    - "gap_change": per loss, its gap to `reference` at the smallest fraction minus its gap at the
      largest, paired by seed: above 0 when the loss gains more over `reference` with less data
      (MedCLIP's claim for its soft targets).
    """
    fractions = sorted(float(f) for f in fractions)
    table: dict[str, Any] = {}
    for loss in losses:
        table[loss] = {}
        for f in fractions:
            n_train = {int(r["n_train"]) for r in runs if r["variant"] == loss and r["train_fraction"] == f}
            table[loss][fraction_key(f)] = {**seed_summary(by_seed(runs, metric, variant=loss, train_fraction=f)
                                                           .values()),
                                            "n_train": n_train.pop() if len(n_train) == 1 else None}
    others = [loss for loss in losses if loss != reference]
    paired = {loss: {fraction_key(f): paired_by_seed(by_seed(runs, metric, variant=loss, train_fraction=f),
                                                     by_seed(runs, metric, variant=reference, train_fraction=f))
                     for f in fractions}
              for loss in others}
    fraction_effect, gap_change = {}, {}
    if len(fractions) > 1:
        small_f, large_f = fractions[0], fractions[-1]
        ends = {"from": fraction_key(large_f), "to": fraction_key(small_f)}
        for loss in losses:
            fraction_effect[loss] = {**paired_by_seed(by_seed(runs, metric, variant=loss, train_fraction=small_f),
                                                      by_seed(runs, metric, variant=loss, train_fraction=large_f)),
                                     **ends}
        for loss in others:
            gap_change[loss] = {**paired_by_seed(_gap_by_seed(runs, metric, loss, reference, small_f),
                                                 _gap_by_seed(runs, metric, loss, reference, large_f)), **ends}
    return {"table": table, "paired": paired, "fraction_effect": fraction_effect, "gap_change": gap_change}
