"""Issue #5's ablation (variants x seeds) and the written readings generated from the numbers.

A reading is never typed by hand: it is written from the table it reads, so it says what the
numbers say, including when a difference is within seed noise or its interval includes 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from medclip_nb.config import Config
from medclip_nb.study.runs import train_and_evaluate
from medclip_nb.study.tables import headline, headline_intervals

if TYPE_CHECKING:  # pandas is imported inside the functions that use it (a heavy import)
    import pandas as pd


def ablation(cfg: Config, seeds, variants=None, *, log=print) -> "pd.DataFrame":
    """Issue #5's ablation: each variant trained with the same budget for each seed and
    evaluated; returns the per-run headline numbers (one row per variant and seed)."""
    import pandas as pd

    variants = variants or {
        "simple (seed baseline)": {"model": "simple", "loss": "clip"},
        "default + clip": {"loss": "clip"},
        "default + medclip": {"loss": "medclip"},
        "default + siglip": {"loss": "siglip"},
    }
    root = Path(cfg.model_save_path) / "ablation"
    rows = []
    for name, changes in variants.items():
        for seed in seeds:
            slug = name.split(" ")[0] if changes.get("model") == "simple" else name.replace("default + ", "")
            run_cfg = cfg.replace(seed=int(seed), model_save_path=str(root / f"{slug}-seed{seed}"), resume_from=None,
                                  **changes)
            _, metrics, _ = train_and_evaluate(run_cfg, log=lambda *_: None)
            rows.append({"variant": name, "seed": int(seed), **headline(metrics)})
            log(f"ablation: {name}, seed {seed}: zero-shot accuracy {rows[-1]['zs_acc_mean']}")
    return pd.DataFrame(rows)


def ablation_stats(runs: "pd.DataFrame") -> dict[str, dict[str, dict[str, float]]]:
    """{variant: {metric: {"mean", "std", "n"}}} over the seeds (population std), for metrics.json."""
    numbers = runs.drop(columns=["seed"]).groupby("variant", sort=False)
    mean, std, count = numbers.mean(), numbers.std(ddof=0), numbers.count()
    return {
        variant: {metric: {"mean": round(float(mean.loc[variant, metric]), 4),
                           "std": round(float(std.loc[variant, metric]), 4),
                           "n": int(count.loc[variant, metric])} for metric in mean.columns}
        for variant in mean.index
    }


def ablation_summary(runs: "pd.DataFrame") -> "pd.DataFrame":
    """mean ± std over seeds for each variant, as strings for the table."""
    numbers = runs.drop(columns=["seed"]).groupby("variant", sort=False)
    mean, std = numbers.mean(), numbers.std(ddof=0)
    return mean.round(3).astype(str) + " ± " + std.round(3).astype(str)


def ablation_reading(stats: Mapping[str, Mapping[str, Mapping[str, float]]], reference: str = "default + clip",
                     metrics=("zs_acc_mean", "i2t_R@10", "probe_auroc")) -> str:
    """A written reading of the ablation, generated from its numbers: each variant against
    `reference`, calling a difference smaller than the larger of the two stds 'within seed noise'."""
    names = {"zs_acc_mean": "zero-shot accuracy", "i2t_R@10": "image->text R@10", "probe_auroc": "linear-probe AUROC"}
    ref = stats[reference]
    lines = []
    for variant, row in stats.items():
        if variant == reference:
            continue
        parts = []
        for metric in metrics:
            a, b = row[metric], ref[metric]
            diff, noise = a["mean"] - b["mean"], max(a["std"], b["std"])
            verdict = "within seed noise" if abs(diff) <= noise else ("higher" if diff > 0 else "lower")
            parts.append(f"{names[metric]} {a['mean']:.3f} ± {a['std']:.3f} vs {b['mean']:.3f} ({verdict})")
        lines.append(f"- {variant} against {reference}: " + "; ".join(parts) + ".")
    best = max(stats, key=lambda v: stats[v]["zs_acc_mean"]["mean"])
    lines.append(f"- Highest mean zero-shot accuracy: {best}. With {ref['zs_acc_mean']['n']} seeds and this small "
                 "budget, differences within one std are not evidence either way.")
    return "\n".join(lines)


def reading(results: Mapping[str, Mapping[str, Any]], default: str = "default", comparisons=None) -> str:
    """A short written reading of the results table, generated from the numbers themselves;
    with `comparisons` (`paired_comparisons`), each zero-shot gap says whether it is resolved."""
    d, ci = headline(results[default]), headline_intervals(results[default])
    lines = []
    acc = d["zs_acc_mean"]
    if acc is not None:
        interval = ci["zs_acc_mean"]
        if interval:
            verdict = ("above" if interval[0] > 0.2 else "not distinguishable from") + " chance (0.200)"
            lines.append(f"- 5-class zero-shot accuracy of the default model: {acc:.3f} "
                         f"(95 % CI {interval[0]:.3f}-{interval[1]:.3f}), {verdict}.")
        else:
            lines.append(f"- 5-class zero-shot accuracy of the default model: {acc:.3f} (no interval: too few images).")
    for name, m in results.items():
        if name == default:
            continue
        other = headline(m)
        if acc is not None and other["zs_acc_mean"] is not None:
            gap = acc - other["zs_acc_mean"]
            lines.append(f"- Against {name}: zero-shot accuracy {gap:+.3f}{_paired_note(comparisons, name)}, "
                         f"image->text R@10 {_diff(d['i2t_R@10'], other['i2t_R@10'])}, "
                         f"linear-probe AUROC {_diff(d['probe_auroc'], other['probe_auroc'])}.")
    if d["zs_auroc"] is not None:
        lines.append(f"- Mean per-label zero-shot AUROC: {d['zs_auroc']:.3f} (labels with both classes in test).")
    lines.append("- These are phantom data: the numbers show that the pipeline learns image-report "
                 "alignment end to end, not how the model would do on MIMIC-CXR.")
    return "\n".join(lines)


def _paired_note(comparisons, name: str) -> str:
    if comparisons is None or not len(comparisons):
        return ""
    row = comparisons[(comparisons["against"] == name) & (comparisons["metric"] == "zero-shot accuracy (mean)")]
    if not len(row) or row.iloc[0]["95% CI"] is None:
        return ""
    verdict = "resolved" if row.iloc[0]["resolved"] else "not resolved: the interval includes 0"
    return f" (paired 95 % CI {row.iloc[0]['95% CI']}, {verdict})"


def _diff(a, b) -> str:
    if a is None or b is None:
        return "n/a"
    return f"{a - b:+.3f}"
