"""Notebook tables (pandas DataFrames): the data at a glance, training per epoch, each model's
headline numbers with their 95 % intervals, paired comparisons and top retrievals.

Presentation only: the numbers come from metrics.json entries and evaluation arrays.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from medclip_nb.evaluate import ALPHA, format_with_interval, holm, paired_difference
from medclip_nb.labels import CHEXPERT_LABELS
from medclip_nb.text import clean_report, language_figures

if TYPE_CHECKING:  # pandas is imported inside the functions that use it (a heavy import)
    import pandas as pd


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
    import pandas as pd

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


# Rows of `language_table`: the figure of text/language.py and how it is shown.
LANGUAGE_ROWS = {
    "reports": "reports", "sentences": "sentences", "sentences_per_report": "sentences per report",
    "tokens": "words", "word_types": "word types", "distinct_sentences": "distinct sentences",
    "sentence_templates": "sentence templates", "finding_sentences": "finding sentences",
    "negated_finding_share": "finding sentences fully negated (share)",
    "prompt_verbatim_share": "reports holding a 5x200 prompt verbatim (share)",
}


def language_table(corpora: Mapping[str, list[str]]) -> "pd.DataFrame":
    """Report-language figures (text/language.py; definitions in docs/datasets.md), one column per
    corpus of report texts (FINDINGS + IMPRESSION)."""
    import pandas as pd

    columns = {}
    for name, texts in corpora.items():
        figures = language_figures(list(texts))
        columns[name] = {label: round(figures[key], 3) if isinstance(figures[key], float) else figures[key]
                         for key, label in LANGUAGE_ROWS.items()}
    return pd.DataFrame({name: pd.Series(column, dtype=object) for name, column in columns.items()},
                        index=list(LANGUAGE_ROWS.values()))


# ---- training (notebooks 02, 03) ---------------------------------------------------------------
def read_metrics_log(path: str | Path):
    """metrics.jsonl of a run as a pandas DataFrame."""
    import pandas as pd

    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows)


def epoch_table(metrics_log) -> "pd.DataFrame":
    """Per epoch: mean train loss of the logged windows and the last val loss, rounded."""
    import pandas as pd

    df = metrics_log
    train = df[df["split"] == "train"].groupby("epoch")["loss"].mean().rename("train_loss")
    val = df[df["split"] == "val"].groupby("epoch")["loss"].last().rename("val_loss")
    return pd.concat([train, val], axis=1).sort_index().round(3)


# ---- analysis (notebook 04) --------------------------------------------------------------------
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
    # zeroshot_protocols gloria / medclip: MedCLIP's procedure on that rule's 5x200, mean and std over prompt draws
    for rule in ("gloria", "medclip"):
        entry = metrics.get(f"zero_shot_5x200_{rule}") or {}
        if "mean" in entry:
            values[f"zs_acc_mean_{rule}"] = entry["mean"].get("accuracy")
            values[f"zs_acc_mean_{rule}_std"] = entry["mean"].get("accuracy_std")
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

    return pd.DataFrame({
        name: {key: format_with_interval(value, headline_intervals(m)[key]) for key, value in headline(m).items()}
        for name, m in by_model.items()
    }).T


def probe_fraction_table(by_model: Mapping[str, Mapping[str, Any]]) -> "pd.DataFrame":
    """Linear-probe mean AUROC [95 % CI] per model (rows) and fraction of training labels (columns)."""
    import pandas as pd

    table = {}
    for name, m in by_model.items():
        for entry in (m.get("linear_probe_fractions") or {}).values():
            column = f"{entry['fraction']:.0%} labels (n={entry['n_train']})"
            table.setdefault(name, {})[column] = format_with_interval(entry["auroc_mean"], entry["auroc_mean_ci"])
    return pd.DataFrame(table).T


def zero_shot_hits(arrays, mode: str = "mean"):
    """Per 5x200 image: 1.0 where the zero-shot prediction is its class, else 0.0."""
    scores = arrays.zero_shot_scores[mode]
    return (np.asarray(scores).argmax(axis=1) == arrays.five_x_200_classes).astype(float)


def paired_comparisons(arrays_by_model: Mapping[str, Any], reference: str = "default",
                       modes=("mean", "max")) -> "pd.DataFrame":
    """5x200 zero-shot accuracy of `reference` minus each other model, on the same test images,
    with the paired bootstrap interval of the difference (the same patients resampled for both),
    its bootstrap p-value, and the Holm-adjusted p over the table's rows: *resolved* when that is
    below 0.05 (evaluate/multiplicity.py)."""
    import pandas as pd

    ref = arrays_by_model[reference]
    rows = []
    for name, arrays in arrays_by_model.items():
        if name == reference:
            continue
        if not np.array_equal(arrays.five_x_200_rows, ref.five_x_200_rows):
            raise ValueError(f"paired_comparisons: {name} was evaluated on other 5x200 images than {reference}")
        for mode in modes:
            groups = None if ref.test_groups is None else ref.test_groups[ref.five_x_200_rows]
            d = paired_difference(zero_shot_hits(ref, mode), zero_shot_hits(arrays, mode), groups=groups)
            rows.append({"against": name, "metric": f"zero-shot accuracy ({mode})",
                         "difference": round(d["difference"], 3),
                         "95% CI": None if d["ci"] is None else f"[{d['ci'][0]:.3f}, {d['ci'][1]:.3f}]",
                         "p": d["p"]})
    adjusted = holm([r["p"] for r in rows])
    for row, p_holm in zip(rows, adjusted):
        row.update({"p": None if row["p"] is None else round(row["p"], 4),
                    "Holm p": None if p_holm is None else round(p_holm, 4),
                    "resolved": None if p_holm is None else bool(p_holm < ALPHA)})
    return pd.DataFrame(rows)


def top_retrievals(arrays, records: list, n_images: int = 3, k: int = 3, max_chars: int = 110) -> "pd.DataFrame":
    """For the first image of a few classes: its label and its top-k retrieved test reports."""
    import pandas as pd

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
