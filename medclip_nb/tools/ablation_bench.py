"""`python -m medclip_nb bench-ablation`: what one ablation run costs, side by side.

`make ablation` is 43 runs (study/ablation.py); its time is the number of runs times the cost
of one, train plus evaluation. This times that one run, clip at seed 0 on all the pairs at the
config's `max_steps`, exactly as `train_and_score` runs it, once for each loader setting in
`workers`, after one untimed warm-up run, the settings interleaved round by round so that
load from other processes falls on all of them alike. It prints each setting's median train,
evaluation and total seconds, their ratio to the first setting, and what the planned runs
(43 with params/ablation.yaml) come to at that median.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any, Iterable

from medclip_nb.config import Config
from medclip_nb.study import DATA_EFFICIENCY_LOSSES, VARIANTS, planned_runs, run_config, train_and_score


def planned_run_count(cfg: Config) -> int:
    """How many runs `make ablation` trains with `cfg` (notebook 04's plan)."""
    return len(planned_runs(cfg.ablation_seeds, VARIANTS, cfg.data_efficiency_fractions, losses=DATA_EFFICIENCY_LOSSES))


def time_ablation_run(cfg: Config, workers: Iterable[int] = (0, 2), rounds: int = 2, *,
                      folder: Path | None = None) -> list[dict[str, Any]]:
    """One row per loader setting: its median train / eval / total seconds over `rounds` runs."""
    workers = [int(w) for w in workers]
    root = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="bench_ablation_"))
    times: dict[int, list[dict[str, float]]] = {w: [] for w in workers}

    def one_run(w: int, name: str) -> dict[str, Any]:
        return train_and_score(run_config(cfg.replace(num_workers=w), VARIANTS["clip"], 0, 1.0, root / name))

    try:
        # Untimed: the first run in a process also starts the linear probe's worker pool
        # (joblib), which the notebook's 43 runs share; it would fall on one setting only.
        one_run(workers[0], "warm-up")
        for round_number in range(rounds):
            for w in workers:
                numbers = one_run(w, f"workers{w}-round{round_number}")
                times[w].append({"train": numbers["train_seconds"], "eval": numbers["eval_seconds"],
                                 "steps": numbers["steps"]})
    finally:
        if folder is None:
            shutil.rmtree(root, ignore_errors=True)
    rows = []
    for w in workers:
        train = statistics.median(t["train"] for t in times[w])
        evaluation = statistics.median(t["eval"] for t in times[w])
        rows.append({"num_workers": w, "steps": times[w][0]["steps"], "rounds": rounds, "train_s": train,
                     "eval_s": evaluation, "run_s": round(train + evaluation, 1)})
    return rows


def format_rows(rows: list[dict[str, Any]], runs: int) -> str:
    """The table `bench-ablation` prints."""
    first = rows[0]["run_s"]
    lines = [f"{'num_workers':>11} {'steps':>5} {'train s':>8} {'eval s':>7} {'run s':>6} {'x first':>7} "
             f"{f'{runs} runs, min':>13}"]
    for r in rows:
        lines.append(f"{r['num_workers']:>11} {r['steps']:>5} {r['train_s']:>8.1f} {r['eval_s']:>7.1f} "
                     f"{r['run_s']:>6.1f} {r['run_s'] / first:>7.2f} {runs * r['run_s'] / 60:>13.1f}")
    lines.append(f"(medians over {rows[0]['rounds']} interleaved rounds of clip, seed 0, all pairs; "
                 f"the last column leaves out notebook 03 and the phantom)")
    return "\n".join(lines)


def main_bench_ablation(cfg: Config, workers: Iterable[int], rounds: int) -> list[dict[str, Any]]:
    rows = time_ablation_run(cfg, workers, rounds)
    print(format_rows(rows, planned_run_count(cfg)))
    return rows
