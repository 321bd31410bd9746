"""Where the models look (notebook 04, summary.md): the localisation scores of each model with their
intervals, the paired differences between models on the same finding regions, and a grid of maps.

Presentation only: the numbers come from the `localisation` entries evaluate/localisation.py writes and
from the per-pair scores in each model's evaluation arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from medclip_nb.evaluate import ALPHA, format_with_interval, holm, json_ready, paired_difference

if TYPE_CHECKING:
    import pandas as pd

SCORE_NAMES = {"pointing_game": "pointing game", "cnr": "CNR", "iou": "IoU"}
METHOD_NAMES = {"similarity": "similarity map", "gradcam": "Grad-CAM"}


def localisation_rows(results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, map method, finding incl. 'all'): n, each score with its interval, chance."""
    rows = []
    for model, metrics in results.items():
        entry = metrics.get("localisation") if isinstance(metrics, Mapping) else None
        if not isinstance(entry, Mapping) or "skipped" in entry:
            continue
        for method, name in METHOD_NAMES.items():
            if method not in entry:
                continue
            groups = {"all": entry[method]["all"], **entry[method]["per_finding"]}
            for finding, numbers in groups.items():
                row = {"model": model, "map": name, "finding": finding, "pairs": numbers["n"],
                       "patients": numbers["patients"]}
                for score, label in SCORE_NAMES.items():
                    row[label] = format_with_interval(numbers[score], numbers[f"{score}_ci"])
                row["chance: pointing game"] = round(numbers["chance_pointing_game"], 3)
                row["chance: IoU"] = round(numbers["chance_iou"], 3)
                rows.append(row)
    return rows


def localisation_table(results: Mapping[str, Mapping[str, Any]]) -> "pd.DataFrame":
    """Notebook 04's table of localisation scores: rows (model, map, finding), 95 % intervals over patients."""
    import pandas as pd

    rows = localisation_rows(results)
    if not rows:
        return pd.DataFrame({"localisation": ["skipped: no model was scored (no finding regions)"]})
    return pd.DataFrame(rows).set_index(["model", "map", "finding"])


def localisation_comparison(arrays_by_model: Mapping[str, Any], reference: str = "default", seed: int = 0,
                            ) -> dict[str, Any]:
    """`reference`'s scores minus each other model's on the same (image, finding) pairs: the mean paired
    difference with its paired bootstrap interval over patients (intervals.paired_difference), per map
    method and score, over all pairs and per finding (plain JSON data for metrics.json):
    {other model: {method: {finding: {score: {difference, ci, p, p_holm, resolved}}}}}. `resolved`: Holm's
    adjusted p below ALPHA, one Holm family per (other model, map method) over its findings x scores."""
    base = getattr(arrays_by_model.get(reference), "localisation", None)
    if not base:
        return {}
    findings = np.array(base["pairs"].findings)
    out: dict[str, Any] = {}
    for name, arrays in arrays_by_model.items():
        other = getattr(arrays, "localisation", None)
        if name == reference or not other or other["pairs"].rows != base["pairs"].rows:
            continue
        keep = base["readable"] & other["readable"]
        out[name] = {}
        for method in base["scores"]:
            if method not in other["scores"]:
                continue
            per_group = {}
            for finding in ["all", *sorted(set(findings[keep]))]:
                rows = keep & ((findings == finding) if finding != "all" else True)
                per_group[finding] = {
                    score: _difference(base["scores"][method][score], other["scores"][method][score], rows,
                                       base["groups"], seed) for score in SCORE_NAMES}
            _holm_family([d for scores in per_group.values() for d in scores.values()])
            out[name][method] = per_group
    return json_ready(out)


def _holm_family(entries: list[dict[str, Any]]) -> None:
    """Holm-adjust the p-values of one table's comparisons in place: `p_holm`, and `resolved` from it."""
    for entry, p_holm in zip(entries, holm([e["p"] for e in entries])):
        entry["p_holm"] = p_holm
        entry["resolved"] = None if p_holm is None else bool(p_holm < ALPHA)


def _difference(a: np.ndarray, b: np.ndarray, rows: np.ndarray, groups: np.ndarray, seed: int) -> dict[str, Any]:
    both = rows & np.isfinite(a) & np.isfinite(b)
    return paired_difference(a[both], b[both], groups=groups[both], seed=seed) if both.any() else {
        "difference": None, "ci": None, "resolved": None, "p": None}


def localisation_comparison_rows(comparison: Mapping[str, Any], reference: str = "default") -> list[dict[str, str]]:
    """One row per (reference minus model, map, finding): each score's difference with its interval
    over patients, marked "resolved (Holm)" where it survives the correction (the notebook's table
    and summary.md's)."""
    rows = []
    for model, methods in comparison.items():
        for method, groups in methods.items():
            for finding, scores in groups.items():
                row = {"difference": f"{reference} - {model}", "map": METHOD_NAMES.get(method, method),
                       "finding": finding}
                for score, label in SCORE_NAMES.items():
                    d = scores[score]
                    text = format_with_interval(d["difference"], d["ci"])
                    row[label] = text + (" resolved (Holm)" if d["resolved"] else "")
                rows.append(row)
    return rows


def localisation_comparison_table(comparison: Mapping[str, Any], reference: str = "default") -> "pd.DataFrame":
    """The paired differences as a table: rows (reference minus model, map, finding), one column per score."""
    import pandas as pd

    rows = localisation_comparison_rows(comparison, reference)
    if not rows:
        return pd.DataFrame({"comparison": ["skipped: needs the reference model and another scored on the same pairs"]})
    return pd.DataFrame(rows).set_index(["difference", "map", "finding"])


def localisation_figure(arrays, per_finding: int = 1, max_rows: int = 6):
    """A grid of test images (the model's input) with the finding's region outlined, and the map of the
    finding's text by each method beside it, one colour bar per map."""
    import matplotlib.pyplot as plt

    examples = (getattr(arrays, "localisation", None) or {}).get("examples", [])
    picked, seen = [], {}
    for example in examples:
        if seen.get(example["finding"], 0) < per_finding and len(picked) < max_rows:
            seen[example["finding"]] = seen.get(example["finding"], 0) + 1
            picked.append(example)
    if not picked:
        fig, ax = plt.subplots(figsize=(5, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "no finding regions were scored", ha="center", va="center")
        return fig
    methods = list(picked[0]["maps"])
    fig, axes = plt.subplots(len(picked), 1 + len(methods), figsize=(3.2 * (1 + len(methods)), 3.0 * len(picked)),
                             squeeze=False)
    for row, example in zip(axes, picked):
        row[0].imshow(example["image"], cmap="gray")
        row[0].contour(example["mask"], levels=[0.5], colors="lime", linewidths=1.0)
        row[0].set_title(f"{example['finding']}\n(region outlined)", fontsize=9)
        for ax, method in zip(row[1:], methods):
            ax.imshow(example["image"], cmap="gray")
            shown = ax.imshow(example["maps"][method], cmap="jet", alpha=0.5)
            ax.contour(example["mask"], levels=[0.5], colors="white", linewidths=1.0)
            ax.set_title(f"{METHOD_NAMES.get(method, method)}: '{example['text']}'", fontsize=9)
            bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
            bar.set_label("cosine similarity share" if method == "similarity" else "Grad-CAM (0-1)", fontsize=8)
        for ax in row:
            ax.set_xlabel("x (input pixels)", fontsize=8)
            ax.set_ylabel("y (input pixels)", fontsize=8)
    fig.tight_layout()
    return fig
