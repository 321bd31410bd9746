"""The ablation's metrics.json entries (`ablation`, `data_efficiency`), built from its runs
(study/ablation.py) by the statistics of seed_stats.py and data_efficiency.py, with their readings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medclip_nb.config import Config
from medclip_nb.data import prepare_record
from medclip_nb.evaluate import ALPHA, json_ready
from medclip_nb.paths import resolve
from medclip_nb.study.ablation import ARM_USES, DATA_EFFICIENCY_ARMS, SAME_AT_FULL, curve_steps
from medclip_nb.study.data_efficiency import (
    claim_comparisons,
    curve_table,
    end_table,
    endpoint_comparisons,
    flattened,
    steps_to_reach,
)
from medclip_nb.study.readings import ablation_reading, data_efficiency_reading
from medclip_nb.study.seed_stats import ABLATION_METRICS, REFERENCE, fraction_key, variant_stats

if TYPE_CHECKING:  # pandas is imported inside the functions that use it (a heavy import)
    import pandas as pd

# Steps-to-reach target when ablation_target_accuracy is null: this share of the reference's end point on all pairs.
TARGET_SHARE = 0.9


def _data_source(cfg: Config) -> str:
    """'phantom generator version 3 (1000 studies + 2500 test studies, seed 0)', or the dataset file."""
    record = prepare_record(resolve(cfg.data_path)) or {}
    source = record.get("source_phantom")
    if isinstance(source, dict):
        return (f"phantom generator version {source.get('version')} ({source.get('studies')} studies + "
                f"{source.get('test_studies')} test studies, seed {source.get('seed')})")
    return str(cfg.data_path)


def _budget(cfg: Config, runs: "pd.DataFrame") -> dict[str, Any]:
    full = runs[runs["train_fraction"] == 1.0]
    return {"max_steps": cfg.max_steps, "batch_size": cfg.batch_size, "image_size": cfg.image_size,
            "vision_backbone": cfg.vision_backbone, "lr": cfg.lr, "curve_steps": curve_steps(cfg),
            "unpaired_per_batch": cfg.unpaired_per_batch, "ablation_jobs": cfg.ablation_jobs,
            "train_pairs": int(full["n_train"].iloc[0]) if len(full) else None,
            "test_5x200_images": int(full["n_5x200"].iloc[0]) if len(full) else None,
            "zeroshot_protocols": ["ours"], "data": _data_source(cfg),
            "evaluated": "curve points: step_<N>.pth, 5x200 zero-shot; end point: last.pth, every metric",
            "compared_at": "equal steps"}


def _records(runs: "pd.DataFrame") -> list[dict[str, Any]]:
    return [{k: (None if not isinstance(v, list) and v != v else v) for k, v in row.items()}
            for row in runs.to_dict(orient="records")]


def ablation_entry(runs: "pd.DataFrame", cfg: Config, reference: str = REFERENCE,
                   metrics=ABLATION_METRICS) -> dict[str, Any]:
    """The `ablation` entry of metrics.json: the budget, the fraction-1 runs of the variants (not the
    decoupled arms), per-variant mean with its t interval over seeds, and the paired differences
    against `reference`, corrected together by Holm, with a reading."""
    full = [r for r in _records(runs[runs["train_fraction"] == 1.0]) if r["variant"] not in SAME_AT_FULL]
    entry = json_ready({"budget": _budget(cfg, runs), "seeds": sorted({r["seed"] for r in full}),
                        "variants": list(dict.fromkeys(r["variant"] for r in full)), "reference": reference,
                        "metrics": list(metrics), "confidence": 0.95, "alpha": ALPHA, "correction": "Holm",
                        "runs": full, **variant_stats(full, reference, metrics)})
    entry["reading"] = ablation_reading(entry)
    return entry


def _with_same_at_full(records: list[dict[str, Any]], arms) -> list[dict[str, Any]]:
    """The records, plus each decoupled arm's fraction-1 runs: its plain arm's (nothing is left out)."""
    extra = [dict(r, variant=arm, same_as=plain) for arm, plain in SAME_AT_FULL.items() if arm in arms
             for r in records if r["variant"] == plain and r["train_fraction"] == 1.0]
    return records + extra


def data_efficiency_entry(runs: "pd.DataFrame", cfg: Config, arms=DATA_EFFICIENCY_ARMS, reference: str = REFERENCE,
                          metric: str = "zs_acc_mean") -> dict[str, Any]:
    """The `data_efficiency` entry (data_efficiency.py): end points and learning curves per arm and
    fraction, the two Holm families of paired comparisons, whether the reference's curve on all the
    pairs has flattened, the steps each arm needs to reach the target accuracy, and a reading. Only the
    seeds every cell was trained with count."""
    fractions = sorted({float(f) for f in runs["train_fraction"]})
    records = _with_same_at_full(_records(runs), arms)
    arms = [a for a in arms if any(r["variant"] == a for r in records)]
    cells = [{r["seed"] for r in records if r["variant"] == a and r["train_fraction"] == f} for a in arms
             for f in fractions]
    seeds = sorted(set.intersection(*cells)) if cells else []
    chosen = [r for r in records if r["variant"] in arms and r["seed"] in seeds]
    table = end_table(chosen, arms, fractions, metric)
    reference_end = table.get(reference, {}).get(fraction_key(max(fractions)), {}).get("mean")
    target = cfg.ablation_target_accuracy or (round(TARGET_SHARE * reference_end, 3) if reference_end else None)
    curves = curve_table(chosen, arms, fractions)
    entry = json_ready({
        "budget": _budget(cfg, runs), "arms": arms, "uses": {a: ARM_USES.get(a, a) for a in arms},
        "decoupled": [a for a in arms if a in SAME_AT_FULL], "same_at_full": {a: p for a, p in SAME_AT_FULL.items()
                                                                              if a in arms},
        "fractions": fractions, "seeds": seeds, "reference": reference, "metric": metric, "confidence": 0.95,
        "alpha": ALPHA, "correction": "Holm", "runs": [r for r in chosen if "same_as" not in r], "table": table,
        "curves": curves,
        "endpoint_comparisons": endpoint_comparisons(chosen, arms, fractions, reference, metric),
        "claim_comparisons": claim_comparisons(chosen, arms, fractions, reference, metric,
                                               {a: p for a, p in SAME_AT_FULL.items() if a in arms and p in arms}),
        "flattened": flattened(curves.get(reference, {}).get(fraction_key(max(fractions)), {})),
        "target_accuracy": target, "target_source": "ablation_target_accuracy" if cfg.ablation_target_accuracy
        else f"{TARGET_SHARE:.0%} of {reference}'s end point on {max(fractions):.0%} of the pairs",
        "steps_to_reach": steps_to_reach(chosen, arms, fractions, target) if target else None,
    })
    entry["reading"] = data_efficiency_reading(entry)
    return entry
