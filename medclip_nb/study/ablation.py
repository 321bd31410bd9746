"""The runs of `make ablation` (issues 12, 13 and 23): the model/loss variants on all the pairs, and
the data-efficiency grid of arms x train fractions, every run with every seed and one step budget.

Every run trains for exactly `max_steps` optimizer steps (no early stopping; as many epochs as
the budget needs) and writes checkpoints at the learning-curve points (`ablation_curve_points`
x max_steps, config key `checkpoint_steps`; no per-epoch checkpoints). Each curve point is scored
by the 5x200 zero-shot accuracy (evaluate.ZeroShotPoints: the same images and prompts as the full
evaluation); the last step (last.pth) gets the full evaluation on the full splits (the linear
probe always sees every training label), with our 5x200 protocol. Per-image bootstrap intervals
are skipped (`bootstrap_off`): the ablation's intervals are over seeds (seed_stats.py). A run's
checkpoints are deleted once it is scored; its metrics.jsonl stays.

The arms of the grid are named by what they use (`ARM_USES`): `clip`, `medclip` and
`medclip_cosine` on the pairs of the fraction; `medclip+decoupled` and `medclip_cosine+decoupled`
on the same pairs plus the training patients the fraction leaves out, as image-only and text-only
items (`unpaired_pool: train_fraction_rest`, data/decoupled.py). At fraction 1 nothing is left
out, so a decoupled arm there is its plain arm's run (`SAME_AT_FULL`), not trained twice.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from medclip_nb.config import Config
from medclip_nb.data import decoupled_pool, load_dataset_file, split_train_fraction
from medclip_nb.errors import ConfigError, TrainingError
from medclip_nb.evaluate import ZeroShotPoints, bootstrap_off, json_ready, top_class_share
from medclip_nb.model import load_model
from medclip_nb.paths import resolve
from medclip_nb.runtime import available_cores
from medclip_nb.study.runs import evaluate_run
from medclip_nb.study.tables import headline
from medclip_nb.train import train

if TYPE_CHECKING:  # pandas is imported inside the functions that use it (a heavy import)
    import pandas as pd

# The variants of the model/loss ablation (all the pairs): the config keys each one changes.
VARIANTS: dict[str, dict[str, Any]] = {
    "simple": {"model": "simple", "loss": "clip"},  # the seed's SimpleMedCLIPModel
    "clip": {"loss": "clip"},
    "medclip": {"loss": "medclip"},  # MedCLIP's published soft targets
    "medclip_cosine": {"loss": "medclip_cosine"},  # ours: row-normalised cosine targets
    "siglip": {"loss": "siglip"},
}
# MedCLIP's decoupling on the same data: the left-out training patients as unpaired items.
DECOUPLED: dict[str, Any] = {"unpaired_sources": ["images", "texts"], "unpaired_pool": "train_fraction_rest",
                             "sentence_labels": "auto"}
# The arms of the data-efficiency grid, trained at every fraction of data_efficiency_fractions.
ARMS: dict[str, dict[str, Any]] = {
    "clip": VARIANTS["clip"],
    "medclip": VARIANTS["medclip"],
    "medclip+decoupled": {**VARIANTS["medclip"], **DECOUPLED},
    "medclip_cosine": VARIANTS["medclip_cosine"],
    "medclip_cosine+decoupled": {**VARIANTS["medclip_cosine"], **DECOUPLED},
}
ARM_USES = {
    "clip": "the pairs; CLIP loss (one positive per row)",
    "medclip": "the pairs; MedCLIP's published soft targets from the study labels",
    "medclip+decoupled": "the pairs + the left-out patients' images (image-only) and report sentences (text-only, "
                         "sentence labels); MedCLIP's published soft targets",
    "medclip_cosine": "the pairs; our cosine soft targets from the study labels",
    "medclip_cosine+decoupled": "the pairs + the left-out patients' images and report sentences; our cosine soft "
                                "targets",
}
SAME_AT_FULL = {"medclip+decoupled": "medclip", "medclip_cosine+decoupled": "medclip_cosine"}
DATA_EFFICIENCY_ARMS = tuple(ARMS)
# Numbers kept per run: the ones the tables show, and a few more for whoever reads metrics.json.
RUN_COLUMNS = ("zs_acc_mean", "zs_acc_max", "zs_macro_f1", "zs_auroc", "i2t_R@10", "t2i_R@10", "probe_auroc")


def _quiet(*_args, **_kwargs) -> None:
    return None


def _rounded(value: float | None) -> float | None:
    """A zero-shot accuracy at metrics.json's precision (evaluation.ROUND_DIGITS), as the full evaluation gives it."""
    return None if value is None else json_ready(value)


