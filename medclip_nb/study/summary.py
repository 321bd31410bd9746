"""`reports/summary.md`: the study's results tables, written from `reports/metrics.json` by the run.

Numbers are never typed by hand into prose: `make study` calls `write_summary` at its end, with
the wall time it measured, and the README links to the file it writes.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Mapping

from medclip_nb.errors import DataError, one_line
from medclip_nb.evaluate import format_with_interval
from medclip_nb.files import check_output, read_text_limited, write_text_atomic
from medclip_nb.paths import resolve
from medclip_nb.study.ablation_tables import ablation_report
from medclip_nb.study.tables import LANGUAGE_ROWS, headline, headline_intervals

SUMMARY_TITLE = "# Results of this study run"  # its first line: a file `summary` may replace
MAX_METRICS_BYTES = 256 << 20
HEADLINE_NAMES = {
    "zs_acc_mean": "5x200 zero-shot acc (our rule, mean)",
    "zs_acc_max": "5x200 zero-shot acc (our rule, max)",
    "zs_macro_f1": "zero-shot macro-F1 (our rule)",
    "zs_auroc": "per-label zero-shot AUROC",
    "i2t_R@1": "image→text R@1",
    "i2t_R@10": "image→text R@10",
    "t2i_R@10": "text→image R@10",
    "P@10": "P@10 (5x200)",
    "probe_auroc": "linear-probe AUROC",
}


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
STUDY_ENTRIES = ("ablation", "data_efficiency", "dataset", "language", "prompt_gap")


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


def summary_markdown(metrics: Mapping[str, Any], *, wall_seconds: float | None = None,
                     params: str | None = None, when: _dt.datetime | None = None) -> str:
    """The text of summary.md for a metrics.json mapping {model name: metrics, 'ablation': ...}."""
    import torch

    when = when or _dt.datetime.now().astimezone()
    models = {name: {key: format_with_interval(value, headline_intervals(m)[key])
                     for key, value in headline(m).items()}
              for name, m in metrics.items() if name not in STUDY_ENTRIES and isinstance(m, Mapping)}
    lines = [SUMMARY_TITLE, "",
             "Written by the run itself from `metrics.json` (never edited by hand). Trained numbers "
             "differ slightly from CPU to CPU: floating-point kernels differ.", "",
             f"- date: {when.strftime('%Y-%m-%d %H:%M %Z')}",
             f"- machine: {machine_description()}",
             f"- torch {torch.__version__}, Python {platform.python_version()}"]
    if params:
        lines.append(f"- parameters: `{params}`")
    if wall_seconds is not None:
        lines.append(f"- wall time: {wall_seconds / 60:.1f} min")
    lines += _data_section(metrics)
    if models:
        n_images = _five_x_200_size(metrics)
        lines += ["", "## Models" + (f" (5x200 zero-shot set: {n_images} images)" if n_images else ""), "",
                  "Each number with its 95 % bootstrap interval over the test patients (1,000 resamples of whole "
                  "patients, all images of a patient together).", "",
                  markdown_table(models, {**HEADLINE_NAMES, **_rule_columns(models)}, "model")]
    lines += _ablation_section(metrics)
    return "\n".join(lines) + "\n"


# The 5x200 entries of the published rules, scored by MedCLIP's procedure (mean over its prompt draws).
RULE_NAMES = {"zs_acc_mean_gloria": "5x200 acc, GLoRIA's rule (MedCLIP procedure)",
              "zs_acc_mean_medclip": "5x200 acc, MedCLIP's rule (MedCLIP procedure)"}


def _rule_columns(models: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Columns of the published rules that some model was evaluated with (zeroshot_protocols)."""
    return {key: name for key, name in RULE_NAMES.items() if any(row.get(key) is not None for row in models.values())}


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
                  params: str | None = None, force: bool = False) -> Path:
    """Write summary.md from metrics.json (atomic: a reader never sees half a file). `out_path`
    may be an earlier summary; another existing file only with `force`, metrics.json never."""
    metrics_path, out_path = resolve(metrics_path), resolve(out_path)
    check_output(out_path, flag="--out", force=force, inputs=(metrics_path,), ours=is_summary_file, error=DataError)
    if not metrics_path.exists():
        raise DataError(f"{metrics_path}: no metrics.json (run the study first: make study)")
    text = read_text_limited(metrics_path, MAX_METRICS_BYTES, what="--metrics", error=DataError)
    try:
        metrics = json.loads(text)
    except RecursionError:
        raise DataError(f"{metrics_path}: not a readable metrics.json (nested too deeply)") from None
    except ValueError as e:
        raise DataError(f"{metrics_path}: not a readable metrics.json ({one_line(e, 120)})") from None
    if not isinstance(metrics, dict):
        raise DataError(f"{metrics_path}: expected a JSON object of models, got {type(metrics).__name__}")
    try:
        text = summary_markdown(metrics, wall_seconds=wall_seconds, params=params)
    except (TypeError, KeyError, ValueError, AttributeError, IndexError, ZeroDivisionError, OverflowError,
            RecursionError) as e:
        raise DataError(f"{metrics_path}: an entry is not what evaluate or make ablation writes "
                        f"({type(e).__name__}: {one_line(e, 120)})") from None
    return write_text_atomic(out_path, text, what="--out", error=DataError)
