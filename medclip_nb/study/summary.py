"""`reports/summary.md`: the study's results tables, written from `reports/metrics.json` by the run.

Numbers are never typed by hand into prose: `make study` calls `write_summary` at its end, with
the wall time it measured, and the README and docs/results.md point to the file it writes.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
from pathlib import Path
from typing import Any, Mapping

from medclip_nb.errors import DataError, one_line
from medclip_nb.evaluate import format_with_interval, read_metrics
from medclip_nb.files import check_output, read_limited, write_text_atomic
from medclip_nb.paths import resolve
from medclip_nb.study.ablation_tables import ablation_report
from medclip_nb.study.localisation import SCORE_NAMES, localisation_comparison_rows, localisation_rows
from medclip_nb.study.tables import (
    HEADLINE_NAMES,
    LANGUAGE_ROWS,
    chance_levels,
    comparison_verdict,
    headline,
    headline_intervals,
    probe_fraction_table,
)

SUMMARY_TITLE = "# Results of this study run"  # its first line: a file `summary` may replace
MAX_PHASE_TIMES_BYTES = 1 << 20  # make study writes a few lines


def machine_description() -> str:
    """CPU model, core count and the CPU kernels PyTorch picked (they change the last digits)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    return f"{model}, {os.cpu_count()} cores, PyTorch CPU kernels {capability}"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown_table(rows: Mapping[str, Mapping[str, Any]], columns: Mapping[str, str], first: str) -> str:
    """A GitHub-markdown table: one row per key of `rows`, one column per key of `columns`."""
    lines = ["| " + " | ".join([first, *columns.values()]) + " |",
             "| " + " | ".join(["---"] * (len(columns) + 1)) + " |"]
    for name, row in rows.items():
        lines.append("| " + " | ".join([name, *(_cell(row.get(key)) for key in columns)]) + " |")
    return "\n".join(lines)


# Entries of metrics.json that are not a model's metrics.
STUDY_ENTRIES = ("ablation", "data_efficiency", "dataset", "language", "localisation_comparison", "paired_comparisons",
                 "prompt_gap", "provenance")


def _data_section(metrics: Mapping[str, Any]) -> list[str]:
    """Which data the run used (notebook 04's `dataset` entry), the report-language figures (notebook
    01's `language`) and the prompt gap (notebook 04's `prompt_gap`), when the run wrote them."""
    lines: list[str] = []
    dataset = metrics.get("dataset")
    if isinstance(dataset, Mapping):
        lines += ["", "## Data", ""] + [f"- {key.replace('_', ' ')}: {value}" for key, value in dataset.items()]
    language = metrics.get("language")
    if isinstance(language, Mapping) and language:
        figures = list(next(iter(language.values())))  # metrics.json sorts keys: back to the table's order
        known = [f for f in LANGUAGE_ROWS.values() if f in figures]
        order = known + [f for f in figures if f not in known]
        rows = {figure: {name: column.get(figure) for name, column in language.items()} for figure in order}
        lines += ["", "## Report language (text/language.py; definitions in docs/datasets.md)", "",
                  markdown_table(rows, {name: name for name in language}, "figure")]
    gap = metrics.get("prompt_gap")
    if isinstance(gap, Mapping) and gap:
        lines += ["", "## Prompt gap: MedCLIP's 5x200 prompts found word for word in a training sentence", "",
                  markdown_table(gap, {"prompts": "prompts", "found": "found", "share": "share"}, "class")]
    return lines


