"""CheXpert-5x200 zero-shot as MedCLIP published it (config `zeroshot_protocol: paper`).

Beside our protocol (metrics.py: 5x200 = positive for one competition class and not
positive for the other four; every prompt; the mean of normalised prompt embeddings; resize
256 + centre crop 224), this module restates MedCLIP's (medclip/prompts.py, evaluator.py and
GLoRIA's `preprocess_chexpert_5x200_data`, which MedCLIP follows):

- 5x200 rule: after blank -> 0, the class is 1 and all twelve other findings are 0 (No Finding
  is free); frontal images only (records with a `view` not PA/AP are left out).
- Prompts: MedCLIP's words verbatim (`PAPER_PROMPT_VOCABULARY`, with its spellings
  "apperance", "uppper", "presistent" and its repeated "bilateral pleural effusion"), every
  severity x subtype x location combination kept as MedCLIP builds it (duplicates included),
  then `n` drawn at random per class. The draw is seeded here and repeated `draws` times: the
  paper reports one unseeded draw, whose accuracy varies from draw to draw.
- Class score: the mean (or the max) of the class's prompt logits, scale * cosine similarity,
  not the similarity to the mean prompt embedding.
- Image: pad to square, resize to `image_size` (224): the whole film, no crop.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2

from medclip_nb.data import AUGMENT_PRESETS, CXRDataset, PadToSquare, RepeatChannels
from medclip_nb.evaluate.embeddings import compute_embeddings, encode_texts, loader_for, model_logit_scale
from medclip_nb.evaluate.metrics import accuracy, confusion, macro_f1
from medclip_nb.labels import CHEXPERT_LABELS, COMPETITION_TASKS, LABEL_INDEX, NUM_LABELS, PROMPT_VOCABULARY

FRONTAL_VIEWS = ("PA", "AP")


def _verbatim_vocabulary() -> dict[str, dict[str, list[str]]]:
    """Our (respelled) vocabulary with MedCLIP's spellings and word lists put back."""
    vocabulary = {task: {part: list(words) for part, words in parts.items()}
                  for task, parts in PROMPT_VOCABULARY.items()}
    consolidation = vocabulary["Consolidation"]
    consolidation["severity"] = [w.replace("appearance of", "apperance of") for w in consolidation["severity"]]
    consolidation["location"] = [w.replace("right upper lobe", "right uppper lobe") for w in consolidation["location"]]
    edema = vocabulary["Edema"]
    edema["severity"] = [w.replace("persistent", "presistent") for w in edema["severity"]]
    # MedCLIP lists this subtype twice, so its prompts weigh twice in the pool a draw samples from.
    vocabulary["Pleural Effusion"]["subtype"] = [
        "bilateral pleural effusion", "subpulmonic pleural effusion", "bilateral pleural effusion",
    ]
    return vocabulary


PAPER_PROMPT_VOCABULARY: dict[str, dict[str, list[str]]] = _verbatim_vocabulary()


