"""Glue for the notebooks and `make study`: make sure the dataset exists, save figures, show tables.

The notebooks stay short: they build a Config from their parameters, call `ensure_dataset`,
and then the package's training and evaluation functions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from medclip_nb.config import Config, config_from_namespace
from medclip_nb.paths import resolve

if TYPE_CHECKING:  # pandas is imported inside the functions that use it (a heavy import)
    import pandas as pd


def notebook_config(namespace: Mapping[str, Any]) -> Config:
    """The Config of a notebook: its `parameters` cell and papermill's injected values."""
    return config_from_namespace(namespace)


def ensure_dataset(cfg: Config, *, log=print) -> Path:
    """Return the dataset file of `cfg`, building what is missing.

    - `data_path` exists and was not written by `prepare` (no prepare_report.json beside it):
      used as it is (real MIMIC-CXR or a hand-made file); nothing else is touched.
    - else `mimic_root` is set: the official MIMIC-CXR-JPG tree is imported with `prepare`.
    - else: the phantom is generated in `phantom_dir` unless it is already the same phantom (a
      phantom of other parameters is replaced only with `force`, see provenance.py) and
      imported from there; a dataset prepared from an earlier phantom is prepared again.
    An image store is built beside the dataset file when `image_store` is 'auto'.
    """
    from medclip_nb.mimic import prepare_mimic
    from medclip_nb.phantom import generate_phantom, phantom_is_current
    from medclip_nb.provenance import PREPARE_REPORT, prepare_record, stale_reason

    data_path = resolve(cfg.data_path)
    ours = prepare_record(data_path) is not None
    if data_path.exists() and not ours:
        log(f"Using {data_path} as it is (not written by prepare)")
    elif cfg.mimic_root:
        source = resolve(cfg.mimic_root)
    else:
        source = resolve(cfg.phantom_dir)
        shape = dict(studies=cfg.phantom_studies, size=cfg.phantom_size, seed=cfg.phantom_seed,
                     test_studies=cfg.phantom_test_studies)
        if not phantom_is_current(source, **shape):
            log(f"Generating phantom MIMIC-CXR-JPG in {source} ({cfg.phantom_studies} studies"
                + (f" + {cfg.phantom_test_studies} test studies" if cfg.phantom_test_studies else "")
                + f", {cfg.phantom_size} px, seed {cfg.phantom_seed})")
            generate_phantom(source, **shape, force=cfg.force)
        if data_path.exists() and stale_reason(data_path):
            log(f"Removing {data_path}: prepared from an earlier phantom")
            data_path.unlink()  # ours: prepare_report.json beside it says so
            (data_path.parent / PREPARE_REPORT).unlink(missing_ok=True)
    if not data_path.exists():
        log(f"Preparing {source} -> {data_path.parent}")
        prepare_mimic(source, data_path.parent, frontal_views=tuple(cfg.frontal_views))
        if data_path.name != "datasets.pkl":
            os.replace(data_path.parent / "datasets.pkl", data_path)
    if cfg.image_store == "auto":
        from medclip_nb.store import build_store

        build_store(data_path, None, size=cfg.resize_size)
    return data_path


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


def update_metrics(cfg: Config, key: str, value: Any) -> Path:
    """Merge one entry into reports_dir/metrics.json, keeping the others (atomic write)."""
    from medclip_nb.evaluate import merge_metrics

    return merge_metrics(resolve(cfg.reports_dir) / "metrics.json", key, value)


def read_metrics_log(path: str | Path):
    """metrics.jsonl of a run as a pandas DataFrame."""
    import pandas as pd

    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows)


# ---- data inspection (notebook 01) ----------------------------------------------------------
def split_counts(splits: Mapping[str, list]) -> "pd.DataFrame":
    """Images, studies and patients per split."""
    import pandas as pd

    rows = []
    for name, records in splits.items():
        rows.append({
            "split": name,
            "images": len(records),
            "studies": len({r.get("study_id") for r in records}),
            "patients": len({r.get("subject_id") for r in records}),
        })
    return pd.DataFrame(rows).set_index("split")


def label_prevalence(splits: Mapping[str, list]) -> "pd.DataFrame":
    """Share of images positive (1.0) for each CheXpert label, per split."""
    import numpy as np
    import pandas as pd

    from medclip_nb.labels import CHEXPERT_LABELS

    table = {}
    for name, records in splits.items():
        labels = np.array([r["labels"] for r in records], dtype=float).reshape(-1, len(CHEXPERT_LABELS))
        table[name] = (labels == 1.0).mean(axis=0) if len(labels) else np.zeros(len(CHEXPERT_LABELS))
    return pd.DataFrame(table, index=list(CHEXPERT_LABELS)).round(3)


def report_lengths(splits: Mapping[str, list]) -> "pd.DataFrame":
    """Words per report, per split: count, mean, quartiles."""
    import pandas as pd

    rows = [{"split": name, "words": len(r["report"].split())} for name, recs in splits.items() for r in recs]
    return pd.DataFrame(rows).groupby("split")["words"].describe().round(1)