def _localisation_section(metrics: Mapping[str, Any]) -> list[str]:
    """Each model's localisation scores (one table per map method) and the paired differences between
    models on the same regions (notebook 04's `localisation_comparison`), when the run has them."""
    models = {name: m for name, m in metrics.items() if name not in STUDY_ENTRIES and isinstance(m, Mapping)}
    rows = localisation_rows(models)
    if not rows:
        return []
    first = next(m["localisation"] for m in models.values() if "pairs" in (m.get("localisation") or {}))
    lines = ["", "## Localisation: do the maps of a finding's text fall on the finding? (docs/localisation.md)", "",
             f"{first['pairs']} finding regions on {first['images']} test images ({first['source']}); each score "
             "with its 95 % bootstrap interval over patients; chance: a map that knows nothing of the image."]
    columns = {"pairs": "pairs", "pointing game": "pointing game", "CNR": "CNR", "IoU": "IoU",
               "chance: pointing game": "chance: pointing game", "chance: IoU": "chance: IoU"}
    for method in dict.fromkeys(row["map"] for row in rows):
        table = {f"{row['model']} · {row['finding']}": row for row in rows if row["map"] == method}
        lines += ["", f"### {method}", "", markdown_table(table, columns, "model · finding")]
    comparison = metrics.get("localisation_comparison")
    if isinstance(comparison, Mapping) and comparison:
        table = {f"{row['difference']} · {row['map']} · {row['finding']}": row
                 for row in localisation_comparison_rows(comparison)}
        lines += ["", "### Paired differences on the same regions (interval over patients, Holm-corrected)", "",
                  markdown_table(table, {label: label for label in SCORE_NAMES.values()}, "difference · map · finding")]
    return lines


def _ablation_section(metrics: Mapping[str, Any]) -> list[str]:
    """The ablation and data-efficiency sections (study.ablation_tables); an ablation entry of the
    older format (mean ± std over seeds, no paired differences) as its own table."""
    ablation = metrics.get("ablation") or {}
    if "paired" in ablation or "data_efficiency" in metrics:
        return ["", ablation_report(metrics).rstrip()]
    summary = ablation.get("summary") or {}
    if not summary:
        return []
    rows = {variant: {key: f"{v['mean']:.3f} ± {v['std']:.3f}" for key, v in stats.items()
                      if isinstance(v, Mapping) and "mean" in v}
            for variant, stats in summary.items()}
    keys = [k for k in HEADLINE_NAMES if any(k in r for r in rows.values())]
    seeds = ablation.get("seeds", [])
    return ["", f"## Ablation (mean ± std over {len(seeds)} seeds)", "",
            markdown_table(rows, {k: HEADLINE_NAMES[k] for k in keys}, "variant")]


def read_phase_times(path: str | Path | None) -> list[tuple[str, float]]:
    """`make study`'s phase times file: 'phase<TAB>seconds' lines (the `data` command writes the
    phantom, prepare and image-store lines, the Makefile one per notebook); [] when no file is
    named, an error when the named one is missing, and unreadable lines are skipped (the table is a
    report, not an input)."""
    if path is None:
        return []
    path = resolve(path)
    if not path.is_file():
        raise DataError(f"--phase-times {path}: no such file (make study writes it; leave the flag out "
                        f"for a summary without 'Where the time went')")
    text = read_limited(path, MAX_PHASE_TIMES_BYTES, what="--phase-times", error=DataError)
    phases = []
    for line in text.decode("utf-8", errors="replace").splitlines():
        name, _, seconds = line.partition("\t")
        try:
            phases.append((name.strip(), float(seconds)))
        except ValueError:
            continue
    return phases


def phase_times_section(phases: list[tuple[str, float]], wall_seconds: float | None) -> list[str]:
    """'## Where the time went': each phase's minutes and share of the wall time."""
    if not phases:
        return []
    total = wall_seconds or sum(seconds for _, seconds in phases) or 1.0  # all-zero phases: shares of 0
    lines = ["", "## Where the time went", "", "| phase | min | share of the wall time |", "| --- | --- | --- |"]
    lines += [f"| {name} | {seconds / 60:.2f} | {seconds / total:.0%} |" for name, seconds in phases]
    return lines


def summary_markdown(metrics: Mapping[str, Any], *, wall_seconds: float | None = None,
                     params: str | None = None, when: _dt.datetime | None = None,
                     phases: list[tuple[str, float]] | None = None) -> str:
    """The text of summary.md for a metrics.json mapping {model name: metrics, 'ablation': ...,
    'paired_comparisons': [...], 'provenance': {...}}."""
    models = {name: m for name, m in metrics.items() if name not in STUDY_ENTRIES and isinstance(m, Mapping)}
    lines = [SUMMARY_TITLE, "",
             "Written by the run itself from `metrics.json` (never edited by hand). Trained numbers "
             "differ slightly from CPU to CPU: floating-point kernels differ.", ""]
    lines += _run_lines(metrics.get("provenance") or {}, wall_seconds, params, when)
    lines += _data_section(metrics)
    if models:
        lines += _models_section(models, metrics)
        lines += _protocols_section(models)
        lines += _probe_section(models)
    lines += _comparisons_section(metrics.get("paired_comparisons") or [])
    lines += _localisation_section(metrics)
    lines += _ablation_section(metrics)
    lines += phase_times_section(phases or [], wall_seconds)
    return "\n".join(lines) + "\n"


