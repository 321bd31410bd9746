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


def sample_grid_figure(dataset, rows: list[int], *, max_chars: int = 420):
    """Images of `dataset` (a CXRDataset) with their whole report (up to `max_chars`, cut only at a
    sentence end) and their positive labels as the title."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(3.4 * len(rows), 6.4))
    for ax, i in zip(np.atleast_1d(axes), rows):
        record = dataset.records[i]
        ax.imshow(load_grayscale(dataset.image_file(i)), cmap="gray")
        positives = [n for n, v in zip(CHEXPERT_LABELS, record["labels"]) if v == 1.0]
        ax.set_title("\n".join(textwrap.wrap(", ".join(positives) or "No positive label", 30)), fontsize=8)
        ax.set_xlabel(_wrap(_whole_sentences(record["report"], max_chars), 40), fontsize=6.5, loc="left")
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    return fig


def _whole_sentences(text: str, max_chars: int) -> str:
    """`text` up to `max_chars`, cut after the last full sentence that fits (with '...')."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars].rfind(". ")
    return (text[: cut + 1] if cut > 0 else text[:max_chars]) + " ..."


def report_length_figure(splits, *, bins: int = 20):
    """Words per report, one histogram per split (shared x axis), each titled with its count and median."""
    import matplotlib.pyplot as plt

    names = list(splits)
    fig, axes = plt.subplots(1, len(names), figsize=(3.8 * len(names), 3.2), sharex=True, squeeze=False)
    lengths = {name: [len(r["report"].split()) for r in splits[name]] for name in names}
    top = max((max(v) for v in lengths.values() if v), default=1)
    for ax, name in zip(axes[0], names):
        ax.hist(lengths[name], bins=np.linspace(0, top, bins + 1), color="C0")
        median = float(np.median(lengths[name])) if lengths[name] else float("nan")
        ax.set(title=f"{name}: {len(lengths[name])} reports, median {median:.0f} words", xlabel="words per report",
               ylabel="reports")
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width))


def loss_above_chance(rows) -> "np.ndarray | None":
    """loss - chance of metrics.jsonl rows (chance: the loss of scoring every pair alike at that
    row's batch sizes, ln(batch) for the softmax losses), or None when the log has no chance level
    (siglip, or a log written before it was recorded)."""
    if "chance" not in rows or rows["chance"].isna().all():
        return None
    return (rows["loss"] - rows["chance"].astype(float)).to_numpy()


def training_curves_figure(metrics_log):
    """From metrics.jsonl: the train and validation losses as loss minus chance (their batches differ
    in size, so their raw losses are not comparable: 0 is chance for both), the raw losses with each
    split's chance level, the learning rate and the temperature, each against the optimizer step."""
    import matplotlib.pyplot as plt

    df = metrics_log
    train, val = df[df["split"] == "train"], df[df["split"] == "val"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.2))
    (relative, raw), (lr, temperature) = axes
    for rows, name, style in ((train, "train", "-"), (val, "validation", "o-")):
        if not len(rows):
            continue
        color = "C0" if name == "train" else "C1"
        raw.plot(rows["step"], rows["loss"], style, color=color, label=name, ms=4)
        above = loss_above_chance(rows)
        if above is not None:
            chance = float(rows["chance"].astype(float).mean())
            raw.axhline(chance, color=color, ls="--", lw=0.9, label=f"chance, {name} batches ({chance:.2f})")
            relative.plot(rows["step"], above, style, color=color, label=name, ms=4)
    relative.axhline(0, color="k", ls="--", lw=0.9, label="chance")
    if loss_above_chance(train) is None:
        relative.text(0.5, 0.5, "no chance level in this log\n(siglip, or an older run)", ha="center",
                      va="center", transform=relative.transAxes)
    relative.set(title="loss minus chance (comparable across batch sizes)", xlabel="optimizer step",
                 ylabel="loss - chance (nats; below 0 = learned)")
    raw.set(title="contrastive loss and its chance level", xlabel="optimizer step", ylabel="loss (nats)")
    lr.plot(train["step"], train["lr"])
    lr.set(title="learning rate (warmup, cosine decay)", xlabel="optimizer step", ylabel="learning rate")
    temperature.plot(train["step"], train["temperature"])
    temperature.set(title="temperature", xlabel="optimizer step", ylabel="temperature (1 / logit scale)")
    for ax in (relative, raw):
        ax.legend(fontsize=8)
    fig.suptitle(training_finding(train, val), fontsize=10)
    fig.tight_layout()
    return fig