def sample_grid_figure(dataset, rows: list[int], *, max_chars: int = 140):
    """Images of `dataset` (a CXRDataset) with the start of their report and positive labels."""
    import matplotlib.pyplot as plt

    from medclip_nb.data import load_grayscale
    from medclip_nb.labels import CHEXPERT_LABELS

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
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


# ---- training (notebooks 02, 03) ---------------------------------------------------------------
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


def epoch_table(metrics_log) -> "pd.DataFrame":
    """Per epoch: mean train loss of the logged windows and the last val loss, rounded."""
    import pandas as pd

    df = metrics_log
    train = df[df["split"] == "train"].groupby("epoch")["loss"].mean().rename("train_loss")
    val = df[df["split"] == "val"].groupby("epoch")["loss"].last().rename("val_loss")
    return pd.concat([train, val], axis=1).sort_index().round(3)


# ---- analysis (notebook 04) --------------------------------------------------------------------
def evaluate_run(model, tokenizer, cfg: Config, device="cpu", *, log=print):
    """Evaluate a model on every split of cfg.data_path (eval transforms): (metrics, arrays)."""
    from medclip_nb.evaluate import eval_datasets, evaluate_model

    splits, _ = eval_datasets(cfg, tokenizer)
    return evaluate_model(model, tokenizer, splits, cfg, device, seed=0, log=log)


# Where each headline number sits in a metrics entry, and where its 95 % interval sits (None: none).
HEADLINE_PATHS: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "zs_acc_mean": (("zero_shot_5x200", "mean", "accuracy"), ("zero_shot_5x200", "mean", "accuracy_ci")),
    "zs_acc_max": (("zero_shot_5x200", "max", "accuracy"), ("zero_shot_5x200", "max", "accuracy_ci")),
    "zs_macro_f1": (("zero_shot_5x200", "mean", "macro_f1"), ("zero_shot_5x200", "mean", "macro_f1_ci")),
    "zs_auroc": (("zero_shot_multilabel", "auroc_mean"), ("zero_shot_multilabel", "auroc_mean_ci")),
    "i2t_R@1": (("retrieval", "test", "image_to_text", "R@1"), ("retrieval", "test", "image_to_text_ci", "R@1")),
    "i2t_R@10": (("retrieval", "test", "image_to_text", "R@10"), ("retrieval", "test", "image_to_text_ci", "R@10")),
    "t2i_R@10": (("retrieval", "test", "text_to_image", "R@10"), ("retrieval", "test", "text_to_image_ci", "R@10")),
    "P@10": (("retrieval", "test_5x200", "image_to_text_precision", "P@10"), None),
    "probe_auroc": (("linear_probe", "auroc_mean"), ("linear_probe", "auroc_mean_ci")),
}


