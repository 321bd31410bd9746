"""Training and evaluation from a notebook, and the entries they leave in reports/metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medclip_nb.config import Config
from medclip_nb.errors import DataError
from medclip_nb.evaluate import eval_datasets, evaluate_model, merge_metrics, read_metrics, run_provenance
from medclip_nb.files import write_json_atomic
from medclip_nb.model import load_model
from medclip_nb.paths import resolve
from medclip_nb.train import train


def evaluate_run(model, tokenizer, cfg: Config, device="cpu", *, log=print):
    """Evaluate a model on every split of cfg.data_path (eval transforms): (metrics, arrays)."""
    splits, _ = eval_datasets(cfg, tokenizer)
    return evaluate_model(model, tokenizer, splits, cfg, device, seed=0, log=log)


def train_and_evaluate(cfg: Config, *, log=print):
    """Train with `cfg` and evaluate its best checkpoint: (TrainResult, metrics, arrays)."""
    result = train(cfg, log=log)
    model, tokenizer, saved_cfg = load_model(result.best_checkpoint or result.last_checkpoint, "cpu")
    metrics, arrays = evaluate_run(model, tokenizer, saved_cfg, log=log)
    return result, metrics, arrays


def update_metrics(cfg: Config, key: str, value: Any) -> Path:
    """Merge one entry into reports_dir/metrics.json, keeping the others (atomic write)."""
    return merge_metrics(resolve(cfg.reports_dir) / "metrics.json", key, value)


# Notebook 04's model entries: the trained model and the baselines config key `baselines` names.
BASELINE_ENTRIES = {"random_init": "random init", "simple": "simple (seed)"}


def record_models(cfg: Config, results: dict[str, Any]) -> Path:
    """Write notebook 04's model entries into reports_dir/metrics.json with the study's provenance
    (config, git commit, date, package versions), and remove the entry of any baseline this run did
    not evaluate and the paired comparisons of an earlier run (so no earlier run's numbers stand
    beside these; `record_comparisons` writes this run's)."""
    path = resolve(cfg.reports_dir) / "metrics.json"
    data = read_metrics(path)
    for key in ["default", *BASELINE_ENTRIES.values(), "paired_comparisons"]:
        data.pop(key, None)
    data.update(results)
    data["provenance"] = run_provenance(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data, sort_keys=True, what="metrics file", error=DataError)
    return path


def record_comparisons(cfg: Config, comparisons: list[dict[str, Any]]) -> Path:
    """The paired comparisons of notebook 04 (`tables.paired_comparison_entries`) under
    'paired_comparisons' in reports_dir/metrics.json, where summary.md reads them."""
    return update_metrics(cfg, "paired_comparisons", comparisons)


def copy_metrics_entry(source: str | Path, target: str | Path, key: str) -> Path:
    """Copy one entry of a metrics.json into another (used by `make ablation`)."""
    source = resolve(source)
    data = json.loads(source.read_text()) if source.is_file() else {}
    if key not in data:
        raise DataError(f"{source}: no '{key}' entry to copy")
    return merge_metrics(resolve(target), key, data[key])
