"""The whole evaluation of a model or a saved checkpoint, and its record in metrics.json.

`evaluate_model` embeds the splits (embeddings.py), scores them (metrics.py), runs the
CheXpert-5x200 zero-shot protocols `cfg.zeroshot_protocol` asks for (ours, MedCLIP's in
zeroshot_paper.py, or both) and returns plain JSON data; `evaluate_checkpoint` loads a
checkpoint, evaluates it and merges the entry into `out_dir/metrics.json`. Floats in
metrics.json are rounded to ROUND_DIGITS and an undefined value (NaN) is written as `null`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medclip_nb.data import CXRDataset, build_datasets, build_transforms, check_clip_index_rows, uses_precomputed_text
from medclip_nb.data.store import find_store
from medclip_nb.errors import DataError
from medclip_nb.evaluate.embeddings import (
    EvaluationArrays,
    compute_embeddings,
    encode_texts,
    loader_for,
    model_logit_scale,
)
from medclip_nb.evaluate.intervals import macro_f1_interval, mean_interval
from medclip_nb.evaluate.metrics import (
    accuracy,
    confusion,
    linear_probe,
    linear_probe_fractions,
    macro_f1,
    multilabel_auroc,
    retrieval_metrics,
    select_5x200,
    zero_shot_classify,
    zero_shot_multilabel,
)
from medclip_nb.evaluate.report import confusion_figure, summary_lines
from medclip_nb.evaluate.zeroshot_paper import zero_shot_5x200_paper
from medclip_nb.files import write_json_atomic
from medclip_nb.labels import CHEXPERT_LABELS, COMPETITION_TASKS
from medclip_nb.model.checkpoint import load_model
from medclip_nb.paths import resolve
from medclip_nb.prompts import class_prompts, label_prompt_pairs
from medclip_nb.runtime import pick_device

ROUND_DIGITS = 4


def json_ready(obj: Any, digits: int = ROUND_DIGITS) -> Any:
    """Plain JSON data: floats rounded, NaN/inf -> None, NumPy scalars/arrays -> Python."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist(), digits)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return round(float(obj), digits) if math.isfinite(obj) else None
    return obj


# ---- zero-shot ------------------------------------------------------------------------------------
def _zero_shot_5x200(model, tokenizer, image_emb, rows, classes, batch_size, device, amp, arrays, seed=0) -> dict:
    """CheXpert-5x200: prompt-ensemble classification of the selected rows into the five
    competition classes, in both ensemble modes."""
    prompts = class_prompts(COMPETITION_TASKS)
    arrays.prompts = prompts
    class_embs = [encode_texts(model, tokenizer, prompts[t], device, batch_size, amp=amp) for t in COMPETITION_TASKS]
    result: dict[str, Any] = {
        "classes": list(COMPETITION_TASKS),
        "n": len(rows),
        "n_per_class": {t: int((classes == c).sum()) for c, t in enumerate(COMPETITION_TASKS)},
        "prompts_per_class": {t: len(prompts[t]) for t in COMPETITION_TASKS},
    }
    for mode in ("mean", "max"):
        if len(rows) == 0:
            result[mode] = {"accuracy": None, "macro_f1": None, "confusion": None}
            continue
        scores = zero_shot_classify(image_emb[rows], class_embs, mode)
        arrays.zero_shot_scores[mode] = scores
        predicted = scores.argmax(axis=1)
        n_classes = len(COMPETITION_TASKS)
        result[mode] = {
            "accuracy": accuracy(classes, predicted),
            "accuracy_ci": mean_interval(predicted == classes, seed=seed),
            "macro_f1": macro_f1(classes, predicted),
            "macro_f1_ci": macro_f1_interval(classes, predicted, n_classes, seed=seed),
            "confusion": confusion(classes, predicted, n_classes).tolist(),
        }
    return result


def _zero_shot_protocols(model, tokenizer, test_split, test_image, rows, classes, cfg, device, amp, arrays,
                         seed, log) -> dict[str, Any]:
    """The CheXpert-5x200 entries `cfg.zeroshot_protocol` asks for, each with its "protocol":
    ours and/or MedCLIP's (zeroshot_paper.py). The one protocol asked for is `zero_shot_5x200`;
    with 'both', ours is `zero_shot_5x200` and the paper's `zero_shot_5x200_paper`."""
    protocol = getattr(cfg, "zeroshot_protocol", "ours")
    entries: dict[str, Any] = {}
    if protocol in ("ours", "both"):
        ours = _zero_shot_5x200(model, tokenizer, test_image, rows, classes, cfg.eval_batch_size, device, amp, arrays,
                                 seed)
        entries["zero_shot_5x200"] = {"protocol": "ours", **ours}
    if protocol in ("paper", "both"):
        paper = zero_shot_5x200_paper(model, tokenizer, test_split, cfg, device, seed=seed, log=log)
        entries["zero_shot_5x200" if protocol == "paper" else "zero_shot_5x200_paper"] = paper
    return entries