# ---- 5x200 -----------------------------------------------------------------------------------------
def select_5x200_paper(labels, per_class: int = 200, seed: int = 0, frontal=None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a [N, 14] CheXpert label matrix for the published CheXpert-5x200 and their class
    (0..4, COMPETITION_TASKS order).

    After blank -> 0 a row qualifies for a class when it is 1 for the class and 0 for all twelve
    other findings (No Finding free; an uncertain -1 anywhere among them disqualifies it), and,
    with `frontal` (bool [N]), when it is a frontal image. Up to `per_class` rows per class,
    sampled as in metrics.select_5x200 (generator seeded with (seed, class)); sorted by row.
    """
    labels = np.nan_to_num(np.asarray(labels, dtype=np.float64).reshape(-1, NUM_LABELS), nan=0.0)
    keep = np.ones(len(labels), dtype=bool) if frontal is None else np.asarray(frontal, dtype=bool)
    rows, classes = [], []
    for c, task in enumerate(COMPETITION_TASKS):
        others = [LABEL_INDEX[name] for name in CHEXPERT_LABELS if name not in (task, "No Finding")]
        qualifies = keep & (labels[:, LABEL_INDEX[task]] == 1) & (labels[:, others] == 0).all(axis=1)
        candidates = np.flatnonzero(qualifies)
        if len(candidates) > per_class:
            candidates = np.sort(np.random.default_rng([seed, c]).choice(candidates, size=per_class, replace=False))
        rows.append(candidates)
        classes.append(np.full(len(candidates), c, dtype=np.int64))
    rows_all, classes_all = np.concatenate(rows), np.concatenate(classes)
    order = np.argsort(rows_all, kind="stable")
    return rows_all[order].astype(np.int64), classes_all[order]


def frontal_mask(records: Sequence[Mapping]) -> np.ndarray:
    """True for records whose `view` is PA or AP, and for records without a `view` (prepare
    keeps frontal views only, so a record without one came from an already frontal split)."""
    return np.array([str(r.get("view", "PA")).strip() in FRONTAL_VIEWS for r in records], dtype=bool)


def record_labels(records: Sequence[Mapping]) -> np.ndarray:
    """[N, 14] float matrix of the records' CheXpert labels (None -> NaN)."""
    return np.array([[np.nan if v is None else float(v) for v in r["labels"]] for r in records], dtype=np.float64)


# ---- prompts -----------------------------------------------------------------------------------------
def paper_prompt_pool(task: str, vocabulary: Mapping = PAPER_PROMPT_VOCABULARY) -> list[str]:
    """Every prompt MedCLIP builds for `task`: "{severity} {subtype} {location}" over its word
    lists in their key order, duplicates kept; runs of spaces from empty words collapsed (a
    tokenizer of words sees the same text; a character tokenizer would see padding)."""
    if task not in vocabulary:
        raise ValueError(f"paper prompt vocabulary has no class {task!r} (classes: {', '.join(vocabulary)})")
    return [" ".join(" ".join(combo).split()) for combo in itertools.product(*vocabulary[task].values())]


def sample_paper_prompts(
    n: int = 10, seed: int = 0, draw: int = 0, tasks: Sequence[str] = COMPETITION_TASKS,
    vocabulary: Mapping = PAPER_PROMPT_VOCABULARY,
) -> dict[str, list[str]]:
    """`n` prompts per class drawn without replacement from `paper_prompt_pool` (all of them
    when the pool is smaller), by a generator seeded with (seed, draw, class index): the same
    (seed, draw) always gives the same prompts, and different draws differ."""
    if n < 1:
        raise ValueError(f"zeroshot_prompts_n must be at least 1, got {n}")
    prompts = {}
    for c, task in enumerate(tasks):
        pool = paper_prompt_pool(task, vocabulary)
        if n < len(pool):
            picks = np.random.default_rng([seed, draw, c]).choice(len(pool), size=n, replace=False)
            pool = [pool[i] for i in picks]
        prompts[task] = pool
    return prompts


# ---- scores and images -------------------------------------------------------------------------------
def logit_class_scores(image_emb, class_prompt_embs: Sequence, scale: float, mode: str = "mean") -> np.ndarray:
    """[N, C] class scores: the mean (or max) over each class's prompts of the logits
    scale * cos(image, prompt), MedCLIP's `PromptClassifier`."""
    if mode not in ("mean", "max"):
        raise ValueError(f"logit_class_scores: mode must be 'mean' or 'max', got {mode!r}")
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    images = unit(np.asarray(image_emb, dtype=np.float64))
    columns = []
    for prompts in class_prompt_embs:
        logits = float(scale) * images @ unit(np.asarray(prompts, dtype=np.float64)).T
        columns.append(logits.mean(axis=1) if mode == "mean" else logits.max(axis=1))
    return np.stack(columns, axis=1)


def paper_eval_transform(image_size: int = 224, mean: float = 0.5862785803043838, std: float = 0.27950088968644304):
    """uint8 [1, H, W] -> float32 [3, S, S]: pad to square (black, centred), resize to S, scale,
    normalise, three channels. No crop: the whole film is seen."""
    return v2.Compose([
        PadToSquare(), v2.Resize([image_size, image_size], antialias=True),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=[mean], std=[std]), RepeatChannels(),
    ])