def training_finding(train, val) -> str:
    """One sentence of what the curves show, from the log: where each loss ended against chance."""
    parts = []
    for rows, name in ((train, "train"), (val, "validation")):
        above = loss_above_chance(rows) if len(rows) else None
        if above is not None and len(above):
            gap = -float(above[-1])
            parts.append(f"{name} loss {rows['loss'].iloc[-1]:.2f}, {abs(gap):.2f} nats "
                         f"{'below' if gap > 0 else 'above'} chance ({float(rows['chance'].iloc[-1]):.2f})")
        elif len(rows):
            parts.append(f"{name} loss {rows['loss'].iloc[0]:.2f} -> {rows['loss'].iloc[-1]:.2f}")
    return "At the last step: " + "; ".join(parts) if parts else "No rows in this log"


def overfit_figure(result):
    """The loss of `train.overfit_one_batch` at each step on its one batch, with the chance level."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    steps = np.arange(1, len(result.losses) + 1)
    ax.plot(steps, result.losses, "o-", ms=3, label=f"loss on the same {result.batch_size} pairs")
    title = "One batch, repeated"
    if result.chance is not None:
        ax.axhline(result.chance, color="gray", ls="--", lw=0.9, label=f"chance (ln {result.batch_size} = "
                                                                        f"{result.chance:.2f})")
        title += f": {result.fell_below_chance():.2f} nats below chance after {len(result.losses)} steps"
    ax.set(xlabel="optimizer step (the same batch each time)", ylabel="loss (nats)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def label_prevalence_figure(prevalence):
    """Share of images positive per CheXpert label (rows of `tables.label_prevalence`), one bar per split."""
    ax = prevalence.plot.barh(figsize=(8, 5.2), title="Label prevalence per split")
    ax.set(xlabel="share of images positive (label 1.0)", ylabel="CheXpert label")
    ax.invert_yaxis()
    ax.figure.tight_layout()
    return ax.figure


def per_label_auroc_figure(per_label):
    """Per-label AUROC (rows: labels, columns: methods such as zero-shot and the linear probe), chance at 0.5."""
    table = per_label.dropna(how="all")
    means = ", ".join(f"{column} {table[column].mean():.2f}" for column in table.columns)
    ax = table.plot.barh(figsize=(7.5, 0.32 * len(table) + 1.8), xlim=(0, 1),
                         title=f"Per-label AUROC on the test split (mean: {means})")
    ax.axvline(0.5, color="gray", lw=0.8, ls="--", label="chance (0.5)")
    ax.set(xlabel="AUROC (0.5 = chance, 1 = perfect)", ylabel="CheXpert label")
    ax.invert_yaxis()
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


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
    ax.axhline(0.5, color="gray", lw=0.8, ls="--", label="chance (AUROC 0.5)")
    ax.set(xscale="log", xlabel="fraction of training labels", ylabel="mean AUROC over labels (test)",
           title="Linear probe with few labels (95 % CI)" + _probe_finding(by_model))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _probe_finding(by_model: Mapping[str, Mapping[str, Any]]) -> str:
    """'\nat 1 % of the labels: default 0.84, random init 0.67' (the smallest fraction every model has)."""
    smallest = {}
    for name, m in by_model.items():
        entries = sorted((e for e in (m.get("linear_probe_fractions") or {}).values() if e["auroc_mean"] is not None),
                         key=lambda e: e["fraction"])
        if entries:
            smallest[name] = entries[0]
    if not smallest or len({e["fraction"] for e in smallest.values()}) != 1:
        return ""
    fraction = next(iter(smallest.values()))["fraction"]
    return f"\nat {fraction:.0%} of the labels: " + ", ".join(f"{n} {e['auroc_mean']:.2f}" for n, e in smallest.items())


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
        ax.set(xlabel=f"{title} 1", ylabel=f"{title} 2")
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
    labels = [f"{arrays.class_names[c]} #{i + 1}" for i, c in enumerate(classes)]
    size = max(6.0, 0.32 * len(rows) + 3)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(sim, cmap="viridis")
    ax.set_xticks(range(len(rows)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set(xlabel="report (of the image with the same number)", ylabel="image",
           title="image-report cosine similarity: a bright diagonal and bright same-class blocks are learned")
    fig.colorbar(im, ax=ax, fraction=0.046, label="cosine similarity")
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
        top.set_ylabel(METRIC_NAMES.get(metric, metric))
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
        bottom.set_ylabel(f"difference to {reference}")
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