def curve_steps(cfg: Config) -> list[int]:
    """The optimizer steps of the learning-curve points: ablation_curve_points x max_steps, and max_steps."""
    if cfg.max_steps is None:
        raise ConfigError("config key 'max_steps': the ablation needs it (the one step budget of every run)")
    points = {max(1, round(float(p) * cfg.max_steps)) for p in cfg.ablation_curve_points} | {cfg.max_steps}
    return sorted(points)


def run_config(cfg: Config, changes: Mapping[str, Any], seed: int, fraction: float, folder: Path) -> Config:
    """The Config of one run: `changes` on top of `cfg`, exactly cfg.max_steps steps, no early stop,
    step_<N>.pth at the curve points before the last (last.pth is the last), no epoch checkpoints and
    one validation (at the end: nothing reads the validation loss) without its zero-shot extras.
    `sentence_labels` applies to the label-aware losses only: the other runs go without it (the same
    sentences are sampled, their labels are unused)."""
    steps = curve_steps(cfg)
    if changes.get("loss", cfg.loss) not in ("medclip", "medclip_cosine"):
        changes = {**dict(changes), "sentence_labels": None}
    return cfg.replace(**{**dict(changes), "seed": int(seed), "train_fraction": float(fraction),
                          "model_save_path": str(folder), "resume_from": None, "num_epochs": cfg.max_steps,
                          "early_stopping_patience": 0, "save_steps": cfg.max_steps,
                          "checkpoint_steps": steps[:-1], "epoch_checkpoints": False,
                          "epoch_validation": False, "eval_steps": cfg.max_steps, "val_metrics_samples": 0})


def train_and_score(run_cfg: Config, *, full_evaluation: bool = True, keep_checkpoints: bool = False) -> dict[str, Any]:
    """Train one run, score its curve points (5x200 zero-shot) and, with `full_evaluation`, evaluate its
    last step on every metric (bootstrap off; else its last step is scored like the curve points, and
    the other metrics are None); returns its numbers, `curve_steps` and `curve` (zero-shot accuracy,
    prompt mean, per step; the last is the run's zs_acc_mean either way)."""
    started = time.perf_counter()
    result = train(run_cfg, log=_quiet)
    trained = time.perf_counter()
    model, tokenizer, saved_cfg = load_model(result.last_checkpoint, "cpu")
    # (localisation off: the ablation's tables compare the headline numbers over seeds)
    eval_cfg = saved_cfg.replace(train_fraction=1.0, zeroshot_protocols=["ours"], probe_label_fractions=[1.0],
                                 unpaired_sources=[], unpaired_pool="splits", sentence_labels=None,
                                 localisation_images=0)
    points = ZeroShotPoints(eval_cfg, tokenizer)
    if full_evaluation:
        with bootstrap_off():
            metrics, _ = evaluate_run(model, tokenizer, eval_cfg, log=_quiet)
        numbers, n_5x200 = headline(metrics), metrics["zero_shot_5x200"].get("n")
        top_share = top_class_share((metrics["zero_shot_5x200"].get("mean") or {}).get("confusion"))
    else:
        scored = points.model_accuracy(model)
        numbers, n_5x200, top_share = {"zs_acc_mean": _rounded(scored["mean"])}, len(points.rows), scored["top_share"]
    evaluated = time.perf_counter()
    curve = {step: _rounded(points.accuracy(path)["mean"]) for step, path in sorted(result.step_checkpoints.items())}
    curve[result.steps] = numbers.get("zs_acc_mean")
    if not keep_checkpoints:
        for path in Path(result.output_dir).glob("*.pth"):
            path.unlink()
    return {**{key: numbers.get(key) for key in RUN_COLUMNS}, "n_5x200": n_5x200, "zs_top_share": top_share,
            "steps": result.steps, "curve_steps": list(curve), "curve": list(curve.values()),
            "train_seconds": round(trained - started, 1), "eval_seconds": round(evaluated - trained, 1),
            "curve_seconds": round(time.perf_counter() - evaluated, 1)}


def planned_runs(seeds: Iterable[int], variants: Mapping[str, Mapping[str, Any]], fractions: Iterable[float] = (),
                 arms: Iterable[str] = DATA_EFFICIENCY_ARMS) -> list[tuple]:
    """(name, seed, train_fraction) of every run, each once: every variant x seed on all the pairs,
    then every arm x fraction x seed not trained yet (a decoupled arm at fraction 1 is its plain
    arm's run, `SAME_AT_FULL`)."""
    seeds = [int(s) for s in seeds]
    plan = [(name, seed, 1.0) for name in variants for seed in seeds]
    for name in arms:
        for fraction in sorted({float(f) for f in fractions} | ({1.0} if fractions else set()), reverse=True):
            if fraction == 1.0 and (name in variants or name in SAME_AT_FULL):
                continue
            plan += [(name, seed, fraction) for seed in seeds]
    return plan