# ---- the evaluation ------------------------------------------------------------------------------------
def _summarise(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "draws": arr.tolist()}


def zero_shot_5x200_paper(model, tokenizer, test_dataset, cfg, device, *, seed: int = 0, log=print) -> dict[str, Any]:
    """The published CheXpert-5x200 on a test CXRDataset: its 5x200 rows embedded through the
    paper's transform, `cfg.zeroshot_prompt_draws` draws of `cfg.zeroshot_prompts_n` prompts per
    class, accuracy and macro-F1 per score mode as mean, std and per-draw values.

    `accuracy` / `macro_f1` hold the mean over draws, `confusion` that of draw 0, so the entry
    reads like ours (`protocol` says which it is)."""
    if not isinstance(test_dataset, CXRDataset):
        return {"protocol": "paper",
                "skipped": "the paper protocol needs the test split as a dataset (it re-reads the images)"}
    records = test_dataset.records
    rows, classes = select_5x200_paper(record_labels(records), cfg.zeroshot_per_class, seed, frontal_mask(records))
    preset = AUGMENT_PRESETS[cfg.augment]  # the normalisation the model was trained with
    result: dict[str, Any] = {
        "protocol": "paper", "classes": list(COMPETITION_TASKS), "n": len(rows),
        "n_per_class": {t: int((classes == c).sum()) for c, t in enumerate(COMPETITION_TASKS)},
        "prompts_per_class": int(cfg.zeroshot_prompts_n), "prompt_draws": int(cfg.zeroshot_prompt_draws),
        "image_transform": f"pad to square, resize {cfg.image_size} (no crop)",
    }
    if len(rows) == 0:
        return {**result, **{mode: {"accuracy": None, "macro_f1": None, "confusion": None} for mode in ("mean", "max")}}
    subset = CXRDataset(
        [records[i] for i in rows], root=test_dataset.root, on_bad_image=test_dataset.on_bad_image,
        transform=paper_eval_transform(cfg.image_size, preset["mean"], preset["std"]),
        store=test_dataset.store, resize_size=test_dataset.resize_size,
    )
    log(f"Embedding the {len(rows)} images of the published 5x200 (pad, resize {cfg.image_size})...")
    embedded = compute_embeddings(model, loader_for(subset, cfg, tokenizer), device, with_text=False,
                                  amp=cfg.use_amp)
    truth = classes[embedded["index"]]  # rows the loader skipped (unreadable) are left out
    scale, amp = model_logit_scale(model), cfg.use_amp
    per_mode: dict[str, dict[str, list]] = {m: {"accuracy": [], "macro_f1": [], "confusion": []}
                                            for m in ("mean", "max")}
    for draw in range(int(cfg.zeroshot_prompt_draws)):
        prompts = sample_paper_prompts(int(cfg.zeroshot_prompts_n), seed, draw)
        embs = [encode_texts(model, tokenizer, prompts[t], device, cfg.eval_batch_size, amp=amp)
                for t in COMPETITION_TASKS]
        for mode, out in per_mode.items():
            predicted = logit_class_scores(embedded["image"], embs, scale, mode).argmax(axis=1)
            out["accuracy"].append(accuracy(truth, predicted))
            out["macro_f1"].append(macro_f1(truth, predicted, len(COMPETITION_TASKS)))
            out["confusion"].append(confusion(truth, predicted, len(COMPETITION_TASKS)).tolist())
    for mode, out in per_mode.items():
        acc, f1 = _summarise(out["accuracy"]), _summarise(out["macro_f1"])
        result[mode] = {"accuracy": acc["mean"], "accuracy_std": acc["std"], "accuracy_draws": acc["draws"],
                        "macro_f1": f1["mean"], "macro_f1_std": f1["std"], "macro_f1_draws": f1["draws"],
                        "confusion": out["confusion"][0]}
    return result