def _zero_shot_entries(model, tokenizer, test_split, test, rows, classes, cfg, device, amp, arrays, seed,
                       log) -> dict[str, Any]:
    """The zero-shot entries: CheXpert-5x200 (`_zero_shot_protocols`) and the per-label AUROC,
    or why they were skipped."""
    if getattr(cfg, "text_encoder", None) == "precomputed":
        # Its "text" input is a row index into stored report features: prompts cannot be encoded.
        reason = "text_encoder 'precomputed' cannot encode prompts"
        return {"zero_shot_5x200": {"skipped": reason, "protocol": getattr(cfg, "zeroshot_protocol", "ours")},
                "zero_shot_multilabel": {"skipped": reason}}
    entries = _zero_shot_protocols(model, tokenizer, test_split, test["image"], rows, classes, cfg, device, amp,
                                   arrays, seed, log)
    # Per-label zero-shot: softmax over a positive/negative prompt pair per CheXpert label.
    positive, negative = label_prompt_pairs(CHEXPERT_LABELS)
    pos_emb = encode_texts(model, tokenizer, positive, device, cfg.eval_batch_size, amp=amp)
    neg_emb = encode_texts(model, tokenizer, negative, device, cfg.eval_batch_size, amp=amp)
    probabilities = zero_shot_multilabel(test["image"], pos_emb, neg_emb, model_logit_scale(model))
    arrays.multilabel_probabilities = probabilities
    entries["zero_shot_multilabel"] = multilabel_auroc(probabilities, test["labels"], CHEXPERT_LABELS)
    return entries


# ---- linear probe ---------------------------------------------------------------------------------
def _probe_embeddings(model, tokenizer, splits, cfg, device, amp, arrays, metrics, log) -> dict[str, dict[str, Any]]:
    """Image embeddings of the train and val splits there are, for the linear probe; their
    sizes go into metrics["n"] and metrics["skipped_images"]."""
    probe_embs = {}
    for name in ("train", "val"):
        if splits.get(name) is None:
            continue
        log(f"Embedding the {name} split for the linear probe...")
        probe_embs[name] = compute_embeddings(
            model, loader_for(splits[name], cfg, tokenizer), device, with_text=False, amp=amp
        )
        arrays.embeddings[name] = probe_embs[name]
        metrics["n"][name] = len(probe_embs[name]["index"])
        metrics["skipped_images"][name] = probe_embs[name]["n_skipped"]
    return probe_embs


def _linear_probe_entries(probe_embs, test, cfg, seed) -> dict[str, Any]:
    """Linear probe: fit on train, choose C on val, report on test; also on fractions of the train labels."""
    val = probe_embs.get("val")
    probe_args = dict(test_emb=test["image"], test_labels=test["labels"], seed=seed,
                      val_emb=None if val is None else val["image"],
                      val_labels=None if val is None else val["labels"])
    full = linear_probe(probe_embs["train"]["image"], probe_embs["train"]["labels"], **probe_args)
    fractions = linear_probe_fractions(probe_embs["train"]["image"], probe_embs["train"]["labels"],
                                       getattr(cfg, "probe_label_fractions", [1.0]), full=full, **probe_args)
    return {"linear_probe": full, "linear_probe_fractions": fractions}