def run_changes(name: str, variants: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
    """The config keys run `name` changes (a variant's or an arm's)."""
    if name in variants:
        return variants[name]
    if name in ARMS:
        return ARMS[name]
    raise ConfigError(f"ablation: no variant or arm named {name!r} (arms: {', '.join(ARMS)})")


def ablation(cfg: Config, seeds, variants=None, *, fractions=(), arms=DATA_EFFICIENCY_ARMS,
             keep_checkpoints: bool = False, log=print) -> "pd.DataFrame":
    """Train and score every run of `planned_runs` at the budget cfg.max_steps; one row per run, in
    the plan's order (variant, seed, train_fraction, n_train, n_unpaired_images / _texts, the numbers
    of `RUN_COLUMNS`, the curve and zs_top_share). `variants` defaults to those of
    cfg.ablation_variants. A run on all the pairs gets the full evaluation (the ablation table's
    metrics), a run on fewer only the zero-shot accuracy the data-efficiency tables read. Runs are
    written under cfg.model_save_path/ablation/<name>-f<fraction>-seed<seed>; cfg.ablation_jobs of
    them train at once, each in its own process (`run_all`)."""
    import pandas as pd

    variants = dict({v: VARIANTS[v] for v in cfg.ablation_variants} if variants is None else variants)
    train_records = load_dataset_file(resolve(cfg.data_path))["train"]
    root = resolve(cfg.model_save_path) / "ablation"
    threads = {"cpu_threads": max(1, available_cores() // cfg.ablation_jobs)} \
        if cfg.ablation_jobs > 1 and cfg.cpu_threads is None else {}  # the cores shared out, one share a run
    plan, described, tasks = planned_runs(seeds, variants, fractions, arms if fractions else ()), [], []
    for name, seed, fraction in plan:
        changes = run_changes(name, variants)
        folder = root / f"{name.replace('+', '_')}-f{fraction:g}-seed{seed}"
        kept, rest = split_train_fraction(train_records, fraction, cfg.train_fraction_seed)
        unpaired = decoupled_pool(rest, ["images", "texts"], {}).splits \
            if changes.get("unpaired_pool") == "train_fraction_rest" else {}
        described.append({"variant": name, "seed": seed, "train_fraction": fraction, "n_train": len(kept),
                          **{f"n_unpaired_{k[6:]}": len(unpaired.get(k, ())) for k in ("train_images", "train_texts")}})
        # fraction 1: the full evaluation (the ablation table reads every metric)
        tasks.append((run_config(cfg, changes, seed, fraction, folder).replace(**threads), fraction == 1.0))
    rows: list[dict[str, Any]] = [{} for _ in plan]
    for done, (i, numbers) in enumerate(run_all(tasks, cfg.ablation_jobs, keep_checkpoints), 1):
        rows[i] = r = {**described[i], **numbers}
        extra = f", i2t R@10 {r['i2t_R@10']:.3f}, probe AUROC {r['probe_auroc']:.3f}" if tasks[i][1] else ""
        seconds = r["train_seconds"] + r["eval_seconds"] + r["curve_seconds"]
        log(f"ablation {done}/{len(plan)}: {r['variant']}, seed {r['seed']}, {r['train_fraction']:.0%} of the pairs "
            f"({r['n_train']}): zero-shot " + " -> ".join(f"{a:.3f}" for a in r["curve"])
            + f" at steps {r['curve_steps']}{extra} ({seconds:.0f} s)")
    return pd.DataFrame(rows)


def run_all(tasks: list[tuple[Config, bool]], jobs: int = 1, keep_checkpoints: bool = False):
    """Yield (index, train_and_score's numbers) for each (run config, full evaluation) of `tasks` as
    it finishes: one after another in this process with `jobs` 1, else in `jobs` worker processes
    (spawned: a fresh interpreter, so a notebook's kernel state never leaks in). Every run is seeded
    by its config alone, so its numbers do not depend on which process trained it or when. A run
    that fails stops the rest (the ones not started are cancelled) and its error is raised here."""
    if jobs <= 1:
        for i, (run_cfg, full) in enumerate(tasks):
            yield i, train_and_score(run_cfg, full_evaluation=full, keep_checkpoints=keep_checkpoints)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(train_and_score, run_cfg, full_evaluation=full, keep_checkpoints=keep_checkpoints): i
                   for i, (run_cfg, full) in enumerate(tasks)}
        for future in as_completed(futures):
            try:
                numbers = future.result()
            except BrokenProcessPool:
                raise TrainingError(f"ablation: the process training {tasks[futures[future]][0].model_save_path} "
                                    "died (killed, or out of memory); the runs that finished are in their "
                                    "folders") from None
            yield futures[future], numbers
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