def _run_lines(provenance: Mapping[str, Any], wall_seconds, params, when) -> list[str]:
    import torch

    when = when or _dt.datetime.now().astimezone()
    lines = [f"- date: {when.strftime('%Y-%m-%d %H:%M %Z')}"
             + (f" (metrics written {provenance['date']})" if provenance.get("date") else ""),
             f"- machine: {machine_description()}",
             f"- torch {torch.__version__}, Python {platform.python_version()}"]
    git = provenance.get("git") or {}
    if git.get("commit"):
        lines.append(f"- code: git commit {git['commit'][:12]}" + (" with uncommitted changes" if git.get("dirty")
                                                                   else ""))
    if params:
        lines.append(f"- parameters: `{params}`")
    if wall_seconds is not None:
        lines.append(f"- wall time: {wall_seconds / 60:.1f} min")
    return lines


def _models_section(models: Mapping[str, Mapping[str, Any]], metrics: Mapping[str, Any]) -> list[str]:
    rows = {name: {key: format_with_interval(value, headline_intervals(m)[key]) for key, value in headline(m).items()}
            for name, m in models.items()}
    first = next(iter(models.values()))
    rows["chance (guessing)"] = {key: None if v is None else f"{v:.3f}" for key, v in chance_levels(first).items()}
    n_images, n_test = _five_x_200_size(metrics), (first.get("n") or {}).get("test")
    sizes = ", ".join(part for part in (f"5x200 zero-shot set: {n_images} images" if n_images else "",
                                        f"test split: {n_test} images" if n_test else "") if part)
    return ["", "## Models" + (f" ({sizes})" if sizes else ""), "",
            "Each number with its 95 % bootstrap interval over the test patients (1,000 resamples of whole "
            "patients, all images of a patient together); the last row is what a model that guesses scores (1 in "
            "5 classes, AUROC 0.5, K in the number of test reports for recall@K).", "",
            markdown_table(rows, HEADLINE_NAMES, "model")]