# ---- the whole evaluation ---------------------------------------------------------------------------
def evaluate_model(
    model: torch.nn.Module,
    tokenizer,
    splits: Mapping[str, Any],
    cfg,
    device: torch.device | str,
    *,
    seed: int = 0,
    log=print,
) -> tuple[dict[str, Any], EvaluationArrays]:
    """Zero-shot (CheXpert-5x200 and per-label), retrieval and linear probe of one model.

    `splits` maps "train"/"val"/"test" to datasets (loaded with the eval transforms) or to
    iterables of batches. "test" is required; the linear probe needs "train" too (and uses
    "val" to choose C). `seed` draws the 5x200 subset: keep it fixed to compare checkpoints
    on the same images. Returns (metrics, arrays): metrics is plain JSON data with floats
    rounded to 4 decimals; arrays holds the embeddings and scores for figures.
    """
    if "test" not in splits:
        raise DataError("evaluate_model: no 'test' split to evaluate on")
    device = torch.device(device)
    amp = bool(getattr(cfg, "use_amp", True))
    arrays = EvaluationArrays()

    log("Embedding the test split...")
    test = compute_embeddings(model, loader_for(splits["test"], cfg, tokenizer), device, amp=amp)
    arrays.embeddings["test"] = test
    metrics: dict[str, Any] = {"n": {"test": len(test["index"])}, "skipped_images": {"test": test["n_skipped"]}}

    rows, classes = select_5x200(test["labels"], cfg.zeroshot_per_class, seed)
    arrays.five_x_200_rows, arrays.five_x_200_classes = rows, classes
    metrics["n"]["test_5x200"] = len(rows)
    metrics.update(_zero_shot_entries(model, tokenizer, splits["test"], test, rows, classes, cfg, device, amp,
                                      arrays, seed, log))

    # Retrieval: whole test split (Recall@K); the 5x200 subset adds MedCLIP's Precision@K.
    metrics["retrieval"] = {"test": retrieval_metrics(test["image"], test["text"], pair_ids=test["text_group"])}
    if len(rows):
        metrics["retrieval"]["test_5x200"] = retrieval_metrics(
            test["image"][rows], test["text"][rows], class_ids=classes, pair_ids=test["text_group"][rows]
        )

    if splits.get("train") is not None:
        probe_embs = _probe_embeddings(model, tokenizer, splits, cfg, device, amp, arrays, metrics, log)
        metrics.update(_linear_probe_entries(probe_embs, test, cfg, seed))
    else:
        metrics["linear_probe"] = metrics["linear_probe_fractions"] = None
    return json_ready(metrics), arrays


# ---- metrics.json and checkpoints -------------------------------------------------------------------
def read_metrics(path: str | Path) -> dict[str, Any]:
    """The JSON object in `path` ({} when there is no file); a DataError when it cannot be used."""
    path = Path(path)
    if not path.exists():
        return {}
    if not path.is_file():
        raise DataError(f"{path}: is not a file; move it away, metrics.json is written there")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}); fix or move it, it was left unchanged") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DataError(f"{path}: cannot be read ({type(e).__name__}); fix or move it, it was left unchanged") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: must hold a JSON object, got {type(data).__name__}; it was left unchanged")
    return data


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

    The checkpoint's config is used with `overrides` applied (data_path, image_root,
    eval_batch_size, gpu_id, ...). Writes `out_dir/metrics.json` (merged under the key
    `name`, default '<run folder>/<file stem>') and
    `out_dir/figures/zeroshot_confusion_<name>.png`, prints a short table, and returns the
    metrics entry. The 5x200 subset is drawn with seed 0 unless `overrides` sets `seed`.
    """
    overrides = dict(overrides or {})
    checkpoint = resolve(checkpoint)
    out = resolve(out_dir)
    read_metrics(out / "metrics.json")  # an unusable metrics.json fails now, not after the evaluation
    model, tokenizer, cfg = load_model(checkpoint, "cpu")
    if overrides:
        cfg = cfg.replace(**overrides)
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
        "checkpoint": str(checkpoint),
        "model": cfg.model,
        "vision_backbone": cfg.vision_backbone if cfg.model != "simple" else None,
        "text_encoder": cfg.text_encoder if cfg.model != "simple" else None,
        "loss": cfg.loss,
        "data_path": str(cfg.data_path),
        **metrics,
    }
    metrics_path = merge_metrics(out / "metrics.json", name, entry)
    figure_path = out / "figures" / f"zeroshot_confusion_{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.png"
    confusions = {m: metrics["zero_shot_5x200"].get(m, {}).get("confusion") for m in ("mean", "max")}
    if any(cm is not None for cm in confusions.values()):
        figure_path.parent.mkdir(parents=True, exist_ok=True)
        confusion_figure(confusions).savefig(figure_path, dpi=110, bbox_inches="tight", metadata={"Software": None})
        log(f"Saved figure: {figure_path}")
    for line in summary_lines(metrics):
        log(line)
    log(f"Saved metrics: {metrics_path} (key '{name}')")
    return entry
