"""The whole evaluation of a model or a saved checkpoint, and its record in metrics.json.

`evaluate_model` runs an `Evaluation` (evaluation.py) of one model; `evaluate_checkpoint`
loads a checkpoint, evaluates it and merges the entry into `out_dir/metrics.json`. Floats in
metrics.json are rounded to evaluation.ROUND_DIGITS and an undefined value (NaN) is written as `null`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from medclip_nb.data import (
    CXRDataset,
    build_datasets,
    build_transforms,
    check_clip_index_rows,
    find_store,
    uses_precomputed_text,
)
from medclip_nb.errors import DataError, UserError
from medclip_nb.evaluate.embeddings import EvaluationArrays
from medclip_nb.evaluate.evaluation import Evaluation
from medclip_nb.evaluate.provenance import run_provenance
from medclip_nb.evaluate.report import confusion_figure, summary_lines
from medclip_nb.files import check_output, read_text_limited, write_json_atomic
from medclip_nb.model import check_eval_memory, load_model, model_config
from medclip_nb.paths import resolve, shown
from medclip_nb.runtime import pick_device


def evaluate_model(model: torch.nn.Module, tokenizer, splits: Mapping[str, Any], cfg, device: torch.device | str, *,
                   seed: int = 0, log=print) -> tuple[dict[str, Any], EvaluationArrays]:
    """Zero-shot (CheXpert-5x200 and per-label), retrieval and linear probe of one model:
    `Evaluation(...).run(splits)` (evaluation.py), which says what `splits` holds and returns."""
    return Evaluation(model, tokenizer, cfg, device, seed=seed, log=log).run(splits)


# ---- metrics.json and checkpoints -------------------------------------------------------------------
MAX_METRICS_BYTES = 256 << 20  # a study's metrics.json is a few MB; a larger file is not one


def read_metrics(path: str | Path, *, what: str = "") -> dict[str, Any]:
    """The JSON object in `path` ({} when there is no file; read in bounded memory); a DataError,
    naming `what` (a flag) where given, when it cannot be used."""
    path = Path(path)
    if not path.exists():
        return {}
    if not path.is_file():
        raise DataError(f"{path}: is not a file; move it away, metrics.json is written there")
    try:
        data = json.loads(read_text_limited(path, MAX_METRICS_BYTES, what=what, error=DataError))
    except DataError as e:
        raise DataError(f"{e}; fix or move it, it was left unchanged") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}); fix or move it, it was left unchanged") from None
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path}: cannot be read ({type(e).__name__}); fix or move it, it was left unchanged") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: must hold a JSON object, got {type(data).__name__}; it was left unchanged")
    return data


def check_evaluation_outputs(out_dir: str | Path) -> Path:
    """`evaluate --out`, before any work: a folder (or one to create, not under a file) whose
    metrics.json, if there is one, can be read and merged into. Returns the folder."""
    out = resolve(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: is a file; metrics.json and figures/ are written into a folder")
    check_output(out / "metrics.json", flag="--out", force=True, error=DataError)
    read_metrics(out / "metrics.json")  # an unusable metrics.json fails now, not after the evaluation
    return out


def merge_metrics(path: str | Path, key: str, entry: Any) -> Path:
    """Put `entry` under `key` in the JSON file at `path`, keeping every other key."""
    path = Path(path)
    data = read_metrics(path)
    data[key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data, sort_keys=True, what="metrics file", error=DataError)
    return path


def checkpoint_name(checkpoint: str | Path) -> str:
    """Key of a checkpoint in metrics.json: '<run folder>/<file stem>', e.g. 'run1/best'."""
    p = Path(checkpoint)
    return f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem


def eval_datasets(cfg, tokenizer) -> tuple[dict[str, Any], list[str]]:
    """Every split of `cfg.data_path` as evaluation sees it: eval transform (no random
    augmentation) and whole reports, images from the config's image store when it has one.

    `data.build_datasets` gives the train split the training augmentation; the linear probe
    needs the plain training images, so that split is rebuilt here with the eval transform.
    Returns (datasets, dataset warnings).
    """
    store = find_store(cfg)
    splits, _records, warnings = build_datasets(cfg, tokenizer, store=store)
    splits = dict(splits)
    train = splits.get("train")
    if train is not None:
        splits["train"] = CXRDataset(
            train.records, root=train.root, transform=build_transforms(cfg, train=False),
            on_bad_image=cfg.on_bad_image, report_sampling="full", store=store, resize_size=cfg.resize_size,
        )
    return splits, warnings


def evaluate_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path = "reports",
    overrides: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    log=print,
) -> dict[str, Any]:
    """Evaluate a saved checkpoint and record the result.

    The checkpoint's model keys are used (model_config), everything else is the defaults with
    `overrides` applied (data_path, which is required, image_root, eval_batch_size, gpu_id, ...).
    Writes `out_dir/metrics.json` (merged under the key `name`, default '<run folder>/<file stem>') and
    `out_dir/figures/zeroshot_confusion_<name>.png`, prints a short table, and returns the
    metrics entry. The 5x200 subset is drawn with seed 0 unless `overrides` sets `seed`.
    """
    overrides = dict(overrides or {})
    if "data_path" not in overrides:
        raise UserError("evaluate: give the dataset to evaluate on (data_path); a checkpoint's own is not read")
    checkpoint = resolve(checkpoint)
    out = check_evaluation_outputs(out_dir)  # before the evaluation, not after it
    model, tokenizer, stored = load_model(checkpoint, "cpu")
    # The checkpoint gives the model keys; batch sizes, workers, paths and the rest come from the caller.
    cfg = model_config(stored.to_dict(), checkpoint).replace(**overrides)
    check_eval_memory(cfg, tokenizer, cfg.eval_batch_size, checkpoint)
    device = pick_device(cfg.gpu_id, log=log)  # the same checked choice as train
    model.to(device)
    log(f"Evaluating {checkpoint} on {device}")

    splits, warnings = eval_datasets(cfg, tokenizer)
    for warning in warnings:
        log(f"warning: {warning}")
    if uses_precomputed_text(cfg):  # clip indices must pick rows of the features file the model read
        check_clip_index_rows(splits, model.text_encoder, resolve(cfg.data_path))
    seed = int(overrides.get("seed", 0))
    metrics, _arrays = evaluate_model(model, tokenizer, splits, cfg, device, seed=seed, log=log)

    name = name or checkpoint_name(checkpoint)
    entry = {
        "checkpoint": shown(checkpoint),
        "model": cfg.model,
        "vision_backbone": cfg.vision_backbone if cfg.model != "simple" else None,
        "text_encoder": cfg.text_encoder if cfg.model != "simple" else None,
        "loss": cfg.loss,
        "data_path": str(cfg.data_path),
        **metrics,
        "provenance": run_provenance(cfg),
    }
    metrics_path = merge_metrics(out / "metrics.json", name, entry)
    figure_path = out / "figures" / f"zeroshot_confusion_{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.png"
    confusions = {m: metrics["zero_shot_5x200"].get(m, {}).get("confusion") for m in ("mean", "max")}
    if any(cm is not None for cm in confusions.values()):
        figure_path.parent.mkdir(parents=True, exist_ok=True)
        figure = confusion_figure(confusions, per_class=cfg.zeroshot_per_class)
        figure.savefig(figure_path, dpi=110, bbox_inches="tight", metadata={"Software": None})
        log(f"Saved figure: {shown(figure_path)}")
    for line in summary_lines(metrics):
        log(line)
    log(f"Saved metrics: {shown(metrics_path)} (key '{name}')")
    return entry