def _lookup(metrics: Mapping[str, Any], path: tuple[str, ...] | None):
    value: Any = metrics if path else None
    for key in path or ():
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers a results table shows for one model."""
    values = {key: _lookup(metrics, value_path) for key, (value_path, _) in HEADLINE_PATHS.items()}
    # zeroshot_protocol 'both': the published protocol's mean and std over prompt draws as well
    paper = metrics.get("zero_shot_5x200_paper") or {}
    if "mean" in paper:
        values["zs_acc_mean_paper"] = paper["mean"].get("accuracy")
        values["zs_acc_mean_paper_std"] = paper["mean"].get("accuracy_std")
    return values


def headline_intervals(metrics: Mapping[str, Any]) -> dict[str, list[float] | None]:
    """The 95 % bootstrap interval stored beside each number of `headline` (None where none is)."""
    intervals = {key: _lookup(metrics, ci_path) for key, (_, ci_path) in HEADLINE_PATHS.items()}
    return {**intervals, **{key: None for key in headline(metrics) if key not in intervals}}


def results_table(by_model: Mapping[str, Mapping[str, Any]]) -> "pd.DataFrame":
    """The headline numbers of each model (rows), rounded."""
    import pandas as pd

    return pd.DataFrame({name: headline(m) for name, m in by_model.items()}).T.astype(float).round(3)


def results_table_with_intervals(by_model: Mapping[str, Mapping[str, Any]]) -> "pd.DataFrame":
    """The headline numbers as 'value [low, high]' strings (95 % bootstrap intervals)."""
    import pandas as pd

    from medclip_nb.evaluate.intervals import format_with_interval

    return pd.DataFrame({
        name: {key: format_with_interval(value, headline_intervals(m)[key]) for key, value in headline(m).items()}
        for name, m in by_model.items()
    }).T


def probe_fraction_table(by_model: Mapping[str, Mapping[str, Any]]) -> "pd.DataFrame":
    """Linear-probe mean AUROC [95 % CI] per model (rows) and fraction of training labels (columns)."""
    import pandas as pd

    from medclip_nb.evaluate.intervals import format_with_interval

    table = {}
    for name, m in by_model.items():
        for key, entry in (m.get("linear_probe_fractions") or {}).items():
            column = f"{entry['fraction']:.0%} labels (n={entry['n_train']})"
            table.setdefault(name, {})[column] = format_with_interval(entry["auroc_mean"], entry["auroc_mean_ci"])
    return pd.DataFrame(table).T


def probe_fraction_figure(by_model: Mapping[str, Mapping[str, Any]]):
    """Linear-probe mean AUROC against the fraction of training labels, with 95 % intervals."""
    import matplotlib.pyplot as plt
    import numpy as np

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


def zero_shot_hits(arrays, mode: str = "mean"):
    """Per 5x200 image: 1.0 where the zero-shot prediction is its class, else 0.0."""
    import numpy as np

    scores = arrays.zero_shot_scores[mode]
    return (np.asarray(scores).argmax(axis=1) == arrays.five_x_200_classes).astype(float)


def paired_comparisons(arrays_by_model: Mapping[str, Any], reference: str = "default",
                       modes=("mean", "max")) -> "pd.DataFrame":
    """5x200 zero-shot accuracy of `reference` minus each other model, on the same test images,
    with the paired bootstrap interval of the difference and whether it excludes 0."""
    import numpy as np
    import pandas as pd

    from medclip_nb.evaluate.intervals import paired_difference

    ref = arrays_by_model[reference]
    rows = []
    for name, arrays in arrays_by_model.items():
        if name == reference:
            continue
        if not np.array_equal(arrays.five_x_200_rows, ref.five_x_200_rows):
            raise ValueError(f"paired_comparisons: {name} was evaluated on other 5x200 images than {reference}")
        for mode in modes:
            d = paired_difference(zero_shot_hits(ref, mode), zero_shot_hits(arrays, mode))
            rows.append({"against": name, "metric": f"zero-shot accuracy ({mode})",
                         "difference": round(d["difference"], 3),
                         "95% CI": None if d["ci"] is None else f"[{d['ci'][0]:.3f}, {d['ci'][1]:.3f}]",
                         "resolved": d["resolved"]})
    return pd.DataFrame(rows)


def embedding_figure(arrays, *, seed: int = 0):
    """PCA and t-SNE of the 5x200 images and their reports, coloured by class."""
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    test = arrays.embeddings["test"]
    rows, classes = arrays.five_x_200_rows, arrays.five_x_200_classes
    image, text = np.asarray(test["image"])[rows], np.asarray(test["text"])[rows]
    both = np.concatenate([image, text])
    pca = PCA(n_components=2, random_state=seed).fit_transform(both)
    perplexity = max(2.0, min(30.0, (len(both) - 1) / 3))
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
    import numpy as np

    rows, classes = arrays.five_x_200_rows, arrays.five_x_200_classes
    picked = [rows[np.flatnonzero(classes == c)[:per_class]] for c in range(len(arrays.class_names))]
    return np.concatenate(picked), np.repeat(np.arange(len(picked)), [len(p) for p in picked])


def similarity_heatmap_figure(arrays, per_class: int = 2):
    """Cosine similarity of sampled images (rows) against their reports (columns)."""
    import matplotlib.pyplot as plt
    import numpy as np

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


def top_retrievals(arrays, records: list, n_images: int = 3, k: int = 3, max_chars: int = 110) -> "pd.DataFrame":
    """For the first image of a few classes: its label and its top-k retrieved test reports."""
    import numpy as np
    import pandas as pd

    from medclip_nb.text import clean_report

    test = arrays.embeddings["test"]
    image, text, index = np.asarray(test["image"]), np.asarray(test["text"]), np.asarray(test["index"])
    rows, classes = arrays.five_x_200_rows, arrays.five_x_200_classes
    out = []
    for c in range(min(n_images, len(arrays.class_names))):
        candidates = rows[classes == c]
        if not len(candidates):
            continue
        q = candidates[0]
        order = np.argsort(-(text @ image[q]), kind="stable")[:k]
        for rank, j in enumerate(order, 1):
            report = clean_report(records[int(index[j])]["report"])
            out.append({"image (true class)": arrays.class_names[c], "rank": rank,
                        "similarity": round(float(text[j] @ image[q]), 3),
                        "retrieved report": report[:max_chars] + ("..." if len(report) > max_chars else "")})
    return pd.DataFrame(out)


def train_and_evaluate(cfg: Config, *, log=print):
    """Train with `cfg` and evaluate its best checkpoint: (TrainResult, metrics, arrays)."""
    from medclip_nb.checkpoint import load_model
    from medclip_nb.train import train

    result = train(cfg, log=log)
    model, tokenizer, saved_cfg = load_model(result.best_checkpoint or result.last_checkpoint, "cpu")
    metrics, arrays = evaluate_run(model, tokenizer, saved_cfg, log=log)
    return result, metrics, arrays


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


def copy_metrics_entry(source: str | Path, target: str | Path, key: str) -> Path:
    """Copy one entry of a metrics.json into another (used by `make ablation`)."""
    from medclip_nb.errors import DataError
    from medclip_nb.evaluate import merge_metrics

    source = resolve(source)
    data = json.loads(source.read_text()) if source.is_file() else {}
    if key not in data:
        raise DataError(f"{source}: no '{key}' entry to copy")
    return merge_metrics(resolve(target), key, data[key])
