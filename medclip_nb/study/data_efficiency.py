"""The data-efficiency grid's numbers (no training here: runs in, JSON data out).

Runs are dicts with "variant" (the arm), "seed", "train_fraction", "n_train", the metric (the
run's end point, its last step) and its learning curve ("curve_steps", "curve": zero-shot
accuracy at each checkpoint). Everything is over training seeds (seed_stats.py):

- `end_table`: each arm's end point per fraction, mean with its 95 % t interval;
- `curve_table`: each arm's curve per fraction, the same at every checkpoint step;
- `endpoint_comparisons`: every arm minus the reference at every fraction, paired by seed, one
  Holm family (the end-point table's);
- `claim_comparisons`: what MedCLIP's claim needs, one Holm family: each decoupled arm minus its
  plain arm at each fraction below 1 (what the decoupled items add), and each arm's gap to the
  reference at the smallest fraction minus its gap at the largest ("more so with fewer pairs":
  above 0 when the arm gains on the reference as pairs get fewer);
- `flattened`: whether an arm's last two curve points lie within each other's interval;
- `steps_to_reach`: per seed, the first step its curve reaches an accuracy (linear between points).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from medclip_nb.study.seed_stats import by_seed, correct_family, fraction_key, paired_by_seed, seed_summary


def _one(values: set) -> Any:
    return next(iter(values)) if len(values) == 1 else None


# A run whose last step gives this share or more of the 5x200 images one class has collapsed: its
# embeddings no longer tell the classes apart, whatever its loss's targets were meant to teach.
COLLAPSE_SHARE = 0.9


def end_table(runs, arms: Sequence[str], fractions: Sequence[float], metric: str) -> dict[str, Any]:
    """{arm: {fraction_key: seed_summary of the end point, with n_train, n_unpaired_images, n_unpaired_texts
    and "collapsed": how many of its seeds collapsed (zs_top_share >= COLLAPSE_SHARE; None without the
    share)}}."""
    table: dict[str, Any] = {}
    for arm in arms:
        table[arm] = {}
        for f in fractions:
            mine = [r for r in runs if r["variant"] == arm and r["train_fraction"] == f]
            sizes = {key: _one({r.get(key) for r in mine}) for key in ("n_train", "n_unpaired_images",
                                                                      "n_unpaired_texts")}
            shares = [r.get("zs_top_share") for r in mine]
            collapsed = None if any(s is None for s in shares) else sum(s >= COLLAPSE_SHARE for s in shares)
            table[arm][fraction_key(f)] = {**seed_summary(by_seed(mine, metric).values()), **sizes,
                                           "collapsed": collapsed}
    return table


def curves_by_seed(runs, arm: str, fraction: float) -> tuple[list[int], dict[int, list[float]]]:
    """(the steps every run of the cell has, {seed: accuracy at those steps})."""
    mine = [r for r in runs if r["variant"] == arm and r["train_fraction"] == fraction and r.get("curve_steps")]
    if not mine:
        return [], {}
    steps = sorted(set.intersection(*(set(int(s) for s in r["curve_steps"]) for r in mine)))
    out = {}
    for r in mine:
        at = dict(zip((int(s) for s in r["curve_steps"]), r["curve"]))
        if all(at.get(s) is not None for s in steps):
            out[int(r["seed"])] = [float(at[s]) for s in steps]
    return steps, out


def curve_table(runs, arms: Sequence[str], fractions: Sequence[float]) -> dict[str, Any]:
    """{arm: {fraction_key: {"steps": [...], "points": [seed_summary at each step]}}}."""
    table: dict[str, Any] = {}
    for arm in arms:
        table[arm] = {}
        for f in fractions:
            steps, curves = curves_by_seed(runs, arm, f)
            table[arm][fraction_key(f)] = {"steps": steps, "points": [
                seed_summary([c[i] for c in curves.values()]) for i in range(len(steps))]}
    return table


def _label(stats: dict[str, Any], **fields) -> dict[str, Any]:
    return {**fields, **stats}


def endpoint_comparisons(runs, arms: Sequence[str], fractions: Sequence[float], reference: str,
                         metric: str) -> list[dict[str, Any]]:
    """Each arm minus `reference` at each fraction (paired by seed), corrected together (Holm). A run
    that is another arm's (a decoupled arm at fraction 1, "same_as") is not compared twice."""
    out = []
    for f in fractions:
        ref = by_seed(runs, metric, variant=reference, train_fraction=f)
        for arm in (a for a in arms if a != reference):
            own = [r for r in runs if r["variant"] == arm and "same_as" not in r]
            mine = by_seed(own, metric, train_fraction=f)
            if mine:
                out.append(_label(paired_by_seed(mine, ref), comparison=f"{arm} - {reference}", arm=arm,
                                  against=reference, fraction=fraction_key(f), kind="against the reference"))
    return correct_family(out)


