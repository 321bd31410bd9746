"""`python -m medclip_nb bench-ablation`: what `make ablation`'s runs cost, side by side, and what its plan
comes to.

`make ablation` is the runs of study/ablation.py's plan; its time is, kind by kind, the number of
runs times the cost of one, train plus scoring. This times one run of each kind in the plan, exactly
as `study.ablation` runs it (seed 0, the config's `max_steps` and curve points), once for each
loader setting in `workers`, after one untimed warm-up run, round by round with the kinds and
settings interleaved so that load from other processes falls on all of them alike. The kinds:

- `all pairs`: a plain run on all the pairs, full evaluation (the ablation table's metrics);
- `fewer pairs`: a plain run at the smallest fraction, zero-shot only;
- `decoupled`: a decoupled arm at the smallest fraction (its step also carries unpaired items);
- `simple` / `siglip` when `ablation_variants` names them.

It prints each kind's median train, scoring (evaluation + curve points) and total seconds, its
ratio to the first, the plan's run count of that kind, and what the plan's runs come to (without
the phantom, notebook 03 and notebook 04's default-model evaluation).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any, Iterable

from medclip_nb.config import Config
from medclip_nb.study import DATA_EFFICIENCY_ARMS, VARIANTS, planned_runs, run_config, train_and_score

DECOUPLED_ARMS = ("medclip+decoupled", "medclip_cosine+decoupled")


def run_kind(name: str, fraction: float) -> str:
    """The cost kind of a planned run."""
    if name in ("simple", "siglip"):
        return name
    if name in DECOUPLED_ARMS:
        return "decoupled"
    return "all pairs" if fraction == 1.0 else "fewer pairs"


def plan_counts(cfg: Config) -> dict[str, int]:
    """{kind: runs of that kind in `make ablation`'s plan with `cfg`} (notebook 04's plan)."""
    variants = {v: VARIANTS[v] for v in cfg.ablation_variants}
    counts: dict[str, int] = {}
    for name, _seed, fraction in planned_runs(cfg.ablation_seeds, variants, cfg.data_efficiency_fractions,
                                              DATA_EFFICIENCY_ARMS):
        counts[run_kind(name, fraction)] = counts.get(run_kind(name, fraction), 0) + 1
    return counts


def planned_run_count(cfg: Config) -> int:
    """How many runs `make ablation` trains with `cfg`."""
    return sum(plan_counts(cfg).values())


def _example(kind: str, cfg: Config) -> tuple[dict[str, Any], float]:
    """(config changes, fraction) of one run of `kind`."""
    small = min(float(f) for f in cfg.data_efficiency_fractions)
    return {"all pairs": (VARIANTS["clip"], 1.0), "fewer pairs": (VARIANTS["medclip"], small),
            "decoupled": ({**VARIANTS["medclip"], "unpaired_sources": ["images", "texts"],
                           "unpaired_pool": "train_fraction_rest", "sentence_labels": "auto"}, small),
            "simple": (VARIANTS["simple"], 1.0), "siglip": (VARIANTS["siglip"], 1.0)}[kind]


def time_ablation_run(cfg: Config, workers: Iterable[int] = (0,), rounds: int = 2, *,
                      folder: Path | None = None) -> list[dict[str, Any]]:
    """One row per (kind, loader setting): its median train / scoring / total seconds over `rounds` runs."""
    workers, kinds = [int(w) for w in workers], list(plan_counts(cfg)) or ["all pairs"]
    root = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="bench_ablation_"))
    times: dict[tuple[str, int], list[dict[str, float]]] = {(k, w): [] for k in kinds for w in workers}

    def one_run(kind: str, w: int, name: str) -> dict[str, Any]:
        changes, fraction = _example(kind, cfg)
        return train_and_score(run_config(cfg.replace(num_workers=w), changes, 0, fraction, root / name),
                               full_evaluation=fraction == 1.0)

    try:
        # Untimed: the first run in a process also starts the linear probe's worker pool (joblib) and
        # builds the 5x200 images every later run shares; it would fall on one kind only.
        one_run(kinds[0], workers[0], "warm-up")
        for round_number in range(rounds):
            for kind in kinds:
                for w in workers:
                    numbers = one_run(kind, w, f"{kind.replace(' ', '_')}-workers{w}-round{round_number}")
                    times[(kind, w)].append({"train": numbers["train_seconds"], "steps": numbers["steps"],
                                             "score": numbers["eval_seconds"] + numbers["curve_seconds"]})
    finally:
        if folder is None:
            shutil.rmtree(root, ignore_errors=True)
    counts, rows = plan_counts(cfg), []
    for (kind, w), runs in times.items():
        train = statistics.median(t["train"] for t in runs)
        score = statistics.median(t["score"] for t in runs)
        rows.append({"kind": kind, "num_workers": w, "steps": runs[0]["steps"], "rounds": rounds, "train_s": train,
                     "score_s": score, "run_s": round(train + score, 1), "planned": counts.get(kind, 0)})
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The table `bench-ablation` prints, and the plan's total per loader setting."""
    first = rows[0]["run_s"]
    lines = [f"{'kind':>12} {'num_workers':>11} {'steps':>5} {'train s':>8} {'score s':>8} {'run s':>6} "
             f"{'x first':>7} {'planned':>7} {'min':>6}"]
    for r in rows:
        lines.append(f"{r['kind']:>12} {r['num_workers']:>11} {r['steps']:>5} {r['train_s']:>8.1f} "
                     f"{r['score_s']:>8.1f} {r['run_s']:>6.1f} {r['run_s'] / first:>7.2f} {r['planned']:>7} "
                     f"{r['planned'] * r['run_s'] / 60:>6.1f}")
    for w in dict.fromkeys(r["num_workers"] for r in rows):
        total = sum(r["planned"] * r["run_s"] for r in rows if r["num_workers"] == w)
        runs = sum(r["planned"] for r in rows if r["num_workers"] == w)
        lines.append(f"num_workers {w}: the plan's {runs} runs come to {total / 60:.1f} min")
    lines.append(f"(medians over {rows[0]['rounds']} interleaved rounds, seed 0; the totals leave out the "
                 f"phantom, notebook 03 and notebook 04's evaluation of the default model)")
    return "\n".join(lines)


def main_bench_ablation(cfg: Config, workers: Iterable[int], rounds: int) -> list[dict[str, Any]]:
    rows = time_ablation_run(cfg, workers, rounds)
    print(format_rows(rows))
    return rows
