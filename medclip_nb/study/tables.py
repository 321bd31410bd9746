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


# What each headline number is called in tables (notebook 04, summary.md).
HEADLINE_NAMES = {
    "zs_acc_mean": "5x200 zero-shot accuracy (prompt mean)",
    "zs_acc_max": "5x200 zero-shot accuracy (prompt max)",
    "zs_macro_f1": "5x200 zero-shot macro-F1",
    "zs_auroc": "per-label zero-shot AUROC (mean)",
    "i2t_R@1": "image→text recall@1",
    "i2t_R@10": "image→text recall@10",
    "t2i_R@10": "text→image recall@10",
    "P@10": "5x200 image→text precision@10",
    "probe_auroc": "linear-probe AUROC (mean, all labels)",
}


def chance_levels(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """What each headline number is for a model that guesses: 1 in 5 for the 5x200 accuracy and
    macro-F1 (balanced classes), 0.5 for an AUROC, K / (test reports) for recall@K, the class
    share (1 in 5) for the 5x200 precision@K."""
    n_test = _lookup(metrics, ("retrieval", "test", "n")) or _lookup(metrics, ("n", "test"))
    five = 1 / 5
    return {"zs_acc_mean": five, "zs_acc_max": five, "zs_macro_f1": five, "zs_auroc": 0.5,
            "i2t_R@1": 1 / n_test if n_test else None, "i2t_R@10": min(1.0, 10 / n_test) if n_test else None,
            "t2i_R@10": min(1.0, 10 / n_test) if n_test else None, "P@10": five, "probe_auroc": 0.5}


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
    """The headline numbers of each model (rows; columns named as in HEADLINE_NAMES), rounded."""
    import pandas as pd

    table = pd.DataFrame({name: {key: headline(m)[key] for key in HEADLINE_NAMES} for name, m in by_model.items()})
    return table.T.astype(float).round(3).rename(columns=HEADLINE_NAMES)


def results_table_with_intervals(by_model: Mapping[str, Mapping[str, Any]]) -> "pd.DataFrame":
    """The headline numbers as 'value [low, high]' (95 % bootstrap intervals): one row per metric,
    one column per model and a last column with the chance level, so that the table fits a page."""
    import pandas as pd

    columns = {name: {HEADLINE_NAMES[key]: format_with_interval(headline(m)[key], headline_intervals(m)[key])
                      for key in HEADLINE_NAMES} for name, m in by_model.items()}
    first = next(iter(by_model.values()), {})
    columns["chance"] = {HEADLINE_NAMES[key]: "–" if v is None else f"{v:.3f}"
                         for key, v in chance_levels(first).items()}
    return pd.DataFrame(columns)


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


def paired_comparison_entries(arrays_by_model: Mapping[str, Any], reference: str = "default",
                              modes=("mean", "max")) -> list[dict[str, Any]]:
    """5x200 zero-shot accuracy of `reference` minus each other model, on the same test images,
    with the paired bootstrap interval of the difference (the same patients resampled for both),
    its bootstrap p-value and the Holm-adjusted p over the table's rows: *resolved* when that is
    below 0.05 (evaluate/multiplicity.py). Plain JSON rows {reference, against, metric, difference,
    ci, p, holm_p, resolved, n}: metrics.json stores them under 'paired_comparisons'."""
    ref = arrays_by_model[reference]
    rows = []
    for name, arrays in arrays_by_model.items():
        if name == reference:
            continue
        if not np.array_equal(arrays.five_x_200_rows, ref.five_x_200_rows):
            raise ValueError(f"paired_comparison_entries: {name} was evaluated on other 5x200 images than {reference}")
        for mode in modes:
            groups = None if ref.test_groups is None else ref.test_groups[ref.five_x_200_rows]
            d = paired_difference(zero_shot_hits(ref, mode), zero_shot_hits(arrays, mode), groups=groups)
            rows.append({"reference": reference, "against": name, "metric": f"zero-shot accuracy (prompt {mode})",
                         "difference": round(float(d["difference"]), 4),
                         "ci": None if d["ci"] is None else [round(float(v), 4) for v in d["ci"]],
                         "p": d["p"], "n": int(len(ref.five_x_200_rows))})
    adjusted = holm([r["p"] for r in rows])
    for row, p_holm in zip(rows, adjusted):
        row.update({"p": None if row["p"] is None else round(float(row["p"]), 4),
                    "holm_p": None if p_holm is None else round(float(p_holm), 4),
                    "resolved": None if p_holm is None else bool(p_holm < ALPHA)})
    return rows


def comparison_table(entries: list[Mapping[str, Any]]) -> "pd.DataFrame":
    """Paired comparison rows as a table: difference with its 95 % interval, p, Holm p, and the verdict."""
    import pandas as pd

    return pd.DataFrame([{
        "comparison": f"{e['reference']} minus {e['against']}", "metric": e["metric"],
        "difference [95% CI]": format_with_interval(e["difference"], e["ci"]), "p": e.get("p"),
        "Holm p": e.get("holm_p"), "verdict": comparison_verdict(e), "test images": e["n"]} for e in entries])


def comparison_verdict(entry: Mapping[str, Any]) -> str:
    """'resolved: default higher' when the Holm-adjusted p is below 0.05, else 'not resolved'."""
    if entry.get("resolved") is None:
        return "no interval"
    if entry["resolved"]:
        return f"resolved: {entry['reference']} {'higher' if entry['difference'] > 0 else 'lower'}"
    return "not resolved"


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
