"""Notebook figures, saved as reports_dir/figures/<name>.png and shown in the cell.

Presentation only: the numbers come from evaluate. matplotlib (and scikit-learn's PCA and
t-SNE) are imported by the functions that draw.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from medclip_nb.config import Config
from medclip_nb.data import load_grayscale
from medclip_nb.labels import CHEXPERT_LABELS
from medclip_nb.paths import resolve
from medclip_nb.progress import working
from medclip_nb.study.readings import METRIC_NAMES
from medclip_nb.study.seed_stats import by_seed, fraction_key

# Modest resolution: the executed notebooks carry every figure and stay small.
FIGURE_DPI = 90


def figures_dir(cfg: Config) -> Path:
    path = resolve(cfg.reports_dir) / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig, cfg: Config, name: str) -> Path:
    """Save a matplotlib figure as reports_dir/figures/<name>.png (fixed dpi, no timestamp)."""
    path = figures_dir(cfg) / f"{name}.png"
    fig.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight", metadata={"Software": None})
    return path


def show_figure(fig, cfg: Config, name: str) -> None:
    """Save the figure (`save_figure`), show that same PNG in the notebook cell, and say where it went.

    The figure is closed afterwards, so the inline backend does not draw it a second time.
    Outside IPython it is only saved. Prints the path relative to reports_dir (the same on
    every machine, so nbval can compare it).
    """
    import matplotlib.pyplot as plt

    path = save_figure(fig, cfg, name)
    plt.close(fig)
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        display(Image(filename=str(path)))
    print(f"saved: {path.relative_to(resolve(cfg.reports_dir))}")


def sample_grid_figure(dataset, rows: list[int], *, max_chars: int = 140):
    """Images of `dataset` (a CXRDataset) with the start of their report and positive labels."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 4.6))
    for ax, i in zip(axes, rows):
        record = dataset.records[i]
        ax.imshow(load_grayscale(dataset.image_file(i)), cmap="gray")
        positives = [n for n, v in zip(CHEXPERT_LABELS, record["labels"]) if v == 1.0]
        text = record["report"][:max_chars] + ("..." if len(record["report"]) > max_chars else "")
        ax.set_title(", ".join(positives) or "(no positive label)", fontsize=8)
        ax.set_xlabel(_wrap(text, 34), fontsize=6.5)
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width))


