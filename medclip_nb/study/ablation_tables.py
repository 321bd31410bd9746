"""The ablation's tables, from its metrics.json entries: pandas for notebook 04 (`show_ablation`,
`show_data_efficiency`: tables, figure and reading in one cell), markdown for summary.md and for
what `make ablation` prints at its end (`print_ablation`). The data-efficiency tables: end points
(arms x fractions), the two Holm families of paired comparisons (each row with its Holm p and the
smallest difference it could resolve), the learning curves and the steps to reach the target.

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
from medclip_nb.study.figures import ablation_figure, learning_curves_figure, show_figure
from medclip_nb.study.readings import (
    METRIC_NAMES,
    p_text,
    reach_text,
    resolvable_text,
    signed_with_interval,
    value_with_interval,
    verdict,
)
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
            row[f"{_name(m)} - {reference}"] = (
                "(reference)" if paired is None else
                f"{signed_with_interval(paired[m])} ({_short(verdict(paired[m]))}, "
                f"Holm p {p_text(paired[m].get('p_holm'))})")
        rows[variant] = row
    return rows


def _short(text: str) -> str:
    """'resolved: higher' stays; 'not resolved: Holm-adjusted p >= 0.05' -> 'not resolved'."""
    return text if text.startswith("resolved") else text.split(":")[0]


def data_efficiency_rows(entry: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """{arm: {'10% (67 pairs)': 'end point mean [t interval]', ...}} (equal steps)."""
    keys = [fraction_key(f) for f in entry["fractions"]]
    return {arm: {_fraction_column(k, entry["table"][arm][k]): value_with_interval(entry["table"][arm][k])
                  for k in keys} for arm in entry["arms"]}


def comparison_rows(comparisons) -> dict[str, dict[str, str]]:
    """One row per paired comparison of a Holm family: difference [95 % t CI], p, Holm p, verdict,
    the smallest difference the family could resolve there, and the seeds."""
    rows = {}
    for c in comparisons:
        name = c["comparison"] if "from_fraction" in c else f"{c['comparison']} @ {float(c['fraction']):.0%}"
        rows[name] = {
            "difference [95% CI]": signed_with_interval(c), "p": p_text(c.get("p")),
            f"Holm p (m={c.get('m')})": p_text(c.get("p_holm")), "verdict": _short(verdict(c)),
            "smallest resolvable": "n/a" if c.get("smallest_resolvable") is None else f"{c['smallest_resolvable']:.3f}",
            "seeds": str(c.get("n"))}
    return rows


def curve_rows(entry: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """{'arm @ 10%': {'step 100': 'mean [t interval]', ...}}: the learning curves, zero-shot accuracy."""
    rows = {}
    same = entry.get("same_at_full") or {}
    for arm in entry["arms"]:
        for f in entry["fractions"]:
            if float(f) == 1.0 and arm in same:  # its plain arm's runs: nothing left out to decouple
                continue
            cell = entry["curves"][arm][fraction_key(f)]
            rows[f"{arm} @ {float(f):.0%}"] = {f"step {s}": value_with_interval(p)
                                                for s, p in zip(cell["steps"], cell["points"])}
    return rows


def reach_rows(entry: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """{arm: {'10% (67 pairs)': '140 (5/5)'}}: the median steps to reach the target accuracy, seeds that did."""
    keys, budget = [fraction_key(f) for f in entry["fractions"]], entry.get("budget", {}).get("max_steps")
    reach = entry.get("steps_to_reach") or {}
    return {arm: {_fraction_column(k, entry["table"][arm][k]): reach_text(reach[arm][k], budget) for k in keys}
            for arm in entry["arms"] if arm in reach}


def _fraction_column(key: str, row: Mapping[str, Any]) -> str:
    n = row.get("n_train")
    return f"{float(key):.0%}" + (f" ({n} pairs)" if n is not None else "")


def ablation_table(entry: Mapping[str, Any]) -> "pd.DataFrame":
    """Notebook table of `ablation_rows` (variants as rows)."""
    import pandas as pd

    return pd.DataFrame(ablation_rows(entry)).T


def data_efficiency_table(entry: Mapping[str, Any]) -> "pd.DataFrame":
    """Notebook table of `data_efficiency_rows`: arms as rows, fractions as columns."""
    import pandas as pd

    return pd.DataFrame(data_efficiency_rows(entry)).T


def frame(rows: Mapping[str, Mapping[str, str]]) -> "pd.DataFrame":
    """Rows of {name: {column: text}} as a notebook table."""
    import pandas as pd

    return pd.DataFrame(rows).T


def markdown_rows(rows: Mapping[str, Mapping[str, str]], first: str) -> str:
    """A GitHub-markdown table of {row name: {column: text}} (the columns of the first row)."""
    columns = list(next(iter(rows.values()), {}))
    lines = ["| " + " | ".join([first, *columns]) + " |", "| " + " | ".join(["---"] * (len(columns) + 1)) + " |"]
    lines += ["| " + " | ".join([name, *(row.get(c, "–") for c in columns)]) + " |" for name, row in rows.items()]
    return "\n".join(lines)


def ablation_markdown(entry: Mapping[str, Any]) -> list[str]:
    """The `ablation` entry as markdown lines: heading, budget, table, reading."""
    budget = entry.get("budget", {})
    m = sum(len(by_metric) for by_metric in entry["paired"].values())
    return [f"## Ablation ({len(entry.get('seeds', []))} seeds, {budget.get('max_steps')} steps each; 95 % t "
            f"intervals over seeds; differences paired by seed, Holm over the table's {m} comparisons)", "",
            markdown_rows(ablation_rows(entry), "variant"), "", entry.get("reading", "")]


def data_efficiency_markdown(entry: Mapping[str, Any]) -> list[str]:
    """The `data_efficiency` entry as markdown lines: end points, both comparison tables, the learning
    curves, the steps to reach the target, and the reading."""
    budget, name = entry.get("budget", {}), _name(entry["metric"])
    seeds = len(entry.get("seeds", []))
    lines = [f"## Data efficiency: end points ({name}, mean [95 % t CI] over {seeds} seeds; every run "
             f"{budget.get('max_steps')} steps: arms compared at equal steps)", "",
             markdown_rows(data_efficiency_rows(entry), "arm"), "",
             f"### Against {entry['reference']}, paired by seed (Holm over these "
             f"{len(entry['endpoint_comparisons'])}; smallest resolvable: "
             f"{resolvable_text(entry['endpoint_comparisons'])})",
             "", markdown_rows(comparison_rows(entry["endpoint_comparisons"]), "comparison"), ""]
    if entry["claim_comparisons"]:
        lines += [f"### MedCLIP's claim: what the decoupled items add, and the gap's change with fewer pairs "
                  f"(Holm over these {len(entry['claim_comparisons'])}; smallest resolvable: "
                  f"{resolvable_text(entry['claim_comparisons'])})", "",
                  markdown_rows(comparison_rows(entry["claim_comparisons"]), "comparison"), ""]
    lines += [f"### Learning curves ({name}, mean [95 % t CI] over {seeds} seeds, one run per seed scored at its "
              "checkpoints)", "", markdown_rows(curve_rows(entry), "arm @ share of pairs"), ""]
    if entry.get("steps_to_reach"):
        lines += [f"### Steps to reach {name} {entry['target_accuracy']:.3f} ({entry['target_source']}; median over "
                  "seeds, seeds that reached it)", "", markdown_rows(reach_rows(entry), "arm"), ""]
    return lines + [entry.get("reading", "")]


def ablation_report(metrics: Mapping[str, Any]) -> str:
    """Both sections (those present) of a metrics.json mapping, as markdown text."""
    lines: list[str] = []
    if metrics.get("ablation", {}).get("paired") is not None:
        lines += ablation_markdown(metrics["ablation"]) + [""]
    if metrics.get("data_efficiency", {}).get("curves") is not None:
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
    print(time_line(metrics))


def time_line(metrics: Mapping[str, Any]) -> str:
    """Where the runs' time went, from their own seconds: training, full evaluations, curve points."""
    runs = {(r["variant"], r["seed"], r["train_fraction"]): r for key in ("ablation", "data_efficiency")
            for r in (metrics.get(key) or {}).get("runs", [])}.values()
    parts = {name: sum(float(r.get(f"{name}_seconds") or 0) for r in runs) for name in ("train", "eval", "curve")}
    jobs = max(int(((metrics.get(key) or {}).get("budget") or {}).get("ablation_jobs") or 1)
               for key in ("ablation", "data_efficiency"))
    together = f"; {jobs} ran at once, so they took about 1/{jobs} of that in wall time" if jobs > 1 else ""
    return (f"time of the {len(runs)} runs, summed over the runs: {sum(parts.values()) / 60:.1f} min = training "
            f"{parts['train'] / 60:.1f} + end-point scoring {parts['eval'] / 60:.1f} + curve points "
            f"{parts['curve'] / 60:.1f}{together} (the rest of the wall time: the phantom, notebook 03, notebook 04's "
            f"default-model evaluation)")


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


def show_data_efficiency(entry: Mapping[str, Any], cfg: Config, name: str = "04_learning_curves") -> None:
    """Notebook 04: the end-point table, the comparisons, the learning curves (figure, saved as
    figures/<name>.png), the steps to reach the target, and the reading."""
    print(f"End points at equal steps ({entry['budget'].get('max_steps')} each), mean [95 % t CI] over "
          f"{len(entry['seeds'])} seeds:")
    _display(data_efficiency_table(entry))
    print(f"Against {entry['reference']} (Holm over {len(entry['endpoint_comparisons'])}):")
    _display(frame(comparison_rows(entry["endpoint_comparisons"])))
    if entry["claim_comparisons"]:
        print(f"Decoupled items and the gap's change with fewer pairs (Holm over {len(entry['claim_comparisons'])}):")
        _display(frame(comparison_rows(entry["claim_comparisons"])))
    show_figure(learning_curves_figure(entry), cfg, name)
    if entry.get("steps_to_reach"):
        print(f"Steps to reach {entry['target_accuracy']:.3f} ({entry['target_source']}):")
        _display(frame(reach_rows(entry)))
    print(entry["reading"])