def _gap(runs, metric: str, arm: str, reference: str, fraction: float) -> dict[int, float]:
    mine = by_seed(runs, metric, variant=arm, train_fraction=fraction)
    ref = by_seed(runs, metric, variant=reference, train_fraction=fraction)
    return {s: mine[s] - ref[s] for s in set(mine) & set(ref)}


def claim_comparisons(runs, arms: Sequence[str], fractions: Sequence[float], reference: str, metric: str,
                      plain_of: Mapping[str, str]) -> list[dict[str, Any]]:
    """Decoupled arm minus its plain arm at each fraction below 1, and each arm's gap change from the
    largest to the smallest fraction (paired by seed), corrected together (Holm)."""
    out = []
    for arm in (a for a in arms if a in plain_of):
        for f in (f for f in fractions if f < 1):
            out.append(_label(paired_by_seed(by_seed(runs, metric, variant=arm, train_fraction=f),
                                             by_seed(runs, metric, variant=plain_of[arm], train_fraction=f)),
                              comparison=f"{arm} - {plain_of[arm]}", arm=arm, against=plain_of[arm],
                              fraction=fraction_key(f), kind="what the decoupled items add"))
    if len(fractions) > 1:
        small, large = min(fractions), max(fractions)
        for arm in (a for a in arms if a != reference):
            out.append(_label(paired_by_seed(_gap(runs, metric, arm, reference, small),
                                             _gap(runs, metric, arm, reference, large)),
                              comparison=f"({arm} - {reference}) at {small:.0%} minus at {large:.0%}", arm=arm,
                              against=reference, fraction=fraction_key(small), from_fraction=fraction_key(large),
                              kind="gap change with fewer pairs"))
    return correct_family(out)


def flattened(curve: Mapping[str, Any]) -> dict[str, Any] | None:
    """Whether the last two points of a curve_table cell lie within each other's 95 % t interval."""
    points, steps = curve.get("points") or [], curve.get("steps") or []
    if len(points) < 2 or not points[-1].get("ci") or not points[-2].get("ci"):
        return None
    last, before = points[-1], points[-2]
    inside = (before["ci"][0] <= last["mean"] <= before["ci"][1]) and (last["ci"][0] <= before["mean"] <= last["ci"][1])
    return {"steps": steps[-2:], "means": [before["mean"], last["mean"]], "cis": [before["ci"], last["ci"]],
            "flattened": bool(inside)}


def first_reach(steps: Sequence[int], values: Sequence[float], target: float) -> float | None:
    """The step a curve first reaches `target`, linear between its points (the first point if it is
    already there); None when it never does."""
    for i, (step, value) in enumerate(zip(steps, values)):
        if value >= target:
            if i == 0:
                return float(step)
            s0, v0 = steps[i - 1], values[i - 1]
            return float(s0 + (target - v0) / (value - v0) * (step - s0))
    return None


def steps_to_reach(runs, arms: Sequence[str], fractions: Sequence[float], target: float) -> dict[str, Any]:
    """{arm: {fraction_key: {"per_seed": {seed: step or None}, "reached", "n", "median"}}}: the median
    is over every seed, a seed that never reached the target counting as beyond the budget (None
    when half or more never did)."""
    out: dict[str, Any] = {}
    for arm in arms:
        out[arm] = {}
        for f in fractions:
            steps, curves = curves_by_seed(runs, arm, f)
            per_seed = {seed: first_reach(steps, values, target) for seed, values in sorted(curves.items())}
            reached = [v for v in per_seed.values() if v is not None]
            ordered = sorted(reached) + [np.inf] * (len(per_seed) - len(reached))
            median = float(np.median(ordered)) if ordered else None
            out[arm][fraction_key(f)] = {"per_seed": {str(s): v for s, v in per_seed.items()}, "reached": len(reached),
                                         "n": len(per_seed), "median": median if median is not None and
                                         np.isfinite(median) else None}
    return out