def _protocols_section(models: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Our 5x200 protocol beside MedCLIP's procedure on each published rule's 5x200 that was scored
    (zeroshot_protocols gloria / medclip)."""
    def scored(m, rule):
        entry = m.get(f"zero_shot_5x200_{rule}")
        return entry if isinstance(entry, Mapping) and "mean" in entry else None

    rules = [rule for rule in RULES if any(scored(m, rule) for m in models.values())]
    if not rules:
        return []
    rows, sizes, procedure = {}, [], {}
    for name, m in models.items():
        ours = m.get("zero_shot_5x200") or {}
        row = {}
        for mode in ("mean", "max"):
            mine = ours.get(mode) or {}
            row[f"ours_{mode}"] = format_with_interval(mine.get("accuracy"), mine.get("accuracy_ci"))
            for rule in rules:
                entry = ((scored(m, rule) or {}).get(mode)) or {}
                value, std = entry.get("accuracy"), entry.get("accuracy_std")
                spread = "" if std is None else f" ± {std:.3f}"
                row[f"{rule}_{mode}"] = "–" if value is None else f"{value:.3f}{spread}"
        rows[name] = row
    for rule in rules:
        entry = next(scored(m, rule) for m in models.values() if scored(m, rule))
        sizes.append(f"{RULE_LABELS[rule]}: {entry.get('n', '?')} images")
        procedure = entry
    draws = len((procedure.get("mean") or {}).get("accuracy_draws") or [])
    columns = {"ours_mean": "ours, prompt mean [95 % CI]", "ours_max": "ours, prompt max [95 % CI]"}
    for rule in rules:
        columns[f"{rule}_mean"] = f"{RULE_LABELS[rule]}, logit mean (± std over draws)"
        columns[f"{rule}_max"] = f"{RULE_LABELS[rule]}, logit max"
    return ["", "## Zero-shot: our protocol and MedCLIP's procedure", "",
            f"Ours: our 5x200 rule, every prompt of MedCLIP's vocabulary, similarity to the mean prompt embedding. "
            f"MedCLIP's procedure: {procedure.get('prompts_per_class', 10)} random prompts per class, the mean "
            f"(or max) of the prompt logits, {draws} seeded draws (mean ± std over draws), on the 5x200 each "
            f"published rule selects ({'; '.join(sizes)}). Chance is 0.200 for all.", "",
            markdown_table(rows, columns, "model")]


def _probe_section(models: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if not any(m.get("linear_probe_fractions") for m in models.values()):
        return []
    table = probe_fraction_table(models)
    rows = {name: dict(row) for name, row in table.iterrows()}
    return ["", "## Linear probe at each fraction of the training labels", "",
            "Mean AUROC over the labels on test images [95 % bootstrap interval over patients], the probe fitted on "
            "seeded subsets of the training images; chance is 0.500.", "",
            markdown_table(rows, {c: c for c in table.columns}, "model")]


def _comparisons_section(entries: list[Mapping[str, Any]]) -> list[str]:
    if not entries:
        return []
    rows = {f"{e['reference']} minus {e['against']}, {e['metric']}": {
        "difference": format_with_interval(e["difference"], e.get("ci")), "holm_p": e.get("holm_p"),
        "verdict": comparison_verdict(e), "n": e.get("n")} for e in entries}
    return ["", "## Paired comparisons on the same test images", "",
            "The default model minus each baseline on the same images (paired bootstrap over the test patients, "
            "1,000 resamples); a difference is resolved when its Holm-adjusted p over these rows is below 0.05.", "",
            markdown_table(rows, {"difference": "difference [95 % CI]", "holm_p": "Holm p", "verdict": "verdict",
                                  "n": "images"}, "comparison")]



RULES = ("gloria", "medclip")
RULE_LABELS = {"gloria": "GLoRIA's rule", "medclip": "MedCLIP's rule"}


def _five_x_200_size(metrics: Mapping[str, Any]) -> int | None:
    for entry in metrics.values():
        counts = entry.get("zero_shot_5x200", {}).get("n_per_class") if isinstance(entry, Mapping) else None
        if counts:
            return int(sum(counts.values()))
    return None


def is_summary_file(path: Path) -> bool:
    """True for a file `write_summary` wrote (its first line), which it may replace."""
    try:
        with open(path, "rb") as f:
            return f.read(len(SUMMARY_TITLE) + 1).decode("utf-8", "replace") == SUMMARY_TITLE + "\n"
    except OSError:
        return False


def write_summary(metrics_path: str | Path, out_path: str | Path, *, wall_seconds: float | None = None,
                  params: str | None = None, phase_times: str | Path | None = None, force: bool = False) -> Path:
    """Write summary.md from metrics.json (atomic: a reader never sees half a file). `out_path`
    may be an earlier summary; another existing file only with `force`, metrics.json never."""
    metrics_path, out_path = resolve(metrics_path), resolve(out_path)
    check_output(out_path, flag="--out", force=force, inputs=(metrics_path,), ours=is_summary_file, error=DataError)
    if not metrics_path.exists():
        raise DataError(f"{metrics_path}: no metrics.json (run the study first: make study)")
    metrics = read_metrics(metrics_path, what="--metrics")
    phases = read_phase_times(phase_times)
    try:
        text = summary_markdown(metrics, wall_seconds=wall_seconds, params=params, phases=phases)
    except (TypeError, KeyError, ValueError, AttributeError, IndexError, ZeroDivisionError, OverflowError,
            RecursionError) as e:
        raise DataError(f"{metrics_path}: an entry is not what evaluate or make ablation writes "
                        f"({type(e).__name__}: {one_line(e, 120)})") from None
    return write_text_atomic(out_path, text, what="--out", error=DataError)
