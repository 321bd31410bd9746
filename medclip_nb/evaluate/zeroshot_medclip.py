"""CheXpert-5x200 zero-shot by MedCLIP's procedure, on the 5x200 of one selection rule
(config `zeroshot_protocols`: `gloria` or `medclip`; `ours` is evaluation.py's own).

The rule chooses the images (data/five_by_200.py): `gloria` = GLoRIA's (frontal, -1 kept),
`medclip` = MedCLIP's own (-1 -> 0 first, every view, 400 per class then half, seed 42).
The procedure is MedCLIP's (medclip/prompts.py, evaluator.py and its zero-shot script
eval_zeroshot_classification.py, repository commit aad8818), whichever rule chose the images:

- Prompts: MedCLIP's words verbatim (`PAPER_PROMPT_VOCABULARY`, with its spellings
  "apperance", "uppper", "presistent" and its repeated "bilateral pleural effusion"), every
  severity x subtype x location combination kept as MedCLIP builds it (duplicates included);
  `zeroshot_prompts_n` (10) drawn per class by `random.sample` from Python's `random` seeded
  once with 42, `zeroshot_prompt_draws` (5) consecutive draws, as the authors' script runs.
- Class score: the mean (or the max) of the class's prompt logits, scale * cosine similarity,
  not the similarity to the mean prompt embedding.
- Reported: the mean over draws and the population std (ddof 0), as the script prints them.
- Image: pad to square, resize to `image_size` (224): the whole film, no crop.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2

from medclip_nb.data import (
    AUGMENT_PRESETS,
    MEDCLIP_SEED,
    CXRDataset,
    PadToSquare,
    RepeatChannels,
    frontal_mask,
    label_matrix,
    medclip_5x200,
    select_5x200_gloria,
)
from medclip_nb.evaluate.embeddings import compute_embeddings, encode_texts, loader_for, model_logit_scale
from medclip_nb.evaluate.metrics import accuracy, confusion, macro_f1
from medclip_nb.labels import COMPETITION_TASKS, PROMPT_VOCABULARY


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


# ---- prompts -----------------------------------------------------------------------------------------
def paper_prompt_pool(task: str, vocabulary: Mapping = PAPER_PROMPT_VOCABULARY) -> list[str]:
    """Every prompt MedCLIP builds for `task`: "{severity} {subtype} {location}" over its word
    lists in their key order, duplicates kept; runs of spaces from empty words collapsed (a
    tokenizer of words sees the same text; a character tokenizer would see padding)."""
    if task not in vocabulary:
        raise ValueError(f"paper prompt vocabulary has no class {task!r} (classes: {', '.join(vocabulary)})")
    return [" ".join(" ".join(combo).split()) for combo in itertools.product(*vocabulary[task].values())]


def medclip_prompt_draws(n: int = 10, draws: int = 5, seed: int = MEDCLIP_SEED,
                        tasks: Sequence[str] = COMPETITION_TASKS,
                        vocabulary: Mapping = PAPER_PROMPT_VOCABULARY) -> list[dict[str, list[str]]]:
    """`draws` draws of `n` prompts per class, as MedCLIP's zero-shot script makes them: Python's
    `random` seeded once with `seed` (its `set_random_seed` always uses 42), then for each draw
    and each class in order `random.sample(pool, n)`. The same calls on the same pools: MedCLIP's
    prompts (tests/test_zeroshot_medclip.py checks a digest of its draws). A pool smaller than `n`
    (MedCLIP's script stops there) is drawn whole."""
    if n < 1:
        raise ValueError(f"zeroshot_prompts_n must be at least 1, got {n}")
    rng = random.Random(seed)
    out = []
    for _ in range(draws):
        prompts = {}
        for task in tasks:
            pool = paper_prompt_pool(task, vocabulary)
            prompts[task] = rng.sample(pool, min(n, len(pool)))
        out.append(prompts)
    return out


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
RULES = ("gloria", "medclip")


def select_rule_rows(rule: str, records, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(rows, classes, notes) of the records' 5x200 by `rule`: GLoRIA's (frontal records, drawn
    with `seed`) or MedCLIP's (every record, MedCLIP's seed 42, its order; notes: the pool sizes
    and the pools smaller than its 2 x per_class draw)."""
    if rule == "gloria":
        rows, classes = select_5x200_gloria(label_matrix(records), per_class, seed, frontal_mask(records))
        return rows, classes, {}
    if rule == "medclip":
        draw = medclip_5x200(label_matrix(records), per_class, MEDCLIP_SEED)
        return draw.rows, draw.classes, {"pool_sizes": draw.pool_sizes, "short_pools": draw.short_pools}
    raise ValueError(f"5x200 rule {rule!r} is not one of {', '.join(RULES)}")


def _summarise(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=0)), "draws": arr.tolist()}


def zero_shot_5x200_medclip(model, tokenizer, test_dataset, cfg, device, *, rule: str, seed: int = 0,
                            rows=None, classes=None, log=print) -> dict[str, Any]:
    """MedCLIP's zero-shot procedure on the 5x200 that `rule` selects from a test CXRDataset
    (or on the given `rows` / `classes` of it, e.g. an imported chexpert_5x200 split): the images
    embedded through the pad-resize transform, `cfg.zeroshot_prompt_draws` draws of
    `cfg.zeroshot_prompts_n` prompts per class, accuracy and macro-F1 per score mode as mean,
    population std and per-draw values. `accuracy` / `macro_f1` hold the mean over draws,
    `confusion` that of draw 0; `rule` names the selection."""
    if not isinstance(test_dataset, CXRDataset):
        return {"rule": rule, "skipped": f"the {rule} rule needs the test split as a dataset (it re-reads the images)"}
    records = test_dataset.records
    notes: dict[str, Any] = {}
    if rows is None:
        rows, classes, notes = select_rule_rows(rule, records, cfg.zeroshot_per_class, seed)
    preset = AUGMENT_PRESETS[cfg.augment]  # the normalisation the model was trained with
    result: dict[str, Any] = {
        "rule": rule, "procedure": "medclip", "classes": list(COMPETITION_TASKS), "n": len(rows),
        "n_per_class": {t: int((classes == c).sum()) for c, t in enumerate(COMPETITION_TASKS)},
        "prompts_per_class": int(cfg.zeroshot_prompts_n), "prompt_draws": int(cfg.zeroshot_prompt_draws),
        "image_transform": f"pad to square, resize {cfg.image_size} (no crop)", **notes,
    }
    if len(rows) == 0:
        return {**result, **{mode: {"accuracy": None, "macro_f1": None, "confusion": None} for mode in ("mean", "max")}}
    subset = CXRDataset(
        [records[int(i)] for i in rows], root=test_dataset.root, on_bad_image=test_dataset.on_bad_image,
        transform=paper_eval_transform(cfg.image_size, preset["mean"], preset["std"]),
        store=test_dataset.store, resize_size=test_dataset.resize_size,
    )
    log(f"Embedding the {len(rows)} images of the {rule} 5x200 (pad, resize {cfg.image_size})...")
    embedded = compute_embeddings(model, loader_for(subset, cfg, tokenizer), device, with_text=False,
                                  amp=cfg.use_amp, progress_desc=f"evaluate: {rule} 5x200")
    truth = np.asarray(classes)[embedded["index"]]  # rows the loader skipped (unreadable) are left out
    scale, amp = model_logit_scale(model), cfg.use_amp
    per_mode: dict[str, dict[str, list]] = {m: {"accuracy": [], "macro_f1": [], "confusion": []}
                                            for m in ("mean", "max")}
    for prompts in medclip_prompt_draws(int(cfg.zeroshot_prompts_n), int(cfg.zeroshot_prompt_draws)):
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
