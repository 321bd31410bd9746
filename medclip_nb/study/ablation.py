"""The ablation of `make ablation` (issues 12 and 13): variants x seeds at one step budget, and the
data-efficiency runs (clip, medclip, medclip_cosine on nested `train_fraction` subsets).

Every run trains for exactly `max_steps` optimizer steps: no early stopping, and as many epochs
as the budget needs (a small fraction's epoch is short, so its pairs are simply seen more often).
It is evaluated at its last step (last.pth, the budget's end: no model selection on the
validation loss), on the full splits (the linear probe always sees every training label), with
our 5x200 protocol. Per-image bootstrap intervals are skipped there (`bootstrap_off`): the
ablation's intervals are over seeds (seed_stats.py). A run's checkpoints are deleted once it is
evaluated (43 runs of ResNet-18 would fill gigabytes); its metrics.jsonl stays.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from medclip_nb.config import Config
from medclip_nb.data import keep_train_fraction, load_dataset_file
from medclip_nb.errors import ConfigError
from medclip_nb.evaluate import bootstrap_off, json_ready
from medclip_nb.model import load_model
from medclip_nb.paths import resolve
from medclip_nb.study.readings import ablation_reading, data_efficiency_reading
from medclip_nb.study.runs import evaluate_run
from medclip_nb.study.seed_stats import ABLATION_METRICS, REFERENCE, data_efficiency_stats, variant_stats
from medclip_nb.study.tables import headline
from medclip_nb.train import train

if TYPE_CHECKING:  # pandas is imported inside the functions that use it (a heavy import)
    import pandas as pd

# The variants of the ablation: the config keys each one changes.
VARIANTS: dict[str, dict[str, Any]] = {
    "simple": {"model": "simple", "loss": "clip"},  # the seed's SimpleMedCLIPModel
    "clip": {"loss": "clip"},
    "medclip": {"loss": "medclip"},  # MedCLIP's published soft targets
    "medclip_cosine": {"loss": "medclip_cosine"},  # ours: row-normalised cosine targets
    "siglip": {"loss": "siglip"},
}
DATA_EFFICIENCY_LOSSES = ("clip", "medclip", "medclip_cosine")
DATA_EFFICIENCY_SEEDS = 3  # the first 3 ablation seeds train the smaller fractions too
# Numbers kept per run: the ones the tables show, and a few more for whoever reads metrics.json.
RUN_COLUMNS = ("zs_acc_mean", "zs_acc_max", "zs_macro_f1", "zs_auroc", "i2t_R@10", "t2i_R@10", "probe_auroc")


def _quiet(*_args, **_kwargs) -> None:
    return None


def run_config(cfg: Config, changes: Mapping[str, Any], seed: int, fraction: float, folder: Path) -> Config:
    """The Config of one run: `changes` on top of `cfg`, exactly cfg.max_steps steps, no early stop.
    `sentence_labels` applies to the label-aware losses only: the other variants run without it (the
    same sentences are sampled, their labels are unused)."""
    if cfg.max_steps is None:
        raise ConfigError("config key 'max_steps': the ablation needs it (the one step budget of every run)")
    if changes.get("loss", cfg.loss) not in ("medclip", "medclip_cosine"):
        changes = {**dict(changes), "sentence_labels": None}
    return cfg.replace(**{**dict(changes), "seed": int(seed), "train_fraction": float(fraction),
                          "model_save_path": str(folder), "resume_from": None, "num_epochs": cfg.max_steps,
                          "early_stopping_patience": 0, "save_steps": cfg.max_steps})


def train_and_score(run_cfg: Config, *, keep_checkpoints: bool = False) -> dict[str, Any]:
    """Train one run, evaluate its last step (bootstrap off) and return its numbers."""
    started = time.perf_counter()
    result = train(run_cfg, log=_quiet)
    trained = time.perf_counter()
    model, tokenizer, saved_cfg = load_model(result.last_checkpoint, "cpu")
    eval_cfg = saved_cfg.replace(train_fraction=1.0, zeroshot_protocol="ours", probe_label_fractions=[1.0])
    with bootstrap_off():
        metrics, _ = evaluate_run(model, tokenizer, eval_cfg, log=_quiet)
    if not keep_checkpoints:
        for path in Path(result.output_dir).glob("*.pth"):
            path.unlink()
    numbers = headline(metrics)
    return {**{key: numbers.get(key) for key in RUN_COLUMNS}, "n_5x200": metrics["zero_shot_5x200"].get("n"),
            "steps": result.steps, "train_seconds": round(trained - started, 1),
            "eval_seconds": round(time.perf_counter() - trained, 1)}


def planned_runs(seeds: Iterable[int], variants: Mapping[str, Mapping[str, Any]], fractions: Iterable[float] = (),
                 fraction_seeds: int = DATA_EFFICIENCY_SEEDS,
                 losses: Iterable[str] = DATA_EFFICIENCY_LOSSES) -> list[tuple]:
    """(variant, seed, train_fraction) of every run, each once: all variants x seeds at fraction 1,
    then the data-efficiency losses x the other fractions x the first `fraction_seeds` seeds
    (their fraction-1 runs are the ablation's)."""
    seeds = [int(s) for s in seeds]
    plan = [(name, seed, 1.0) for name in variants for seed in seeds]
    for name in losses:
        for fraction in sorted({float(f) for f in fractions} - {1.0}, reverse=True):
            plan += [(name, seed, fraction) for seed in seeds[:fraction_seeds]]
    return plan


def ablation(cfg: Config, seeds, variants=None, *, fractions=(), fraction_seeds: int = DATA_EFFICIENCY_SEEDS,
             losses=DATA_EFFICIENCY_LOSSES, keep_checkpoints: bool = False, log=print) -> "pd.DataFrame":
    """Train and evaluate every run of `planned_runs` at the budget cfg.max_steps; one row per run
    (variant, seed, train_fraction, n_train and the numbers of `RUN_COLUMNS`). Runs are written
    under cfg.model_save_path/ablation/<variant>-f<fraction>-seed<seed>."""
    import pandas as pd

    variants = dict(variants or {name: VARIANTS[name] for name in cfg.ablation_variants})
    smaller = {float(f) for f in fractions} - {1.0}  # the data-efficiency runs (fraction 1 is the ablation's)
    missing = [name for name in losses if smaller and fraction_seeds and name not in variants]
    if missing:
        raise ConfigError(f"ablation: the data-efficiency losses {missing} are not variants of the ablation")
    train_records = load_dataset_file(resolve(cfg.data_path))["train"]
    root = resolve(cfg.model_save_path) / "ablation"
    rows = []
    plan = planned_runs(seeds, variants, fractions, fraction_seeds, losses)
    for i, (name, seed, fraction) in enumerate(plan, 1):
        run_cfg = run_config(cfg, variants[name], seed, fraction, root / f"{name}-f{fraction:g}-seed{seed}")
        n_train = len(keep_train_fraction(train_records, fraction, cfg.train_fraction_seed))
        rows.append({"variant": name, "seed": seed, "train_fraction": fraction, "n_train": n_train,
                     **train_and_score(run_cfg, keep_checkpoints=keep_checkpoints)})
        r = rows[-1]
        log(f"ablation {i}/{len(plan)}: {name}, seed {seed}, {fraction:.0%} of the pairs ({n_train}): zero-shot "
            f"{r['zs_acc_mean']:.3f}, i2t R@10 {r['i2t_R@10']:.3f}, probe AUROC {r['probe_auroc']:.3f} "
            f"({r['train_seconds'] + r['eval_seconds']:.0f} s)")
    return pd.DataFrame(rows)


def _budget(cfg: Config, runs: "pd.DataFrame") -> dict[str, Any]:
    full = runs[runs["train_fraction"] == 1.0]
    return {"max_steps": cfg.max_steps, "batch_size": cfg.batch_size, "image_size": cfg.image_size,
            "vision_backbone": cfg.vision_backbone, "lr": cfg.lr,
            "train_pairs": int(full["n_train"].iloc[0]) if len(full) else None,
            "test_5x200_images": int(full["n_5x200"].iloc[0]) if len(full) else None,
            "zeroshot_protocol": "ours", "evaluated": "last step (last.pth)"}


def _records(runs: "pd.DataFrame") -> list[dict[str, Any]]:
    return [{k: (None if v != v else v) for k, v in row.items()} for row in runs.to_dict(orient="records")]


def ablation_entry(runs: "pd.DataFrame", cfg: Config, reference: str = REFERENCE,
                   metrics=ABLATION_METRICS) -> dict[str, Any]:
    """The `ablation` entry of metrics.json: the budget, the fraction-1 runs, per-variant mean with
    its t interval over seeds, and the paired differences against `reference`, with a reading."""
    full = _records(runs[runs["train_fraction"] == 1.0])
    entry = json_ready({"budget": _budget(cfg, runs), "seeds": sorted({r["seed"] for r in full}),
                        "variants": list(dict.fromkeys(r["variant"] for r in full)), "reference": reference,
                        "metrics": list(metrics), "confidence": 0.95, "runs": full,
                        **variant_stats(full, reference, metrics)})
    entry["reading"] = ablation_reading(entry)
    return entry


def data_efficiency_entry(runs: "pd.DataFrame", cfg: Config, losses=DATA_EFFICIENCY_LOSSES,
                          reference: str = REFERENCE, metric: str = "zs_acc_mean") -> dict[str, Any]:
    """The `data_efficiency` entry: zero-shot accuracy per loss and train_fraction (mean, t interval
    over seeds), paired differences against `reference` per fraction, and a reading. Only the seeds
    every fraction was trained with count (the fraction-1 runs are the ablation's own)."""
    fractions = sorted(set(runs["train_fraction"]))
    seeds = sorted(set.intersection(*(set(runs[runs["train_fraction"] == f]["seed"]) for f in fractions)))
    chosen = runs[runs["variant"].isin(losses) & runs["seed"].isin(seeds)]
    entry = json_ready({"budget": _budget(cfg, runs), "losses": list(losses), "fractions": fractions,
                        "seeds": seeds, "reference": reference, "metric": metric, "confidence": 0.95,
                        "runs": _records(chosen),
                        **data_efficiency_stats(_records(chosen), losses, fractions, reference, metric)})
    entry["reading"] = data_efficiency_reading(entry)
    return entry
