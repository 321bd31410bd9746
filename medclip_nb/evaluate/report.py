"""What a person reads of an evaluation: the zero-shot confusion figure and a short table of headline numbers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medclip_nb.labels import COMPETITION_TASKS


def confusion_figure(confusions: Mapping[str, Any], class_names: Sequence[str] = COMPETITION_TASKS,
                     per_class: int = 200):
    """A matplotlib Figure with one confusion matrix per zero-shot mode, titled with the number of
    images it holds: 'CheXpert 5x200' only when every class has its `per_class` images. Built on
    the Agg canvas directly, so it never changes the notebook's pyplot backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    modes = [m for m, cm in confusions.items() if cm is not None]
    fig = Figure(figsize=(5.2 * max(len(modes), 1), 4.6))
    FigureCanvasAgg(fig)
    for i, mode in enumerate(modes):
        ax = fig.add_subplot(1, len(modes), i + 1)
        display = ConfusionMatrixDisplay(np.asarray(confusions[mode]), display_labels=list(class_names))
        display.plot(ax=ax, colorbar=False, xticks_rotation=30, values_format="d")
        counts = np.asarray(confusions[mode]).sum(axis=1)
        name = (f"CheXpert 5x{per_class}" if len(counts) and (counts == per_class).all()
                else f"{int(counts.sum())} test images ({', '.join(str(int(c)) for c in counts)} per class)")
        ax.set_title(f"zero-shot, {name}\nprompt {mode}; diagonal = correct", fontsize=10)
        ax.set(xlabel="predicted class", ylabel="true class")
    fig.tight_layout()
    return fig


def summary_lines(metrics: Mapping[str, Any]) -> list[str]:
    """A short human-readable table of the headline numbers."""

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    rows: list[tuple[str, Any]] = []
    for key in ("zero_shot_5x200", "zero_shot_5x200_gloria", "zero_shot_5x200_medclip"):
        zs = metrics.get(key)
        if zs is None or "skipped" in zs:
            continue
        tag = "" if zs.get("rule", "ours") == "ours" else f"{zs['rule']} rule, "
        for mode in ("mean", "max"):
            draws = zs[mode].get("accuracy_draws")
            rows.append((f"5x200 zero-shot accuracy ({tag}{mode}, n={zs['n']})", zs[mode]["accuracy"]))
            if draws:
                rows.append((f"  its std over {len(draws)} prompt draws", zs[mode]["accuracy_std"]))
            rows.append((f"5x200 zero-shot macro-F1 ({tag}{mode})", zs[mode]["macro_f1"]))
    multilabel = metrics["zero_shot_multilabel"]
    if "skipped" not in multilabel:
        rows.append(("per-label zero-shot AUROC (mean)", multilabel["auroc_mean"]))
        rows.append(("per-label zero-shot AUROC (5 competition)", multilabel["auroc_mean_competition"]))
    test_retrieval = metrics["retrieval"]["test"]
    for direction in ("image_to_text", "text_to_image"):
        for k, v in test_retrieval[direction].items():
            rows.append((f"retrieval {direction} {k} (n={test_retrieval['n']})", v))
    localisation = metrics.get("localisation") or {}
    for method in ("similarity", "gradcam"):
        if method in localisation:
            every = localisation[method]["all"]
            rows.append((f"localisation {method}: pointing game (n={every['n']}, chance "
                         f"{every['chance_pointing_game']:.3f})", every["pointing_game"]))
            rows.append((f"localisation {method}: CNR", every["cnr"]))
    probe = metrics.get("linear_probe")
    rows.append(("linear probe AUROC (mean)", probe["auroc_mean"] if probe else None))
    width = max([46] + [len(label) for label, _ in rows])
    lines = [f"{'metric':{width}s} value", "-" * (width + 8)]
    lines += [f"{label:{width}s} {fmt(value)}" for label, value in rows]
    return lines
