"""The ablation's tables, from its metrics.json entries: pandas for notebook 04 (`show_ablation`,
`show_data_efficiency`: table, figure and reading in one cell), markdown for summary.md and for
what `make ablation` prints at its end (`print_ablation`).

Presentation only: the numbers are those of the `ablation` and `data_efficiency` entries
(study.ablation_entry, study.data_efficiency_entry), never retyped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from medclip_nb.config import Config
from medclip_nb.errors import DataError
from medclip_nb.paths import resolve
from medclip_nb.study.figures import ablation_figure, data_efficiency_figure, show_figure
from medclip_nb.study.readings import METRIC_NAMES, signed_with_interval, value_with_interval, verdict
from medclip_nb.study.seed_stats import fraction_key

if TYPE_CHECKING:  # pandas is imported inside the functions that use it (a heavy import)
    import pandas as pd


def _name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def ablation_rows(entry: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """{variant: {column: text}}: each metric's mean [95 % t interval] over seeds, then each
    metric's paired difference against the reference with its verdict."""
    reference, rows = entry["reference"], {}
    for variant in entry.get("variants") or entry["summary"]:  # metrics.json sorts its keys: keep the run order
        by_metric = entry["summary"][variant]
        row = {"seeds": str(next(iter(by_metric.values()))["n"]) if by_metric else "0"}
        row.update({_name(m): value_with_interval(by_metric[m]) for m in entry["metrics"]})
        paired = entry["paired"].get(variant)
        for m in entry["metrics"]:
            row[f"{_name(m)} - {reference}"] = ("(reference)" if paired is None else
                                                f"{signed_with_interval(paired[m])} ({_short(verdict(paired[m]))})")
        rows[variant] = row
    return rows


def _short(text: str) -> str:
    """'resolved: higher' stays; 'not resolved: the interval includes 0' -> 'not resolved'."""
    return text if text.startswith("resolved") else text.split(":")[0]


def data_efficiency_rows(entry: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """{loss: {'10 % (67 pairs)': 'mean [t interval]', ...}, ...}, then the paired differences
    against the reference at each fraction."""
    keys = [fraction_key(f) for f in entry["fractions"]]
    rows = {}
    for loss in entry["losses"]:
        rows[loss] = {_fraction_column(k, entry["table"][loss][k]): value_with_interval(entry["table"][loss][k])
                      for k in keys}
    for loss in (loss for loss in entry["losses"] if loss in entry["paired"]):
        rows[f"{loss} - {entry['reference']}"] = {
            _fraction_column(k, entry["table"][loss][k]): f"{signed_with_interval(p)} ({_short(verdict(p))})"
            for k, p in ((k, entry["paired"][loss][k]) for k in keys)}
    return rows


def _fraction_column(key: str, row: Mapping[str, Any]) -> str:
    n = row.get("n_train")
    return f"{float(key):.0%}" + (f" ({n} pairs)" if n is not None else "")


def ablation_table(entry: Mapping[str, Any]) -> "pd.DataFrame":
    """Notebook table of `ablation_rows` (variants as rows)."""
    import pandas as pd

    return pd.DataFrame(ablation_rows(entry)).T


def data_efficiency_table(entry: Mapping[str, Any]) -> "pd.DataFrame":
    """Notebook table of `data_efficiency_rows`: losses (then differences) as rows, fractions as columns."""
    import pandas as pd

    return pd.DataFrame(data_efficiency_rows(entry)).T


def markdown_rows(rows: Mapping[str, Mapping[str, str]], first: str) -> str:
    """A GitHub-markdown table of {row name: {column: text}} (the columns of the first row)."""
    columns = list(next(iter(rows.values()), {}))
    lines = ["| " + " | ".join([first, *columns]) + " |", "| " + " | ".join(["---"] * (len(columns) + 1)) + " |"]
    lines += ["| " + " | ".join([name, *(row.get(c, "–") for c in columns)]) + " |" for name, row in rows.items()]
    return "\n".join(lines)


def ablation_markdown(entry: Mapping[str, Any]) -> list[str]:
    """The `ablation` entry as markdown lines: heading, budget, table, reading."""
    budget = entry.get("budget", {})
    return [f"## Ablation ({len(entry.get('seeds', []))} seeds, {budget.get('max_steps')} steps each; 95 % t "
            "intervals over seeds; differences paired by seed)", "",
            markdown_rows(ablation_rows(entry), "variant"), "", entry.get("reading", "")]


def data_efficiency_markdown(entry: Mapping[str, Any]) -> list[str]:
    """The `data_efficiency` entry as markdown lines: heading, table, reading."""
    budget = entry.get("budget", {})
    return [f"## Data efficiency ({_name(entry['metric'])}; {len(entry.get('seeds', []))} seeds, "
            f"{budget.get('max_steps')} steps at every fraction)", "",
            markdown_rows(data_efficiency_rows(entry), "loss"), "", entry.get("reading", "")]


def ablation_report(metrics: Mapping[str, Any]) -> str:
    """Both sections (those present) of a metrics.json mapping, as markdown text."""
    lines: list[str] = []
    if metrics.get("ablation", {}).get("paired") is not None:
        lines += ablation_markdown(metrics["ablation"]) + [""]
    if metrics.get("data_efficiency", {}).get("table") is not None:
        lines += data_efficiency_markdown(metrics["data_efficiency"]) + [""]
    return "\n".join(lines)


def print_ablation(metrics_path: str | Path) -> None:
    """Print the ablation and data-efficiency tables and readings of a metrics.json (`make ablation`)."""
    path = resolve(metrics_path)
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: no readable metrics.json ({str(e).splitlines()[0]})") from None
    text = ablation_report(metrics)
    if not text:
        raise DataError(f"{path}: no 'ablation' or 'data_efficiency' entry (run make ablation)")
    print(text)


def _display(table) -> None:
    try:
        from IPython.display import display
    except ImportError:
        display = print
    display(table)


def show_ablation(entry: Mapping[str, Any], cfg: Config, name: str = "04_ablation") -> None:
    """Notebook 04: the ablation table, its figure (saved as figures/<name>.png) and its reading."""
    _display(ablation_table(entry))
    show_figure(ablation_figure(entry), cfg, name)
    print(entry["reading"])


def show_data_efficiency(entry: Mapping[str, Any], cfg: Config, name: str = "04_data_efficiency") -> None:
    """Notebook 04: the data-efficiency table, its figure and its reading."""
    _display(data_efficiency_table(entry))
    show_figure(data_efficiency_figure(entry), cfg, name)
    print(entry["reading"])