def training_curves_figure(metrics_log):
    """Train/val loss, learning rate and temperature against the step, from metrics.jsonl."""
    import matplotlib.pyplot as plt

    df = metrics_log
    train, val = df[df["split"] == "train"], df[df["split"] == "val"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(train["step"], train["loss"], label="train")
    if len(val):
        axes[0].plot(val["step"], val["loss"], "o-", label="val")
    axes[0].set(title="contrastive loss", xlabel="step"), axes[0].legend()
    axes[1].plot(train["step"], train["lr"]), axes[1].set(title="learning rate", xlabel="step")
    axes[2].plot(train["step"], train["temperature"]), axes[2].set(title="temperature (1 / logit scale)", xlabel="step")
    fig.tight_layout()
    return fig


def probe_fraction_figure(by_model: Mapping[str, Mapping[str, Any]]):
    """Linear-probe mean AUROC against the fraction of training labels, with 95 % intervals."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, m in by_model.items():
        entries = [e for e in (m.get("linear_probe_fractions") or {}).values() if e["auroc_mean"] is not None]
        if not entries:
            continue
        x = np.array([e["fraction"] for e in entries])
        y = np.array([e["auroc_mean"] for e in entries])
        ci = np.array([e["auroc_mean_ci"] or [v, v] for e, v in zip(entries, y)])
        ax.errorbar(x, y, yerr=[y - ci[:, 0], ci[:, 1] - y], marker="o", capsize=3, label=name)
    ax.set(xscale="log", xlabel="fraction of training labels", ylabel="mean AUROC (test)",
           title="Linear probe with few labels (95 % CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def embedding_figure(arrays, *, seed: int = 0):
    """PCA and t-SNE of the 5x200 images and their reports, coloured by class."""
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    test = arrays.embeddings["test"]
    rows, classes = arrays.five_x_200_rows, arrays.five_x_200_classes
    image, text = np.asarray(test["image"])[rows], np.asarray(test["text"])[rows]
    both = np.concatenate([image, text])
    pca = PCA(n_components=2, random_state=seed).fit_transform(both)
    perplexity = max(2.0, min(30.0, (len(both) - 1) / 3))
    with working(f"t-SNE of {len(both)} embeddings"):
        tsne = TSNE(n_components=2, random_state=seed, perplexity=perplexity, init="pca").fit_transform(both)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    n = len(rows)
    for ax, points, title in zip(axes, (pca, tsne), ("PCA", "t-SNE")):
        for c, name in enumerate(arrays.class_names):
            sel = classes == c
            color = plt.cm.tab10(c)
            ax.scatter(points[:n][sel, 0], points[:n][sel, 1], s=14, color=color, marker="o", label=f"{name} (image)")
            ax.scatter(points[n:][sel, 0], points[n:][sel, 1], s=18, color=color, marker="x", label=f"{name} (report)")
        ax.set_title(f"{title} of image (o) and report (x) embeddings")
        ax.set_xticks([]), ax.set_yticks([])
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def similarity_sample(arrays, per_class: int = 2):
    """Rows of a small labelled sample of the 5x200 set: per_class images of each class."""
    rows, classes = arrays.five_x_200_rows, arrays.five_x_200_classes
    picked = [rows[np.flatnonzero(classes == c)[:per_class]] for c in range(len(arrays.class_names))]
    return np.concatenate(picked), np.repeat(np.arange(len(picked)), [len(p) for p in picked])


def similarity_heatmap_figure(arrays, per_class: int = 2):
    """Cosine similarity of sampled images (rows) against their reports (columns)."""
    import matplotlib.pyplot as plt

    test = arrays.embeddings["test"]
    rows, classes = similarity_sample(arrays, per_class)
    sim = np.asarray(test["image"])[rows] @ np.asarray(test["text"])[rows].T
    labels = [f"{arrays.class_names[c][:12]} {i}" for i, c in enumerate(classes)]
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(sim, cmap="viridis")
    ax.set_xticks(range(len(rows)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set(xlabel="report", ylabel="image", title="image-report cosine similarity")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


# ---- the ablation (make ablation) --------------------------------------------------------------------
def _mean_and_error(summary: Mapping[str, Any]) -> tuple[float, list[list[float]]]:
    mean, ci = summary["mean"], summary.get("ci") or [summary["mean"]] * 2
    return mean, [[mean - ci[0]], [ci[1] - mean]]


def ablation_figure(entry: Mapping[str, Any]):
    """Top row: each variant's per-seed numbers (dots) and mean with its 95 % t interval; bottom
    row: each variant minus the reference, per seed and as mean with interval (filled: resolved)."""
    import matplotlib.pyplot as plt

    metrics, reference, runs = entry["metrics"], entry["reference"], entry["runs"]
    variants = list(entry.get("variants") or entry["summary"])
    others = [v for v in variants if v in entry["paired"]]
    fig, axes = plt.subplots(2, len(metrics), figsize=(4.2 * len(metrics), 6.6), squeeze=False)
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, size=64)
    for col, metric in enumerate(metrics):
        top, bottom = axes[0, col], axes[1, col]
        for i, variant in enumerate(variants):
            values = list(by_seed(runs, metric, variant=variant).values())
            top.scatter(i + jitter[:len(values)], values, s=14, color="0.6", zorder=2)
            mean, error = _mean_and_error(entry["summary"][variant][metric])
            top.errorbar(i + 0.25, mean, yerr=error, fmt="o", color="k", capsize=3, zorder=3)
        top.set_xticks(range(len(variants)), variants, rotation=30, ha="right", fontsize=8)
        top.set_title(f"{METRIC_NAMES.get(metric, metric)} (mean, 95 % t CI)", fontsize=9)
        ref = by_seed(runs, metric, variant=reference)
        for i, variant in enumerate(others):
            mine = by_seed(runs, metric, variant=variant)
            differences = [mine[s] - ref[s] for s in sorted(set(mine) & set(ref))]
            bottom.scatter(i + jitter[:len(differences)], differences, s=14, color="0.6", zorder=2)
            paired = entry["paired"][variant][metric]
            if paired.get("difference") is not None:
                mean, error = _mean_and_error({"mean": paired["difference"], "ci": paired.get("ci")})
                bottom.errorbar(i + 0.25, mean, yerr=error, fmt="o", capsize=3, zorder=3, color="C3",
                                markerfacecolor="C3" if paired.get("resolved") else "white")
        bottom.axhline(0, color="k", lw=0.8, ls="--")
        bottom.set_xticks(range(len(others)), others, rotation=30, ha="right", fontsize=8)
        bottom.set_title(f"minus {reference}, paired by seed (filled: resolved)", fontsize=9)
    fig.tight_layout()
    return fig


def learning_curves_figure(entry: Mapping[str, Any], chance: float = 0.2):
    """One panel per share of the training pairs: each arm's zero-shot accuracy at its checkpoints (mean over
    seeds, line) with its 95 % t interval (band), the chance line of the five classes, the same y axis."""
    import matplotlib.pyplot as plt

    fractions = [float(f) for f in entry["fractions"]]
    fig, axes = plt.subplots(1, len(fractions), figsize=(4.3 * len(fractions), 3.9), sharey=True, squeeze=False)
    for ax, f in zip(axes[0], fractions):
        for i, arm in enumerate(entry["arms"]):
            cell = entry["curves"][arm][fraction_key(f)]
            if not cell["steps"] or (f == 1.0 and arm in (entry.get("same_at_full") or {})):
                continue  # a decoupled arm on all the pairs is its plain arm's run
            mean = np.array([p["mean"] if p["mean"] is not None else np.nan for p in cell["points"]], dtype=float)
            ci = np.array([p.get("ci") or [m, m] for p, m in zip(cell["points"], mean)], dtype=float)
            style = "--" if arm in (entry.get("decoupled") or []) else "-"
            ax.plot(cell["steps"], mean, "o" + style, color=f"C{i}", ms=3, label=arm)
            ax.fill_between(cell["steps"], ci[:, 0], ci[:, 1], color=f"C{i}", alpha=0.15)
        ax.axhline(chance, color="0.4", lw=0.8, ls=":", label=f"chance ({chance:.1f})")
        n_train = entry["table"][entry["arms"][0]][fraction_key(f)].get("n_train")
        ax.set(xlabel="optimizer step", title=f"{f:.0%} of the pairs" + (f" ({n_train})" if n_train else ""))
    axes[0, 0].set_ylabel(f"{METRIC_NAMES.get(entry['metric'], entry['metric'])} (5x200)")
    axes[0, -1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Learning curves ({len(entry['seeds'])} seeds, mean and 95 % t CI; dashed: decoupled data)",
                 fontsize=10)
    fig.tight_layout()
    return fig
